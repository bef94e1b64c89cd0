"""Parse a message once, the way mail clients will read it, under budgets; report what is odd.

The parser is the stdlib's (compat32 policy: linear on hostile headers, defects recorded on each
entity), fed in chunks so a wall-clock budget is checked while it works, with a message factory
that counts entities and nesting so a budget trips before the parser's own recursion does, and
whose parameter parsing is bounded (CPython's `_parseparam` is quadratic in a field's length).

Every reading a mainstream client may take is scanned (the union of their leaves):
- CPython and most clients take the first Content-Type field, the first `boundary` parameter and
  the first Content-Transfer-Encoding; some filters and clients take the last (amavis
  CVE-2024-28054): such a message is parsed again with a last-wins entity class.
- A boundary parameter written with a comment, a quoted-pair or spaces reads differently to an
  RFC 5322-aware reader: the message is parsed again with each other reading of it.
- A field written `Content-Type :` ends the header for CPython, not for other readers: the
  message is parsed again with the white space before colons removed.
- A reader that matches delimiters loosely (another case, leading white space, a line that only
  starts with the delimiter) or goes on after the closing delimiter finds parts in the preamble,
  the epilogue, a part's body or a multipart without a usable boundary: those parts are parsed
  and scanned too (`_Walker._lenient`).
- A transfer encoding is read as RFC 5322 allows it to be written (white space, folding,
  comments), and base64 is decoded past an early pad the way other clients go on decoding.
- File names come from every place a client looks (both parameters of both fields, without a
  disposition type, RFC 2231, encoded words, Content-Name, Content-Description), with their
  comments kept and removed.
Anything that cannot be decoded is still handed on as bytes (the raw part, or the raw message),
never dropped; work that grows with hostile input is bounded by the budgets, each of which
quarantines.
"""

from __future__ import annotations

import binascii
import email.errors
import email.feedparser
import email.header
import email.message
import email.policy
import email.utils
import functools
import hashlib
import quopri
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from gateway.message import decode_encoded_words
from gateway.mime.budgets import DEFAULT_LIMITS, MimeSettings
from gateway.mime.model import BudgetExceeded, Deadline, Leaf, MimeReport
from gateway.mime.symbols import MIME_SYMBOLS
from gateway.verdict import Finding

_FEED_CHUNK = 64 * 1024
_RFC_CTE = frozenset({"", "7bit", "8bit", "binary", "quoted-printable", "base64"})
_UU_CTE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
_SEVEN_BIT_CTE = frozenset({"", "7bit", "quoted-printable", "base64"})
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_BASE64_BODY = re.compile(r"^[A-Za-z0-9+/=\s]{16,}$")
_MIME_FIELD_IN_FOLD = re.compile(
    r"\n[ \t]+(content-(?:type|transfer-encoding|disposition)|mime-version)[ \t]*:", re.I
)
_BLANK_FOLD = re.compile(r"\n[ \t]+\r?\n")
_SIGNATURE_FIELDS = frozenset({"dkim-signature", "arc-message-signature", "arc-seal"})
# a MIME field at the start of a line of the lowered text: its name, white space before the colon
_MIME_FIELD_START = re.compile(rb"\n(content-[a-z0-9-]{0,60}|mime-version)([ \t]*):")
_BOUNDARY_PARAM = re.compile(rb"[;\s]boundary\s*\*?\s*=", re.I)
_UU_BEGIN = re.compile(r"^begin [0-7]{3,4} ([^\r\n]{1,255})\r?$", re.M)
_MAX_UU_BLOCKS = 20
# a field name, white space, the colon: obsolete syntax (RFC 5322 4.5.3) that CPython reads as
# the end of the header and other readers as the field
_SPACED_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]{1,76})[ \t]+:", re.M)
# the first line of a text a loose reader takes for the header of a part
_HEADER_LINE = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}[ \t]*:")
_MIME_FIELD_LINE = re.compile(r"^(?:content-[a-z0-9-]{1,60}|mime-version)[ \t]*:", re.I | re.M)
_GUESSED_DELIMITER = re.compile(r"^--([\x21-\x7e]{1,70}?)(?:--)?[ \t]*\r?$", re.M)
_FILE_NAME_LIKE = re.compile(r"[^\x00-\x1f/\\:*?\"<>|]{1,255}\.[A-Za-z0-9]{1,12}")
_NAME_PARAMS = (
    ("content-disposition", "filename"),
    ("content-type", "name"),
    ("content-disposition", "name"),
    ("content-type", "filename"),
)
_decode_b: Callable[[bytes], tuple[bytes, list[email.errors.MessageDefect]]] = getattr(  # noqa: B009
    email.message, "decode_b"
)
_decode_uu: Callable[[bytes], bytes] = getattr(email.message, "_decode_uu")  # noqa: B009

_DEFECT_SYMBOLS: dict[type[email.errors.MessageDefect], str] = {
    email.errors.NoBoundaryInMultipartDefect: "MIME_MISSING_BOUNDARY",
    email.errors.StartBoundaryNotFoundDefect: "MIME_MISSING_BOUNDARY",
    email.errors.MultipartInvariantViolationDefect: "MIME_MISSING_BOUNDARY",
    email.errors.CloseBoundaryNotFoundDefect: "MIME_UNTERMINATED_MULTIPART",
    email.errors.FirstHeaderLineIsContinuationDefect: "MIME_HEADER_MALFORMED",
    email.errors.MissingHeaderBodySeparatorDefect: "MIME_HEADER_MALFORMED",
    email.errors.MisplacedEnvelopeHeaderDefect: "MIME_HEADER_MALFORMED",
    email.errors.InvalidMultipartContentTransferEncodingDefect: "MIME_BAD_CTE",
    email.errors.InvalidBase64PaddingDefect: "MIME_BAD_BASE64",
    email.errors.InvalidBase64CharactersDefect: "MIME_BAD_BASE64",
    email.errors.InvalidBase64LengthDefect: "MIME_BAD_BASE64",
}

_parseparam: Callable[[str], Iterator[str]] = getattr(email.message, "_parseparam")  # noqa: B009


class _Findings:
    """Symbols in first-seen order with a few details each: one Finding per symbol."""

    def __init__(self) -> None:
        self._details: dict[str, list[str]] = {}

    def add(self, symbol: str, detail: str = "") -> None:
        assert symbol in MIME_SYMBOLS, symbol
        details = self._details.setdefault(symbol, [])
        if detail and detail not in details and len(details) < 5:
            details.append(detail)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._details

    def result(self) -> tuple[Finding, ...]:
        return tuple(
            Finding(symbol, detail="; ".join(details)[:300])
            for symbol, details in self._details.items()
        )


def _pieces(value: str, limits: MimeSettings) -> tuple[list[str], bool]:
    """A field's `;`-separated pieces (CPython's split, quotes respected) within the budgets:
    `_parseparam` is quadratic in the number of pieces, so the text is cut first."""
    overflow = False
    if len(value) > limits.max_param_chars or value.count(";") > limits.max_params:
        overflow = True
        value = ";".join(value[: limits.max_param_chars].split(";")[: limits.max_params + 1])
    return list(_parseparam(value)), overflow


def _bounded_params(
    value: str, limits: MimeSettings, typeless: bool = False
) -> tuple[list[Any], bool]:
    """A field's parameters as `email.utils.decode_params` gives them, within the budgets.

    With `typeless`, a first piece that is a parameter (`filename="x.js"` with no disposition
    type) is a parameter too, as clients read it: an empty type is put before it.
    """
    pieces, overflow = _pieces(value, limits)
    params: list[tuple[str, str]] = []
    for index, piece in enumerate(pieces):
        name, sep, val = piece.partition("=")
        if index == 0 and typeless and sep:
            params.append(("", ""))
        params.append((name.strip(), val.strip()) if sep else (piece.strip(), ""))
    try:
        return list(email.utils.decode_params(params)), overflow
    except (TypeError, ValueError):
        # `name*=` beside `name*0=` (CPython cannot sort the two kinds of piece): each piece
        # decoded on its own, every one a reading a client may take
        decoded = list(email.utils.decode_params(params[:1]))
        for param in params[1:]:
            decoded += list(email.utils.decode_params([("", ""), param]))[1:]
        return decoded, overflow


def _strip_comments(text: str) -> str:
    """`text` without its RFC 5322 comments (nested, with quoted-pairs), quoted strings kept."""
    if "(" not in text:
        return text
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\" and (quoted or depth):
            escaped = True
            if depth == 0:
                out.append(char)
            continue
        if quoted:
            quoted = char != '"'
            out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
            if not depth:
                out.append(" ")
        elif depth == 0:
            quoted = char == '"'
            out.append(char)
    return "".join(out)


def _rfc_value(raw: str) -> str:
    """A parameter value as an RFC 5322-aware reader takes it: comments removed, a quoted string
    unescaped (every quoted-pair), or the token up to white space."""
    text = _strip_comments(raw).strip()
    if text.startswith('"'):
        out: list[str] = []
        escaped = False
        for char in text[1:]:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                break
            else:
                out.append(char)
        return "".join(out)
    return text.split(None, 1)[0] if text.strip() else ""


def _cte_token(value: str) -> str:
    """The transfer encoding as RFC 5322 lets it be written: folded, padded, commented, quoted."""
    text = value.replace("\r", "").replace("\n", "")
    return _strip_comments(text).strip().strip('"').strip().lower()


def _boundary_readings(raw_value: str) -> tuple[str, ...]:
    """Every boundary a client may take from one raw `boundary=` value, CPython's first."""
    cpython = email.utils.unquote(raw_value.strip()).rstrip()
    readings = [cpython]
    rfc = _rfc_value(raw_value)
    for other in (rfc, cpython.strip(), rfc.strip()):
        if other and other not in readings:
            readings.append(other)
    return tuple(readings)


def _field_boundaries(value: str, limits: MimeSettings) -> list[tuple[str, ...]]:
    """The readings of each `boundary` parameter of a Content-Type value (bounded)."""
    if "boundary" not in value.lower() or len(value) > limits.max_param_chars:
        return []
    found: list[tuple[str, ...]] = []
    for piece in _pieces(value.replace("\r", "").replace("\n", ""), limits)[0]:
        name, sep, val = piece.partition("=")
        if sep and name.strip().lower() == "boundary":
            found.append(_boundary_readings(val))
    return found


def _raw_facts(raw: bytes, limits: MimeSettings) -> tuple[bool, int, bool]:
    """What calls for another reading, from every MIME field of the raw text (any header
    section): some Content-Type with two boundary parameters; how many other readings of a
    boundary some Content-Type offers (each is a parse of its own); a MIME field with white
    space before its colon. One pass over the lowered text (a literal search is several times
    faster than a case-insensitive multiline pattern)."""
    duplicate = spaced = False
    variants = 0
    lowered = b"\n" + raw.lower()  # a literal first character: the pattern's fast path
    for match in _MIME_FIELD_START.finditer(lowered):
        if match.group(2):
            spaced = True
        if match.group(1) != b"content-type":
            continue
        start = match.end() - 1
        stop = start
        while stop - start <= limits.max_param_chars:
            stop = raw.find(b"\n", stop)
            if stop < 0 or raw[stop + 1 : stop + 2] not in (b" ", b"\t"):
                break
            stop += 1
        if stop < 0:
            stop = len(raw)
        if stop - start > limits.max_param_chars:
            continue
        field = raw[start:stop]
        if len(_BOUNDARY_PARAM.findall(b";" + field)) > 1:
            duplicate = True
        for readings in _field_boundaries(field.decode("ascii", "surrogateescape"), limits):
            variants = max(variants, len(readings) - 1)
    return duplicate, variants, spaced


class _Entity(email.message.Message):
    """compat32 entity, first field and first parameter win (CPython, most mail clients).

    Parameter parsing is bounded: a Content-Type or Content-Disposition field longer than the
    budget, or with more parameters, is cut and the overflow remembered for a finding.
    """

    _mg_limits: MimeSettings = DEFAULT_LIMITS
    _mg_overflow: bool = False

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        missing = object()
        value = self.get(header, missing)
        if value is missing:
            return failobj
        params, overflow = _bounded_params(str(value), self._mg_limits)
        self._mg_overflow = self._mg_overflow or overflow
        return params


class _LastWinsEntity(_Entity):
    """The other reading: the last of duplicated fields and parameters wins."""

    def get(self, name: str, failobj: Any = None) -> Any:
        wanted = name.lower()
        for key, value in reversed(list(self.raw_items())):
            if key.lower() == wanted:
                return self.policy.header_fetch_parse(key, value)
        return failobj

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        params = super()._get_params_preserve(failobj, header)
        if isinstance(params, list) and len(params) > 1:
            return params[:1] + params[:0:-1]
        return params


class _BoundaryVariantEntity(_Entity):
    """Another reading of the boundary (`_boundary_readings`, index `_mg_variant`), first wins."""

    _mg_variant: int = 1

    def get_boundary(self, failobj: Any = None) -> Any:
        value = self.get("content-type")
        if value is not None:
            for readings in _field_boundaries(str(value), self._mg_limits)[:1]:
                if self._mg_variant < len(readings):
                    return readings[self._mg_variant]
        return super().get_boundary(failobj)


@functools.cache
def _variant_entity(index: int) -> type[_Entity]:
    return type(f"_BoundaryVariant{index}", (_BoundaryVariantEntity,), {"_mg_variant": index})


class _Counter:
    def __init__(self) -> None:
        self.entities = -1  # FeedParser calls the factory once, as a probe
        self.depth = 0


def _parse_tree(
    raw: bytes,
    entity: type[_Entity],
    limits: MimeSettings,
    deadline: Deadline,
    counter: _Counter,
) -> tuple[email.message.Message | None, BudgetExceeded | None]:
    """Feed the parser in chunks; on a budget, return the partial tree and the budget."""
    parser: email.feedparser.BytesFeedParser | None = None

    def factory(policy: Any = email.policy.compat32) -> _Entity:
        counter.entities += 1
        if counter.entities > limits.max_parts:
            raise BudgetExceeded("MIME_LIMIT_PARTS", f"more than {limits.max_parts} parts")
        depth = len(getattr(parser, "_msgstack", ()))
        counter.depth = max(counter.depth, depth)
        if depth > limits.max_depth:
            raise BudgetExceeded("MIME_LIMIT_DEPTH", f"nesting deeper than {limits.max_depth}")
        msg = entity(policy=policy)
        msg._mg_limits = limits
        return msg

    parser = email.feedparser.BytesFeedParser(factory, policy=email.policy.compat32)
    try:
        for start in range(0, len(raw), _FEED_CHUNK):
            deadline.check()
            parser.feed(raw[start : start + _FEED_CHUNK])
        return parser.close(), None
    except BudgetExceeded as exc:
        stack = getattr(parser, "_msgstack", [])
        return (stack[0] if stack else None), exc


def _header_budget(raw: bytes, limits: MimeSettings, found: _Findings) -> None:
    """Bound the top header section before anything else reads it."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    end = min(ends) if ends else len(raw)
    if end > limits.max_header_bytes:
        found.add("MIME_LIMIT_HEADERS", f"header section over {limits.max_header_bytes} bytes")
    fields = sum(
        1 for line in raw[: min(end, 4 * limits.max_header_bytes)].split(b"\n") if line[:1].strip()
    )
    if fields > limits.max_header_fields:
        found.add("MIME_LIMIT_HEADERS", f"{fields} header fields")


def _param_text(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 3:
        charset, language, text = value
        text = email.utils.unquote(str(text))
        return str(email.utils.collapse_rfc2231_value((charset, language, text), errors="replace"))
    text = email.utils.unquote(str(value).strip())
    return _utf8(text)


def _utf8(text: str) -> str:
    if any("\udc80" <= c <= "\udcff" for c in text):
        # raw 8-bit in a header: clients read it as UTF-8 (RFC 6532), so do we
        text = text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    return text


def _names(msg: _Entity) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """File names from every place a client looks, in the order a typical client prefers them,
    and the other readings of those names (comments removed, every quoted-pair unescaped: what
    an RFC 5322-aware reader takes), which are checked too but are not other names."""
    names: list[str] = []
    variants: list[str] = []
    limits = msg._mg_limits
    # raw values: the parsed ones turn raw UTF-8 into U+FFFD (compat32's unknown-8bit)
    raw = [(k.strip().lower(), v) for k, v in msg.raw_items()]
    fields: dict[str, list[tuple[list[Any], list[str]]]] = {}
    for key, value in raw:
        if key in ("content-disposition", "content-type"):
            params, overflow = _bounded_params(str(value), limits, typeless=True)
            odd = "(" in value or "\\" in value
            pieces = _pieces(str(value), limits)[0] if odd else []
            msg._mg_overflow = msg._mg_overflow or overflow
            fields.setdefault(key, []).append((params[1:], pieces))
    for header, param in _NAME_PARAMS:
        for params, pieces in fields.get(header, ()):
            for name, raw_value in params:
                name = name.lower()
                if name == param or name.startswith(param + "*"):
                    text = decode_encoded_words(_param_text(raw_value)).strip()
                    if text and text not in names:
                        names.append(text)
            for piece in pieces:
                name, sep, written = piece.partition("=")
                if sep and name.strip().lower() == param:
                    other = decode_encoded_words(_utf8(_rfc_value(written))).strip()
                    if other and other not in names and other not in variants:
                        variants.append(other)
    for key, value in raw:
        if key not in ("content-name", "content-description"):
            continue
        if len(value) > limits.max_param_chars:
            msg._mg_overflow = True
        text = " ".join(decode_encoded_words(_utf8(value[: limits.max_param_chars])).split())
        if key == "content-description" and not _FILE_NAME_LIKE.fullmatch(text):
            continue  # a description, not a name ("Scanned document")
        if text and text not in names and text not in variants:
            (names if key == "content-name" or not names else variants).append(text)
    for key, value in raw:
        if key != "content-location":
            continue
        # RFC 2557: some readers name a part after the last segment of its location (a
        # reading of a name, never the one that makes a body part an attachment)
        where = "".join(value[: limits.max_param_chars].split())
        where = urllib.parse.unquote(where.split("?", 1)[0].split("#", 1)[0])
        text = where.replace("\\", "/").rsplit("/", 1)[-1].strip()
        if _FILE_NAME_LIKE.fullmatch(text) and text not in names and text not in variants:
            variants.append(text)
    return tuple(names), tuple(variants)


def _reads_as_multipart(msg: _Entity) -> bool:
    """Whether the type reads as multipart once comments, quotes and white space are gone."""
    value = msg.get("content-type")
    if value is None:
        return False
    text = str(value)[:256].split(";", 1)[0]
    kind = "".join(_strip_comments(text).replace('"', "").split()).lower()
    return kind == "multipart" or kind.startswith("multipart/")


def _payload_bytes(payload: str) -> bytes:
    try:
        return payload.encode("ascii", "surrogateescape")
    except UnicodeError:  # not from the bytes parser: what the stdlib does
        return payload.encode("raw-unicode-escape")


def _decode(msg: _Entity, data: bytes, cte: str) -> bytes:
    """The payload decoded as `cte` says (the stdlib's decoders, defects recorded on `msg`)."""
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    if cte == "base64":
        value, defects = _decode_b(b"".join(data.splitlines()))
        msg.defects.extend(defects)
        return value
    if cte in _UU_CTE:
        try:
            return _decode_uu(data)
        except ValueError:
            return data
    return data


def _base64_segment(text: bytes) -> bytes:
    text = text[: len(text) - len(text) % 4] if len(text) % 4 == 1 else text
    try:
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    except binascii.Error:
        return b""


def _base64_past_pads(data: bytes) -> list[bytes]:
    """Other decodings of base64 with a pad before its end: the stdlib stops at the first
    complete padded group; other clients go on, decoding each padded stretch on its own or
    ignoring the pads. Empty for ordinary base64 (pads only at the end)."""
    pad = data.find(b"=")
    if pad < 0 or not data[pad:].strip(b"= \t\r\n"):
        return []
    text = re.sub(rb"[^A-Za-z0-9+/=]+", b"", data)
    if b"=" not in text.rstrip(b"="):
        return []
    stretches = b"".join(_base64_segment(s) for s in re.split(rb"=+", text) if s)
    ignored = _base64_segment(text.replace(b"=", b""))
    return [stretches] if stretches == ignored else [stretches, ignored]


@functools.lru_cache(maxsize=256)
def _delimiter_pattern(boundaries: tuple[str, ...]) -> re.Pattern[str]:
    """Lines a loose reader takes for a delimiter of these boundaries: any case, leading white
    space, anything after the boundary."""
    alternatives = "|".join(re.escape(b) for b in sorted(boundaries, key=len, reverse=True))
    return re.compile(rf"^[ \t]*--(?:{alternatives})[^\n]*(?:\n|$)", re.I | re.M)


def _charset_of(msg: _Entity) -> str:
    """The declared charset of a part, lower-case and bounded ("" when none or unreadable)."""
    try:
        charset = msg.get_content_charset()
    except Exception:  # a hostile parameter the email package cannot read
        return ""
    return charset[:40] if isinstance(charset, str) else ""


class _Walker:
    def __init__(
        self,
        limits: MimeSettings,
        deadline: Deadline,
        found: _Findings,
        reading: int,
        decoded: list[int],
        counter: _Counter,
    ) -> None:
        self.limits = limits
        self.deadline = deadline
        self.found = found
        self.reading = reading
        self.decoded = decoded
        self.counter = counter
        self.leaves: list[Leaf] = []
        self.ambiguous = False
        self.header_cut = False  # a header section ended at a line that is not a field

    def _take(self, size: int) -> None:
        self.decoded[0] += size
        if self.decoded[0] > self.limits.max_decoded_bytes:
            raise BudgetExceeded(
                "MIME_LIMIT_DECODED", f"more than {self.limits.max_decoded_bytes} decoded bytes"
            )

    def _leaf(self, msg: _Entity, path: str, kind: str, data: bytes, cte: str = "") -> None:
        self._take(len(data))
        disposition = str(msg.get("content-disposition", "")).split(";")[0].strip().lower()
        named = kind in ("part", "body", "container", "alternate")
        names, variants = _names(msg) if named else ((), ())
        self.leaves.append(
            Leaf(
                path=path,
                kind=kind,
                content_type=msg.get_content_type(),
                disposition=disposition[:40],
                names=names,
                cte=cte,
                data=data,
                reading=self.reading,
                name_variants=variants,
                charset=_charset_of(msg),
            )
        )

    def _headers(self, msg: _Entity, path: str) -> None:
        items = list(msg.raw_items())
        if len(items) > self.limits.max_header_fields:
            self.found.add("MIME_LIMIT_HEADERS", f"{len(items)} fields in part {path}")
        size = 0
        for key, value in items:
            size += len(key) + len(value)
            # a signature's h= tag lists field names by design ("h=...:Content-Type:From")
            listed = key.lower() in _SIGNATURE_FIELDS
            if "\n" in value and (
                _BLANK_FOLD.search(value) or (not listed and _MIME_FIELD_IN_FOLD.search(value))
            ):
                self.found.add("MIME_HEADER_FOLDED_HIDE", f"{key[:40]} in part {path}")
            if key != key.strip() or not key:
                self.found.add("MIME_HEADER_MALFORMED", f"field name {key[:40]!r}")
        if size > self.limits.max_header_bytes:
            self.found.add("MIME_LIMIT_HEADERS", f"{size} header bytes in part {path}")
        for header, symbol in (
            ("content-type", "MIME_DUPLICATE_CONTENT_TYPE"),
            ("content-transfer-encoding", "MIME_DUPLICATE_CTE"),
            ("content-disposition", "MIME_DUPLICATE_DISPOSITION"),
        ):
            values = msg.get_all(header) or []
            if len(values) > 1:
                self.found.add(symbol, f"part {path}: {len(values)} fields")
                distinct = {str(v).strip().lower() for v in values}
                if len(distinct) > 1:
                    self.ambiguous = True
        params = msg.get_params() or []
        boundaries = [_param_text(v) for k, v in params if k.lower() == "boundary"]
        if len(boundaries) > 1:
            self.found.add("MIME_DUPLICATE_BOUNDARY", f"part {path}: {len(boundaries)}")
            if len(set(boundaries)) > 1:
                self.ambiguous = True
        filenames = [k for k, _ in msg.get_params(header="content-disposition") or []]
        if sum(1 for k in filenames if k.lower() == "filename") > 1:
            self.ambiguous = True

    def walk(self, msg: _Entity, path: str, depth: int, boundaries: tuple[str, ...]) -> None:
        """Walk one entity; `boundaries` holds every reading of every enclosing boundary."""
        self.deadline.check()
        self._headers(msg, path)
        for defect in msg.defects:
            if isinstance(defect, email.errors.MissingHeaderBodySeparatorDefect):
                self.header_cut = True
            symbol = _DEFECT_SYMBOLS.get(type(defect), "MIME_DEFECT")
            self.found.add(symbol, f"part {path}: {type(defect).__name__}")
        ctype = msg.get_content_type()
        if ctype == "message/partial":
            self.found.add("MIME_UNSCANNABLE", f"part {path}: message/partial fragment")
        payload = msg.get_payload()
        own: tuple[str, ...] = ()
        # "multipart / mixed", a quoted or commented type: CPython reads text/plain, an RFC
        # 5322-aware reader a multipart
        loose_multipart = msg.get_content_maintype() != "multipart" and _reads_as_multipart(msg)
        if msg.get_content_maintype() == "multipart" or loose_multipart:
            value = msg.get("content-type")
            for readings in _field_boundaries(str(value or ""), self.limits)[:1]:
                own = readings
        if msg.is_multipart() and isinstance(payload, list):
            boundary = msg.get_boundary()
            if boundary:
                for outer in boundaries:
                    if boundary.startswith(outer) or outer.startswith(boundary):
                        self.found.add("MIME_BOUNDARY_CONFLICT", f"part {path}")
                        break
                own = own if boundary in own else (boundary, *own)
            inner = (*boundaries, *own)
            if any(_names(msg)):
                # a named message/rfc822 or multipart: a client saves it under that name
                self._leaf(msg, path, "container", b"")
            for kind, text in (("preamble", msg.preamble), ("epilogue", msg.epilogue)):
                if text and text.strip():
                    self._leaf(msg, f"{path}:{kind}", kind, _payload_bytes(text))
                    self._lenient(text, inner, f"{path}:{kind}", depth, head=True)
            for index, sub in enumerate(payload, 1):
                if isinstance(sub, _Entity):
                    self.walk(sub, f"{path}.{index}", depth + 1, inner)
            self._overflow(msg, path)
            return
        if payload is None or not isinstance(payload, str):
            self._overflow(msg, path)
            return
        # the payload as written (8-bit as surrogates): get_payload() decodes it by charset
        written = getattr(msg, "_payload", payload)
        payload = written if isinstance(written, str) else payload
        raw_cte = str(msg.get("content-transfer-encoding", ""))
        cte = _cte_token(raw_cte)
        if msg.get_content_maintype() == "multipart":
            # no usable boundary: clients show the body as text; scan it as it is, and the
            # parts a reader that matches delimiters loosely (or guesses them) finds in it
            self._leaf(msg, path, "body", _payload_bytes(payload), cte)
            guessed = _GUESSED_DELIMITER.search(payload[:65536])
            candidates = own + ((guessed.group(1),) if guessed else ())
            self._lenient(payload, (*boundaries, *candidates), path, depth, head=True)
            self._overflow(msg, path)
            return
        if cte in _SEVEN_BIT_CTE and _NON_ASCII.search(payload):
            self.found.add("MIME_8BIT_IN_7BIT", f"part {path} ({cte or '7bit'})")
        written_bytes = _payload_bytes(payload)
        data = _decode(msg, written_bytes, cte)
        for defect in msg.defects:
            decoding = _DEFECT_SYMBOLS.get(type(defect))
            if decoding:
                self.found.add(decoding, f"part {path}: {type(defect).__name__}")
        self._leaf(msg, path, "part", data, cte)
        stdlib_cte = raw_cte.lower()
        if stdlib_cte != cte:
            # the stdlib (and readers like it) take the field as written: that reading too
            other = _decode(msg, written_bytes, stdlib_cte)
            if other != data:
                self._leaf(msg, path, "alternate", other, stdlib_cte.strip()[:40])
        if cte == "base64":
            for other in _base64_past_pads(written_bytes):
                if other != data:
                    self.found.add("MIME_BAD_BASE64", f"part {path}: data after a pad")
                    self._leaf(msg, path, "alternate", other, "base64")
        if cte not in _RFC_CTE:
            self.found.add("MIME_BAD_CTE", f"part {path}: {cte[:40]}")
            if cte not in _UU_CTE and _BASE64_BODY.match(payload[:4096]):
                # a client may still decode it as base64: scan that reading too
                alternate = _decode(msg, written_bytes, "base64")  # never raises
                self._leaf(msg, path, "alternate", alternate, "base64")
        if msg.get_content_maintype() == "text" and (
            payload.startswith("begin ") or "\nbegin " in payload
        ):
            self._uuencoded(msg, path, data)
        if loose_multipart:
            guessed = _GUESSED_DELIMITER.search(payload[:65536])
            candidates = own + ((guessed.group(1),) if guessed else ())
            self._lenient(payload, (*boundaries, *candidates), path, depth, head=True)
        else:
            self._lenient(payload, boundaries, path, depth, head=False)
        if any(isinstance(d, email.errors.MissingHeaderBodySeparatorDefect) for d in msg.defects):
            self._past_a_bad_line(msg, payload, path, depth, boundaries)
        self._overflow(msg, path)

    def _past_a_bad_line(
        self, msg: _Entity, payload: str, path: str, depth: int, boundaries: tuple[str, ...]
    ) -> None:
        """CPython ends a header at a line that is no field (no colon, an 8-bit name); a
        reader that skips such a line reads the fields after it: parse the entity that way."""
        _bad, newline, rest = payload.partition("\n")
        if not newline or not _HEADER_LINE.match(rest):
            return
        if depth + 1 > self.limits.max_depth:
            raise BudgetExceeded("MIME_LIMIT_DEPTH", f"nesting deeper than {self.limits.max_depth}")
        self.found.add("MIME_AMBIGUOUS", f"part {path}: fields after a line that is no field")
        head = "".join(f"{key}: {value}\r\n" for key, value in msg.raw_items())
        self._walk_other_reading([(head + rest, f"{path}~h")], depth, boundaries)

    def _lenient(
        self, text: str, boundaries: tuple[str, ...], path: str, depth: int, head: bool
    ) -> None:
        """Parts a loose reader finds in `text` (a preamble, an epilogue, a part's body, a
        multipart body without a usable boundary): after each line it may take for a
        delimiter, and (`head`) at the start when the text opens with a MIME header. Each is
        parsed and walked as a part of another reading; budgets apply to all of them."""
        if not text or text.isspace():
            return
        lower = text.lower()
        wanted = tuple(sorted({b for b in boundaries if b and "--" + b.lower() in lower}))
        chunks: list[str] = []
        first = len(text)
        if wanted:
            start: int | None = None  # where the part after the last delimiter begins
            for match in _delimiter_pattern(wanted).finditer(text):
                first = min(first, match.start())
                if start is not None:
                    chunks.append(text[start : match.start()])
                    self._count_part()
                start = match.end() if _HEADER_LINE.match(text, match.end()) else None
            if start is not None:
                chunks.append(text[start:])
        if head:
            opening = text[:first].lstrip("\r\n")
            if _HEADER_LINE.match(opening) and _MIME_FIELD_LINE.search(opening[:8192]):
                chunks.insert(0, opening)
        if not chunks:
            return
        self.found.add("MIME_AMBIGUOUS", f"part {path}: parts a loose reader finds")
        if depth + 1 > self.limits.max_depth:
            raise BudgetExceeded("MIME_LIMIT_DEPTH", f"nesting deeper than {self.limits.max_depth}")
        pieces = [(chunk, f"{path}~{index}") for index, chunk in enumerate(chunks, 1)]
        self._walk_other_reading(pieces, depth, boundaries)

    def _walk_other_reading(
        self, pieces: list[tuple[str, str]], depth: int, boundaries: tuple[str, ...]
    ) -> None:
        """Parse each (text, path) as an entity and walk it one level down, as a reading other
        than CPython's (a lenient client's); a budget that trips in a parse is raised after
        what it parsed was walked."""
        reading, self.reading = self.reading, max(self.reading, 1)
        try:
            for text, piece_path in pieces:
                tree, budget = _parse_tree(
                    _payload_bytes(text), _Entity, self.limits, self.deadline, self.counter
                )
                if isinstance(tree, _Entity):
                    self.walk(tree, piece_path, depth + 1, boundaries)
                if budget is not None:
                    raise budget
        finally:
            self.reading = reading

    def _count_part(self) -> None:
        self.counter.entities += 1
        if self.counter.entities > self.limits.max_parts:
            raise BudgetExceeded("MIME_LIMIT_PARTS", f"more than {self.limits.max_parts} parts")

    def _uuencoded(self, msg: _Entity, path: str, data: bytes) -> None:
        text = data.decode("latin-1")
        for count, match in enumerate(_UU_BEGIN.finditer(text)):
            if count >= _MAX_UU_BLOCKS:
                raise BudgetExceeded(
                    "MIME_LIMIT_PARTS", f"part {path}: more than {_MAX_UU_BLOCKS} uuencoded files"
                )
            out = bytearray()
            for line in text[match.end() :].splitlines()[1:]:
                if line.strip() in ("end", "`", ""):
                    break
                try:
                    out += binascii.a2b_uu(line)
                except binascii.Error:
                    nbytes = ((ord(line[0]) - 32) & 63) if line else 0
                    try:
                        out += binascii.a2b_uu(line[: (nbytes * 4 + 5) // 3])
                    except binascii.Error:
                        break
                if len(out) > self.limits.max_decoded_bytes:
                    break
            self.found.add("MIME_UUENCODED", f"part {path}")
            self._take(len(out))
            self.leaves.append(
                Leaf(
                    path=f"{path}:uu{count + 1}",
                    kind="uuencoded",
                    content_type="application/octet-stream",
                    disposition="attachment",
                    names=(match.group(1).strip(),),
                    cte="x-uuencode",
                    data=bytes(out),
                    reading=self.reading,
                )
            )

    def _overflow(self, msg: _Entity, path: str) -> None:
        if msg._mg_overflow:
            self.found.add("MIME_LIMIT_PARAMS", f"part {path}")


def _readings(raw: bytes, limits: MimeSettings) -> Iterator[tuple[str, bytes, type[_Entity]]]:
    """The readings made whatever the first one finds: (why, text parsed, entity class)."""
    duplicate, variants, spaced = _raw_facts(raw, limits)
    if duplicate:
        yield "first-wins and last-wins", raw, _LastWinsEntity
    for index in range(1, variants + 1):
        yield f"boundary reading {index + 1}", raw, _variant_entity(index)
    if spaced:
        yield "white space before a colon", _SPACED_FIELD.sub(rb"\1:", raw), _Entity


def analyze(raw: bytes, limits: MimeSettings = DEFAULT_LIMITS) -> MimeReport:
    """The MIME stage: never raises on any input, and stops at its budgets."""
    started = time.monotonic()
    found = _Findings()
    deadline = Deadline(limits.time_budget, "MIME_LIMIT_TIME")
    leaves: list[Leaf] = []
    complete = True
    readings = 0
    parts = 0
    depth = 0
    decoded = [0]
    try:
        _header_budget(raw, limits, found)
        if b"\x00" in raw:
            found.add("MIME_NUL_BYTE", f"{raw.count(0)} NUL bytes")
        plan: list[tuple[str, bytes, type[_Entity]]] = [("", raw, _Entity)]
        planned_more = False
        index = 0
        while index < len(plan):
            why, text, entity = plan[index]
            readings += 1
            counter = _Counter()
            tree, budget = _parse_tree(text, entity, limits, deadline, counter)
            walker = _Walker(limits, deadline, found, index, decoded, counter)
            try:
                if isinstance(tree, _Entity):
                    walker.walk(tree, "1", 0, ())
            finally:
                leaves.extend(walker.leaves)
                parts = max(parts, counter.entities)
                depth = max(depth, counter.depth)
            if why:
                found.add("MIME_AMBIGUOUS", f"parsed again: {why}")
            if budget is not None:
                raise budget
            if not planned_more:
                planned_more = True
                plan.extend(_readings(raw, limits))
                if walker.ambiguous and not any(e is _LastWinsEntity for _, _, e in plan):
                    plan.append(("first-wins and last-wins", raw, _LastWinsEntity))
                spaced = any(why == "white space before a colon" for why, _, _ in plan)
                if walker.header_cut and not spaced:
                    # a header cut at a line that is not a field: "Subject : x" ends it for
                    # CPython, not for a reader that takes the obsolete syntax
                    joined = _SPACED_FIELD.sub(rb"\1:", raw)
                    if joined != raw:
                        plan.append(("white space before a colon", joined, _Entity))
            index += 1
    except BudgetExceeded as exc:
        complete = False
        found.add(exc.symbol, exc.detail)
    except Exception as exc:  # a parser bug on hostile input: report it, scan the raw bytes
        complete = False
        found.add("MIME_UNSCANNABLE", f"parser failed: {type(exc).__name__}")
    if not complete or not leaves:
        leaves.append(Leaf("raw", "raw", "message/rfc822", "", (), "", raw))
    return MimeReport(
        findings=found.result(),
        leaves=_union(leaves),
        complete=complete,
        readings=readings,
        parts=max(parts, 0),
        depth=depth,
        elapsed=time.monotonic() - started,
    )


def _union(leaves: list[Leaf]) -> tuple[Leaf, ...]:
    """Leaves of every reading, each distinct content (and name) once."""
    seen: set[tuple[bytes, tuple[str, ...], tuple[str, ...]]] = set()
    out: list[Leaf] = []
    for leaf in leaves:
        key = (hashlib.sha256(leaf.data).digest(), leaf.names, leaf.name_variants)
        if key not in seen:
            seen.add(key)
            out.append(leaf)
    return tuple(out)
