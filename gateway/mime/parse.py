"""Parse a message once, the way mail clients will read it, under budgets; report what is odd.

The parser is the stdlib's (compat32 policy: linear on hostile headers, defects recorded on each
entity), fed in chunks so a wall-clock budget is checked while it works, with a message factory
that counts entities and nesting so a budget trips before the parser's own recursion does, and
whose parameter parsing is bounded (CPython's `_parseparam` is quadratic in a field's length).

Ambiguity is scanned both ways. CPython and most clients take the first Content-Type field,
the first `boundary` parameter and the first Content-Transfer-Encoding; some filters and clients
take the last (amavis CVE-2024-28054). When a message offers two readings, it is parsed a second
time with a last-wins entity class, and the leaves of both readings are reported (the union is
scanned). Anything that cannot be decoded is still handed on as bytes (the raw part, or the raw
message), never dropped.
"""

from __future__ import annotations

import binascii
import email.errors
import email.feedparser
import email.header
import email.message
import email.policy
import email.utils
import hashlib
import re
import time
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
_CT_FIELD = re.compile(rb"^content-type[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*", re.I | re.M)
_BOUNDARY_PARAM = re.compile(rb"[;\s]boundary\s*\*?\s*=", re.I)
_UU_BEGIN = re.compile(r"^begin [0-7]{3,4} ([^\r\n]{1,255})\r?$", re.M)
_MAX_NAME_CHARS = 1024
_MAX_UU_BLOCKS = 20

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


def _bounded_params(value: str, limits: MimeSettings) -> tuple[list[Any], bool]:
    """A field's parameters as `email.utils.decode_params` gives them, within the budgets."""
    overflow = False
    if len(value) > limits.max_param_chars or value.count(";") > limits.max_params:
        overflow = True
        value = ";".join(value[: limits.max_param_chars].split(";")[: limits.max_params + 1])
    params: list[tuple[str, str]] = []
    for piece in _parseparam(value):
        name, sep, val = piece.partition("=")
        params.append((name.strip(), val.strip()) if sep else (piece.strip(), ""))
    return list(email.utils.decode_params(params)), overflow


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


def _raw_has_duplicate_boundary(raw: bytes, limits: MimeSettings) -> bool:
    for match in _CT_FIELD.finditer(raw):
        field = match.group(0)
        if len(field) <= limits.max_param_chars and len(_BOUNDARY_PARAM.findall(field)) > 1:
            return True
    return False


def _param_text(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 3:
        charset, language, text = value
        text = email.utils.unquote(str(text))
        return str(email.utils.collapse_rfc2231_value((charset, language, text), errors="replace"))
    text = email.utils.unquote(str(value).strip())
    if any("\udc80" <= c <= "\udcff" for c in text):
        # raw 8-bit in a header: clients read it as UTF-8 (RFC 6532), so do we
        text = text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    return text


def _names(msg: _Entity) -> tuple[str, ...]:
    """File names from every place a client looks, in the order a typical client prefers them."""
    names: list[str] = []
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        # raw values: the parsed ones turn raw UTF-8 into U+FFFD (compat32's unknown-8bit)
        values = [v for k, v in msg.raw_items() if k.strip().lower() == header]
        for value in values:
            params, overflow = _bounded_params(str(value), msg._mg_limits)
            msg._mg_overflow = msg._mg_overflow or overflow
            for key, raw_value in params[1:]:
                key = key.lower()
                if key == param or key.startswith(param + "*"):
                    name = decode_encoded_words(_param_text(raw_value)[:_MAX_NAME_CHARS]).strip()
                    if name and name not in names:
                        names.append(name)
    return tuple(names)


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
    ) -> None:
        self.limits = limits
        self.deadline = deadline
        self.found = found
        self.reading = reading
        self.decoded = decoded
        self.leaves: list[Leaf] = []
        self.ambiguous = False

    def _take(self, size: int) -> None:
        self.decoded[0] += size
        if self.decoded[0] > self.limits.max_decoded_bytes:
            raise BudgetExceeded(
                "MIME_LIMIT_DECODED", f"more than {self.limits.max_decoded_bytes} decoded bytes"
            )

    def _leaf(self, msg: _Entity, path: str, kind: str, data: bytes, cte: str = "") -> None:
        self._take(len(data))
        disposition = str(msg.get("content-disposition", "")).split(";")[0].strip().lower()
        self.leaves.append(
            Leaf(
                path=path,
                kind=kind,
                content_type=msg.get_content_type(),
                disposition=disposition[:40],
                names=_names(msg) if kind == "part" else (),
                cte=cte,
                data=data,
                reading=self.reading,
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
        self.deadline.check()
        self._headers(msg, path)
        for defect in msg.defects:
            symbol = _DEFECT_SYMBOLS.get(type(defect), "MIME_DEFECT")
            self.found.add(symbol, f"part {path}: {type(defect).__name__}")
        ctype = msg.get_content_type()
        if ctype == "message/partial":
            self.found.add("MIME_UNSCANNABLE", f"part {path}: message/partial fragment")
        payload = msg.get_payload()
        if msg.is_multipart() and isinstance(payload, list):
            boundary = msg.get_boundary()
            if boundary:
                for outer in boundaries:
                    if boundary.startswith(outer) or outer.startswith(boundary):
                        self.found.add("MIME_BOUNDARY_CONFLICT", f"part {path}")
                boundaries = (*boundaries, boundary)
            for kind, text in (("preamble", msg.preamble), ("epilogue", msg.epilogue)):
                if text and text.strip():
                    data = text.encode("ascii", "surrogateescape")
                    self._leaf(msg, f"{path}:{kind}", kind, data)
            for index, sub in enumerate(payload, 1):
                if isinstance(sub, _Entity):
                    self.walk(sub, f"{path}.{index}", depth + 1, boundaries)
            self._overflow(msg, path)
            return
        if payload is None:
            self._overflow(msg, path)
            return
        if not isinstance(payload, str):
            self._overflow(msg, path)
            return
        cte = str(msg.get("content-transfer-encoding", "")).strip().lower()
        if msg.get_content_maintype() == "multipart":
            # no usable boundary: clients show the body as text; scan it as it is
            self._leaf(msg, path, "body", payload.encode("ascii", "surrogateescape"), cte)
            self._overflow(msg, path)
            return
        if cte in _SEVEN_BIT_CTE and _NON_ASCII.search(payload):
            self.found.add("MIME_8BIT_IN_7BIT", f"part {path} ({cte or '7bit'})")
        decoded = msg.get_payload(decode=True)
        data = decoded if isinstance(decoded, bytes) else payload.encode("ascii", "surrogateescape")
        for defect in msg.defects:
            decoding = _DEFECT_SYMBOLS.get(type(defect))
            if decoding:
                self.found.add(decoding, f"part {path}: {type(defect).__name__}")
        self._leaf(msg, path, "part", data, cte)
        if cte not in _RFC_CTE:
            self.found.add("MIME_BAD_CTE", f"part {path}: {cte[:40]}")
            if cte not in _UU_CTE and _BASE64_BODY.match(payload[:4096]):
                # a client may still decode it as base64: scan that reading too
                alternate = binascii.a2b_base64(payload.encode("ascii", "surrogateescape"))
                self._leaf(msg, path, "alternate", alternate, "base64")
        if msg.get_content_maintype() == "text" and "\nbegin " in "\n" + payload[:1_000_000]:
            self._uuencoded(msg, path, data)
        self._overflow(msg, path)

    def _uuencoded(self, msg: _Entity, path: str, data: bytes) -> None:
        text = data.decode("latin-1")
        for count, match in enumerate(_UU_BEGIN.finditer(text)):
            if count >= _MAX_UU_BLOCKS:
                break
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
        ambiguous = _raw_has_duplicate_boundary(raw, limits)
        for reading, entity in enumerate((_Entity, _LastWinsEntity)):
            if reading == 1 and not ambiguous:
                break
            readings += 1
            counter = _Counter()
            tree, budget = _parse_tree(raw, entity, limits, deadline, counter)
            parts = max(parts, counter.entities)
            depth = max(depth, counter.depth)
            walker = _Walker(limits, deadline, found, reading, decoded)
            try:
                if isinstance(tree, _Entity):
                    walker.walk(tree, "1", 0, ())
            finally:
                leaves.extend(walker.leaves)
            ambiguous = ambiguous or walker.ambiguous
            if budget is not None:
                raise budget
        if readings > 1:
            found.add("MIME_AMBIGUOUS", "parsed both ways (first-wins and last-wins)")
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
    seen: set[tuple[bytes, tuple[str, ...]]] = set()
    out: list[Leaf] = []
    for leaf in leaves:
        key = (hashlib.sha256(leaf.data).digest(), leaf.names)
        if key not in seen:
            seen.add(key)
            out.append(leaf)
    return tuple(out)
