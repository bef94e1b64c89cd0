"""HTML as the text a reader sees: what content rules of type `body` match.

A reader sees an HTML body rendered, not its markup, and spammers write for that difference:
"pass<b></b>word" reads "password", so does "&#112;assword", and a word in a comment, a script
or a display:none block is not read at all. A rule matching the markup misses the first two and
hits the last. So HTML parts are rendered here as a mail client shows them:

- tags dropped; comments, declarations and the content of <script>, <style>, <title>,
  <template>, <iframe> and <noframes> left out;
- character references decoded (HTMLParser's convert_charrefs, in text and attributes alike);
- block elements (p, div, li, tr, headings, br...) as line breaks, table cells as spaces,
  whitespace runs collapsed to one space, as a browser does (<pre> keeps its line breaks);
- hidden elements left out, with what they contain: the `hidden` attribute, and inline styles
  display:none, visibility:hidden (a child may show itself again), opacity:0, a zero height
  with overflow:hidden, and a zero font size (font-size:0, font:0/0; a child with a font size
  of its own shows again). Style sheets are not applied: text hidden by a class selector is
  kept;
- the end tags a browser implies: a <p> ends at the next block, an <li> at the next <li>, a
  cell at the next cell or row, an <a> at the next <a>; `<div/>` opens a div, as in a browser.

Linear and bounded, whatever the input: one pass of the stdlib HTMLParser over at most
MAX_HTML characters, closed in linear time (gateway.mime.html.feed_all); style attributes are
read by splitting, never by a regex; the element stack is bounded (the oldest entries dropped,
each entry carries its inherited state so nothing above them changes), implied end tags are
looked for among the innermost SCOPE_SCAN elements only, and the parse stops as soon as the
text reaches its limit. The gateway's own reading hands a Renderer the events of the HTML scan
(gateway.mime.html.read), so each page is tokenized once for its links, symbols and text.
"""

from __future__ import annotations

import contextlib
from html.parser import HTMLParser
from typing import NamedTuple

from gateway.mime.charsets import decode_text
from gateway.mime.html import MAX_HTML, feed_all

MAX_STACK = 512  # open elements kept; past it the oldest half is dropped
SCOPE_SCAN = 32  # innermost open elements searched for an implied end tag
MAX_STYLE = 2000  # characters of a style attribute read


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_VOID = _words(
    """
    area base br col embed hr img input keygen link meta param source track wbr
    """
)
# content a reader never sees as text
_SKIPPED = frozenset({"script", "style", "title", "template", "iframe", "noframes"})
_BLOCK = _words(
    """
    address article aside blockquote body caption center dd details dialog dir div dl dt
    fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr html legend li
    listing main menu nav ol p pre section summary table tbody tfoot thead tr ul xmp
    """
)
_CELLS = frozenset({"td", "th"})
_PREFORMATTED = frozenset({"pre", "textarea", "listing", "xmp", "plaintext"})
_FOREIGN = frozenset({"svg", "math"})  # where <x/> really closes
# start tags that end an open <p> (HTML's "close a p element in button scope")
_CLOSES_P = _words(
    """
    address article aside blockquote center details dialog dir div dl fieldset figcaption figure
    footer form h1 h2 h3 h4 h5 h6 header hgroup hr li listing main menu nav ol p pre section
    summary table ul dd dt xmp plaintext
    """
)
_P = frozenset({"p"})
_SCOPE = frozenset(
    {"table", "td", "th", "caption", "html", "button", "marquee", "object", "applet", "template"}
)
# start tag -> (the open elements it ends, the elements that stop the search)
_IMPLIED: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "li": (frozenset({"li"}), _SCOPE | {"ul", "ol"}),
    "dd": (frozenset({"dd", "dt"}), _SCOPE | {"dl"}),
    "dt": (frozenset({"dd", "dt"}), _SCOPE | {"dl"}),
    "td": (frozenset({"td", "th"}), frozenset({"table", "tr"})),
    "th": (frozenset({"td", "th"}), frozenset({"table", "tr"})),
    "tr": (frozenset({"tr"}), frozenset({"table"})),
    "tbody": (frozenset({"tbody", "thead", "tfoot"}), frozenset({"table"})),
    "thead": (frozenset({"tbody", "thead", "tfoot"}), frozenset({"table"})),
    "tfoot": (frozenset({"tbody", "thead", "tfoot"}), frozenset({"table"})),
    "a": (frozenset({"a"}), _SCOPE),
    "option": (frozenset({"option"}), frozenset({"select", "datalist", "optgroup"})),
}


class _State(NamedTuple):
    """One open element and what it passes to its content (inherited, so dropping the oldest
    entries of a deep stack changes nothing for the ones above)."""

    tag: str
    gone: bool  # display:none, opacity:0, hidden, or inside such an element
    invisible: bool  # visibility:hidden (a descendant may say visible)
    zero_font: bool  # font size 0 (a descendant may set its own)
    skipped: bool  # inside script, style, title...
    pre: bool
    foreign: bool  # inside svg or math

    @property
    def shown(self) -> bool:
        return not (self.gone or self.invisible or self.zero_font or self.skipped)


_ROOT = _State("", False, False, False, False, False, False)


class _Full(Exception):
    """The text reached its limit: the rest of the document is not read."""


def _font_size_zero(value: str) -> bool | None:
    """Whether a CSS size is zero ("0", "0px", ".0em"); None when it is no number (a keyword:
    "small", "inherit"), which leaves the inherited size."""
    number = ""
    for char in value.strip():
        if char.isdigit() or char == ".":
            number += char
        else:
            break
    if not number or number == ".":
        return None
    try:
        return float(number) == 0.0
    except ValueError:
        return None


def _font_shorthand_zero(value: str) -> bool | None:
    """The size in a `font` shorthand ("bold 0/0 a", "12px Arial")."""
    for word in value.split():
        if word[:1].isdigit() or word[:1] == ".":
            return _font_size_zero(word.partition("/")[0])
    return None


def _style(value: str) -> tuple[bool, bool | None, bool | None]:
    """(gone, visibility hidden, font size zero) an inline style says; None: it says nothing."""
    gone = False
    invisible: bool | None = None
    zero_font: bool | None = None
    zero_height = clipped = False  # the preheader trick: max-height:0 with overflow:hidden
    for declaration in value[:MAX_STYLE].lower().split(";"):
        name, colon, setting = declaration.partition(":")
        if not colon:
            continue
        name = name.strip()
        setting = setting.replace("!important", "").strip()
        if (name == "display" and setting == "none") or (
            name == "opacity" and _font_size_zero(setting)
        ):
            gone = True
        elif name == "visibility":
            invisible = setting in ("hidden", "collapse")
        elif name == "font-size":
            zero_font = _font_size_zero(setting)
        elif name == "font":
            found = _font_shorthand_zero(setting)
            zero_font = found if found is not None else zero_font
        elif name in ("height", "max-height"):
            zero_height = zero_height or bool(_font_size_zero(setting))
        elif name == "overflow":
            clipped = setting == "hidden"
    return gone or (zero_height and clipped), invisible, zero_font


class Renderer(HTMLParser):
    """Fed on its own (visible_text) or handed the events of gateway.mime.html's scanner."""

    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=True)
        self.limit = limit
        self.size = 0
        self.out: list[str] = []
        self.stack: list[_State] = []
        self.open: dict[str, int] = {}  # open elements by tag, to skip searches that cannot hit
        self.last = ""  # the last character emitted

    def updatepos(self, i: int, j: int) -> int:
        return j  # line and column bookkeeping nothing here reads (as gateway.mime.html)

    @property
    def top(self) -> _State:
        return self.stack[-1] if self.stack else _ROOT

    def _emit(self, text: str) -> None:
        self.out.append(text)
        self.size += len(text)
        self.last = text[-1]
        if self.size >= self.limit:
            raise _Full

    def _space(self) -> None:
        if self.out and not self.last.isspace():
            self._emit(" ")

    def _break(self, state: _State) -> None:
        """A line break where a block starts or ends, unless the block makes no box."""
        if not (state.gone or state.skipped) and self.out and self.last != "\n":
            self._emit("\n")

    def _pop_to(self, index: int) -> _State:
        closed = self.stack[index]
        for state in self.stack[index:]:
            self.open[state.tag] -= 1
        del self.stack[index:]
        return closed

    def _close_implied(self, tag: str) -> None:
        if tag in _CLOSES_P and self.open.get("p"):
            self._close_nearest(_P, _SCOPE)
        implied = _IMPLIED.get(tag)
        if implied is not None:
            self._close_nearest(*implied)

    def _close_nearest(self, names: frozenset[str], boundary: frozenset[str]) -> None:
        for name in names:
            if self.open.get(name):
                break
        else:
            return  # none open: nothing to search for
        low = max(0, len(self.stack) - SCOPE_SCAN)
        for index in range(len(self.stack) - 1, low - 1, -1):
            tag = self.stack[index].tag
            if tag in names:
                self._pop_to(index)
                return
            if tag in boundary:
                return

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, closes=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # "<div/>" opens a div in HTML (the slash is ignored); it closes only in svg or math
        self._start(tag, attrs, closes=self.top.foreign or tag in _FOREIGN)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], closes: bool) -> None:
        if not self.top.foreign:
            self._close_implied(tag)
        parent = self.top
        gone, invisible, zero_font = False, None, None
        for name, value in attrs:
            if name == "hidden":
                gone = True
            elif name == "style" and value:
                gone_here, invisible, zero_font = _style(value)
                gone = gone or gone_here
        state = _State(
            tag,
            parent.gone or gone,
            parent.invisible if invisible is None else invisible,
            parent.zero_font if zero_font is None else zero_font,
            parent.skipped or tag in _SKIPPED,
            parent.pre or tag in _PREFORMATTED,
            parent.foreign or tag in _FOREIGN,
        )
        if tag in _BLOCK or tag == "br":
            self._break(state)
        elif tag in _CELLS and state.shown:
            self._space()
        if tag in _VOID or closes:
            return
        self.stack.append(state)
        self.open[tag] = self.open.get(tag, 0) + 1
        if len(self.stack) > MAX_STACK:
            for dropped in self.stack[: MAX_STACK // 2]:
                self.open[dropped.tag] -= 1
            del self.stack[: MAX_STACK // 2]

    def handle_endtag(self, tag: str) -> None:
        closed = self.top
        if self.open.get(tag):
            for index in range(len(self.stack) - 1, -1, -1):
                if self.stack[index].tag == tag:
                    closed = self._pop_to(index)
                    break
        if tag in _BLOCK or tag == "br":  # "</br>" is a line break to a browser too
            self._break(closed)
        elif tag in _CELLS and closed.shown:
            self._space()

    def handle_data(self, data: str) -> None:
        if not data or not self.top.shown:
            return
        if self.top.pre:
            self._emit(data.replace("\r\n", "\n").replace("\r", "\n"))
            return
        words = data.split()
        if data[0].isspace():
            self._space()
        if words:
            self._emit(" ".join(words))
            if data[-1].isspace():
                self._space()


def tidy(pieces: list[str]) -> str:
    """The renderer's output as text: lines stripped of white space runs, blank lines dropped."""
    lines = (" ".join(line.split()) for line in "".join(pieces).split("\n"))
    return "\n".join(line for line in lines if line)


def visible_text(data: bytes, limit: int = 1 << 20, charset: str = "") -> str:
    """The text a reader sees in the HTML `data` (of the declared `charset`, decoded as the
    message's other text readers decode it), at most `limit` characters, lines stripped and
    blank runs removed."""
    text = decode_text(data[:MAX_HTML], charset)
    renderer = Renderer(limit)
    with contextlib.suppress(_Full):  # the limit reached: the rest is not read
        feed_all(renderer, text)
    return tidy(renderer.out)[:limit]
