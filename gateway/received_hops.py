"""Which IP handed a message to our trusted relays: the first untrusted hop of the Received fields.

When a relay of our own (a smarthost, a forwarder, a filter in front) connects to the gateway,
its IP says nothing about the sender: the address to check against DNSBLs is the one that relay
recorded when it accepted the message. Received fields are prepended, so the newest is first
(RFC 5321 4.4). Only fields added by a trusted relay are believed: the first field was written
by the client itself (trusted), and names who gave it the message; if that is a trusted relay
too, the next field is read, and so on. Everything below the first untrusted hop may be forged
by the sender, so it is never read.

Read from the one parse (`ParsedMessage.fields`), with bounded, linear regexes on a bounded
prefix of each value: a hostile Received field costs its length at most.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from gateway.message import ParsedMessage

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_CANDIDATES = 4  # addresses read from one from-clause
MAX_HOPS = 20  # Received fields looked at, at most (RFC 5321 loop detection uses ~100)
_VALUE_CHARS = 1000  # of each value: the from-clause comes first
# "from host (host [192.0.2.1])" (Postfix, Sendmail), "from [192.0.2.1] (helo=x)" (Exim),
# "[IPv6:2001:db8::1]" (RFC 5321 address literal); the from-clause ends at " by ".
_BY = re.compile(r"\sby\s", re.I)
_BRACKETED = re.compile(r"\[(?:ipv6:)?([0-9a-f:.]{2,45})\]", re.I)
_PARENTHESISED = re.compile(r"\(\s*([0-9a-f:.]{2,45})\s*\)", re.I)


def _address(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def sending_ips(value: str) -> tuple[str, ...]:
    """The IPs the from-clause of a Received field names (at most MAX_CANDIDATES, in order).

    Usually one. The HELO name is written into the same clause by most MTAs ("from HELO (rdns
    [IP])" in Postfix, "([IP] helo=HELO)" in Exim) and the sender chooses it, so an address in
    it cannot be told from the real one by position: every address is a candidate, and the
    caller treats the hop as trusted only when all of them are. A sender can add an address
    of its choice, never remove its own.
    """
    text = value[:_VALUE_CHARS]
    if not text.lower().startswith("from"):
        return ()
    by = _BY.search(text)
    clause = text[: by.start()] if by else text
    found: list[str] = []
    for pattern in (_BRACKETED, _PARENTHESISED):
        for match in pattern.finditer(clause):
            address = _address(match.group(1))
            if address is not None and address not in found:
                found.append(address)
                if len(found) >= MAX_CANDIDATES:
                    return tuple(found)
    return tuple(found)


def trusted(ip: str, relays: Sequence[Network]) -> bool:
    found = _address(ip)
    if found is None:
        return False
    address = ipaddress.ip_address(found)
    return any(address in net for net in relays if net.version == address.version)


def first_untrusted_hop(message: ParsedMessage, relays: Sequence[Network]) -> tuple[str, ...]:
    """The IP(s) that gave the message to the last of our trusted relays, reading Received
    fields newest first; () when a trusted relay's field names no IP (never guess below it)."""
    for field in message.all("received")[:MAX_HOPS]:
        ips = sending_ips(field.unfolded)
        if not ips:
            return ()
        untrusted = tuple(ip for ip in ips if not trusted(ip, relays))
        if untrusted:
            return untrusted
    return ()
