"""ARC (RFC 8617) at DATA: is the chain of custody of a forwarded message intact?

Validation is gateway.auth.arc (dkimpy over the gateway's async resolver). It provides the typed
ArcResult; DMARC uses it to override a failure caused by forwarding, but only when the newest
sealer is listed in rules/auth.toml (`arc.trusted_sealers`): anyone can seal a chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.auth.arc import ArcResult, ArcVerdict, ArcVerifier
from gateway.plugin import MessageContext, Phase, PluginBase, Services
from gateway.text import printable
from gateway.verdict import Finding


class ArcCheck(PluginBase):
    name: ClassVar[str] = "arc"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        "ARC_PASS": "the ARC chain validates",
        "ARC_FAIL": "the ARC chain is broken or invalid",
        "ARC_NO_KEY": "the ARC chain fails because a sealer's or signer's key does not exist in "
        "DNS (rotated since, or DNS answering 'no such name'): no evidence either way",
        "ARC_NONE": "no ARC sets",
        "ARC_TEMPERROR": "an ARC key could not be fetched (DNS timeout or SERVFAIL)",
        "ARC_BAD_IDENTITY": "an ARC d= or s= is not a valid DNS name: not looked up",
        "ARC_TRUSTED_SEALER": "the chain validates; its newest sealer is trusted (rules/auth.toml)",
    }
    provides: ClassVar[frozenset[type[Any]]] = frozenset({ArcResult})

    def __init__(self, services: Services) -> None:
        self.services = services
        lifetime = services.settings.plugins.timeout_for(self.name) * 0.9
        self.verifier = ArcVerifier(services.resolver, lifetime=lifetime)

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        result = await self.verifier.verify(ctx.raw)
        ctx.results.put(result)
        detail = printable(result.reason, 200)
        symbol = f"ARC_{result.verdict.name}"
        if result.verdict is ArcVerdict.FAIL and result.missing_keys:
            symbol, detail = "ARC_NO_KEY", printable(f"no key {result.missing_keys[0]}", 200)
        found = [Finding(symbol, detail=detail)]
        if result.bad_identities:
            found.append(Finding("ARC_BAD_IDENTITY", detail=printable(result.bad_identities[0])))
        newest = result.newest
        if (
            result.verdict is ArcVerdict.PASS
            and newest is not None
            and ctx.rules.auth.trusts_sealer(newest.seal_domain)
        ):
            found.append(Finding("ARC_TRUSTED_SEALER", detail=printable(newest.seal_domain)))
        return found
