"""The one module that edits header fields: forged ones out, by the offsets of the one parse
(gateway.message), and ours on top (gateway.trace_fields writes them).

The message is never re-serialised through the email package: relayed mail must stay
byte-identical apart from the fields removed and added, and a parse/re-render round trip would not
be. Forged fields are found with the same lenient reading every plugin uses (odd case,
whitespace before the colon, folding, after a line that is not a field), so what we strip is
exactly what a reader downstream could have taken for ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.results import authserv_id_of
from gateway.message import HeaderField, ParsedMessage
from gateway.rfc5322 import unfold

OUR_PREFIX = "x-mailgate-"
# X-Spam-Flag, X-Spam-Status (and the -Score, -Level, -Report kin other filters write): the tag
# step writes the first two, and Sieve rules route on any of them, so none may come from outside.
SPAM_PREFIX = "x-spam-"


def remove_fields(
    message: ParsedMessage, doomed: Callable[[HeaderField], bool]
) -> tuple[bytes, int]:
    """The message without the header fields `doomed` picks, cut out by offset."""
    victims = [f for f in message.fields if doomed(f)]
    if not victims:
        return message.raw, 0
    raw = message.raw
    out, pos = [], 0
    for f in victims:
        out.append(raw[pos : f.start])
        pos = f.end
    out.append(raw[pos:])
    return b"".join(out), len(victims)


def prepend_fields(raw: bytes, *fields: bytes) -> bytes:
    return b"".join(fields) + raw


# -- what counts as forged ------------------------------------------------------------------------


def is_our_field(f: HeaderField) -> bool:
    """An X-Mailgate-* field: only we write those, so downstream may trust them."""
    return f.name.startswith(OUR_PREFIX)


def is_spam_field(f: HeaderField) -> bool:
    """An X-Spam-* field: a verdict a Sieve rule might act on, so only ours may reach it."""
    return f.name.startswith(SPAM_PREFIX)


def claims_our_results(f: HeaderField, authserv_id: str) -> bool:
    """An Authentication-Results field with our authserv-id (RFC 8601 5), comments before the
    authserv-id and a final dot notwithstanding."""
    return f.name == "authentication-results" and authserv_id_of(unfold(f.value)) == _host(
        authserv_id
    )


def claims_our_spf(f: HeaderField, receiver: str) -> bool:
    """A Received-SPF field naming us as its receiver (RFC 7208 9.1 "receiver=").

    A sender can write "Received-SPF: pass ... receiver=<our hostname>" above the message; a
    downstream filter or MUA reading the topmost Received-SPF (or any that names us) would then
    take the sender's word for our check. Received-SPF fields of other receivers (earlier hops)
    are kept."""
    return f.name == "received-spf" and _host(receiver) in _spf_receivers(unfold(f.value))


def _host(name: str) -> str:
    return name.lower().rstrip(".")


# "receiver=" as a key (after start, whitespace, ";" or "("), its value a token or quoted-string.
_SPF_RECEIVER = re.compile(r'(?:^|[\s;(])receiver\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;()"]+))', re.I)
_SPF_COMMENT_RECEIVER = re.compile(r"\(\s*([^\s()]+)\s*:", re.I)


def _spf_receivers(value: str) -> set[str]:
    """Every host a Received-SPF value might be read as naming as its receiver: the key-value
    "receiver=" (quoted or not) and the RFC 7208 comment's leading "(host: ...)"."""
    found: set[str] = set()
    for match in _SPF_RECEIVER.finditer(value):
        text = match.group(1) if match.group(1) is not None else match.group(2)
        found.add(re.sub(r"\\(.)", r"\1", text).strip().lower().rstrip("."))
    for match in _SPF_COMMENT_RECEIVER.finditer(value):
        found.add(match.group(1).lower().rstrip("."))
    return found


# -- the edits the gateway makes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForgedFields:
    """How many forged fields of each kind were removed, for the log line's note."""

    ours: int = 0
    authentication_results: int = 0
    received_spf: int = 0
    spam_status: int = 0

    @property
    def total(self) -> int:
        return self.ours + self.authentication_results + self.received_spf + self.spam_status

    def note(self) -> str:
        parts = []
        if self.ours:
            parts.append(f"removed {self.ours} forged X-Mailgate fields")
        if self.authentication_results:
            parts.append(f"removed {self.authentication_results} forged Authentication-Results")
        if self.received_spf:
            parts.append(f"removed {self.received_spf} forged Received-SPF")
        if self.spam_status:
            parts.append(f"removed {self.spam_status} X-Spam fields")
        return "; ".join(parts)


def remove_forged(message: ParsedMessage, hostname: str) -> tuple[bytes, ForgedFields]:
    """The message without fields only we may write (X-Mailgate-*, Authentication-Results with
    our authserv-id, Received-SPF naming us, X-Spam-*), in one pass over the parse's fields."""
    ours = [f for f in message.fields if is_our_field(f)]
    results = [f for f in message.fields if claims_our_results(f, hostname)]
    spf = [f for f in message.fields if claims_our_spf(f, hostname)]
    spam = [f for f in message.fields if is_spam_field(f)]
    if not (ours or results or spf or spam):
        return message.raw, ForgedFields()
    doomed = {f.start for f in (*ours, *results, *spf, *spam)}
    raw, _ = remove_fields(message, lambda f: f.start in doomed)
    return raw, ForgedFields(len(ours), len(results), len(spf), len(spam))


def prefix_subject(message: ParsedMessage, prefix: str) -> bytes:
    """The message with `prefix` before the value of every Subject field, by offset.

    The value itself is untouched (an RFC 2047 encoded-word stays as it was: the prefix ends in
    a blank or gets one, so the encoded-word still stands alone); every Subject gets it, so
    whichever one a reader shows carries the mark. A message without a Subject gets one that
    is the prefix alone. A Subject that already starts with the prefix is left as it is."""
    if not prefix:
        return message.raw
    raw = message.raw
    mark = prefix.encode("ascii")
    subjects = [f for f in message.fields if f.name == "subject"]
    if not subjects:
        return b"Subject: " + mark.rstrip() + b"\r\n" + raw
    out, pos = [], 0
    for f in subjects:
        colon = raw.index(b":", f.start, f.end) + 1
        at = colon
        while at < f.end and raw[at] in b" \t":
            at += 1
        if raw.startswith(mark.rstrip(), at):
            continue
        insert = mark if mark.endswith((b" ", b"\t")) else mark + b" "
        if at == colon:
            insert = b" " + insert
        out.append(raw[pos:at])
        out.append(insert)
        pos = at
    out.append(raw[pos:])
    return b"".join(out)


def strip_our_fields(message: ParsedMessage | bytes) -> tuple[bytes, int]:
    """Remove X-Mailgate-* fields a sender put in, so downstream trusts only ours."""
    return remove_fields(_parsed(message), is_our_field)


def strip_authentication_results(
    message: ParsedMessage | bytes, authserv_id: str
) -> tuple[bytes, int]:
    """Remove Authentication-Results fields that claim our authserv-id (RFC 8601 5)."""
    return remove_fields(_parsed(message), lambda f: claims_our_results(f, authserv_id))


def strip_received_spf(message: ParsedMessage | bytes, receiver: str) -> tuple[bytes, int]:
    """Remove Received-SPF fields that name us as their receiver (see `claims_our_spf`)."""
    return remove_fields(_parsed(message), lambda f: claims_our_spf(f, receiver))


def _parsed(message: ParsedMessage | bytes) -> ParsedMessage:
    return message if isinstance(message, ParsedMessage) else ParsedMessage(message)


# -- release from quarantine ----------------------------------------------------------------------

RELEASED_ACTION = "release"


def mark_released(raw: bytes, released: str) -> bytes:
    """The stored message as it leaves quarantine: `X-Mailgate-Action: release` in place of our
    verdict field, and `X-Mailgate-Released: <released>; verdict=<what it was>` after it.

    Sieve rules and filters that act on `X-Mailgate-Action: quarantine` must not file a message
    an admin judged good; the original verdict stays readable beside the release. Fields from a
    release before (--again) are replaced, not stacked. Everything else stays byte for byte."""
    message = ParsedMessage(raw)
    ours = [f for f in message.fields if f.name in ("x-mailgate-action", "x-mailgate-released")]
    action = next((f for f in ours if f.name == "x-mailgate-action"), None)
    verdict = "quarantine" if action is None else action.unfolded
    if verdict == RELEASED_ACTION:  # unreachable for stored mail, kept honest anyway
        verdict = "quarantine"
    fields = (
        f"X-Mailgate-Action: {RELEASED_ACTION}\r\n"
        f"X-Mailgate-Released: {released}; verdict={verdict}\r\n"
    ).encode("ascii", "replace")
    out, pos = [], 0
    for f in ours:
        out.append(raw[pos : f.start])
        if f is action:
            out.append(fields)
        pos = f.end
    out.append(raw[pos:])
    marked = b"".join(out)
    return marked if action is not None else fields + marked
