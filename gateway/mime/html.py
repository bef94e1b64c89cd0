"""HTML as a mail client renders it: scripts, forms, frames, hidden text, deceptive links.

A bounded pass of the stdlib HTMLParser (tolerant of broken markup). A link is deceptive when
its visible text shows a domain and its href goes to another registrable domain (by the PSL).
"""

from __future__ import annotations

import ipaddress
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

from gateway.domains import registrable_domain
from gateway.mime.model import BudgetExceeded, Deadline

MAX_HTML = 2 * 1024 * 1024
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_FRAMES = frozenset({"iframe", "frame", "frameset", "object", "embed", "applet"})
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0*(?:\.\d+)?(?:px|pt|em|%)?\s*(?:;|$)"
    r"|opacity\s*:\s*0(?:\.0*)?\s*(?:;|$)|max-height\s*:\s*0",
    re.I,
)
_DOMAIN = re.compile(
    r"(?:https?://)?((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24})(?![a-z0-9.-])", re.I
)
_HIDDEN_MIN_CHARS = 30


class _Scanner(HTMLParser):
    def __init__(self, deadline: Deadline | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.deadline = deadline
        self.events = 0  # callbacks so far: the deadline is checked every 256
        self.found: dict[str, str] = {}
        self.stack: list[tuple[str, bool]] = []
        self.hidden_open = 0  # how many entries of `stack` are hidden (read on every text run)
        self.hidden_chars = 0
        self.link: str | None = None
        self.link_text: list[str] = []

    @property
    def hidden(self) -> bool:
        return self.hidden_open > 0

    def _pop(self, start: int, end: int | None = None) -> None:
        if self.hidden_open:
            self.hidden_open -= sum(1 for _, hidden in self.stack[start:end] if hidden)
        del self.stack[start:end]

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

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tick()
        values = {k.lower(): (v or "") for k, v in attrs}
        if tag == "script":
            self._add("HTML_SCRIPT", "<script>")
        elif tag == "form":
            self._add("HTML_FORM", values.get("action", "")[:100])
        elif tag in _FRAMES:
            self._add("HTML_IFRAME", f"<{tag}>")
        for key, value in values.items():
            if key.startswith("on") and value:
                self._add("HTML_SCRIPT", f"{key} handler")
            if key in ("href", "src", "action") and value.strip().lower().startswith(
                ("javascript:", "vbscript:")
            ):
                self._add("HTML_SCRIPT", f"{key}=javascript:")
        if tag == "a" and "href" in values:
            self.link = values["href"].strip()
            self.link_text = []
        if tag not in _VOID:
            style = values.get("style")
            hidden = "hidden" in values or bool(style and _HIDDEN_STYLE.search(style))
            self.stack.append((tag, hidden))
            self.hidden_open += hidden
            if len(self.stack) > 512:
                self._pop(0, 256)

    def handle_endtag(self, tag: str) -> None:
        self._tick()
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == tag:
                self._pop(index)
                break
        if tag == "a" and self.link is not None:
            self._check_link(self.link, "".join(self.link_text))
            self.link = None

    def handle_data(self, data: str) -> None:
        self._tick()
        if self.stack and self.stack[-1][0] in ("style", "script", "title"):
            return
        if self.link is not None and len(self.link_text) < 50:
            self.link_text.append(data)
        if self.hidden:
            self.hidden_chars += len(data.strip())
            if self.hidden_chars >= _HIDDEN_MIN_CHARS:
                self._add("HTML_HIDDEN_TEXT", f"{self.hidden_chars}+ hidden characters")

    def _check_link(self, href: str, text: str) -> None:
        text = text.strip()
        # only text that reads as an address (not "Walmart.com" in a sentence): phishing shows
        # the address it pretends to be, newsletters' click tracking shows names
        if not text.lower().startswith(("http://", "https://", "www.")):
            return
        shown = _DOMAIN.match(text)
        if not shown or not href.lower().startswith(("http://", "https://")):
            return
        try:
            target = urlsplit(href).hostname or ""
        except ValueError:
            return
        if not target:
            return
        try:
            ipaddress.ip_address(target)
            target_domain = target
        except ValueError:
            target_domain = registrable_domain(target)
        if registrable_domain(shown.group(1)) != target_domain:
            self._add("HTML_LINK_MISMATCH", f"shows {shown.group(1)[:50]}, goes to {target[:50]}")


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


def inspect(
    data: bytes, charset: str = "utf-8", deadline: Deadline | None = None
) -> dict[str, str]:
    """HTML_* symbols with a detail each. With `deadline`, the parse checks it as it goes and
    raises BudgetExceeded when it is over (the caller's scan is then incomplete)."""
    try:
        text = data[:MAX_HTML].decode(charset or "utf-8", "replace")
    except LookupError:
        text = data[:MAX_HTML].decode("latin-1")
    scanner = _Scanner(deadline)
    try:
        feed_all(scanner, text)
    except BudgetExceeded:
        raise
    except Exception:  # HTMLParser is tolerant; an exception here is a bug, not a verdict
        pass
    return scanner.found
