"""RFC 6376 tag lists, checked as the RFC reads them, before dkimpy sees a signature or a key.

dkimpy 1.1.8's own checks (`validate_signature_fields`, `evaluate_pk`) disagree with RFC 6376 in
ways that refuse good mail, pass signatures the RFC says to ignore, or raise on hostile input:

- `q=` must be exactly "dns/txt"; RFC 6376 3.5 makes it a colon-separated list in which
  unrecognized methods are ignored (`q=foo:dns/txt` is valid).
- `i=` is compared with `d=` before dkim-quoted-printable decoding (`i=alice=40good.example` is
  `alice@good.example`), an `i=` without "@" is accepted, and `i=` as long as `d=` raises
  IndexError; `l=`, `t=` and `x=` of thousands of digits raise ValueError (int() limit).
- A key whose `s=` is a list (`s=email:web`, RFC 6376 3.6.1) loses its key type, and the
  verification then fails with the reason "None".
- A signature whose `h=` does not list From verifies (6.1.1: it MUST be ignored); `x=` equal
  to `t=` is accepted (3.5: x MUST be greater); `bh=` is checked with `b=`'s value; tag names
  need only start with a letter ("a b=1" is a tag); `a=` and `c=` are case-sensitive although
  their ABNF literals are not.

So every signature and key is checked here, and dkimpy is handed normalized tags (and a
normalized key record): the hashes still cover the header field exactly as it was sent, since
dkimpy hashes the field, not the dictionary. Each function answers with a short reason, never
an exception, for anything a sender can write.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import DuplicateTag, InvalidTagValueList, parse_tag_value

# RFC 6376 3.2: tag-name = ALPHA *ALNUMPUNC (ALPHA / DIGIT / "_")
_TAG_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*")
# RFC 5322 3.6.8 field-name = 1*ftext (printable ASCII but ":")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_FWS = re.compile(rb"\s+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_HEX_OCTET = re.compile(rb"=([0-9A-Fa-f]{2})")
# RFC 6376 3.5 ABNF: l= 1*76DIGIT, t= and x= 1*12DIGIT
_DIGITS = {b"l": 76, b"t": 12, b"x": 12}

ALGORITHMS = frozenset({b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256"})
REQUIRED = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
# dkimpy's leeway for t= in the future and x= in the past, kept: RFC 6376 3.5 leaves both to the
# verifier ("MAY"), and senders' clocks are wrong by hours more often than signatures are replayed.
CLOCK_SLOP = 36000


class TagListError(ValueError):
    """A tag list that RFC 6376 3.2 says is invalid as a whole."""


def parse_tags(value: bytes) -> dict[bytes, bytes]:
    """A tag=value list (RFC 6376 3.2), whitespace around names and values removed.

    Invalid as a whole (TagListError): a spec without "=", a tag name that is not ALPHA
    *ALNUMPUNC, a duplicate name (names are case-sensitive: "D" and "d" are two tags)."""
    try:
        tags: dict[bytes, bytes] = parse_tag_value(value)
    except DuplicateTag as exc:
        raise TagListError(_short(f"duplicate tag {_shown(exc.args[0])}=")) from None
    except InvalidTagValueList as exc:
        raise TagListError(_short(f"malformed tag list: {exc!s}")) from None
    for name in tags:
        if not _TAG_NAME.fullmatch(name):
            raise TagListError(_short(f"malformed tag name {name!r}"))
    return tags


def colon_list(value: bytes) -> list[bytes]:
    """The items of a colon-separated tag value, with the FWS around them removed."""
    return [item.strip() for item in value.split(b":")]


def decode_quoted_printable(value: bytes) -> bytes | None:
    """dkim-quoted-printable (RFC 6376 2.11): FWS is ignored, "=XX" is one octet; None if a "="
    is not followed by two hex digits."""
    text = _FWS.sub(b"", value)
    if b"=" in _HEX_OCTET.sub(b"", text):
        return None
    return _HEX_OCTET.sub(lambda m: bytes([int(m.group(1), 16)]), text)


@dataclass(frozen=True, slots=True)
class CheckedSignature:
    """A signature's tags as dkimpy must see them, or why the signature is a permerror."""

    problem: str
    tags: dict[bytes, bytes]
    identity: bytes = b""  # the decoded AUID (i=), or "@" + d= when i= is absent


def check_signature(tags: dict[bytes, bytes], now: float | None = None) -> CheckedSignature:
    """RFC 6376 3.5 and 6.1.1 for one DKIM-Signature's tags (d= and s= are checked by the
    caller, which refuses to look up anything that is not a DNS name)."""
    for name in REQUIRED:
        if name not in tags:
            return CheckedSignature(f"missing {name.decode()}=", tags)
    if tags[b"v"] != b"1":
        return CheckedSignature("v= is not 1 (RFC 6376 6.1.1)", tags)
    for name, limit in _DIGITS.items():
        digits = tags.get(name)
        if digits is not None and not (digits.isdigit() and len(digits) <= limit):
            why = f"{name.decode()}= is not a number of 1 to {limit} digits"
            return CheckedSignature(why, tags)
    normal = dict(tags)
    algorithm = tags[b"a"].lower()
    if algorithm not in ALGORITHMS:
        return CheckedSignature(f"unknown signature algorithm {_shown(tags[b'a'])}", tags)
    normal[b"a"] = algorithm
    for name in (b"b", b"bh"):
        if not _is_base64(tags[name]):
            return CheckedSignature(f"{name.decode()}= is not base64", tags)
    canon = tags.get(b"c")
    if canon is not None:
        try:
            CanonicalizationPolicy.from_c_value(canon.lower())
        except InvalidCanonicalizationPolicyError:
            return CheckedSignature(f"unknown canonicalization c={_shown(canon)}", tags)
        normal[b"c"] = canon.lower()
    # An empty item ("h=from:to:") is outside the ABNF but selects nothing when hashed (dkimpy
    # accepts it, and so do we: refusing it would only turn a broken signer's mail into a fail).
    signed = [name for name in colon_list(tags[b"h"]) if name]
    if not signed or not all(_FIELD_NAME.fullmatch(name) for name in signed):
        return CheckedSignature("h= is not a list of field names", tags)
    if b"from" not in (name.lower() for name in signed):
        return CheckedSignature("From field not signed (RFC 6376 6.1.1)", tags)
    if b"q" in tags:
        methods = [m.lower() for m in colon_list(tags[b"q"])]
        if b"dns/txt" not in methods:  # 3.5: unrecognized methods MUST be ignored
            return CheckedSignature("q= lists no supported query method (dns/txt)", tags)
        normal[b"q"] = b"dns/txt"
    domain = tags[b"d"].lower().rstrip(b".")
    identity = b"@" + domain
    if b"i" in tags:
        decoded = decode_quoted_printable(tags[b"i"])
        if decoded is None or b"@" not in decoded:
            return CheckedSignature("i= is not [local-part]@domain", tags)
        i_domain = decoded.rpartition(b"@")[2].lower().rstrip(b".")
        if i_domain != domain and not i_domain.endswith(b"." + domain):
            return CheckedSignature("i= domain is not d= or a subdomain of it", tags)
        identity = decoded
        normal[b"i"] = decoded
    clock = time.time() if now is None else now
    signed_at = int(tags[b"t"]) if b"t" in tags else None
    if signed_at is not None and signed_at > clock + CLOCK_SLOP:
        return CheckedSignature("t= is in the future", tags)
    if b"x" in tags:
        expires = int(tags[b"x"])
        if signed_at is not None and expires <= signed_at:
            return CheckedSignature("x= is not later than t= (RFC 6376 3.5)", tags)
        if expires < clock - CLOCK_SLOP:
            return CheckedSignature("signature expired (x=)", tags)
    return CheckedSignature("", normal, identity)


@dataclass(frozen=True, slots=True)
class CheckedKey:
    """A key record as dkimpy must see it, or why it cannot verify email."""

    problem: str
    tags: dict[bytes, bytes]
    record: bytes = b""  # the normalized record handed to dkimpy


def check_key(record: bytes) -> CheckedKey:
    """RFC 6376 3.6.1 for a key record, for the email service.

    s= is a list of service types: a record applies when it lists "*" or "email" (unknown types
    are ignored), and is otherwise no key for email ("MUST ignore this record"). k= is compared
    case-insensitively. The record given to dkimpy has no s= (its default, "*") and a lower-case
    k=, so dkimpy neither drops the key type of a listed s= nor refuses a valid list."""
    try:
        tags = parse_tags(record)
    except TagListError:
        return CheckedKey("key record is not a tag list", {})
    if b"v" in tags and tags[b"v"] != b"DKIM1":
        return CheckedKey("key record v= is not DKIM1", tags)
    if not _FWS.sub(b"", tags.get(b"p", b"")):
        return CheckedKey("key revoked (empty p=)", tags)
    services = [s.lower() for s in colon_list(tags.get(b"s", b"*"))]
    if b"*" not in services and b"email" not in services:
        return CheckedKey(f"key is not for email (s={_shown(tags[b's'])})", tags)
    normal = {name: value for name, value in tags.items() if name != b"s"}
    normal[b"k"] = tags.get(b"k", b"rsa").lower()
    normalized = b"; ".join(name + b"=" + value for name, value in normal.items())
    return CheckedKey("", tags, normalized)


def _is_base64(value: bytes) -> bool:
    text = _FWS.sub(b"", value)
    return bool(_BASE64.fullmatch(text)) and len(text) % 4 == 0


def _shown(value: bytes, limit: int = 40) -> str:
    text = re.sub(r"[^\x20-\x7e]", "?", value.decode("ascii", errors="replace"))
    return text if len(text) <= limit else text[:limit] + "..."


def _short(text: str, limit: int = 100) -> str:
    text = re.sub(r"[^\x20-\x7e]", "?", text)
    return text if len(text) <= limit else text[:limit] + "..."
