"""DMARC (RFC 7489) at DATA: does the author's domain (the From a reader sees) authenticate?

The author is read by gateway.rfc5322 (every From a reader might see; several or malformed ones
are findings of their own, and then every domain is evaluated and the strictest outcome counts);
the evaluation is gateway.auth.dmarc over the results of the plugins before it: it requires the
DkimResult (so "dkim" must run before "dmarc": the registry refuses any other order, and if dkim
fails, dmarc is not run but yields DMARC_ERROR), and reads SpfResult and ArcResult when "spf" and
"arc" are enabled (without spf, SPF gives no alignment; without arc, no override).

Symbols: DMARC_PASS (worth nothing by itself: anyone can pass for a domain they registered) and
DMARC_KNOWN_SENDER, the credit that matters: a pass by aligned DKIM of a domain on the short list
of well-known senders in rules/auth.toml `[dmarc] known_senders`; a failure is DMARC_REJECT,
DMARC_QUARANTINE or DMARC_NONE_POLICY after the record's p/sp and pct; DMARC_NO_RECORD,
DMARC_TEMPERROR, DMARC_PERMERROR; DMARC_ARC_OVERRIDE when a trusted sealer's valid ARC chain
vouches for a failing message (then no policy symbol is emitted, so the forced action does not
apply). rules/actions.toml forces DMARC_REJECT to a 550, DMARC_QUARANTINE to quarantine and
DMARC_TEMPERROR to a 4xx; admins soften them there.

From tricks aimed at how a reader renders or parses the field (Shen et al., "Weak Links in
Authentication Chains", USENIX Security 2021): DMARC_FROM_MALFORMED; DMARC_FROM_DISPLAY_ADDRESS
(a display name showing another organisation's address, lookalike "@" signs folded);
DMARC_FROM_INVISIBLE (bidi overrides, zero-width characters); DMARC_FROM_HOMOGLYPH (a domain of
mixed scripts or lookalike letters); DMARC_FROM_LOCAL_ADDRESS and DMARC_FROM_COMMENT_ADDRESS (an
address in a quoted local part or in a comment: its domain's policy is applied too).
When From names no usable author (missing, empty, a group, several addresses or fields, not
well formed), a reader may show Sender or Resent-From instead: the domains of Sender,
Resent-From and Resent-Sender are evaluated too (gateway.auth.dmarc.fallback_identities), their
failures give the same symbols and forced actions, and DMARC_SENDER_EVALUATED says it happened.

Forwarder and shared-hosting attacks (same paper): a spoofed From whose SPF passes because the
client is a shared service the spoofed domain's record includes. By the domain's own record that
pass is genuine, so a receiving gateway cannot refute it; it can only refuse it weight. DKIM
comes first (the service cannot sign as the domain), strict alignment (aspf=s, published by the
domain) narrows what aligns, and rules/auth.toml `[spf] distrust_includes` names includes whose
SPF pass gives no DMARC credit: DMARC then needs an aligned DKIM pass, and DMARC_SPF_DISTRUSTED
says why the SPF pass did not count (see gateway.auth.policy.AuthPolicy.distrusted_include).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from gateway.auth.arc import ArcResult, ArcVerdict
from gateway.auth.dkim import DkimResult
from gateway.auth.dmarc import (
    DmarcEvaluator,
    DmarcPolicy,
    DmarcResult,
    DmarcVerdict,
    DomainEvaluation,
    arc_vouches,
    fallback_identities,
    organizational_domain,
)
from gateway.auth.spf import SpfResult, SpfVerdict
from gateway.plugin import MessageContext, Phase, PluginBase, Services
from gateway.text import printable
from gateway.verdict import Finding

_FROM_SYMBOLS = {
    "multiple": "DMARC_FROM_MULTIPLE",
    "multiple_addresses": "DMARC_FROM_MULTIPLE_ADDRESSES",
    "group": "DMARC_FROM_GROUP",
    "malformed": "DMARC_FROM_MALFORMED",
    "invisible": "DMARC_FROM_INVISIBLE",
    "homoglyph": "DMARC_FROM_HOMOGLYPH",
    "local_address": "DMARC_FROM_LOCAL_ADDRESS",
    "comment_address": "DMARC_FROM_COMMENT_ADDRESS",
}
_FAIL_SYMBOLS = {
    DmarcPolicy.REJECT: "DMARC_REJECT",
    DmarcPolicy.QUARANTINE: "DMARC_QUARANTINE",
    DmarcPolicy.NONE: "DMARC_NONE_POLICY",
}


class DmarcCheck(PluginBase):
    name: ClassVar[str] = "dmarc"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        "DMARC_PASS": "the author domain authenticated (aligned SPF or DKIM pass)",
        "DMARC_KNOWN_SENDER": "DMARC pass by aligned DKIM of a well-known sender (auth.toml)",
        "DMARC_REJECT": "DMARC failed and the domain's policy is reject",
        "DMARC_QUARANTINE": "DMARC failed; policy quarantine (or reject lowered by pct)",
        "DMARC_NONE_POLICY": "DMARC failed; the domain's policy is none (monitoring only)",
        "DMARC_NO_RECORD": "the author domain publishes no DMARC record",
        "DMARC_TEMPERROR": "DMARC could not be decided: DNS timeout or SERVFAIL",
        "DMARC_PERMERROR": "the author domain's DMARC record is unusable",
        "DMARC_BAD_FROM": "no usable From address or domain: DMARC cannot be applied",
        "DMARC_FROM_MULTIPLE": "more than one From field (every domain evaluated, strictest wins)",
        "DMARC_FROM_MULTIPLE_ADDRESSES": "several addresses in From (strictest domain wins)",
        "DMARC_FROM_GROUP": "RFC 6854 group syntax in From (CERT/CC VU#517845)",
        "DMARC_FROM_MALFORMED": "From is not well formed (name, route, stray text, hidden address)",
        "DMARC_FROM_DISPLAY_ADDRESS": "the From display name shows an address of another domain",
        "DMARC_FROM_INVISIBLE": "bidi override or zero-width characters in From (UI spoofing)",
        "DMARC_FROM_HOMOGLYPH": "the From domain imitates another (mixed scripts, lookalikes)",
        "DMARC_FROM_LOCAL_ADDRESS": "an address inside the From local part (its domain evaluated)",
        "DMARC_FROM_COMMENT_ADDRESS": "an address in a From comment (its domain evaluated)",
        "DMARC_AUTH_UNALIGNED": "SPF or DKIM passed, but only for a domain unrelated to From",
        "DMARC_ARC_OVERRIDE": "DMARC failed, but a trusted ARC sealer vouches (forwarded mail)",
        "DMARC_SPF_DISTRUSTED": "SPF passed via a distrusted shared include: no DMARC credit",
        "DMARC_SENDER_EVALUATED": (
            "From names no usable author: DMARC also applied to Sender/Resent-From domains"
        ),
    }
    requires: ClassVar[frozenset[type[Any]]] = frozenset({DkimResult})
    optional_requires: ClassVar[frozenset[type[Any]]] = frozenset({SpfResult, ArcResult})
    provides: ClassVar[frozenset[type[Any]]] = frozenset({DmarcResult})

    def __init__(self, services: Services) -> None:
        self.services = services
        lifetime = services.settings.plugins.timeout_for(self.name) * 0.9
        self.evaluator = DmarcEvaluator(services.resolver, lifetime=lifetime)

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        message = ctx.message
        author = message.authors
        dkim = ctx.results.get(DkimResult)
        if dkim is None:  # the chain runs dmarc only after dkim provided its result
            raise LookupError("no DkimResult: the dkim plugin must run before dmarc")
        spf, distrusted = _distrust(ctx.results.get(SpfResult), ctx.rules.auth.distrusted_include)
        fallback = fallback_identities(author, message.fields)
        result = await self.evaluator.evaluate(author, spf, dkim, fallback)
        trusted = ctx.rules.auth.trusts_sealer
        arc = ctx.results.get(ArcResult)
        arc_pending = (
            arc is not None
            and arc.verdict is ArcVerdict.TEMPERROR
            and arc.newest is not None
            and trusted(arc.newest.seal_domain)
        )
        evaluations = tuple(
            _override(ev, arc_vouches(arc, trusted, ev.domain), arc_pending)
            for ev in result.evaluations
        )
        result = DmarcResult(author, evaluations)
        ctx.results.put(result)
        found = dmarc_findings(result)
        known = known_sender(result, ctx.rules.auth.known_sender)
        if known:
            found.append(Finding("DMARC_KNOWN_SENDER", detail=printable(known, 200)))
        if distrusted:
            detail = f"{distrusted} (include of {spf.mailfrom.domain if spf else ''})"
            found.append(Finding("DMARC_SPF_DISTRUSTED", detail=printable(detail, 200)))
        return found


def known_sender(result: DmarcResult, listed: Callable[[str], bool]) -> str:
    """The author domain when the message earns the well-known-sender credit, else "".

    Only a clean case counts: one author, no From trick, DMARC pass through an aligned DKIM
    signature (SPF alone can pass for every customer of a shared sender), domain listed."""
    author = result.author
    if author.problems or len(result.evaluations) != 1:
        return ""
    for shown, actual in author.display_addresses:
        if organizational_domain(shown.rpartition("@")[2].rstrip(".").lower()) != (
            organizational_domain(actual)
        ):
            return ""  # a display name showing another organisation's address
    [ev] = result.evaluations
    if ev.verdict is not DmarcVerdict.PASS or not ev.dkim_aligned or not listed(ev.domain):
        return ""
    return f"{ev.domain} (DKIM d={ev.dkim_aligned[0]})"


def _distrust(
    spf: SpfResult | None, distrusted_include: Callable[[str], str]
) -> tuple[SpfResult | None, str]:
    """SPF as DMARC should see it: a pass via a distrusted include (rules/auth.toml) becomes
    neutral, so it gives no alignment credit; the include's domain is returned with it."""
    if spf is None or spf.mailfrom.result is not SpfVerdict.PASS:
        return spf, ""
    include = distrusted_include(spf.mailfrom.mechanism)
    if not include:
        return spf, ""
    reason = f"pass via distrusted include:{include}"
    mailfrom = dataclasses.replace(spf.mailfrom, result=SpfVerdict.NEUTRAL, reason=reason)
    return dataclasses.replace(spf, mailfrom=mailfrom), include


def _override(ev: DomainEvaluation, sealer: str, arc_pending: bool) -> DomainEvaluation:
    """A failure a trusted sealer vouches for is overridden; a reject or quarantine whose trusted
    ARC chain could not be checked (key lookup timed out) is a temperror: the retry decides."""
    if ev.verdict is not DmarcVerdict.FAIL:
        return ev
    if sealer:
        return dataclasses.replace(ev, arc_override=sealer)
    if arc_pending and ev.applied is not DmarcPolicy.NONE:
        reason = "the trusted ARC chain could not be checked (temporary DNS error)"
        return dataclasses.replace(ev, verdict=DmarcVerdict.TEMPERROR, reason=reason)
    return ev


def dmarc_findings(result: DmarcResult) -> list[Finding]:
    author = result.author
    found: list[Finding] = []
    problems = author.problems
    if "missing" in problems or "no_address" in problems:
        found.append(
            Finding("DMARC_BAD_FROM", detail=problems.get("missing") or problems["no_address"])
        )
    for kind, symbol in _FROM_SYMBOLS.items():
        if kind in problems:
            found.append(Finding(symbol, detail=printable(problems[kind], 120)))
    for shown, actual in author.display_addresses:
        shown_domain = shown.rpartition("@")[2].rstrip(".").lower()
        if organizational_domain(shown_domain) != organizational_domain(actual):
            found.append(
                Finding(
                    "DMARC_FROM_DISPLAY_ADDRESS",
                    detail=printable(f"{shown} shown, {actual} sent", 160),
                )
            )
            break
    for ev in result.evaluations:
        found.append(_evaluation_finding(ev))
    others = [f"{ev.identity}: {ev.domain}" for ev in result.evaluations if ev.identity != "from"]
    if others:
        found.append(Finding("DMARC_SENDER_EVALUATED", detail=printable(", ".join(others), 200)))
    if any(ev.unaligned_auth for ev in result.evaluations):
        found.append(Finding("DMARC_AUTH_UNALIGNED"))
    return found


def _evaluation_finding(ev: DomainEvaluation) -> Finding:
    detail = ev.domain if ev.identity == "from" else f"{ev.domain} (in {ev.identity})"
    if ev.reason:
        detail += f": {ev.reason}"
    if ev.verdict is DmarcVerdict.FAIL:
        if ev.arc_override:
            return Finding(
                "DMARC_ARC_OVERRIDE",
                detail=printable(f"{detail} (sealed by {ev.arc_override})", 200),
            )
        policy = ev.applied or DmarcPolicy.NONE
        if ev.sampled_out and ev.policy is not None:
            detail += f" (pct={ev.record.pct if ev.record else 100}: {ev.policy.value} lowered)"
        return Finding(_FAIL_SYMBOLS[policy], detail=printable(detail, 200))
    symbol = {
        DmarcVerdict.PASS: "DMARC_PASS",
        DmarcVerdict.NONE: "DMARC_NO_RECORD",
        DmarcVerdict.TEMPERROR: "DMARC_TEMPERROR",
        DmarcVerdict.PERMERROR: "DMARC_PERMERROR",
        DmarcVerdict.BAD_DOMAIN: "DMARC_BAD_FROM",
    }[ev.verdict]
    return Finding(symbol, detail=printable(detail, 200))
