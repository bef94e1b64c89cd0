"""SPF (RFC 7208) on the gateway's async resolver: evaluation, typed results, Received-SPF.

The SPF logic is pyspf's (`spf.query`), which was written for blocking DNS: it calls the module
function `spf.DNSLookup(name, qtype, strict, timeout)` synchronously. We never let it block.
`spf.DNSLookup` is replaced by a function that only answers from the answers this evaluation
already fetched, and we *replay* the evaluation:

1. run pyspf (synchronously, on the event loop: it is a short, CPU-only parse) against the
   answers fetched so far, and whatever the resolver's cache holds fresh;
2. if it asked for a name we do not have yet, that run is void: the lookup raised, the name was
   noted; we fetch every noted name with the async resolver (concurrently, and prefetching the
   addresses of MX and PTR targets, which pyspf will ask for next), and go to 1;
3. a run that asked for nothing new is the result.

Each run is deterministic given the answers (the %{t} macro is pinned), so the last run is
exactly what pyspf computes with live DNS, with its RFC 7208 limits intact (10 DNS-querying
terms, 10 MX/PTR names, 2 void lookups). pyspf swallows some exceptions (a bare `except` around
`exp=`), which is why a run is trusted only when no lookup in it missed, not merely when none
escaped. Runs are O(terms) each and the number of rounds is bounded by the lookup limits (with
a warm cache there is one run: about 0.35 ms of CPU for a record with three includes and an
mx), and no thread is ever blocked on DNS. Why not pyspf in a worker thread calling back into
the loop: every check would hold a pool thread for all its DNS round trips (the default pool
has a few dozen, and SPF waits on the network), and a check the chain gave up on could not be
cancelled. The replacement lookup is
bound through a ContextVar: pyspf used anywhere else in the process gets a temperror, never a
blocking query to the system resolver.

A DNS timeout or SERVFAIL is a temperror (RFC 7208 2.6.6); NXDOMAIN and NODATA are "no
records" (void lookups). Identities are checked before anything is looked up: a MAIL FROM
domain or HELO name that is not a multi-label LDH domain gives "none" without a query
(RFC 7208 4.3), flagged as an invalid identity so policy can score it.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import spf as pyspf

from gateway.dns import DnsResult, DnsStatus, Resolver, normalize_name
from gateway.folding import fold_items
from gateway.text import printable, quoted_string, rfc5322_comment

log = logging.getLogger("mailgate.spf")

MAX_ROUNDS = 64  # replays per evaluation; the RFC 7208 limits keep real ones far below
DEFAULT_LIFETIME = 20.0  # seconds for one whole evaluation (RFC 7208 4.6.4 suggests 20)
HELO_REUSE_SECONDS = 60.0  # how long a HELO result is reused for the same client IP and name
HELO_REUSE_ENTRIES = 4096
_MAX_PREFETCH = 10  # MX/PTR targets whose addresses are fetched ahead (RFC 7208 4.6.4)


class SpfVerdict(enum.Enum):
    """The seven results of check_host() (RFC 7208 2.6)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class SpfIdentity(enum.Enum):
    """Which identity was checked (RFC 7208 2.3, 2.4)."""

    MAILFROM = "mailfrom"
    HELO = "helo"


@dataclass(frozen=True, slots=True)
class SpfEvaluation:
    """One check_host() evaluation.

    `domain` is the domain checked ("" when the identity was unusable); `sender` is
    <sender> as RFC 7208 4.1 defines it (postmaster@HELO for a null reverse-path).
    `explanation` comes from the domain's exp= record on fail, and is the domain owner's text:
    render it with care. `dns_lookups` counts the distinct lookups used (sent or cached).
    """

    identity: SpfIdentity
    result: SpfVerdict
    domain: str
    sender: str
    client_ip: str
    helo: str
    identity_valid: bool = True
    reason: str = ""
    explanation: str = ""
    mechanism: str = ""
    dns_lookups: int = 0


@dataclass(frozen=True, slots=True)
class SpfResult:
    """What the SPF stage found for one transaction; DMARC reads `mailfrom` (RFC 7489 4.1).

    `mailfrom` is the "MAIL FROM" identity, which RFC 7208 2.4 defines as postmaster@HELO when
    the reverse-path is null; `helo` is the separate HELO check (None when HELO was unusable or
    the reverse-path was null, since then `mailfrom` already is that check).
    """

    mailfrom: SpfEvaluation
    helo: SpfEvaluation | None = None
    null_sender: bool = False


# -- identities ---------------------------------------------------------------------------------

_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def valid_domain(name: str) -> bool:
    """A multi-label LDH domain name (RFC 1123 2.1, RFC 7208 4.3), one final dot allowed.

    No domain literals, no IP addresses, no underscores, no non-ASCII (U-labels): such an
    identity is a finding, never a lookup.
    """
    name = name.removesuffix(".")
    if not name or len(name) > 253 or not name.isascii():
        return False
    labels = name.split(".")
    if len(labels) < 2:
        return False
    if not all(_LDH_LABEL.fullmatch(label) for label in labels):
        return False
    return not labels[-1].isdigit()  # "1.2.3.4" is an address, not a domain


def split_sender(mail_from: str) -> tuple[str, str] | None:
    """(local-part, domain) of a reverse-path; the local-part defaults to "postmaster".

    The domain is what follows the last "@" (a quoted local-part may contain "@").
    """
    local, at, domain = mail_from.rpartition("@")
    if not at:
        return None
    return (local or "postmaster"), domain


# -- the pyspf seam -----------------------------------------------------------------------------


class _Pending(Exception):
    """Raised inside pyspf when it asks for a name this evaluation has not fetched yet."""


class _Replay:
    """The answers one evaluation has, and the names its last run asked for in vain."""

    def __init__(self, answers: dict[tuple[str, str], DnsResult], resolver: Resolver) -> None:
        self.answers = answers
        self.resolver = resolver
        self.missing: list[tuple[str, str]] = []

    def lookup(self, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        key = (normalize_name(name), qtype.upper())
        result = self.answers.get(key)
        if result is None:
            # What the resolver's cache already knows needs no new round.
            result = self.resolver.cached(*key)
            if result is not None:
                self.answers[key] = result
        if result is None:
            if key not in self.missing:
                self.missing.append(key)
            raise _Pending(key)
        if result.status.is_temporary:
            if key[1] == "PTR":
                # RFC 7208 5.5: a DNS error in the PTR lookup makes "ptr" not match; 7.3: the
                # "p" macro becomes "unknown". pyspf would turn it into a temperror instead.
                return []
            raise pyspf.TempError(f"DNS {result.status.value} looking up {key[0]} {key[1]}")
        if result.status is not DnsStatus.ANSWER:
            return []  # NXDOMAIN, NODATA, or a name DNS cannot carry: no records
        out_key = (key[0], key[1])
        if key[1] in ("A", "AAAA"):
            return [(out_key, address) for address in result.addresses()]
        if key[1] == "MX":
            return [(out_key, mx) for mx in result.mx()]
        if key[1] == "PTR":
            return [(out_key, target) for target in result.targets()]
        if key[1] in ("TXT", "SPF"):
            return [(out_key, strings) for strings in result.txt_strings()]
        return []


_CURRENT: contextvars.ContextVar[_Replay | None] = contextvars.ContextVar(
    "mailgate_spf_replay", default=None
)


def _dns_lookup(
    name: str, qtype: str, strict: object = True, timeout: object = None
) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNS hook: answers only from the current evaluation, never from the network."""
    replay = _CURRENT.get()
    if replay is None:
        raise pyspf.TempError("DNS lookups outside mailgate's SPF evaluator are disabled")
    return replay.lookup(name, qtype)


pyspf.DNSLookup = _dns_lookup


# -- evaluation ---------------------------------------------------------------------------------


class SpfEvaluator:
    """check_host() for MAIL FROM and HELO over the gateway's resolver."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        receiver: str = "unknown",
        lifetime: float = DEFAULT_LIFETIME,
        default_explanation: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.receiver = receiver
        self.lifetime = lifetime
        self.default_explanation = default_explanation
        self._clock = clock
        # HELO results by (client IP, HELO name): a client sending several messages (over one
        # connection or a few in a row) gets its HELO evaluated once a minute, not per message.
        self._helo_seen: OrderedDict[tuple[str, str], tuple[float, SpfEvaluation]] = OrderedDict()

    async def check(self, client_ip: str, mail_from: str, helo: str | None) -> SpfResult:
        """Both identities, concurrently: the MAIL FROM one, and HELO when it is distinct."""
        helo_name = helo or ""
        if not mail_from:
            return SpfResult(
                mailfrom=await self.check_mailfrom(client_ip, mail_from, helo_name),
                null_sender=True,
            )
        if valid_domain(helo_name):
            known = self._known_helo(client_ip, helo_name)
            if known is not None:
                mailfrom = await self.check_mailfrom(client_ip, mail_from, helo_name)
                return SpfResult(mailfrom=mailfrom, helo=known)
            mailfrom, helo_check = await asyncio.gather(
                self.check_mailfrom(client_ip, mail_from, helo_name),
                self.check_helo(client_ip, helo_name),
            )
            self._remember_helo(client_ip, helo_name, helo_check)
            return SpfResult(mailfrom=mailfrom, helo=helo_check)
        return SpfResult(mailfrom=await self.check_mailfrom(client_ip, mail_from, helo_name))

    def _known_helo(self, client_ip: str, helo: str) -> SpfEvaluation | None:
        key = (client_ip, helo.lower())
        seen = self._helo_seen.get(key)
        if seen is None:
            return None
        if self._clock() - seen[0] > HELO_REUSE_SECONDS:
            del self._helo_seen[key]
            return None
        self._helo_seen.move_to_end(key)
        return seen[1]

    def _remember_helo(self, client_ip: str, helo: str, evaluation: SpfEvaluation) -> None:
        if evaluation.result is SpfVerdict.TEMPERROR:
            return  # a DNS failure: ask again next time
        self._helo_seen[(client_ip, helo.lower())] = (self._clock(), evaluation)
        if len(self._helo_seen) > HELO_REUSE_ENTRIES:
            self._helo_seen.popitem(last=False)

    async def check_mailfrom(self, client_ip: str, mail_from: str, helo: str) -> SpfEvaluation:
        """The "MAIL FROM" identity (RFC 7208 2.4): postmaster@HELO for a null reverse-path."""
        if not mail_from:
            sender, local, domain = f"postmaster@{helo}", "postmaster", helo
        else:
            parts = split_sender(mail_from)
            if parts is None:
                return self._unusable(
                    SpfIdentity.MAILFROM, mail_from, "", client_ip, helo, "no domain in sender"
                )
            local, domain = parts
            sender = f"{local}@{domain}"
        return await self.check_host(SpfIdentity.MAILFROM, client_ip, sender, local, domain, helo)

    async def check_helo(self, client_ip: str, helo: str) -> SpfEvaluation:
        """The "HELO" identity (RFC 7208 2.3)."""
        sender = f"postmaster@{helo}"
        return await self.check_host(SpfIdentity.HELO, client_ip, sender, "postmaster", helo, helo)

    async def check_host(
        self,
        identity: SpfIdentity,
        client_ip: str,
        sender: str,
        local: str,
        domain: str,
        helo: str,
    ) -> SpfEvaluation:
        """RFC 7208 4: check_host(<ip>, <domain>, <sender>), after validating the domain."""
        if not valid_domain(domain):
            return self._unusable(
                identity, sender, domain, client_ip, helo, "not a valid domain name"
            )
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return self._unusable(identity, sender, domain, client_ip, helo, "no client IP")
        domain = domain.removesuffix(".").lower()
        answers: dict[tuple[str, str], DnsResult] = {}
        family = "AAAA" if address.version == 6 and address.ipv4_mapped is None else "A"
        try:
            async with asyncio.timeout(self.lifetime):
                return await self._replay(
                    identity, client_ip, sender, local, domain, helo, family, answers
                )
        except TimeoutError:
            return self._failed(
                identity,
                SpfVerdict.TEMPERROR,
                sender,
                domain,
                client_ip,
                helo,
                f"SPF evaluation took longer than {self.lifetime:g}s",
                len(answers),
            )

    async def _replay(
        self,
        identity: SpfIdentity,
        client_ip: str,
        sender: str,
        local: str,
        domain: str,
        helo: str,
        family: str,
        answers: dict[tuple[str, str], DnsResult],
    ) -> SpfEvaluation:
        pinned_time = str(int(time.time()))
        for _ in range(MAX_ROUNDS):
            replay = _Replay(answers, self.resolver)
            token = _CURRENT.set(replay)
            try:
                query = pyspf.query(
                    i=client_ip, s=sender, h=helo or "unknown", receiver=self.receiver, strict=True
                )
                # pyspf splits at the first "@"; RFC 5321 allows "@" in a quoted local-part.
                query.l, query.o, query.d, query.t = local, domain, domain, pinned_time
                if self.default_explanation is not None:
                    query.set_default_explanation(self.default_explanation)
                try:
                    res, _code, explanation = query.check()
                except _Pending:
                    res, explanation = None, ""
                except Exception as exc:  # a pyspf bug met on a hostile record
                    if not replay.missing:
                        log.exception("pyspf failed on %s", printable(domain))
                        return self._failed(
                            identity,
                            SpfVerdict.PERMERROR,
                            sender,
                            domain,
                            client_ip,
                            helo,
                            f"SPF evaluation failed: {type(exc).__name__}",
                            len(answers),
                        )
            finally:
                _CURRENT.reset(token)
            if not replay.missing:
                return self._finish(
                    identity,
                    query,
                    str(res),
                    str(explanation),
                    sender,
                    domain,
                    client_ip,
                    helo,
                    len(answers),
                )
            await self._fetch(replay.missing, answers, family)
        return self._failed(
            identity,
            SpfVerdict.TEMPERROR,
            sender,
            domain,
            client_ip,
            helo,
            f"more than {MAX_ROUNDS} rounds of DNS lookups",
            len(answers),
        )

    async def _fetch(
        self,
        keys: Sequence[tuple[str, str]],
        answers: dict[tuple[str, str], DnsResult],
        family: str,
    ) -> None:
        results = await self._query_all(keys)
        answers.update(results)
        # pyspf resolves the exchanges of an MX answer and the targets of a PTR answer next,
        # one at a time: fetch their addresses now, concurrently, to save rounds.
        ahead: list[tuple[str, str]] = []
        for (_name, qtype), result in results.items():
            if result.status is not DnsStatus.ANSWER:
                continue
            if qtype == "MX":
                names = [exchange for _, exchange in sorted(result.mx())]
            elif qtype == "PTR":
                names = result.targets()
            else:
                continue
            for target in names[:_MAX_PREFETCH]:
                key = (normalize_name(target), family)
                if target and key not in answers and key not in ahead:
                    ahead.append(key)
        if ahead:
            answers.update(await self._query_all(ahead))

    async def _query_all(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], DnsResult]:
        keys = list(keys)
        results = await asyncio.gather(*(self.resolver.query(n, t) for n, t in keys))
        return dict(zip(keys, results, strict=True))

    def _finish(
        self,
        identity: SpfIdentity,
        query: Any,
        res: str,
        explanation: str,
        sender: str,
        domain: str,
        client_ip: str,
        helo: str,
        dns_lookups: int,
    ) -> SpfEvaluation:
        try:
            verdict = SpfVerdict(res)
        except ValueError:  # "ambiguous" exists only in pyspf's harsh mode, which we never use
            verdict = SpfVerdict.PERMERROR
        reason = ""
        if verdict in (SpfVerdict.PERMERROR, SpfVerdict.TEMPERROR):
            reason = str(getattr(query, "prob", "") or explanation)
        elif verdict in (SpfVerdict.FAIL, SpfVerdict.SOFTFAIL):
            reason = explanation
        mechanism = getattr(query, "mechanism", None)
        return SpfEvaluation(
            identity=identity,
            result=verdict,
            domain=domain,
            sender=sender,
            client_ip=client_ip,
            helo=helo,
            reason=reason,
            explanation=explanation if verdict is SpfVerdict.FAIL else "",
            mechanism=str(mechanism) if mechanism else "",
            dns_lookups=dns_lookups,
        )

    @staticmethod
    def _failed(
        identity: SpfIdentity,
        verdict: SpfVerdict,
        sender: str,
        domain: str,
        client_ip: str,
        helo: str,
        why: str,
        dns_lookups: int,
    ) -> SpfEvaluation:
        return SpfEvaluation(
            identity=identity,
            result=verdict,
            domain=domain,
            sender=sender,
            client_ip=client_ip,
            helo=helo,
            reason=why,
            dns_lookups=dns_lookups,
        )

    @staticmethod
    def _unusable(
        identity: SpfIdentity, sender: str, domain: str, client_ip: str, helo: str, why: str
    ) -> SpfEvaluation:
        return SpfEvaluation(
            identity=identity,
            result=SpfVerdict.NONE,
            domain=domain,
            sender=sender,
            client_ip=client_ip,
            helo=helo,
            identity_valid=False,
            reason=why,
        )


# -- Received-SPF (RFC 7208 9.1) ------------------------------------------------------------------

_HEADER_RESULT = {
    SpfVerdict.PASS: "Pass",
    SpfVerdict.FAIL: "Fail",
    SpfVerdict.SOFTFAIL: "SoftFail",
    SpfVerdict.NEUTRAL: "Neutral",
    SpfVerdict.NONE: "None",
    SpfVerdict.TEMPERROR: "TempError",
    SpfVerdict.PERMERROR: "PermError",
}
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_NOT_SAFE = re.compile(r"[^\x20-\x7e]")


def _safe(value: str, limit: int = 200) -> str:
    """Printable ASCII only (controls, CR/LF and non-ASCII become "?"), bounded in length."""
    text = _NOT_SAFE.sub("?", value)
    return text if len(text) <= limit else text[:limit] + "..."


def _value(value: str) -> str:
    """A key-value-pair value: dot-atom as is, anything else a quoted-string (RFC 5322 3.2.4)."""
    text = _safe(value)
    if _DOT_ATOM.fullmatch(text):
        return text
    return quoted_string(text)


def _comment(value: str) -> str:
    """A comment with "(", ")" and "\\" escaped as quoted-pairs (RFC 5322 3.2.2)."""
    return rfc5322_comment(_safe(value, 400))


def _header_comment(check: SpfEvaluation, receiver: str) -> str:
    who = check.domain or check.sender
    ip = check.client_ip
    texts = {
        SpfVerdict.PASS: f"domain of {who} designates {ip} as permitted sender",
        SpfVerdict.FAIL: f"domain of {who} does not designate {ip} as permitted sender",
        SpfVerdict.SOFTFAIL: (
            f"transitioning domain of {who} does not designate {ip} as permitted sender"
        ),
        SpfVerdict.NEUTRAL: f"{ip} is neither permitted nor denied by domain of {who}",
        SpfVerdict.NONE: (
            f"{who} is not a valid domain for SPF"
            if not check.identity_valid
            else f"domain of {who} does not publish SPF"
        ),
        SpfVerdict.TEMPERROR: f"temporary error in processing during lookup of {who}",
        SpfVerdict.PERMERROR: f"permanent error in processing domain of {who}",
    }
    return f"{receiver}: {texts[check.result]}"


def received_spf(check: SpfEvaluation, receiver: str) -> bytes:
    """The Received-SPF header field (RFC 7208 9.1) for one check, folded, ending in CRLF.

    Every value from the client or from DNS is reduced to printable ASCII and quoted, so a
    hostile sender address, HELO or SPF record cannot inject a field or a key of its own.
    """
    # A comment may be folded between its words (RFC 5322 3.2.2: FWS within ccontent).
    comment = _comment(_header_comment(check, _safe(receiver))).split(" ")
    items = [_HEADER_RESULT[check.result], *comment]
    pairs: list[tuple[str, str]] = [("client-ip", check.client_ip)]
    if check.identity is SpfIdentity.MAILFROM:
        pairs.append(("envelope-from", check.sender))
    if check.helo:
        pairs.append(("helo", check.helo))
    pairs.append(("receiver", receiver))
    if check.mechanism:
        pairs.append(("mechanism", check.mechanism))
    if check.result in (SpfVerdict.PERMERROR, SpfVerdict.TEMPERROR) and check.reason:
        pairs.append(("problem", check.reason))
    pairs.append(("identity", check.identity.value))
    items += [f"{key}={_value(value)};" for key, value in pairs]
    items[-1] = items[-1].removesuffix(";")
    return fold_items("Received-SPF", items)
