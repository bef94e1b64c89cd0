"""SPF (RFC 7208) at MAIL: is the client allowed to send for the MAIL FROM domain, and for HELO?

The evaluation itself is gateway.auth.spf (pyspf over the gateway's async resolver). This plugin
turns it into findings and provides the typed SpfResult (`ctx.results`) to DMARC, which decides
what an SPF fail means for the From domain. Scores and forced actions live in rules/: by default a
temperror (DNS timeout or SERVFAIL) defers the message with a 4xx, never a pass.

Symbols: SPF_<RESULT> for the "MAIL FROM" identity (which RFC 7208 2.4 defines as
postmaster@HELO for a null reverse-path), SPF_HELO_<RESULT> for the separate HELO check (only
when the reverse-path is not null, so one lookup is never scored twice), and SPF_BAD_MAILFROM /
SPF_BAD_HELO when an identity is not a domain that may be looked up at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.auth.spf import SpfEvaluation, SpfEvaluator, SpfResult, SpfVerdict, valid_domain
from gateway.plugin import MessageContext, Phase, PluginBase, Services
from gateway.text import printable
from gateway.verdict import Finding

_RESULT_TEXT = {
    SpfVerdict.PASS: "the client is authorized",
    SpfVerdict.FAIL: "the client is explicitly not authorized (-all)",
    SpfVerdict.SOFTFAIL: "the client is probably not authorized (~all)",
    SpfVerdict.NEUTRAL: "the domain makes no assertion about the client (?all)",
    SpfVerdict.NONE: "no SPF record",
    SpfVerdict.TEMPERROR: "temporary DNS error (timeout, SERVFAIL) during the SPF check",
    SpfVerdict.PERMERROR: "the SPF record is broken (syntax, too many lookups...)",
}

SPF_SYMBOLS = {f"SPF_{v.name}": f"MAIL FROM: {text}" for v, text in _RESULT_TEXT.items()}
SPF_HELO_SYMBOLS = {f"SPF_HELO_{v.name}": f"HELO: {text}" for v, text in _RESULT_TEXT.items()}


def _address_literal(helo: str) -> bool:
    """An RFC 5321 4.1.3 address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]"): legal, but
    not an identity SPF can check."""
    if not (helo.startswith("[") and helo.endswith("]")):
        return False
    inner = helo[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        ipaddress.ip_address(inner)
    except ValueError:
        return False
    return True


class SpfCheck(PluginBase):
    name: ClassVar[str] = "spf"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.MAIL})
    symbols: ClassVar[Mapping[str, str]] = {
        **SPF_SYMBOLS,
        **SPF_HELO_SYMBOLS,
        "SPF_BAD_MAILFROM": "MAIL FROM domain is not a valid domain name: not looked up",
        "SPF_BAD_HELO": "HELO is neither a valid domain name nor an address literal",
    }
    provides: ClassVar[frozenset[type[Any]]] = frozenset({SpfResult})

    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        # Finish (with a temperror the policy understands) a little before the chain's own
        # timeout would turn the check into SPF_TIMEOUT with no result for DMARC.
        lifetime = settings.plugins.timeout_for(self.name) * 0.9
        self.evaluator = SpfEvaluator(
            services.resolver, receiver=settings.listen.hostname, lifetime=lifetime
        )

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        mail_from = ctx.mail_from or ""
        if mail_from == "<>":  # aiosmtpd hands the null reverse-path over with its brackets
            mail_from = ""
        helo = ctx.client.helo or ""
        result = await self.evaluator.check(ctx.client.ip, mail_from, helo)
        ctx.results.put(result)
        found = [_finding("SPF", result.mailfrom)]
        if not result.mailfrom.identity_valid:
            if result.null_sender:
                if not _address_literal(helo):
                    found.append(Finding("SPF_BAD_HELO", detail=printable(helo, 100)))
            else:
                found.append(Finding("SPF_BAD_MAILFROM", detail=printable(mail_from, 100)))
        if result.helo is not None:
            found.append(_finding("SPF_HELO", result.helo))
        elif not result.null_sender and not valid_domain(helo) and not _address_literal(helo):
            found.append(Finding("SPF_BAD_HELO", detail=printable(helo, 100)))
        return found


def _finding(prefix: str, evaluation: SpfEvaluation) -> Finding:
    detail = evaluation.domain or evaluation.sender
    if evaluation.reason:
        detail = f"{detail}: {evaluation.reason}"
    return Finding(f"{prefix}_{evaluation.result.name}", detail=printable(detail, 200))
