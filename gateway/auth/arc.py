"""ARC (RFC 8617) chain validation with dkimpy, on the gateway's async resolver.

Same shape as gateway.auth.dkim: every ARC-Seal and ARC-Message-Signature is read first, their
`d=`/`s=` identities are validated (an invalid one is never looked up: dkimpy then sees "no key"
and the chain fails), the key names are fetched concurrently through the resolver, and only then
does dkimpy's `ARC.verify` run, with a `dnsfunc` that answers from what was fetched. A key lookup
that timed out or got SERVFAIL makes the result `temperror` rather than a fail (or a pass).

The result keeps each ARC set's sealer and its ARC-Authentication-Results, newest first, so DMARC
can let a *trusted* sealer's valid chain override a failure caused by forwarding
(rules/auth.toml, `arc.trusted_sealers`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from gateway.auth.dkim import (
    DEFAULT_LIFETIME,
    DKIMPY_LOG,
    MIN_KEY_BITS,
    THREAD_THRESHOLD,
    KeyCache,
    valid_selector,
)
from gateway.auth.spf import valid_domain
from gateway.cputime import offload
from gateway.dns import DnsStatus, Resolver
from gateway.message import header_end

log = logging.getLogger("mailgate.arc")

MAX_INSTANCE = 50  # RFC 8617 4.2.1: more ARC sets than this and the chain fails
_ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")


class ArcVerdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class ArcSet:
    """One ARC set as written: who sealed it, who signed the message, what it recorded."""

    instance: int
    seal_domain: str
    seal_selector: str
    ams_domain: str
    aar: str  # the ARC-Authentication-Results value (relaxed), untrusted text
    seal_cv: str


@dataclass(frozen=True, slots=True)
class ArcResult:
    verdict: ArcVerdict
    reason: str = ""
    sets: tuple[ArcSet, ...] = ()  # newest (highest instance) first
    bad_identities: tuple[str, ...] = ()
    # key names that do not exist (NXDOMAIN or NODATA): the chain fails, but a key gone (rotated
    # since, or DNS that answers "no such name", as offline) says nothing of the message
    missing_keys: tuple[str, ...] = ()

    @property
    def newest(self) -> ArcSet | None:
        return self.sets[0] if self.sets else None


def _text(value: bytes) -> str:
    return value.decode("ascii", errors="replace")


class ArcVerifier:
    """Validates the ARC chain of a message (RFC 8617 5.2)."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        thread_threshold: int = THREAD_THRESHOLD,
        min_key_bits: int = MIN_KEY_BITS,
    ) -> None:
        self.resolver = resolver
        self.lifetime = lifetime
        self.thread_threshold = thread_threshold
        self.min_key_bits = min_key_bits

    async def verify(self, message: bytes) -> ArcResult:
        head = message[: header_end(message)].lower()
        if not any(name in head for name in _ARC_FIELDS):
            return ArcResult(ArcVerdict.NONE, "no ARC sets")
        try:
            arc = dkim.ARC(message, logger=DKIMPY_LOG, minkey=self.min_key_bits)
            max_instance, arc_headers = arc.sorted_arc_headers()
        except dkim.DKIMException as exc:
            return ArcResult(ArcVerdict.FAIL, f"unreadable: {type(exc).__name__}")
        if max_instance == 0:
            return ArcResult(ArcVerdict.FAIL, "ARC fields without a valid instance")
        sets = _sets(arc_headers, max_instance)
        if max_instance > MAX_INSTANCE:
            return ArcResult(ArcVerdict.FAIL, f"more than {MAX_INSTANCE} ARC sets", sets)
        names: list[str] = []
        bad: list[str] = []
        for _instance, (name, value) in arc_headers:
            if name.lower() not in _ARC_FIELDS[:2]:
                continue
            try:
                tags = parse_tag_value(value)
            except InvalidTagValueList:
                continue  # dkimpy fails the chain on it
            domain, selector = _text(tags.get(b"d", b"")), _text(tags.get(b"s", b""))
            if valid_domain(domain) and valid_selector(selector):
                names.append(f"{selector}._domainkey.{domain}")
            elif b"d" in tags and b"s" in tags:
                bad.append(f"d={domain[:60]} s={selector[:60]}")
        keys = KeyCache(self.resolver)
        try:
            async with asyncio.timeout(self.lifetime):
                await keys.fetch(names)
        except TimeoutError:
            return ArcResult(ArcVerdict.TEMPERROR, "key lookups took too long", sets, tuple(bad))
        missing: list[str] = []
        for name in names:
            status = keys.status(name)
            if status is None or status.is_temporary:
                return ArcResult(
                    ArcVerdict.TEMPERROR, f"key lookup failed: {name[:80]}", sets, tuple(bad)
                )
            if status.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA) and name not in missing:
                missing.append(name)
            keys.checked(name)  # RFC 6376 3.6.1 (s= lists...): dkimpy gets the normalized key
        if len(message) > self.thread_threshold:
            cv, reason = await offload(_run, arc, keys)
        else:
            cv, reason = _run(arc, keys)
        verdict = {"pass": ArcVerdict.PASS, "none": ArcVerdict.NONE}.get(cv, ArcVerdict.FAIL)
        return ArcResult(verdict, reason, sets, tuple(bad), tuple(missing))


def _run(arc: dkim.ARC, keys: KeyCache) -> tuple[str, str]:
    try:
        cv, _results, reason = arc.verify(dnsfunc=keys.dnsfunc)
    except dkim.DKIMException as exc:
        return "fail", f"{type(exc).__name__}: {exc!s:.80}"
    # dkimpy says None for a chain that an earlier sealer already marked failed (cv=fail).
    return (cv.decode("ascii") if isinstance(cv, bytes) else "fail"), str(reason)[:120]


def _sets(
    arc_headers: list[tuple[int, tuple[bytes, bytes]]], max_instance: int
) -> tuple[ArcSet, ...]:
    by_instance: dict[int, dict[bytes, bytes]] = {}
    for instance, (name, value) in arc_headers:
        by_instance.setdefault(instance, {}).setdefault(name.lower(), value)
    out: list[ArcSet] = []
    for instance in sorted(by_instance, reverse=True)[:MAX_INSTANCE]:
        fields = by_instance[instance]
        seal = _tags(fields.get(b"arc-seal", b""))
        ams = _tags(fields.get(b"arc-message-signature", b""))
        out.append(
            ArcSet(
                instance=instance,
                seal_domain=_text(seal.get(b"d", b"")).lower(),
                seal_selector=_text(seal.get(b"s", b"")),
                ams_domain=_text(ams.get(b"d", b"")).lower(),
                aar=_text(fields.get(b"arc-authentication-results", b"")).strip(),
                seal_cv=_text(seal.get(b"cv", b"")).lower(),
            )
        )
    return tuple(out)


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(parse_tag_value(value))
    except InvalidTagValueList:
        return {}
