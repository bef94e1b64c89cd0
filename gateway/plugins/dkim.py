"""DKIM (RFC 6376, RFC 8463) at DATA: every signature verified, each one a finding.

The verification is gateway.auth.dkim (dkimpy over the gateway's async resolver; large messages
hashed in a worker thread). It provides the typed DkimResult to DMARC, which alone decides
what a signature means for the author's domain. By default a key lookup that timed out
(DKIM_TEMPERROR) defers the message with a 4xx (rules/actions.toml), never a pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.auth.dkim import DkimResult, DkimSignature, DkimVerdict, DkimVerifier
from gateway.plugin import MessageContext, Phase, PluginBase, Services
from gateway.text import printable
from gateway.verdict import Finding


class DkimCheck(PluginBase):
    name: ClassVar[str] = "dkim"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        "DKIM_VALID": "a DKIM signature verified",
        "DKIM_INVALID": "a DKIM signature did not verify (body or signed fields changed)",
        "DKIM_NONE": "the message has no DKIM signature",
        "DKIM_TEMPERROR": "a DKIM key could not be fetched (DNS timeout or SERVFAIL)",
        "DKIM_PERMERROR": "a DKIM signature or its key is unusable (syntax, no key, revoked...)",
        "DKIM_WEAK_KEY": "a DKIM signature verified with an RSA key under 1024 bits (RFC 8301)",
        "DKIM_BODY_LENGTH": "a DKIM signature's l= leaves part of the body unsigned",
        "DKIM_BAD_IDENTITY": "a DKIM d= or s= is not a valid DNS name: not looked up",
        "DKIM_FROM_NOT_OVERSIGNED": "a valid signature does not over-sign From (one can be added)",
        "DKIM_SIGNED_FIELD_REPEATED": (
            "a field a valid signature covers appears more often than signed (added after signing)"
        ),
        "DKIM_TOO_MANY": "more DKIM signatures than are verified; the rest were ignored",
    }
    provides: ClassVar[frozenset[type[Any]]] = frozenset({DkimResult})

    def __init__(self, services: Services) -> None:
        self.services = services
        lifetime = services.settings.plugins.timeout_for(self.name) * 0.9
        self.verifier = DkimVerifier(services.resolver, lifetime=lifetime)

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        result = await self.verifier.verify(ctx.raw, ctx.message.fields)
        ctx.results.put(result)
        return dkim_findings(result)


def _detail(sig: DkimSignature) -> str:
    text = f"d={sig.domain} s={sig.selector}"
    if sig.reason:
        text += f": {sig.reason}"
    return printable(text, 200)


def dkim_findings(result: DkimResult) -> list[Finding]:
    if not result.signatures:
        return [Finding("DKIM_NONE")]
    found: list[Finding] = []
    for sig in result.signatures:
        if not sig.identity_valid:
            found.append(Finding("DKIM_BAD_IDENTITY", detail=_detail(sig)))
        elif sig.result is DkimVerdict.PASS:
            found.append(Finding("DKIM_VALID", detail=_detail(sig)))
        elif sig.result is DkimVerdict.POLICY:
            if sig.weak_key:
                found.append(Finding("DKIM_WEAK_KEY", detail=_detail(sig)))
            if sig.body_unsigned:
                found.append(Finding("DKIM_BODY_LENGTH", detail=_detail(sig)))
        elif sig.result is DkimVerdict.FAIL:
            found.append(Finding("DKIM_INVALID", detail=_detail(sig)))
        elif sig.result is DkimVerdict.TEMPERROR:
            found.append(Finding("DKIM_TEMPERROR", detail=_detail(sig)))
        else:
            found.append(Finding("DKIM_PERMERROR", detail=_detail(sig)))
    verified = [s for s in result.signatures if s.result in (DkimVerdict.PASS, DkimVerdict.POLICY)]
    loose = [s for s in verified if not s.from_oversigned]
    if loose:
        found.append(Finding("DKIM_FROM_NOT_OVERSIGNED", detail=_detail(loose[0])))
    repeated = sorted({name for s in verified for name in s.duplicated_fields})
    if repeated:
        found.append(Finding("DKIM_SIGNED_FIELD_REPEATED", detail=",".join(repeated)))
    if result.skipped:
        found.append(Finding("DKIM_TOO_MANY", detail=f"{result.skipped} signatures not verified"))
    return found
