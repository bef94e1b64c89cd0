"""A hostile message taken apart for an admin's eyes: header fields, MIME parts, a text preview.

Nothing here renders anything: HTML becomes plain text (with link targets written out, which is
what a reviewer of phishing needs to see), and every string returned is still untrusted text that
the caller prints through gateway.text.printable. The declared MIME types and file names are
listed as the sender wrote them; detecting true types is another module's work.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import re
from dataclasses import dataclass
from html.parser import HTMLParser

from gateway.message import DISPLAY_CHARS, ParsedMessage, decode_encoded_words
from gateway.mime.charsets import codec_of
from gateway.mime.html import feed_all

MAX_PARTS = 500
MAX_DEPTH = 30
MAX_HEADERS = 300
PREVIEW_CHARS = 4000
_HTML_INPUT = 1 << 20  # only the first MiB of an HTML part goes into the preview
_FOLD = re.compile(rb"\r\n(?=[ \t])")


@dataclass(frozen=True)
class Part:
    path: str  # "1", "1.2", ...: position in the MIME tree
    content_type: str  # as declared (lowercased; text/plain when absent)
    filename: str | None  # declared (Content-Disposition or Content-Type name), decoded
    disposition: str | None
    charset: str | None
    size: int  # decoded payload bytes (0 for multipart containers)


@dataclass(frozen=True)
class MessageView:
    headers: list[tuple[str, str]]  # (name, unfolded value) in order; undecodable bytes escaped
    header_count: int
    parts: list[Part]
    part_count: int
    preview_type: str | None  # the part the preview comes from
    preview: str
    defects: list[str]


def view_message(raw: bytes, preview_chars: int = PREVIEW_CHARS) -> MessageView:
    # The same lenient reading of the header section as the gateway's plugins made: a line
    # that is not a field is listed (with no name) instead of hiding every field after it.
    fields = ParsedMessage(raw).fields
    headers: list[tuple[str, str]] = []
    for field in fields[:MAX_HEADERS]:
        name = field.written_name(raw)
        headers.append(
            (
                _FOLD.sub(b"", name).strip().decode("ascii", errors="backslashreplace"),
                field.unfolded,
            )
        )
    parts: list[Part] = []
    counter = [0]
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
        _walk(message, "1", 0, parts, counter)
        preview_type, preview = _preview(message, preview_chars)
        defects = sorted({type(d).__name__ for d in _all_defects(message)})
    except RecursionError:  # the email package recurses per nesting level; thousands break it
        preview_type, preview = None, ""
        defects = ["MIME nesting too deep to take apart here (show --raw has the message)"]
    return MessageView(
        headers=headers,
        header_count=len(fields),
        parts=parts,
        part_count=counter[0],
        preview_type=preview_type,
        preview=preview,
        defects=defects,
    )


def _walk(
    part: email.message.Message, path: str, depth: int, out: list[Part], counter: list[int]
) -> None:
    counter[0] += 1
    if len(out) < MAX_PARTS:
        out.append(_describe(part, path))
    if depth >= MAX_DEPTH or not part.is_multipart():
        return
    payload = part.get_payload()
    for index, child in enumerate(payload if isinstance(payload, list) else [], start=1):
        if isinstance(child, email.message.Message):
            _walk(child, f"{path}.{index}", depth + 1, out, counter)


def _describe(part: email.message.Message, path: str) -> Part:
    filename: str | None
    try:
        name = part.get_filename() or part.get_param("name")
        if isinstance(name, tuple):  # RFC 2231 value get_param did not collapse
            name = email.utils.collapse_rfc2231_value(name)
        filename = decode_encoded_words(str(name), DISPLAY_CHARS) if name else None
    except Exception:  # malformed parameters: say so rather than fail the whole view
        filename = "(unreadable file name)"
    size = 0
    if not part.is_multipart():
        try:
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, bytes) else 0
        except Exception:
            size = 0
    disposition = part.get("content-disposition")
    return Part(
        path=path,
        content_type=part.get_content_type(),
        filename=filename,
        disposition=str(disposition).split(";")[0].strip().lower() if disposition else None,
        charset=_charset(part),
        size=size,
    )


def _charset(part: email.message.Message) -> str | None:
    try:
        charset = part.get_content_charset()
    except Exception:
        return None
    return str(charset) if charset else None


def _all_defects(message: email.message.Message) -> list[object]:
    found: list[object] = []
    for part in message.walk():
        found += list(getattr(part, "defects", []))
        if len(found) > 100:
            break
    return found


def _decoded_text(part: email.message.Message, limit: int) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        return ""
    if not isinstance(payload, bytes):
        return ""
    payload = payload[:limit]
    # the charset as the gateway's checks read it (gateway.mime.charsets: no punycode, no escape
    # codecs); surrogateescape: undecodable bytes reach gateway.text.printable, shown as \xNN.
    codec = codec_of(_charset(part) or "") or "utf-8"
    try:
        return payload.decode(codec, errors="surrogateescape")
    except UnicodeError:  # a multibyte codec that refuses surrogateescape
        return payload.decode(codec, errors="replace")


def _preview(message: email.message.Message, limit: int) -> tuple[str | None, str]:
    html: email.message.Message | None = None
    for index, part in enumerate(message.walk()):
        if index > MAX_PARTS:
            break
        if part.is_multipart():
            continue
        disposition = str(part.get("content-disposition", "")).lower()
        if disposition.startswith("attachment"):
            continue
        kind = part.get_content_type()
        if kind == "text/plain":
            return kind, _decoded_text(part, limit * 4)[:limit]
        if kind == "text/html" and html is None:
            html = part
    if html is not None:
        return "text/html", html_to_text(_decoded_text(html, _HTML_INPUT))[:limit]
    return None, ""


class _HtmlText(HTMLParser):
    _BLOCK = frozenset(
        {
            *("address", "article", "blockquote", "br", "dd", "div", "dl", "dt", "footer"),
            *("form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p"),
            *("pre", "section", "table", "tbody", "td", "th", "tr", "ul"),
        }
    )
    _SKIP = frozenset({"script", "style", "head", "template", "noscript"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in self._SKIP:
            self.skip += 1
        elif tag == "a":
            self.links.append(values.get("href"))
        elif tag == "img" and not self.skip:
            alt = values.get("alt") or ""
            self.out.append(f"[image {alt} <{values.get('src') or ''}>]")
        if tag in self._BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href and not self.skip:
                self.out.append(f" <{href}>")
        if tag in self._BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML part with link targets written out; never rendered."""
    parser = _HtmlText()
    try:
        feed_all(parser, html)  # linear even on markup left open (HTMLParser.close() is not)
    except Exception:  # html.parser is lenient; this is only a last resort
        return html
    text = "".join(parser.out)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
