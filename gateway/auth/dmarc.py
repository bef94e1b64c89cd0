"""DMARC (RFC 7489) on the gateway's async resolver: the author's domain, its policy, alignment.

For each author domain (normally exactly one; gateway.rfc5322 gives several when the From is
multiple or malformed, and then the strictest outcome counts, so no parser disagreement can pick
the lenient one):

1. Validate the domain (multi-label LDH after IDNA): an invalid one is never looked up.
2. Policy discovery (6.6.3): `_dmarc.<domain>` TXT; with no DMARC record there, the
   Organizational Domain's (public suffix list + 1 label, `publicsuffixlist`'s bundled list: no
   network at run time). Several DMARC records at one name: permerror. A timeout or SERVFAIL:
   temperror (the message is deferred, never passed).
3. Alignment (3.1): a DKIM signature that *gives credit* (pass, no weak key, no `l=` leaving
   the body unsigned) whose `d=` aligns, or an SPF pass for the MAIL FROM domain (postmaster@HELO
   for a null sender, as RFC 7208 2.4 defines it) that aligns; strict is equality, relaxed is the
   same Organizational Domain.
4. On failure the requested policy is `p`, or `sp` when the record came from the
   Organizational Domain for a subdomain; `pct` < 100 applies it to that share of failing mail
   and the next milder policy to the rest (6.6.4; reject -> quarantine -> none). The random
   source is injected, so tests are deterministic.

A failure where an aligned DKIM key or the SPF check got a temporary DNS error is a temperror,
not a fail: retrying may pass, and failing it with p=reject would bounce good mail.

When From names no usable author (missing, no address, a group, several addresses or fields,
not well formed), a reader may show Sender ("on behalf of") or Resent-From instead, so the
domains of Sender, Resent-From and Resent-Sender are evaluated as well (`fallback_identities`):
a victim's p=reject then bites as it would in From. A well-formed From is evaluated alone, as
RFC 7489 says (lists and "on behalf of" senders put their own address in Sender).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import random as random_module
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from publicsuffixlist import PublicSuffixList

from gateway.auth.arc import ArcResult, ArcVerdict
from gateway.auth.dkim import DkimResult, DkimVerdict
from gateway.auth.results import parse_results
from gateway.auth.spf import SpfResult, SpfVerdict, valid_domain
from gateway.dns import DnsStatus, Resolver
from gateway.message import HeaderField
from gateway.rfc5322 import AuthorInfo, loose_domains, parse_address_list, unfold

DEFAULT_LIFETIME = 10.0
MAX_DOMAINS = 10  # author domains evaluated per message (From, then Sender and Resent-*)
# From problems (gateway.rfc5322.AuthorInfo) that leave a reader to show another identity.
ODD_FROM = frozenset(
    {"missing", "no_address", "group", "multiple", "multiple_addresses", "malformed"}
)
# The identities a reader may show instead, in the order they are evaluated.
FALLBACK_FIELDS = ("sender", "resent-from", "resent-sender")
_DMARC_V = re.compile(rb"^\s*v\s*=\s*DMARC1\s*(;|$)")


class DmarcPolicy(enum.Enum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    def milder(self) -> DmarcPolicy:
        return {
            DmarcPolicy.REJECT: DmarcPolicy.QUARANTINE,
            DmarcPolicy.QUARANTINE: DmarcPolicy.NONE,
            DmarcPolicy.NONE: DmarcPolicy.NONE,
        }[self]


class DmarcVerdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    NONE = "none"  # no DMARC record: DMARC does not apply
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    BAD_DOMAIN = "bad_domain"  # the author domain is not a valid domain name: never looked up


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    policy: DmarcPolicy
    subdomain_policy: DmarcPolicy | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True, slots=True)
class DomainEvaluation:
    """DMARC for one author domain."""

    domain: str
    verdict: DmarcVerdict
    org_domain: str = ""
    record_domain: str = ""
    record: DmarcRecord | None = None
    policy: DmarcPolicy | None = None  # requested by the record for this domain (p or sp)
    applied: DmarcPolicy | None = None  # after pct sampling; None unless verdict is FAIL
    sampled_out: bool = False
    dkim_aligned: tuple[str, ...] = ()
    spf_aligned: bool = False
    unaligned_auth: bool = False  # SPF or DKIM passed, but for another organisation
    arc_override: str = ""  # the trusted sealer whose chain vouched for the message
    reason: str = ""
    identity: str = "from"  # the field the domain came from: "from", "sender", "resent-from"...

    @property
    def severity(self) -> int:
        """Which outcome is the strictest: reject > temperror > quarantine > none ... > pass."""
        if self.verdict is DmarcVerdict.FAIL and not self.arc_override:
            return {DmarcPolicy.REJECT: 7, DmarcPolicy.QUARANTINE: 5, DmarcPolicy.NONE: 4}[
                self.applied or DmarcPolicy.NONE
            ]
        return {
            DmarcVerdict.TEMPERROR: 6,
            DmarcVerdict.FAIL: 3,  # overridden by ARC
            DmarcVerdict.BAD_DOMAIN: 3,
            DmarcVerdict.PERMERROR: 2,
            DmarcVerdict.NONE: 1,
            DmarcVerdict.PASS: 0,
        }[self.verdict]


@dataclass(frozen=True, slots=True)
class DmarcResult:
    author: AuthorInfo
    evaluations: tuple[DomainEvaluation, ...] = ()

    @property
    def worst(self) -> DomainEvaluation | None:
        return max(self.evaluations, key=lambda e: e.severity, default=None)


# -- organisational domain and alignment ------------------------------------------------------


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label (the domain itself if it is a suffix)."""
    name = domain.lower().rstrip(".")
    org: str | None = _psl().privatesuffix(name)
    return org or name


def aligned(identifier: str, author: str, mode: str) -> bool:
    a, b = identifier.lower().rstrip("."), author.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def ascii_domain(domain: str) -> str | None:
    """The A-label form of an author domain, or None if it cannot be one."""
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return name if valid_domain(name) else None


# -- records ---------------------------------------------------------------------------------------


def parse_record(text: bytes) -> DmarcRecord | str:
    """A DMARC record, or why it cannot be used (6.3; unknown tags are ignored)."""
    tags: dict[str, str] = {}
    for part in text.split(b";"):
        key, eq, value = part.partition(b"=")
        if not eq:
            if part.strip():
                return "malformed tag"
            continue
        tags.setdefault(
            key.strip().decode("ascii", "replace").lower(), value.strip().decode("ascii", "replace")
        )

    def policy(name: str) -> DmarcPolicy | None:
        try:
            return DmarcPolicy(tags[name].lower())
        except (KeyError, ValueError):
            return None

    p = policy("p")
    if p is None:
        # 6.6.3 step 6: no valid p= but a rua= is there: act as if p=none.
        if "rua" in tags and "mailto:" in tags["rua"].lower():
            p = DmarcPolicy.NONE
        else:
            return "no valid p= tag"
    sp = policy("sp")
    if "sp" in tags and sp is None:
        sp = p  # an invalid sp: use p, never something milder than the publisher asked
    pct = 100
    if "pct" in tags:
        try:
            pct = min(100, max(0, int(tags["pct"])))
        except ValueError:
            pct = 100
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    return DmarcRecord(
        policy=p,
        subdomain_policy=sp,
        adkim=adkim if adkim in ("r", "s") else "r",
        aspf=aspf if aspf in ("r", "s") else "r",
        pct=pct,
    )


# -- evaluation ------------------------------------------------------------------------------------


class DmarcEvaluator:
    """DMARC for a message's author domain(s) over the gateway's resolver."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.resolver = resolver
        self.lifetime = lifetime
        self.random = random

    async def evaluate(
        self,
        author: AuthorInfo,
        spf: SpfResult | None,
        dkim: DkimResult | None,
        fallback: Sequence[tuple[str, str]] = (),
    ) -> DmarcResult:
        """DMARC for every author domain, then for each (field, domain) of `fallback` (see
        `fallback_identities`) not among them; at most MAX_DOMAINS in all."""
        wanted = [("from", d) for d in author.domains]
        seen = set(author.domains)
        for identity, domain in fallback:
            if domain not in seen:
                seen.add(domain)
                wanted.append((identity, domain))
        wanted = wanted[:MAX_DOMAINS]
        try:
            async with asyncio.timeout(self.lifetime):
                evaluations = await asyncio.gather(
                    *(self.evaluate_domain(d, spf, dkim) for _, d in wanted)
                )
        except TimeoutError:
            evaluations = [
                DomainEvaluation(d, DmarcVerdict.TEMPERROR, reason="DMARC took too long")
                for _, d in wanted
            ]
        return DmarcResult(
            author,
            tuple(
                ev if identity == "from" else _replace(ev, identity=identity)
                for (identity, _), ev in zip(wanted, evaluations, strict=True)
            ),
        )

    async def evaluate_domain(
        self, written: str, spf: SpfResult | None, dkim: DkimResult | None
    ) -> DomainEvaluation:
        domain = ascii_domain(written)
        if domain is None:
            return DomainEvaluation(
                written[:100], DmarcVerdict.BAD_DOMAIN, reason="not a valid domain name"
            )
        org = organizational_domain(domain)
        spf_domain, spf_status = _spf_identity(spf)
        credited = dkim.credited_domains() if dkim else []
        unaligned = bool((spf_status is SpfVerdict.PASS and spf_domain) or credited) and not (
            any(aligned(d, domain, "r") for d in credited)
            or (spf_status is SpfVerdict.PASS and aligned(spf_domain, domain, "r"))
        )
        found = await self._discover(domain, org)
        if isinstance(found, DomainEvaluation):
            return _replace(found, org_domain=org, unaligned_auth=unaligned)
        record_domain, record = found
        from_org = record_domain != domain
        policy = (record.subdomain_policy or record.policy) if from_org else record.policy
        dkim_ok = tuple(d for d in credited if aligned(d, domain, record.adkim))
        spf_ok = spf_status is SpfVerdict.PASS and aligned(spf_domain, domain, record.aspf)
        base = DomainEvaluation(
            domain,
            DmarcVerdict.PASS,
            org_domain=org,
            record_domain=record_domain,
            record=record,
            policy=policy,
            dkim_aligned=dkim_ok,
            spf_aligned=spf_ok,
            unaligned_auth=unaligned,
        )
        if dkim_ok or spf_ok:
            return base
        temporary = [
            f"DKIM key of {s.domain}"
            for s in (dkim.signatures if dkim else ())
            if s.result is DkimVerdict.TEMPERROR and aligned(s.domain, domain, record.adkim)
        ]
        if spf_status is SpfVerdict.TEMPERROR and aligned(spf_domain, domain, record.aspf):
            temporary.append(f"SPF of {spf_domain}")
        if temporary:
            return _replace(
                base,
                verdict=DmarcVerdict.TEMPERROR,
                reason=f"no aligned pass; temporary error in {', '.join(temporary)}",
            )
        applied, sampled = policy, False
        if record.pct < 100 and self.random() * 100 >= record.pct:
            applied, sampled = policy.milder(), True
        return _replace(
            base,
            verdict=DmarcVerdict.FAIL,
            applied=applied,
            sampled_out=sampled,
            reason="no aligned SPF or DKIM pass",
        )

    async def _discover(self, domain: str, org: str) -> tuple[str, DmarcRecord] | DomainEvaluation:
        for name in (domain, org) if org != domain else (domain,):
            result = await self.resolver.query(f"_dmarc.{name}", "TXT")
            if result.is_temporary:
                return DomainEvaluation(
                    domain,
                    DmarcVerdict.TEMPERROR,
                    record_domain=name,
                    reason=f"_dmarc.{name}: {result.status.value}",
                )
            records = (
                [t for t in result.texts() if _DMARC_V.match(t)]
                if result.status is DnsStatus.ANSWER
                else []
            )
            if len(records) > 1:
                return DomainEvaluation(
                    domain,
                    DmarcVerdict.PERMERROR,
                    record_domain=name,
                    reason=f"_dmarc.{name}: several DMARC records",
                )
            if records:
                parsed = parse_record(records[0])
                if isinstance(parsed, str):
                    return DomainEvaluation(
                        domain,
                        DmarcVerdict.PERMERROR,
                        record_domain=name,
                        reason=f"_dmarc.{name}: {parsed}",
                    )
                return name, parsed
        return DomainEvaluation(domain, DmarcVerdict.NONE, reason="no DMARC record")


def fallback_identities(
    author: AuthorInfo, fields: Sequence[HeaderField]
) -> tuple[tuple[str, str], ...]:
    """(field name, domain) of every Sender, Resent-From and Resent-Sender address, when the
    From is odd (ODD_FROM); () for a well-formed From. A field that is not well formed gives
    every domain a reader might see in it, as an odd From does."""
    if not ODD_FROM.intersection(author.problems):
        return ()
    found: list[tuple[str, str]] = []
    for name in FALLBACK_FIELDS:
        for f in fields:
            if f.name != name:
                continue
            value = unfold(f.value)
            parsed = parse_address_list(value)
            domains = [box.domain.rstrip(".").lower() for box in parsed.mailboxes]
            if parsed.errors or parsed.route or not domains:
                domains += loose_domains(value)
            for domain in domains:
                if domain and (name, domain) not in found:
                    found.append((name, domain))
    return tuple(found)


def _replace(evaluation: DomainEvaluation, **changes: Any) -> DomainEvaluation:
    return dataclasses.replace(evaluation, **changes)


def _spf_identity(spf: SpfResult | None) -> tuple[str, SpfVerdict | None]:
    if spf is None or not spf.mailfrom.identity_valid:
        return "", None
    return spf.mailfrom.domain, spf.mailfrom.result


# -- ARC override -------------------------------------------------------------------------------


def arc_vouches(arc: ArcResult | None, trusted: Callable[[str], bool], author_domain: str) -> str:
    """The trusted sealer whose valid ARC chain says the message authenticated for the author
    domain before it was forwarded, or "".

    The newest ARC set's sealer must be trusted (it handed us the message), the chain must
    validate, and its ARC-Authentication-Results must hold dmarc=pass for the author domain, or a
    DKIM or SPF pass aligned (relaxed) with it.
    """
    if arc is None or arc.verdict is not ArcVerdict.PASS or arc.newest is None:
        return ""
    newest = arc.newest
    if not trusted(newest.seal_domain):
        return ""
    aar = re.sub(r"^\s*i\s*=\s*\d+\s*;", "", newest.aar)
    _authserv, results = parse_results(aar)
    for method, result, props in results:
        if result != "pass":
            continue
        if method == "dmarc":
            shown = props.get("header.from", author_domain)
            if shown.lower().rstrip(".") == author_domain:
                return newest.seal_domain
        elif method == "dkim":
            signer = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
            if signer and aligned(signer, author_domain, "r"):
                return newest.seal_domain
        elif method == "spf":
            sender = props.get("smtp.mailfrom", "").rpartition("@")[2]
            if sender and aligned(sender, author_domain, "r"):
                return newest.seal_domain
    return ""


def matches_sealer(domain: str, entries: Sequence[str]) -> bool:
    """`domain` is an entry ("lists.example.org") or below a ".example.org" entry."""
    name = domain.lower().rstrip(".")
    for entry in entries:
        if entry.startswith("."):
            if name.endswith(entry) or name == entry[1:]:
                return True
        elif name == entry:
            return True
    return False
