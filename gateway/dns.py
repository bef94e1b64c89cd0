"""One asynchronous DNS resolver for the whole gateway, with a bounded TTL cache.

Every check that needs DNS (SPF, DKIM keys, DMARC policies, ARC) asks this resolver, so lookups
share one cache and one set of limits, and nothing calls the blocking system resolver on the event
loop. It is a stub resolver on dnspython's asyncio resolver: it asks `[dns] nameservers` when
they are set, else the system's (the nameserver lines of /etc/resolv.conf, read once at start-up
by dnspython; none there means this machine, as the C library does). `probe` sends the one query
`mailgate check` and start-up use to say plainly when those servers do not answer; while serving,
gateway.dns_health logs a WARNING naming a server that stops answering (and an INFO when it
answers again).
`OfflineResolver` answers NXDOMAIN for every name without sending anything (`mailgate scan
--dns-off`: measuring a folder of mail as if nothing were listed anywhere).

Every answer is a `DnsResult` whose `status` says what happened, because the callers must tell
them apart: a name that does not exist (NXDOMAIN) or has no records of the type (NODATA) is an
answer, while a timeout or SERVFAIL is a temporary error (SPF/DKIM/DMARC "temperror", which by
default defers the message with a 4xx rather than letting it pass)::

    DnsStatus
      ANSWER     records found (CNAMEs already followed)
      NXDOMAIN   the name does not exist                  } negative answers, cached for the
      NODATA     the name exists, but not with that type  } RFC 2308 negative TTL
      TIMEOUT    no answer within the per-query timeout   } temporary: never cached
      SERVFAIL   the server failed or refused             }
      INVALID    not a valid DNS name: nothing was sent

The cache is an LRU of at most `cache_size` entries. Positive answers live for their TTL (the
smallest in the CNAME chain, capped by `max_ttl`); negative ones for min(SOA TTL, SOA MINIMUM)
(RFC 2308 section 5), capped by `max_negative_ttl`, and not at all without an SOA in the
authority section. Concurrent lookups of the same name and type share one query.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
from dns.rdtypes.ANY.SOA import SOA

from gateway.cputime import CpuMeter, metered
from gateway.dns_health import NameserverHealth

if TYPE_CHECKING:
    from gateway.config import DnsSettings

DEFAULT_MAX_TTL = 86400.0  # cap on how long a positive answer is trusted
DEFAULT_MAX_NEGATIVE_TTL = 900.0  # cap on negative caching (RFC 2308 section 5 allows 3 hours)
EDNS_PAYLOAD = 1232  # the DNS Flag Day 2020 UDP size: larger answers come over TCP
LOCAL_NAMESERVERS = ("127.0.0.1", "::1")  # resolv.conf(5): no nameserver line means this host


class DnsStatus(enum.Enum):
    """What one lookup found; see the module docstring for the table."""

    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TIMEOUT = "timeout"
    SERVFAIL = "servfail"
    INVALID = "invalid"

    @property
    def is_temporary(self) -> bool:
        """A failure that may go away: the caller must not read it as "no such record"."""
        return self in (DnsStatus.TIMEOUT, DnsStatus.SERVFAIL)

    @property
    def is_negative(self) -> bool:
        """An authoritative "nothing here": NXDOMAIN or NODATA."""
        return self in (DnsStatus.NXDOMAIN, DnsStatus.NODATA)


@dataclass(frozen=True, slots=True)
class DnsResult:
    """The outcome of one lookup. `records` are the rdata of the final name of the CNAME chain."""

    name: str
    rdtype: str
    status: DnsStatus
    records: tuple[dns.rdata.Rdata, ...] = ()
    ttl: float = 0.0
    canonical_name: str = ""
    detail: str = ""

    @property
    def is_temporary(self) -> bool:
        return self.status.is_temporary

    def addresses(self) -> list[str]:
        """A/AAAA records as address strings."""
        return [str(getattr(r, "address", "")) for r in self.records if hasattr(r, "address")]

    def txt_strings(self) -> list[tuple[bytes, ...]]:
        """TXT (or SPF) records, each as its character-strings, undecoded."""
        return [tuple(getattr(r, "strings", ())) for r in self.records if hasattr(r, "strings")]

    def texts(self) -> list[bytes]:
        """TXT records, each with its character-strings concatenated (RFC 7208 3.3)."""
        return [b"".join(parts) for parts in self.txt_strings()]

    def mx(self) -> list[tuple[int, str]]:
        """MX records as (preference, exchange); the null MX "." (RFC 7505) gives ""."""
        out: list[tuple[int, str]] = []
        for r in self.records:
            exchange = getattr(r, "exchange", None)
            if isinstance(exchange, dns.name.Name):
                out.append((int(getattr(r, "preference", 0)), _text(exchange)))
        return out

    def targets(self) -> list[str]:
        """PTR, CNAME or NS targets as names without the final dot."""
        out: list[str] = []
        for r in self.records:
            target = getattr(r, "target", None)
            if isinstance(target, dns.name.Name):
                out.append(_text(target))
        return out


@dataclass(frozen=True, slots=True)
class ResolverStats:
    """Counters since the resolver was made (or `reset_stats`)."""

    hits: int
    misses: int
    negative_hits: int
    coalesced: int
    queries: int
    timeouts: int
    servfails: int
    evictions: int
    size: int


def _text(name: dns.name.Name) -> str:
    """A name as text without the final dot; the root is ""."""
    if name == dns.name.root:
        return ""
    return name.to_text(omit_final_dot=True).lower()


def _to_name(name: str) -> dns.name.Name | None:
    """An absolute DNS name from text, label by label, or None if DNS cannot carry it.

    Labels are taken literally (no master-file escapes: a backslash from a macro expansion is
    a backslash); non-ASCII text, empty labels, labels over 63 and names over 255 octets are
    refused.
    """
    text = name.removesuffix(".")
    if not text or not text.isascii():
        return None
    try:
        return dns.name.Name([label.encode("ascii") for label in text.split(".")] + [b""])
    except dns.exception.DNSException:
        return None


def normalize_name(name: str) -> str:
    """The cache key form of a name: lower case, no final dot."""
    return name.lower().removesuffix(".")


class Resolver:
    """The gateway's DNS: `await resolver.query("example.com", "TXT")` -> `DnsResult`.

    Never raises for DNS outcomes: every failure is a status. `timeout` bounds one query
    (retransmissions and TCP fallback included).
    """

    def __init__(
        self,
        nameservers: Sequence[str] = ("127.0.0.1",),
        port: int = 53,
        timeout: float = 5.0,
        cache_size: int = 10000,
        *,
        max_ttl: float = DEFAULT_MAX_TTL,
        max_negative_ttl: float = DEFAULT_MAX_NEGATIVE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not nameservers:
            raise ValueError("at least one nameserver is needed")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.nameservers = tuple(nameservers)
        self.port = port
        self.timeout = timeout
        self.cache_size = max(0, cache_size)
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._clock = clock
        self.origin = "the nameservers given"  # what `describe` says they came from
        # configure=False: never read /etc/resolv.conf; only the nameservers we were given.
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(self.nameservers)
        resolver.port = port
        resolver.lifetime = timeout
        # Per-attempt timeout: leave room for one retransmission within the lifetime.
        resolver.timeout = timeout / 2
        resolver.cache = None  # our own cache below
        resolver.retry_servfail = False
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        self._resolver = resolver
        self._cache: OrderedDict[tuple[str, str], tuple[DnsResult, float]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[DnsResult]] = {}
        self.cpu = CpuMeter()  # CPU of the lookups themselves (shared, so no plugin's)
        self.health = NameserverHealth(self.nameservers, port, lambda: self.origin, timeout)
        self.reset_stats()

    @classmethod
    def from_settings(cls, settings: DnsSettings) -> Resolver:
        if settings.nameservers is not None:
            nameservers, origin = settings.nameservers, "[dns] nameservers"
        else:
            nameservers, origin = system_nameservers(settings.resolv_conf)
        resolver = cls(
            nameservers=nameservers,
            port=settings.port,
            timeout=settings.timeout,
            cache_size=settings.cache_size,
        )
        resolver.origin = origin
        return resolver

    def describe(self) -> str:
        """The servers asked, and where that list came from: for the admin's eyes."""
        servers = ", ".join(_server_text(ns, self.port) for ns in self.nameservers)
        return f"{servers} (from {self.origin})"

    async def probe(self) -> DnsProbe:
        """Ask the servers once (NS of the root zone, bounded by `timeout`), uncached.

        Any answer, even NXDOMAIN, shows a server that talks DNS; a timeout or SERVFAIL means
        every SPF, DKIM and DMARC check would be a temporary error.
        """
        result = await self._ask(dns.name.root, dns.rdatatype.NS, ".", "NS")
        if result.status is DnsStatus.TIMEOUT:
            return DnsProbe(False, f"no answer from {self.describe()} within {self.timeout:g}s")
        if result.status is DnsStatus.SERVFAIL:
            return DnsProbe(
                False,
                f"{self.describe()} answered SERVFAIL for the root zone: it cannot resolve "
                f"({result.detail})",
            )
        return DnsProbe(True, f"{self.describe()} answers")

    # -- public API ---------------------------------------------------------------------------

    async def query(self, name: str, rdtype: str) -> DnsResult:
        """Look `name` up for `rdtype` ("A", "TXT", ...), from the cache when it is fresh."""
        rdtype = rdtype.upper()
        key = (normalize_name(name), rdtype)
        cached = self._cache_get(key)
        if cached is not None:
            self._hits += 1
            if cached.status.is_negative:
                self._negative_hits += 1
            return cached
        task = self._inflight.get(key)
        if task is not None:
            self._coalesced += 1
        else:
            self._misses += 1
            task = asyncio.ensure_future(metered(self._fetch(key), self.cpu))
            self._inflight[key] = task
            task.add_done_callback(self._forget_inflight)
        # shield: one caller giving up (its plugin timed out) must not cancel the others' query.
        return await asyncio.shield(task)

    def cached(self, name: str, rdtype: str) -> DnsResult | None:
        """The fresh cached result for `name` and `rdtype`, if any (counted as a hit); never
        sends anything. Lets synchronous code use what is known without awaiting."""
        result = self._cache_get((normalize_name(name), rdtype.upper()))
        if result is not None:
            self._hits += 1
            if result.status.is_negative:
                self._negative_hits += 1
        return result

    def _forget_inflight(self, task: asyncio.Task[DnsResult]) -> None:
        for key, running in list(self._inflight.items()):
            if running is task:
                del self._inflight[key]

    def stats(self) -> ResolverStats:
        return ResolverStats(
            hits=self._hits,
            misses=self._misses,
            negative_hits=self._negative_hits,
            coalesced=self._coalesced,
            queries=self._queries,
            timeouts=self._timeouts,
            servfails=self._servfails,
            evictions=self._evictions,
            size=len(self._cache),
        )

    def reset_stats(self) -> None:
        self._hits = self._misses = self._negative_hits = self._coalesced = 0
        self._queries = self._timeouts = self._servfails = self._evictions = 0

    def clear_cache(self) -> None:
        self._cache.clear()

    async def aclose(self) -> None:
        """Cancel lookups still in flight (at shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.health.aclose()

    # -- cache --------------------------------------------------------------------------------

    def _cache_get(self, key: tuple[str, str]) -> DnsResult | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        result, expires = entry
        if self._clock() >= expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return result

    def _cache_put(self, key: tuple[str, str], result: DnsResult) -> None:
        if self.cache_size == 0 or result.ttl <= 0:
            return
        if result.status is not DnsStatus.ANSWER and not result.status.is_negative:
            return
        self._cache[key] = (result, self._clock() + result.ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
            self._evictions += 1

    # -- the wire -----------------------------------------------------------------------------

    async def _fetch(self, key: tuple[str, str]) -> DnsResult:
        result = await self._lookup(*key)
        if result.status is DnsStatus.TIMEOUT:
            self._timeouts += 1
        elif result.status is DnsStatus.SERVFAIL:
            self._servfails += 1
        self.health.noticed(result.is_temporary)
        self._cache_put(key, result)
        return result

    async def _lookup(self, name: str, rdtype: str) -> DnsResult:
        def failed(status: DnsStatus, detail: str, ttl: float = 0.0) -> DnsResult:
            return DnsResult(name, rdtype, status, ttl=ttl, detail=detail)

        try:
            qtype = dns.rdatatype.from_text(rdtype)
        except dns.exception.DNSException:
            return failed(DnsStatus.INVALID, f"unknown record type {rdtype}")
        qname = _to_name(name)
        if qname is None:
            return failed(DnsStatus.INVALID, "not a name DNS can carry")
        return await self._ask(qname, qtype, name, rdtype)

    async def _ask(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, name: str, rdtype: str
    ) -> DnsResult:
        """Send one question (retransmissions and TCP fallback included) and classify the
        outcome; the only place that talks to the network."""

        def failed(status: DnsStatus, detail: str, ttl: float = 0.0) -> DnsResult:
            return DnsResult(name, rdtype, status, ttl=ttl, detail=detail)

        self._queries += 1
        try:
            answer = await self._resolver.resolve(
                qname, qtype, search=False, raise_on_no_answer=False, lifetime=self.timeout
            )
        except dns.resolver.NXDOMAIN as exc:
            responses = cast(
                dict[dns.name.Name, dns.message.Message], exc.kwargs.get("responses") or {}
            )
            response = responses.get(qname)
            ttl = 0.0
            if isinstance(response, dns.message.QueryMessage):
                try:
                    ttl = self._negative_ttl(response, response.canonical_name())
                except dns.exception.DNSException:  # a looping chain to nowhere: no caching
                    ttl = 0.0
            return failed(DnsStatus.NXDOMAIN, "name does not exist", ttl)
        except dns.exception.Timeout:
            return failed(DnsStatus.TIMEOUT, f"no answer in {self.timeout:g}s")
        except dns.resolver.NoNameservers as exc:
            errors = exc.kwargs.get("errors") or []
            if errors and all(isinstance(e[3], dns.message.ChainTooLong) for e in errors):
                # A CNAME loop (or an absurd chain): the name exists and leads to no data. Not
                # temporary: asking again gives the same loop (RFC 1034 3.6.2).
                return failed(DnsStatus.NODATA, "CNAME chain too long or looping")
            return failed(DnsStatus.SERVFAIL, _short(exc))
        except dns.resolver.YXDOMAIN:
            return failed(DnsStatus.NXDOMAIN, "name too long after DNAME substitution")
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            return failed(DnsStatus.SERVFAIL, f"{type(exc).__name__}: {_short(exc)}")
        canonical = _text(answer.canonical_name)
        chain = answer.chaining_result
        if answer.rrset is None:
            ttl = self._negative_ttl(answer.response, answer.canonical_name, chain.cnames)
            return DnsResult(
                name, rdtype, DnsStatus.NODATA, ttl=ttl, canonical_name=canonical, detail="no data"
            )
        ttl = min(float(chain.minimum_ttl), self.max_ttl)
        return DnsResult(
            name,
            rdtype,
            DnsStatus.ANSWER,
            records=tuple(answer.rrset),
            ttl=ttl,
            canonical_name=canonical,
        )

    def _negative_ttl(
        self,
        response: dns.message.Message,
        qname: dns.name.Name,
        cnames: Sequence[dns.rrset.RRset] = (),
    ) -> float:
        """RFC 2308 section 5: min(SOA TTL, SOA MINIMUM) of the SOA over the name, capped."""
        for rrset in response.authority:
            if rrset.rdtype != dns.rdatatype.SOA or not qname.is_subdomain(rrset.name):
                continue
            for rdata in rrset:
                soa = cast(SOA, rdata)
                ttl = min(rrset.ttl, soa.minimum, *(c.ttl for c in cnames))
                return float(min(ttl, self.max_negative_ttl))
        return 0.0  # RFC 2308 section 5: no SOA, no negative caching


@dataclass(frozen=True, slots=True)
class DnsProbe:
    """What `Resolver.probe` found: whether the servers answer, in one line naming them."""

    answered: bool
    text: str


class OfflineResolver(Resolver):
    """Every valid name answers NXDOMAIN ("not listed", "no record") and nothing is sent.

    For measuring mail offline (`mailgate scan --dns-off`): SPF, DKIM and DMARC read "none"
    and every list "not listed", deterministically, on a machine with no network at all.
    Names DNS cannot carry stay INVALID, as with a real resolver.
    """

    def __init__(self, timeout: float = 5.0) -> None:
        super().__init__(nameservers=("0.0.0.0",), timeout=timeout, cache_size=0)
        self.origin = "--dns-off"

    def describe(self) -> str:
        return "no server: DNS is off, every name answers NXDOMAIN"

    async def _ask(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, name: str, rdtype: str
    ) -> DnsResult:
        return DnsResult(name, rdtype, DnsStatus.NXDOMAIN, detail="DNS off: not looked up")


def system_nameservers(resolv_conf: Path) -> tuple[tuple[str, ...], str]:
    """The nameservers of a resolv.conf file as dnspython reads it, and where they came from.

    A missing or unreadable file, or one without nameserver lines, means this machine
    (127.0.0.1 and ::1), which is what the C library's resolver does (resolv.conf(5)).
    """
    reader = dns.resolver.Resolver(configure=False)
    try:
        reader.read_resolv_conf(str(resolv_conf))
    except (dns.resolver.NoResolverConfiguration, OSError, ValueError) as exc:
        reason = _short(exc).rstrip(".")
        return LOCAL_NAMESERVERS, f"{resolv_conf}: {reason}; this machine, as the C library does"
    servers = tuple(ns for ns in reader.nameservers if isinstance(ns, str))
    if not servers:
        return LOCAL_NAMESERVERS, f"{resolv_conf}: no usable nameserver; this machine"
    return servers, str(resolv_conf)


def _server_text(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
