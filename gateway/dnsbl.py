"""How DNS blocklists are asked and how their answers are read: query names, return codes, refusals.

A DNSBL (Spamhaus ZEN, SpamCop...) is asked about an IP by reversing it under the list's zone
("2.0.0.127.zen.spamhaus.org", IPv6 as 32 reversed nibbles, RFC 5782 2.4); a domain list (DBL,
SURBL, URIBL) by prefixing the domain ("example.com.dbl.spamhaus.org"). The answer is one or more
A records in 127.0.0.0/8 whose value is the reason (Spamhaus) or a bitmask of sublists (SURBL and
URIBL "multi"), NXDOMAIN meaning "not listed".

Not every answer is a listing, and reading a refusal as a hit would reject good mail wholesale:

- a list may say "I will not answer you" with a code of its own (Spamhaus 127.255.255.252 typo
  in the query, .254 query through a public resolver, .255 excessive queries; URIBL and SURBL
  127.0.0.1 "query blocked");
- an address outside 127.0.0.0/8 is no list's answer at all: an open resolver or an ISP that
  rewrites NXDOMAIN into an advertising page answered instead (RFC 5782 2.1 keeps answers in
  127/8 for this reason).

Both make `read_answer` report a refusal, which the rbl plugin turns into a suspension of that
list (a WARNING and a metric), never a symbol. This module does no I/O: the plugin asks the
gateway's one resolver (gateway.dns) and hands the addresses here.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger("mailgate.rbl")

LIST_ANSWERS = ipaddress.ip_network("127.0.0.0/8")
BITMASK_ANSWERS = ipaddress.ip_network("127.0.0.0/24")

# Networks never worth asking a public list about: their addresses are never listed, and the
# query would tell the list's operator about our internal hosts. Documentation ranges (RFC 5737,
# RFC 3849) are kept: nothing real sends from them, and the tests use them.
_UNLISTABLE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/3",
        "::/127",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)


def listable_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`ip` as an address a public list may know (IPv4-mapped IPv6 as IPv4), or None for a
    malformed, private, loopback, link-local or multicast one."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in _UNLISTABLE if net.version == address.version):
        return None
    return address


def ip_query_name(address: ipaddress.IPv4Address | ipaddress.IPv6Address, zone: str) -> str:
    """The name to ask `zone` about `address`: reversed octets, or reversed nibbles for IPv6."""
    if isinstance(address, ipaddress.IPv4Address):
        labels = reversed(str(address).split("."))
    else:
        labels = reversed(address.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone


def domain_query_name(domain: str, zone: str) -> str | None:
    """The name to ask a domain list `zone` about `domain` (IDNA A-labels), or None when the
    domain cannot be carried by DNS or is an IP literal (which domain lists refuse)."""
    name = domain.strip().lower().rstrip(".")
    if not name or "." not in name or ":" in name or name.startswith("["):
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    query = f"{name}.{zone}"
    if len(query) > 253 or any(not label or len(label) > 63 for label in query.split(".")):
        return None
    return query


@dataclass(frozen=True, slots=True)
class ListCodes:
    """What one list's answers mean: exact codes, bitmask bits, and its own refusal codes."""

    codes: dict[str, str] = field(default_factory=dict)  # "127.0.0.2" -> symbol
    bits: tuple[tuple[int, str], ...] = ()  # (mask, symbol) on the last octet of 127.0.0.x
    refused: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Reading:
    """The meaning of one answer: the symbols it lists, or why it is a refusal (then no
    symbol counts), and codes nobody declared (ignored, logged at debug)."""

    symbols: tuple[str, ...] = ()
    refusal: str = ""
    unknown: tuple[str, ...] = ()


def read_answer(addresses: Iterable[str], meaning: ListCodes) -> Reading:
    """Read the A records of one listing answer. A refusal anywhere in it wins over every
    listing in it: a resolver that lies once may lie in the other records too."""
    symbols: list[str] = []
    unknown: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return Reading(refusal=f"answer {text!r} is not an IPv4 address")
        if address.version != 4 or address not in LIST_ANSWERS:
            return Reading(
                refusal=f"answer {text} is outside 127.0.0.0/8 (an open resolver or an "
                "NXDOMAIN-rewriting one answered, not the list)"
            )
        if text in meaning.refused:
            return Reading(refusal=f"answer {text} means the list refuses our queries")
        found = meaning.codes.get(text)
        if found is not None:
            if found not in symbols:
                symbols.append(found)
            continue
        matched = False
        if meaning.bits and address in BITMASK_ANSWERS:
            last = int(address) & 0xFF
            for mask, symbol in meaning.bits:
                if last & mask:
                    matched = True
                    if symbol not in symbols:
                        symbols.append(symbol)
        if not matched:
            unknown.append(text)
    return Reading(tuple(symbols), "", tuple(unknown))


class Suspensions:
    """Lists that refused us, each left alone until its time is up.

    Asking a list that refuses us again only adds to its count of our excessive queries (or
    keeps reading a lying resolver's answers), so it is suspended for `seconds`, with one
    WARNING naming it and why, and a call of `on_suspend` (the metric). Per process, in memory:
    a restart tries again, which is what an operator who fixed the resolver wants.
    """

    def __init__(
        self,
        seconds: float,
        on_suspend: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self._on_suspend = on_suspend
        self._clock = clock
        self._until: dict[str, float] = {}

    def active(self, name: str) -> bool:
        """Whether `name` is suspended now (an expired suspension is forgotten)."""
        until = self._until.get(name)
        if until is None:
            return False
        if self._clock() >= until:
            del self._until[name]
            log.info("rbl: list %s is asked again (suspension over)", name)
            return False
        return True

    def suspend(self, name: str, zone: str, reason: str) -> None:
        if self.active(name):
            return  # concurrent lookups of one message: one warning
        self._until[name] = self._clock() + self.seconds
        log.warning(
            "rbl: list %s (%s) suspended for %gs, not scored: %s; query it through a "
            "recursive resolver of your own, or check your access to it",
            name,
            zone,
            self.seconds,
            reason,
        )
        if self._on_suspend is not None:
            self._on_suspend(name)

    def suspended(self) -> list[str]:
        return sorted(name for name in list(self._until) if self.active(name))
