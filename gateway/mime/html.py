"""HTML as a mail client (or a browser opening an attachment) renders it: scripts, forms,
frames, hidden text, deceptive links, and every link with the text it shows.

A bounded pass of the stdlib HTMLParser (tolerant of broken markup). The content scan reads its
symbols (`inspect`); the message's URL list reads its links (`read(...).links`): one scanner, so
the two can never disagree on what an HTML file holds. Whether a link goes where its text says
is the links plugin's question (gateway.linkcheck): it knows the sender and the redirectors.

HTML smuggling (a script that decodes a payload in the browser, or sends the reader on to a
credential page) and password fields are found in bodies, attachments and SVG images alike.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Protocol
from urllib.parse import unquote_to_bytes

from gateway.mime.charsets import decode_text
from gateway.mime.model import BudgetExceeded, Deadline

MAX_HTML = 2 * 1024 * 1024
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_FRAMES = frozenset({"iframe", "frame", "frameset", "object", "embed", "applet"})
_END = r"\s*(?:!\s*important\s*)?(?:;|$)"  # a declaration's end, "!important" or not
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all"
    r"|opacity\s*:\s*0(?:\.0*)?" + _END + r"|max-height\s*:\s*0",
    re.I,
)
# font-size: 0 (0px, 0.0em, 0%...) sets the size of this element; a child may set its own
# (responsive templates zero a container's font to close gaps between inline blocks), so the
# size in force is tracked per element rather than "some ancestor said 0"
_FONT_SIZE = re.compile(r"(?:^|[;\s\"'])font-size\s*:\s*([0-9.]+)\s*([a-z%]*)" + _END, re.I)
_HIDDEN_MIN_CHARS = 30
_ZERO_FONT_MIN_CHARS = 10
_MANY_INVISIBLE = 12  # separate pieces of hidden text: salting, not a newsletter's preheader
# A preheader: the preview line bulk senders hide at the top of nearly every newsletter and
# notice (display:none, max-height:0...) for the inbox list to show; notifications also hide a
# line of markup for mail clients' actions at the end. Hidden text of a few pieces and a line's
# worth of letters is that and nothing more (HTML_PREHEADER), whether hidden or written in a
# zero-size font (Australia Post's); salting is longer or in many pieces (HTML_HIDDEN_TEXT,
# HTML_MANY_INVISIBLE, HTML_ZERO_FONT).
_PREHEADER_PIECES = 3
_PREHEADER_LETTERS = 200
# data: addresses that carry a page the browser renders (a second HTML file inside the first)
_PAGE_TYPES = ("data:text/html", "data:image/svg+xml", "data:application/xhtml+xml")
_MAX_PAGES = 4
_MAX_FILES = 8  # files carried in data: addresses kept per HTML file
# white space and the invisible characters preheaders are padded with (zero-width joiners and
# non-joiners, soft hyphens, the combining grapheme joiner): not letters a reader would read
_NOT_LETTERS = re.compile(
    "[\\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u3164\ufeff\uffa0]+"
)
_MAX_PAGE_DEPTH = 2
# attributes whose value a browser may run as a javascript: address (SVG animations too)
_SCRIPT_URI_KEYS = frozenset(
    {"href", "src", "action", "formaction", "xlink:href", "data", "values", "to", "from"}
)
# Windows protocol handlers a link or redirect starts without a download: a search of an
# attacker's share (search-ms:, Explorer lists its .lnk files), the support diagnostics tool
# (ms-msdt:, Follina), an app install (ms-appinstaller:), Office's command handler, help files
_LAUNCH_SCHEMES = (
    "search-ms:",
    "search:",
    "ms-search:",
    "ms-msdt:",
    "ms-appinstaller:",
    "ms-officecmd:",
    "ms-cxh:",
    "ms-cxh-full:",
    "ms-its:",
    "its:",
    "mk:",
    "hcp:",
    "shell:",
    "vbefile:",
)
_URL_DROPPED = str.maketrans("", "", "\t\n\r")
_URL_LEADING = "".join(map(chr, range(0x21)))
MAX_LINKS = 500  # links kept per HTML file (the message's URL list has its own bound)
_MAX_LINK_TEXT = 300  # characters of an anchor's visible text kept
_MAX_URL = 2000  # characters of an attribute kept as a link
_MAX_SCRIPT = 256 * 1024  # characters of script (elements and handlers) looked at
# A script that builds a payload in the browser: base64 or char-code decoding, a Blob saved or
# opened (HTML smuggling, as in the QakBot/IcedID/Nobelium campaigns).
_SCRIPT_DECODE = re.compile(
    r"\batob\s*\(|\bunescape\s*\(|fromCharCode\s*\(|\bnew\s+Blob\s*\(|createObjectURL"
    r"|msSaveOrOpenBlob|msSaveBlob|;base64,[A-Za-z0-9+/]{40}",
    re.I,
)
# A script that sends the reader elsewhere: location = ..., location.href = ..., replace/assign.
# ("location=yes" in a window.open feature string is no redirect)
_SCRIPT_REDIRECT = re.compile(
    r"\b(?:window|document|top|self|parent)\s*\.\s*location\s*(?:\.\s*href\s*)?=(?!=)"
    r"|\blocation\s*\.\s*href\s*=(?!=)|(?:^|[;{}\s])location\s*=(?!=)"
    r"|\blocation\s*\.\s*(?:replace|assign)\s*\(",
    re.I,
)
_REFRESH_URL = re.compile(r"^\s*\d*(?:\.\d*)?\s*[;,]?\s*(?:url\s*=\s*)?['\"]?\s*([^'\"\s]+)", re.I)
_TEXT_URL = re.compile(
    r"(?:https?://\[[0-9a-f:.]{2,45}\]|https?://|www\.)[^\s<>\"'()\[\]{}\\^`|]{1,500}", re.I
)  # an IPv6 literal in brackets, or an address without brackets
_SPACES = re.compile(r"\s+")
# attributes that load or go to an address, by tag
_SRC_TAGS = frozenset({"img", "iframe", "frame", "embed", "script", "source", "video", "audio"})


@dataclass(frozen=True, slots=True)
class Link:
    """An address the HTML goes to or loads, as written, with where it came from: `source` is
    "href" (a, area), "src" (img, iframe, embed, script...), "action" (form), "refresh" (meta
    refresh) or "text" (an address in the visible text); `text` is an anchor's visible text,
    or for a form the types of its inputs ("email password", sorted)."""

    url: str
    source: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class HtmlReading:
    """What one HTML file holds: the HTML_* symbols (with a detail each), its links, and the
    text a reader sees (gateway.mime.html_text, rendered in the same pass of the parser), or
    None when that text is not kept (longer than KEPT_TEXT: render it again when needed)."""

    found: dict[str, str]
    links: tuple[Link, ...]
    text: str | None = None
    files: tuple[tuple[str | None, bytes], ...] = ()  # (download name, content) of data: files


class TextRenderer(Protocol):
    """What the scanner hands each parser event to, so the page is tokenized once for both."""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None: ...
    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None: ...
    def handle_endtag(self, tag: str) -> None: ...
    def handle_data(self, data: str) -> None: ...


class _Scanner(HTMLParser):
    def __init__(
        self, deadline: Deadline | None = None, renderer: TextRenderer | None = None
    ) -> None:
        super().__init__(convert_charrefs=True)
        self.deadline = deadline
        # sees every event the scanner sees; detached (and its text not used) if it fails
        self.renderer = renderer
        self.render_failed = False
        self.events = 0  # callbacks so far: the deadline is checked every 256
        self.found: dict[str, str] = {}
        self.stack: list[tuple[str, bool]] = []
        self.hidden_open = 0  # how many entries of `stack` are hidden (read on every text run)
        self.hidden_chars = 0
        self.link: str | None = None
        self.link_text: list[str] = []
        self.links: list[Link] = []
        self.script_chars = 0
        self.data_block = False  # the script element open now is a data block (see _scan_start)
        self.form: str | None = None  # the action of the form open now
        self.form_inputs: set[str] = set()
        self.zero_font: list[bool] = []  # the font size in force is 0, per entry of `stack`
        self.zero_chars = 0
        self.hidden_pieces = 0
        # hidden elements (outermost) holding text: a preheader is one, however many inline
        # elements style its pieces (GitHub's hidden Message-ID line is five spans)
        self.hidden_regions = 0
        self.region_counted = False  # the hidden element open now is counted in hidden_regions
        self.hidden_letters = 0  # hidden characters that are neither white space nor format
        self.pages: list[bytes] = []  # pages carried in data: addresses and srcdoc
        self.files: list[tuple[str | None, bytes]] = []  # other files in data: addresses

    @property
    def hidden(self) -> bool:
        return self.hidden_open > 0

    def _pop(self, start: int, end: int | None = None) -> None:
        if self.hidden_open:
            self.hidden_open -= sum(1 for _, hidden in self.stack[start:end] if hidden)
        del self.stack[start:end]
        del self.zero_font[start:end]

    def _page(self, value: str) -> None:
        """Keep a page carried in a data: address (decoded), bounded in count and size."""
        if len(self.pages) >= _MAX_PAGES:
            return
        page = data_uri_bytes(value)
        if page is not None:
            self.pages.append(page[:MAX_HTML])

    def _file(self, value: str, name: str | None) -> None:
        """Keep a file carried in a data: address (a download the page offers: HTML smuggling
        without script), bounded in count and size; inline images are no files."""
        if len(self.files) >= _MAX_FILES or value.strip()[5:11].lower() == "image/":
            return
        data = data_uri_bytes(value)
        if data:
            self.files.append(((name or "").strip()[:255] or None, data))

    def updatepos(self, i: int, j: int) -> int:
        # HTMLParser counts lines and columns of every piece for getpos(), which nothing here
        # reads: skipping that bookkeeping (a tenth of the parse) changes no callback
        return j

    def _add(self, symbol: str, detail: str) -> None:
        self.found.setdefault(symbol, detail[:120])

    def _tick(self) -> None:
        self.events += 1
        if self.deadline is not None and not self.events & 255:
            self.deadline.check()

    def _keep(self, url: str, source: str, text: str = "") -> None:
        url = url.strip()
        if url and len(self.links) < MAX_LINKS:
            if url[:5].lower() == "data:":
                url = url[:100]  # the media type is what matters; the payload can be megabytes
            self.links.append(Link(url[:_MAX_URL], source, text))

    def _script(self, code: str, where: str) -> None:
        """Look at script text (an element, a handler, a javascript: address), bounded."""
        if self.script_chars >= _MAX_SCRIPT:
            return
        code = code[: _MAX_SCRIPT - self.script_chars]
        self.script_chars += len(code)
        if _SCRIPT_DECODE.search(code):
            self._add("HTML_SCRIPT_DECODE", where)
        if _SCRIPT_REDIRECT.search(code):
            self._add("HTML_SCRIPT_REDIRECT", where)

    def _end_form(self) -> None:
        """Keep the open form's action, with its input types as the link's text ("email
        password"): a search box posting to a newsletter's site is no credential form."""
        if self.form is not None:
            self._keep(self.form, "action", " ".join(sorted(self.form_inputs)))
            self.form = None

    def _end_link(self) -> None:
        if self.link is not None:
            text = _SPACES.sub(" ", "".join(self.link_text)).strip()[:_MAX_LINK_TEXT]
            self._keep(self.link, "href", text)
            self.link = None

    def _detach(self) -> None:
        """The renderer failed: its text is rendered on its own later, as if never shared."""
        self.renderer = None
        self.render_failed = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._scan_start(tag, attrs)
        if self.renderer is not None:
            try:
                self.renderer.handle_starttag(tag, attrs)
            except Exception:
                self._detach()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # as HTMLParser's default for the scanner (a start, then an end); the renderer has its
        # own reading of "<div/>"
        self._scan_start(tag, attrs)
        self._scan_end(tag)
        if self.renderer is not None:
            try:
                self.renderer.handle_startendtag(tag, attrs)
            except Exception:
                self._detach()

    def handle_endtag(self, tag: str) -> None:
        self._scan_end(tag)
        if self.renderer is not None:
            try:
                self.renderer.handle_endtag(tag)
            except Exception:
                self._detach()

    def handle_data(self, data: str) -> None:
        self._scan_data(data)
        if self.renderer is not None:
            try:
                self.renderer.handle_data(data)
            except Exception:
                self._detach()

    def _scan_start(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tick()
        # an XML page names elements with a prefix ("html:script", "svg:a"): the element is
        # the same for the browser
        tag = tag.rpartition(":")[2]
        values = {k.lower(): (v or "") for k, v in attrs}
        if tag == "script":
            # a data block (schema.org markup for mail clients' actions, as GitHub and airlines
            # send) is never run, by a browser or a mail client: not script
            self.data_block = _is_data_block(values.get("type", ""))
            if not self.data_block:
                self._add("HTML_SCRIPT", "<script>")
        elif tag == "form":
            self._add("HTML_FORM", values.get("action", "")[:100])
            self._end_form()
            self.form = values.get("action", "")
            self.form_inputs = set()
        elif tag in _FRAMES:
            self._add("HTML_IFRAME", f"<{tag}>")
            address = values.get("src") or values.get("data") or ""
            address = address.translate(_URL_DROPPED).lstrip(_URL_LEADING).lower()
            if address.startswith(("http:", "https:", "//")):
                self._add("HTML_FRAME_REMOTE", f"<{tag}> {address[:80]}")
        elif tag == "input":
            kind = values.get("type", "text").strip().lower()[:20] or "text"
            if kind == "password":
                self._add(
                    "HTML_PASSWORD_FIELD", f"<input type=password name={values.get('name', '')}>"
                )
            if self.form is not None and len(self.form_inputs) < 20:
                self.form_inputs.add(kind)
        elif tag == "meta" and values.get("http-equiv", "").strip().lower() == "refresh":
            match = _REFRESH_URL.match(values.get("content", ""))
            target = match.group(1) if match else ""
            if target.lower().startswith(_LAUNCH_SCHEMES):
                self._add("HTML_LAUNCH_URI", target[:100])
            if target.lower().startswith(("http:", "https:", "//", "data:", "javascript:")):
                self._add("HTML_META_REFRESH", target[:100])
                self._keep(target, "refresh")
        for key, value in values.items():
            if key.startswith("on") and value:
                self._add("HTML_SCRIPT", f"{key} handler")
                self._script(value, f"{key} handler")
            if key in _SCRIPT_URI_KEYS:
                # a browser drops tabs and line breaks anywhere in an address, and control
                # characters and spaces before it ("java&#9;script:" is javascript:)
                value = value.translate(_URL_DROPPED).lstrip(_URL_LEADING)
                lowered = value.lower()
                if lowered.startswith(("javascript:", "vbscript:")):
                    self._add("HTML_SCRIPT", f"{key}=javascript:")
                    self._script(value, f"{key}=javascript:")
                elif lowered.startswith(_LAUNCH_SCHEMES):
                    self._add("HTML_LAUNCH_URI", value[:100])
                elif lowered.startswith(_PAGE_TYPES):
                    self._page(value)
                elif lowered.startswith("data:"):
                    self._file(value, values.get("download"))
            elif key == "srcdoc" and value and len(self.pages) < _MAX_PAGES:
                self.pages.append(value[:MAX_HTML].encode("utf-8", "replace"))
        href = values.get("href", values.get("xlink:href"))  # SVG 1.1 links are xlink:href
        if tag in ("a", "area") and href is not None:
            self._end_link()  # an anchor left open ends where the next one starts
            if tag == "a":
                self.link = href.strip()
                self.link_text = []
            else:
                self._keep(href, "href", values.get("alt", "")[:_MAX_LINK_TEXT])
        elif tag in _SRC_TAGS and values.get("src"):
            self._keep(values["src"], "src")
        elif tag == "object" and values.get("data"):
            self._keep(values["data"], "src")
        if tag not in _VOID:
            style = values.get("style")
            hidden = "hidden" in values or bool(style and _HIDDEN_STYLE.search(style))
            zero = self.zero_font[-1] if self.zero_font else False
            size = _FONT_SIZE.search(style) if style else None
            if size:
                with contextlib.suppress(ValueError):
                    zero = float(size.group(1)) == 0
            elif tag == "font" and values.get("size", "").strip() in ("0", "-7"):
                zero = True
            self.stack.append((tag, hidden))
            self.zero_font.append(zero)
            if hidden and not self.hidden_open:
                self.region_counted = False  # a new hidden element, not inside another
            self.hidden_open += hidden
            if len(self.stack) > 512:
                self._pop(0, 256)

    def _scan_end(self, tag: str) -> None:
        self._tick()
        tag = tag.rpartition(":")[2]
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == tag:
                self._pop(index)
                break
        if tag == "a":
            self._end_link()
        elif tag == "form":
            self._end_form()

    def _scan_data(self, data: str) -> None:
        self._tick()
        if self.stack and self.stack[-1][0] in ("style", "script", "title"):
            if self.stack[-1][0] == "script" and not self.data_block:
                self._script(data, "<script>")
            return
        if self.link is not None and len(self.link_text) < 50:
            self.link_text.append(data)
        if len(self.links) < MAX_LINKS and ("//" in data or "www." in data.lower()):
            for match in _TEXT_URL.finditer(data):
                self._keep(match.group(0).rstrip(".,;:!?)"), "text")
                if len(self.links) >= MAX_LINKS:
                    break
        zero = bool(self.zero_font) and self.zero_font[-1]
        if self.hidden or zero:
            stripped = data.strip()
            letters = len(_NOT_LETTERS.sub("", stripped))
            if not letters:
                # only padding (a preheader's zero-width joiners, soft hyphens in a zero-size
                # font between table cells): no word for a filter to read, no salting
                return
            chars = len(stripped)
            self.hidden_chars += chars
            self.hidden_pieces += 1
            if not self.hidden or not self.region_counted:
                self.hidden_regions += 1
                self.region_counted = self.hidden
            self.hidden_letters += letters
            if self.hidden_chars >= _HIDDEN_MIN_CHARS:
                self._add("HTML_HIDDEN_TEXT", f"{self.hidden_chars}+ hidden characters")
            if self.hidden_pieces >= _MANY_INVISIBLE:
                self._add("HTML_MANY_INVISIBLE", f"{self.hidden_pieces}+ hidden pieces of text")
            if zero and not self.hidden:  # text already hidden is hidden text, not salting
                self.zero_chars += chars
                if self.zero_chars >= _ZERO_FONT_MIN_CHARS:
                    self._add("HTML_ZERO_FONT", f"{self.zero_chars}+ characters in font-size 0")

    def preheader_only(self) -> bool:
        """The hidden text is a preview line or two (see _PREHEADER_LETTERS), no more."""
        return (
            self.hidden_regions <= _PREHEADER_PIECES and self.hidden_letters <= _PREHEADER_LETTERS
        )


def _is_data_block(script_type: str) -> bool:
    """A script element of this type holds data that is never run (JSON, JSON-LD); any other
    type, or none, counts as script (the HTML standard runs only JavaScript and modules, but a
    type it would not run is rare enough in mail to stay suspicious)."""
    essence = script_type.partition(";")[0].strip().lower()
    return essence in ("application/ld+json", "application/json")


MAX_TAIL = 64 * 1024 * 1024  # bytes past MAX_HTML searched for what makes a page act
# what makes a page act, as bytes of its lowered text (a tag's start, a handler, an address)
_TAIL_MARKERS = re.compile(
    rb"<(script|form|iframe|frame|object|embed)\b"
    rb"|\s(on[a-z]{3,25})\s*=\s*[\"']"
    rb"|(javascript|vbscript):"
    rb"|type\s*=\s*[\"']?(password)\b"
    rb"|http-equiv\s*=\s*[\"']?(refresh)\b"
)
_TAIL_SYMBOLS = {
    b"script": "HTML_SCRIPT",
    b"form": "HTML_FORM",
    b"password": "HTML_PASSWORD_FIELD",
    b"refresh": "HTML_META_REFRESH",
    b"javascript": "HTML_SCRIPT",
    b"vbscript": "HTML_SCRIPT",
}


def _past_the_parse(tail: bytes, found: dict[str, str]) -> None:
    """What makes a page act, in the part of a large file the parse did not read: a browser
    reads it all, so padding must not hide a script or a form. A literal pass, linear."""
    text = tail.replace(b"\x00", b"").lower()  # UTF-16 text reads as ASCII without its NULs
    for match in _TAIL_MARKERS.finditer(text):
        word = next(group for group in match.groups() if group)
        if word.startswith(b"on") and word not in _TAIL_SYMBOLS:
            symbol = "HTML_SCRIPT"
        else:
            symbol = _TAIL_SYMBOLS.get(word, "HTML_IFRAME")
        found.setdefault(symbol, f"past the first {MAX_HTML} bytes: {word.decode()}")


def data_uri_bytes(value: str) -> bytes | None:
    """The content of a data: address (base64 or percent-encoded), its #fragment left out as a
    browser leaves it out; None when it cannot be decoded. Bounded to MAX_HTML bytes."""
    head, comma, payload = value.strip().partition(",")
    if not comma:
        return None
    payload = payload[: MAX_HTML * 2].partition("#")[0]
    try:
        if head.lower().endswith(";base64"):
            compact = "".join(unquote_to_bytes(payload).decode("latin-1").split())
            return base64.b64decode(compact + "=" * (-len(compact) % 4))[:MAX_HTML]
        return unquote_to_bytes(payload)[:MAX_HTML]
    except (binascii.Error, ValueError):
        return None


def feed_all(parser: HTMLParser, text: str) -> None:
    """`parser.feed(text)` then `close()`, in linear time.

    Markup left open at the end ("<a <a <a ...", "<!--" with no "-->") is dropped, as a browser
    drops a tag cut off by the end of the file (HTML's "EOF in tag") and renders nothing of an
    open comment. HTMLParser.close() instead re-reads the rest once per "<" in it, which is
    quadratic (CVE-2025-6069, fixed in Python 3.11.13): 32 KiB of "<a " took 7 s.
    """
    parser.feed(text)
    if parser.rawdata.startswith("<") and not parser.cdata_elem:
        parser.rawdata = ""
    parser.close()


def inspect(data: bytes, charset: str = "", deadline: Deadline | None = None) -> dict[str, str]:
    """HTML_* symbols with a detail each. With `deadline`, the parse checks it as it goes and
    raises BudgetExceeded when it is over (the caller's scan is then incomplete)."""
    return dict(read(data, charset, deadline).found)


# Readings of the last few HTML files, by content: the content scan, the message's URL list and
# its body text read the same bodies, and the later ones ask for what the first already parsed.
# Shared by the loop and the scan threads, hence the lock; only whole readings are kept.
_CACHE_SIZE = 32
KEPT_TEXT = 64 * 1024  # characters of rendered text a cached reading keeps (32 of them at most)
_cache: OrderedDict[tuple[bytes, str], HtmlReading] = OrderedDict()
_cache_lock = threading.Lock()


def read(
    data: bytes, charset: str = "", deadline: Deadline | None = None, _depth: int = 0
) -> HtmlReading:
    """The HTML reading of `data` (its first MAX_HTML bytes): symbols, links and the text a
    reader sees. Linear in the input; with `deadline`, raises BudgetExceeded when it is over.
    `charset` is the part's declared one, decoded as every body reader does (gateway.mime.charsets).
    Pages carried inside (a data: address of HTML or SVG, an iframe's srcdoc) are read too, and
    what they hold counts as the file's own: a browser renders them (their text is not kept:
    the body text never read them)."""
    from gateway.mime import html_text  # it builds on this module

    key = (hashlib.sha256(data).digest(), charset)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    text = decode_text(data[:MAX_HTML], charset)
    renderer = html_text.Renderer(len(text) * 2 + 16) if _depth == 0 else None
    scanner = _Scanner(deadline, renderer)
    try:
        feed_all(scanner, text)
        scanner._end_link()
        scanner._end_form()
    except BudgetExceeded:
        raise
    except Exception:  # HTMLParser is tolerant; an exception here is a bug, not a verdict
        renderer = None
    found = dict(scanner.found)
    hidden = {"HTML_HIDDEN_TEXT", "HTML_ZERO_FONT"}.intersection(found)
    if hidden and scanner.preheader_only():  # a preview line, hidden or in a zero-size font
        for symbol in hidden:
            del found[symbol]
        found["HTML_PREHEADER"] = f"{scanner.hidden_letters} hidden letters in one or a few lines"
    if len(data) > MAX_HTML:
        _past_the_parse(data[MAX_HTML : MAX_HTML + MAX_TAIL], found)
    links = list(scanner.links)
    files = list(scanner.files)
    if _depth < _MAX_PAGE_DEPTH:
        for page in scanner.pages:
            inner = read(page, "utf-8", deadline, _depth + 1)
            for symbol, detail in inner.found.items():
                found.setdefault(symbol, f"inline page: {detail}"[:120])
            links.extend(inner.links[: max(0, MAX_LINKS - len(links))])
            files.extend(inner.files[: max(0, _MAX_FILES - len(files))])
    shown: str | None = None
    if renderer is not None and scanner.renderer is not None:
        shown = html_text.tidy(renderer.out)
        if len(shown) > KEPT_TEXT:
            shown = None
    reading = HtmlReading(found, tuple(links), shown, tuple(files))
    with _cache_lock:
        _cache[key] = reading
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return reading
