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
import email.header
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from gateway.cputime import offload
from gateway.domains import registrable_domain
from gateway.mime.budgets import DEFAULT_LIMITS, MimeSettings

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


def decode_encoded_words(text: str, limit: int | None = None) -> str:
    """`text` with RFC 2047 encoded-words decoded: the one decoder of the code base.

    Best effort and never raising: unknown charsets and broken encodings give replacement
    characters; text outside encoded-words is kept as it was (8-bit text too). `limit` cuts the
    input (4 bytes a character) and the result, for display. The result is untrusted text (it
    may hold ESC, CR, bidi overrides): print it through gateway.text.printable.
    """
    if limit is not None:
        text = text[: limit * 4]
    if "=?" not in text:
        return text if limit is None else text[:limit]
    try:
        parts = email.header.decode_header(text)
    except Exception:  # a hostile header must not stop anything: use it undecoded
        return text if limit is None else text[:limit]
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None or charset == "unknown-8bit":
            # decode_header turned the text around the encoded-words into raw-unicode-escape.
            out.append(chunk.decode("raw-unicode-escape", errors="replace"))
        else:
            try:
                out.append(chunk.decode(charset, errors="replace"))
            except (LookupError, ValueError):  # unknown or refused charset name
                out.append(chunk.decode("utf-8", errors="replace"))
    decoded = "".join(out)
    return decoded if limit is None else decoded[:limit]


# -- URLs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Url:
    """A URL of the message text, its host, and the host's registrable domain (public suffix
    list), so "does this link go where it says" has one answer everywhere. `source` says where
    it was read: "text" (the bodies) or "qr" (a QR code in a picture, `qr_urls`)."""

    url: str
    host: str
    domain: str
    source: str = "text"


_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()\[\]{}\\^`|]{1,500}", re.I)
_HOST = re.compile(r"(?:https?://)?(?:[^/?#@\s]*@)?(\[[^\]]*\]|[^/?#:\s]*)", re.I)
MAX_URLS = 200


def urls_in(text: str, limit: int = MAX_URLS, source: str = "text") -> tuple[Url, ...]:
    """The first `limit` URLs of `text` (http, https, or starting with www.), in order."""
    found: list[Url] = []
    for match in _URL.finditer(text):
        if len(found) >= limit:
            break
        url = match.group(0).rstrip(".,;:!?)")  # sentence punctuation after a link
        host_match = _HOST.match(url)
        host = host_match.group(1).lower().rstrip(".") if host_match else ""
        found.append(Url(url, host, registrable_domain(host) if host else "", source))
    return tuple(found)


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
        """The text of the message bodies (plain, and HTML with its markup), bounded."""
        if self._text is None:
            self._text = (await self.mime()).body_text()
        return self._text

    async def urls(self) -> tuple[Url, ...]:
        """The URLs of the message text with their registrable domains (no QR codes: the
        classifier reads these, and must not wait for image decoding; see `all_urls`)."""
        if self._urls is None:
            self._urls = urls_in(await self.text())
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
