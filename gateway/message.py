"""The one parsed message: made once at end of DATA, read by every plugin, the log line, the
quarantine record and the classifier.

Hostile mail is only dangerous when two parts of the gateway read it differently (a junk line
before From: DMARC saw a From, header sanity saw none). So there is one reading of the header
section, the most generous one (see `scan_fields`): a line without a colon is a field of its own
(nameless, odd), whitespace before the colon still names the field (`From : x` is a From), a
continuation line at the very start is a field too. Everything else (decoded values, authors,
the MIME report, text, URLs, the QR codes of its pictures) is derived from that reading, the
costly parts lazily.

The message bytes are never re-serialised: header edits are made by offset (gateway.header_edit).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from gateway.cputime import offload
from gateway.domains import registrable_domain
from gateway.encoded_words import decode_header_linear
from gateway.mime.budgets import DEFAULT_LIMITS, MimeSettings
from gateway.mime.charsets import decode_declared, decode_text

if TYPE_CHECKING:
    from gateway.mime.model import MimeReport
    from gateway.mime.qr import QrScan
    from gateway.rfc5322 import AuthorInfo

# Up to this size the MIME walk takes well under a millisecond: a thread hop would cost more. The
# attachments plugin uses the same limit for its scan.
INLINE_BYTES = 32 * 1024
DISPLAY_CHARS = 2000  # of a decoded value kept for display (log, quarantine record)


# -- the header section ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as it is on the wire: [start, end) in the message, CRLF included.

    `name` is the text before the first colon with all whitespace (folding too) removed, lower
    case; `odd_name` says there was whitespace in or around it, or no colon at all (then
    `name` is "" and `raw_value` the whole line).
    """

    start: int
    end: int
    name: str
    raw_value: bytes
    odd_name: bool

    @property
    def value(self) -> str:
        """The value as text, still folded (UTF-8, undecodable bytes replaced): for parsing."""
        return self.raw_value.decode("utf-8", errors="replace")

    @property
    def unfolded(self) -> str:
        """The value unfolded and stripped, as sent: UTF-8 (RFC 6532) with undecodable bytes
        kept as surrogate escapes, so a printer can show them as \\xNN (gateway.text)."""
        return self.raw_value.replace(b"\r\n", b"").strip().decode("utf-8", "surrogateescape")

    def raw(self, message: bytes) -> bytes:
        return message[self.start : self.end]

    def written_name(self, message: bytes) -> bytes:
        """The name as the sender wrote it (case, blanks), for display; b"" for a line that is
        not a field."""
        data = self.raw(message)
        colon = data.find(b":")
        return b"" if colon == -1 else data[:colon]


def header_end(message: bytes) -> int:
    """Offset just past the header section's last CRLF (the empty line not included)."""
    if message.startswith(b"\r\n"):
        return 0
    blank = message.find(b"\r\n\r\n")
    return len(message) if blank == -1 else blank + 2


# A field starts at the beginning and after every CRLF that is not followed by a blank (folding).
# A lone CR or LF is part of a line, as the delivery server reads it after normalisation.
_FIELD_BREAK = re.compile(rb"\r\n(?![ \t])")
_PLAIN_NAME = re.compile(rb"[!-9;-~]+")
_SPACE = re.compile(rb"\s+")


def scan_fields(message: bytes) -> tuple[HeaderField, ...]:
    """Every field of the header section, leniently, in one linear pass (one regex scan, each
    byte sliced once: a field folded 100,000 times costs what its length costs)."""
    end = header_end(message)
    if end == 0:
        return ()
    starts = [0]
    starts.extend(m.end() for m in _FIELD_BREAK.finditer(message, 0, end))
    if starts[-1] == end:  # the CRLF that ends the section starts no field
        starts.pop()
    starts.append(end)
    return tuple(_field(message, starts[i], starts[i + 1]) for i in range(len(starts) - 1))


def _field(message: bytes, start: int, stop: int) -> HeaderField:
    data = message[start:stop]
    colon = data.find(b":")
    if colon == -1:
        return HeaderField(start, stop, "", data, True)
    raw_name = data[:colon]
    if _PLAIN_NAME.fullmatch(raw_name):
        return HeaderField(start, stop, raw_name.decode("ascii").lower(), data[colon + 1 :], False)
    name = _SPACE.sub(b"", raw_name).decode("utf-8", errors="replace").lower()
    return HeaderField(start, stop, name, data[colon + 1 :], True)


# -- RFC 2047 ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def decode_encoded_words(text: str, limit: int | None = None) -> str:
    """`text` with RFC 2047 encoded-words decoded: the one decoder of the code base.

    Best effort and never raising: unknown charsets and broken encodings give replacement
    characters; text outside encoded-words is kept as it was (8-bit text too). `limit` cuts the
    input (4 bytes a character) and the result, for display. The result is untrusted text (it
    may hold ESC, CR, bidi overrides): print it through gateway.text.printable.

    Cached: the readers of one From (authors, its shown text, its hidden characters) decode the
    same value, each once per message instead of three times.
    """
    if limit is not None:
        text = text[: limit * 4]
    if "=?" not in text:
        return text if limit is None else text[:limit]
    try:
        parts = decode_header_linear(text)  # decode_header's reading, in linear time
    except Exception:  # a hostile header must not stop anything: use it undecoded
        return text if limit is None else text[:limit]
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None or charset == "unknown-8bit":
            # decode_header turned the text around the encoded-words into raw-unicode-escape.
            out.append(chunk.decode("raw-unicode-escape", errors="replace"))
        else:  # an unknown charset name, or one that is no charset, reads as UTF-8
            out.append(decode_declared(chunk, charset))
    decoded = "".join(out)
    return decoded if limit is None else decoded[:limit]


# -- URLs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Url:
    """A URL of the message, its host, and the host's registrable domain (public suffix list),
    so "does this link go where it says" has one answer everywhere.

    `source` says where it was found: "text" (written in a plain-text body or in the visible
    text of HTML), "href" (a link; `text` is what the link shows), "src" (an image, frame or
    script loaded), "action" (where a form posts), "refresh" (a meta refresh), "qr" (a QR code
    in a picture, `qr_urls`). `attachment` is true for the links of an HTML attachment (a saved
    page the reader opens in a browser). data:, javascript: and vbscript: addresses of HTML are
    kept too (host ""); other schemes (mailto:, cid:, tel:) and relative links are not.
    """

    url: str
    host: str
    domain: str
    text: str = ""
    source: str = "text"
    attachment: bool = False

    @property
    def scheme(self) -> str:
        """ "http", "https", "data"... ("http" for a bare "www." address, "" for "//host")."""
        head, colon, _rest = self.url.partition(":")
        if colon and head.isascii() and head.isalpha():
            return head.lower()
        return "" if self.url.startswith("//") else "http"


_URL = re.compile(
    r"(?:https?://\[[0-9a-f:.]{2,45}\]|https?://|www\.)[^\s<>\"'()\[\]{}\\^`|]{1,500}", re.I
)  # an IPv6 literal in brackets, or an address without brackets
# Host as a browser reads it (WHATWG URL): the userinfo runs to the LAST "@" before the path, and
# a backslash ends the authority like a slash (http://evil.example\@bank.example goes to
# evil.example).
_HOST = re.compile(
    r"(?:[a-z][a-z0-9+.-]*:)?(?://)?(?:[^/\\?#\s]*@)?(\[[^\]]*\]|[^/\\?#:\s]*)", re.I
)
_WEB = re.compile(r"(?:https?:)?//|www\.", re.I)
_SCRIPT_SCHEMES = ("data:", "javascript:", "vbscript:")
_URL_NOISE = re.compile(r"[\t\r\n]")  # browsers drop these anywhere in a URL
MAX_URLS = 500
MAX_HTML_BYTES = 4 << 20  # of HTML read for links, over every part of a message
MAX_TEXT_BYTES = 1 << 20  # of plain text read for URLs, over every part


def host_of(url: str) -> str:
    """The host of a web address as a browser reads it: lower case, percent-decoded, without a
    trailing dot, and an IPv4 address in any form written dotted (see ip_literal)."""
    match = _HOST.match(url)
    if not match:
        return ""
    host = match.group(1)
    if "%" in host:
        host = urllib.parse.unquote(host)
    host = host.lower().rstrip(".")
    return ip_literal(host) or host


_IPV4_PART = re.compile(r"0x[0-9a-f]*|[0-9]+", re.I)


def ip_literal(host: str) -> str | None:
    """The IP address a browser connects to for `host` (dotted, or "[v6]"), None for a name.

    WHATWG URL: a host whose last label is a number is IPv4, in any of its forms: dotted,
    one 32-bit number (http://3221225985/), hex (0xc0.0xa8...), octal (0300.0250...), or with
    fewer than four parts (http://192.168.257/).
    """
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1])}]"
        except ValueError:
            return None
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or len(parts) > 4 or not _IPV4_PART.fullmatch(parts[-1]):
        return None
    numbers: list[int] = []
    for part in parts:
        if not _IPV4_PART.fullmatch(part):
            return None
        if part[:2].lower() == "0x":
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part[0] == "0":
            if any(c in "89" for c in part):
                return None
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return str(ipaddress.IPv4Address(value))


def make_url(url: str, source: str = "text", text: str = "", attachment: bool = False) -> Url:
    """A Url with its host and registrable domain ("" for data:, javascript: and the like)."""
    host = host_of(url) if _WEB.match(url) else ""
    return Url(url, host, registrable_domain(host) if host else "", text, source, attachment)


def urls_in(text: str, limit: int = MAX_URLS, source: str = "text") -> tuple[Url, ...]:
    """The first `limit` URLs of `text` (http, https, or starting with www.), in order."""
    found: list[Url] = []
    for match in _URL.finditer(text):
        if len(found) >= limit:
            break
        url = match.group(0).rstrip(".,;:!?)")  # sentence punctuation after a link
        found.append(make_url(url, source))
    return tuple(found)


def html_url(written: str, source: str, text: str = "", attachment: bool = False) -> Url | None:
    """A link of HTML as a Url, or None for what is no web or script address (mailto:, #top,
    a relative path)."""
    url = _URL_NOISE.sub("", written).strip(" \x00\x0b\x0c")
    if not _WEB.match(url) and not url[:11].lower().startswith(_SCRIPT_SCHEMES):
        return None
    return make_url(url, source, text, attachment)


def message_urls(report: MimeReport, limit: int = MAX_URLS) -> tuple[Url, ...]:
    """Every URL of a message's bodies and HTML attachments, each reading, in order, distinct.

    Plain-text bodies are searched for addresses; HTML (by the content scan's own test,
    gateway.mime.content.is_html, so both read the same parts as HTML) is read by the HTML
    scanner, which gives each link with the text it shows. Bounded in bytes and in count.
    """
    from gateway.mime import html
    from gateway.mime.content import extensions, family_of, is_html, leaf_type, name_family

    found: dict[tuple[str, str, str, bool], Url] = {}
    html_budget, text_budget = MAX_HTML_BYTES, MAX_TEXT_BYTES
    for leaf in report.leaves:
        if len(found) >= limit:
            break
        if leaf.kind not in ("part", "body") or not leaf.data:
            continue
        if not leaf.is_text_body and not leaf.is_attachment:
            continue
        exts = extensions(leaf.name) if leaf.name else []
        named = name_family(exts[-1] if exts else "")
        # without a "<" no reader calls it HTML, whatever its type or name: libmagic spared
        family = family_of(leaf_type(report, leaf.data)) if b"<" in leaf.data else "text"
        if is_html(family, leaf.content_type, named):
            if html_budget <= 0:
                continue
            data = leaf.data[:html_budget]
            html_budget -= len(data)
            for link in html.read(data, leaf.charset).links:
                url = html_url(link.url, link.source, link.text, leaf.is_attachment)
                if url is not None:
                    found.setdefault((url.url, url.source, url.text, url.attachment), url)
        elif leaf.is_text_body and text_budget > 0:
            data = leaf.data[:text_budget]
            text_budget -= len(data)
            for url in urls_in(decode_text(data, leaf.charset), limit):
                found.setdefault((url.url, url.source, url.text, url.attachment), url)
    return tuple(found.values())[:limit]


def visible_body_text(report: MimeReport, limit: int = 1 << 20) -> str:
    """The text of the message bodies (the text/plain and text/html parts a client shows, of
    every reading, as MimeReport.body_text picks them) as a reader sees it: plain text as
    written, HTML rendered by gateway.mime.html_text (no markup, comments, scripts or hidden
    elements; entities decoded). At most `limit` characters, and MAX_HTML_BYTES of HTML read.
    Every part is decoded by its declared charset, as a reader does (gateway.mime.charsets)."""
    from gateway.mime import html
    from gateway.mime.html_text import visible_text

    out: list[str] = []
    size, html_budget = 0, MAX_HTML_BYTES
    for leaf in report.leaves:
        if size >= limit:
            break
        if not leaf.is_text_body:
            continue
        if leaf.content_type == "text/html":
            data = leaf.data[:html_budget]
            html_budget -= len(data)
            # rendered in the pass that found its links (the content scan's, usually), unless
            # that text was too long to keep
            shown = html.read(data, leaf.charset).text if data else ""
            if shown is None:
                shown = visible_text(data, limit - size, leaf.charset)
            chunk = shown[: limit - size]
        else:
            # bytes enough for the characters wanted, in any charset (UTF-32: four a character)
            chunk = decode_text(leaf.data[: (limit - size) * 4], leaf.charset)[: limit - size]
        out.append(chunk)
        size += len(chunk) + 1
    return "\n".join(out)[:limit]


# A QR code holding only "host.tld/path": phone cameras open it as a web address.
_BARE_LINK = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,62}\.)+[a-z]{2,24})(?:[/?#]\S*)?", re.I)


def qr_code_urls(text: str, limit: int = MAX_URLS) -> tuple[Url, ...]:
    """The URLs a phone would open from a QR code's text (with the text extractor's reading;
    a bare "host.tld/path" is one too, as http)."""
    text = text.strip()
    found = urls_in(text, limit, source="qr")
    if not found and _BARE_LINK.fullmatch(text):
        found = urls_in(f"http://{text}", limit, source="qr")
    return found


# -- the message ----------------------------------------------------------------------------------


class ParsedMessage:
    """One message's bytes (CRLF line endings) and everything read from them, each part once.

    Cheap parts (the field scan) are made on first use and shared; the MIME walk, the text and
    the URLs are made on first use too, the walk off the event loop for a large message.
    """

    def __init__(self, raw: bytes, mime_settings: MimeSettings = DEFAULT_LIMITS) -> None:
        self.raw = raw
        self.mime_settings = mime_settings
        self._mime: MimeReport | None = None
        self._text: str | None = None
        self._urls: tuple[Url, ...] | None = None
        self._qr: asyncio.Future[QrScan] | None = None
        self._qr_urls: tuple[Url, ...] | None = None

    @cached_property
    def header_end(self) -> int:
        return header_end(self.raw)

    @cached_property
    def fields(self) -> tuple[HeaderField, ...]:
        """The header section, in order, as the most generous reader sees it."""
        return scan_fields(self.raw)

    @cached_property
    def _by_name(self) -> dict[str, list[HeaderField]]:
        index: dict[str, list[HeaderField]] = {}
        for f in self.fields:
            index.setdefault(f.name, []).append(f)
        return index

    def all(self, name: str) -> Sequence[HeaderField]:
        """The fields called `name` (any case, whitespace around it ignored), in order."""
        return self._by_name.get(name.lower(), ())

    def count(self, name: str) -> int:
        return len(self.all(name))

    def values(self, name: str) -> list[str]:
        """The unfolded values of the fields called `name` (see HeaderField.unfolded)."""
        return [f.unfolded for f in self.all(name)]

    def first(self, name: str) -> str | None:
        """The first `name` field's value, unfolded, or None when there is no such field."""
        found = self.all(name)
        return found[0].unfolded if found else None

    def decoded(self, name: str, limit: int | None = DISPLAY_CHARS) -> str | None:
        """The first `name` field's value with encoded-words decoded (display-limited)."""
        value = self.first(name)
        return None if value is None else decode_encoded_words(value, limit)

    @cached_property
    def authors(self) -> AuthorInfo:
        """The From field(s) parsed for DMARC, from the same fields everyone else reads."""
        from gateway.rfc5322 import author_info

        return author_info(self.fields)

    @property
    def mime_report(self) -> MimeReport | None:
        """The MIME report when it has been made (see `mime`), else None."""
        return self._mime

    async def mime(self) -> MimeReport:
        """The one MIME parse of this message (gateway.mime.parse), made on first use; off the
        event loop for a message over INLINE_BYTES."""
        if self._mime is None:
            from gateway.mime.parse import analyze

            if len(self.raw) <= INLINE_BYTES:
                report = analyze(self.raw, self.mime_settings)
            else:
                report = await offload(analyze, self.raw, self.mime_settings)
            if self._mime is None:  # two plugins may have awaited it at once
                self._mime = report
        return self._mime

    async def text(self) -> str:
        """The text of the message bodies as a reader sees them (see `visible_body_text`:
        HTML rendered, not its markup), bounded; off the event loop when there is more than
        INLINE_BYTES to read. What content rules of type `body` match; `rawbody` rules read the
        markup (MimeReport.body_text)."""
        if self._text is None:
            report = await self.mime()
            size = sum(len(leaf.data) for leaf in report.leaves if leaf.is_text_body)
            if size <= INLINE_BYTES:
                found = visible_body_text(report)
            else:
                found = await offload(visible_body_text, report)
            if self._text is None:
                self._text = found
        return self._text

    async def urls(self) -> tuple[Url, ...]:
        """The URLs of the message bodies and HTML attachments with their registrable domains
        and, for links, the text they show (see message_urls); off the event loop when there is
        more than INLINE_BYTES to read. No QR codes: the classifier reads these and must not wait
        for image decoding (see `all_urls`)."""
        if self._urls is None:
            report = await self.mime()
            size = sum(len(leaf.data) for leaf in report.leaves)
            if size <= INLINE_BYTES:
                found = message_urls(report)
            else:
                found = await offload(message_urls, report)
            if self._urls is None:
                self._urls = found
        return self._urls

    @property
    def qr_report(self) -> QrScan | None:
        """The QR scan when it has been made (see `qr_scan`), else None."""
        found = self._qr
        return found.result() if found is not None and found.done() else None

    async def qr_scan(self) -> QrScan:
        """The QR codes of the message's pictures (gateway.mime.qr), decoded on first use in a
        worker thread, within the [mime] qr_* bounds. Free for a message without pictures (no
        thread). Made once: a caller cancelled while it runs (a plugin timeout) leaves the
        decoding to finish for the next caller, rather than starting it again."""
        if self._qr is None:
            from gateway.mime import qr

            found = qr.pictures(await self.mime())
            if self._qr is None:  # another caller may have started it meanwhile
                if not found:
                    self._qr = asyncio.get_running_loop().create_future()
                    self._qr.set_result(qr.NO_PICTURES)
                else:
                    self._qr = asyncio.ensure_future(offload(qr.scan, found, self.mime_settings))
        return await asyncio.shield(self._qr)

    async def qr_urls(self) -> tuple[Url, ...]:
        """The URLs of the QR codes in the message's pictures (`Url.source` "qr"), in order."""
        if self._qr_urls is None:
            scan = await self.qr_scan()
            found: list[Url] = []
            for code in scan.codes:
                found.extend(qr_code_urls(code.text, MAX_URLS - len(found)))
            self._qr_urls = tuple(found)
        return self._qr_urls

    async def all_urls(self) -> tuple[Url, ...]:
        """Every link a reader can follow: the text's (`urls`), then the QR codes' (`qr_urls`).
        What the link checks read."""
        return await self.urls() + await self.qr_urls()
