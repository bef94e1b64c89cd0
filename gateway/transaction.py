"""End of DATA: inspect once, decide once, act, and write the one log line that explains it.

Acting follows the rule of the whole product: the reply is 250 only when the delivery server said
250 or the quarantined copy is on disk; every other path is a 4xx or a 5xx.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import metrics
from gateway.app import Gateway
from gateway.chain import Chain
from gateway.cputime import metered, offload
from gateway.delivery import DeliveryTransport
from gateway.front_symbols import BARE_LINE_ENDING, NUL_CHARACTER
from gateway.header_edit import prefix_subject, prepend_fields, remove_forged
from gateway.line_endings import has_bare_line_endings, has_nul, normalize_line_endings, strip_nul
from gateway.plugin import MessageContext, Phase
from gateway.quarantine import StoreError
from gateway.quarantine.model import DAY
from gateway.text import quoted
from gateway.trace_fields import auth_fields, received_field, spam_fields, verdict_fields
from gateway.verdict import Action, Finding, Replies, SmtpReply, Verdict

log = logging.getLogger("mailgate.message")


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reply: SmtpReply
    note: str = ""
    relay_class: str = ""  # the delivery server's answer to DATA: "2xx", "4xx", "5xx"


async def inspect(gateway: Gateway, ctx: MessageContext, chain: Chain | None = None) -> Verdict:
    """Run the DATA phase and decide; shared by the live path and `mailgate scan`. `chain`:
    the transaction's own (a reload may have made a newer one), else the gateway's current."""
    await (chain or gateway.chain).run(Phase.DATA, ctx)
    return ctx.rules.decide(ctx.findings)


async def conclude(
    gateway: Gateway, chain: Chain, ctx: MessageContext, delivery: DeliveryTransport
) -> Outcome:
    """Inspect the complete message, act on the verdict, log; the outcome has the reply to give.

    `chain` and `ctx.settings` are the transaction's generation (a reload may have made a newer
    one since MAIL); `gateway` gives only what no reload changes (the quarantine store).
    """
    started = time.perf_counter()
    outcome = await _decide_and_act(gateway, chain, ctx, delivery)
    log_message(ctx, outcome, time.perf_counter() - started)
    return outcome


async def _decide_and_act(
    gateway: Gateway, chain: Chain, ctx: MessageContext, delivery: DeliveryTransport
) -> Outcome:
    refused = _refused_for_line_endings(ctx)
    if refused is not None:
        await metered(delivery.reset(), ctx.meter("relay"))
        return Outcome(refused, _with_id(refused.reply, ctx.queue_id))
    ctx.raw = without_leading_continuation(ctx.raw)
    # The parse the forged fields are found with is the one every plugin then reads (made
    # again only if something was cut out: ctx.message always reads the final bytes).
    ctx.raw, forged = remove_forged(ctx.message, ctx.settings.listen.hostname)
    verdict = await inspect(gateway, ctx, chain)
    note = forged.note()
    if verdict.action in (Action.RELAY, Action.TAG):
        message = prepend_fields(
            _marked(ctx, verdict),
            received_field(ctx.client, ctx.settings.listen.hostname, ctx.queue_id, ctx.rcpt_tos),
            auth_fields(ctx, ctx.settings.listen.hostname),
            verdict_fields(verdict, ctx.queue_id),
            spam_fields(verdict, ctx.rules),
        )
        answer = await metered(delivery.data(message), ctx.meter("relay"))
        if answer.is_positive:
            reply = SmtpReply(250, "2.0.0", f"OK id={ctx.queue_id} ({answer.text})")
        else:  # the delivery server's refusal (or ours when it could not be asked), with our id
            reply = _with_id(answer, ctx.queue_id)
        return Outcome(verdict, reply, note, f"{answer.code // 100}xx")
    await metered(delivery.reset(), ctx.meter("relay"))
    if verdict.action is Action.QUARANTINE:
        return await _quarantine(gateway, ctx, verdict, note)
    return Outcome(verdict, _with_id(verdict.reply, ctx.queue_id), note)


def without_leading_continuation(raw: bytes) -> bytes:
    """A message whose first line starts with white space has no header section: that line
    cannot start a field (RFC 5322 2.2), and Postfix reads it and all after it as body. Said
    with an empty line first, so every plugin reads it so too, and the fields we put on top do
    not take it for their own continuation (it was glued onto X-Mailgate-Symbols)."""
    return b"\r\n" + raw if raw[:1] in (b" ", b"\t") else raw


def _marked(ctx: MessageContext, verdict: Verdict) -> bytes:
    """The relayed bytes: a tagged message gets the Subject prefix of rules/ (by offset, on the
    one parse); anything else goes as it is."""
    prefix = ctx.rules.tag.subject_prefix
    if verdict.action is Action.TAG and prefix:
        return prefix_subject(ctx.message, prefix)
    return ctx.raw


def _refused_for_line_endings(ctx: MessageContext) -> Verdict | None:
    """A bare CR or LF, or a NUL (CRLF NUL "." CRLF smuggles too), is never relayed as sent.

    With limits.bare_line_endings = "reject" it is a finding that policy may refuse at once
    (rules/actions.toml); otherwise, or when policy does not refuse, the message is repaired
    (CRLF line endings, no NUL) so that every later reader sees one and the same message.
    """
    nul = has_nul(ctx.raw)
    if not nul and not has_bare_line_endings(ctx.raw):
        return None
    if ctx.settings.limits.bare_line_endings == "reject":
        symbol = NUL_CHARACTER if nul else BARE_LINE_ENDING
        ctx.findings.append(Finding(symbol, detail="limits.bare_line_endings = reject"))
        verdict = ctx.rules.forced_now(ctx.findings)
        if verdict is not None:
            return verdict
    ctx.raw = normalize_line_endings(strip_nul(ctx.raw))
    return None


async def _quarantine(
    gateway: Gateway, ctx: MessageContext, verdict: Verdict, note: str
) -> Outcome:
    message = prepend_fields(
        ctx.raw,
        received_field(ctx.client, ctx.settings.listen.hostname, ctx.queue_id, ctx.rcpt_tos),
        auth_fields(ctx, ctx.settings.listen.hostname),
        verdict_fields(verdict, ctx.queue_id),
    )
    try:
        entry = metadata(ctx, verdict)
        await metered(
            offload(gateway.store.put, ctx.queue_id, message, entry), ctx.meter("quarantine")
        )
    except StoreError as exc:
        log.error("qid=%s quarantine failed: %s", ctx.queue_id, exc)
        return Outcome(verdict, _with_id(Replies.QUARANTINE_FAILED, ctx.queue_id), str(exc))
    return Outcome(verdict, _with_id(verdict.reply, ctx.queue_id), note)


def _with_id(reply: SmtpReply, queue_id: str) -> SmtpReply:
    return reply.with_id(queue_id)


def metadata(ctx: MessageContext, verdict: Verdict) -> Mapping[str, Any]:
    """What the quarantine keeps beside the message: enough to explain and to release it."""
    now = time.time()
    retention = ctx.settings.quarantine.retention_days
    return {
        "id": ctx.queue_id,
        "time": now,
        "expires": now + retention * DAY if retention else None,
        "client_ip": ctx.client.ip,
        "client_port": ctx.client.port,
        "helo": ctx.client.helo,
        "tls": None
        if ctx.client.tls is None
        else {"version": ctx.client.tls.version, "cipher": ctx.client.tls.cipher},
        "mail_from": ctx.mail_from,
        "rcpt_tos": list(ctx.rcpt_tos),
        "mail_options": list(ctx.mail_options),
        "message_id": ctx.message.first("message-id"),
        # Decoded (RFC 2047) for display and search; untrusted like every header.
        "from": ctx.message.decoded("from"),
        "subject": ctx.message.decoded("subject"),
        "size": len(ctx.raw),
        "action": verdict.action.value,
        "score": verdict.score,
        "reason": verdict.reason,
        "findings": [
            {"symbol": f.symbol, "score": f.score, "detail": f.finding.detail}
            for f in verdict.findings
        ],
        "policy_version": ctx.rules.version,
    }


def log_message(ctx: MessageContext, outcome: Outcome, elapsed: float) -> None:
    """One line per message that answers "why was this message rejected?"."""
    verdict = outcome.verdict
    timings = ",".join(f"{name}:{sec * 1000:.2f}ms" for name, sec in ctx.timings.items())
    tls = f"{ctx.client.tls.version}" if ctx.client.tls else "none"
    fields = [
        f"qid={ctx.queue_id}",
        f"client={ctx.client.ip}",
        f"helo={quoted(ctx.client.helo or '')}",
        f"tls={tls}",
        f"from={quoted(ctx.mail_from or '')}",
        # the From field as the quarantine record and every plugin read it (the first one)
        f"header_from={quoted(ctx.message.decoded('from', 200) or '')}",
        f"rcpt={quoted(','.join(ctx.rcpt_tos), 400)}",
        # the same parse as every plugin and the quarantine record (one scan, shared)
        f"msgid={quoted(ctx.message.first('message-id') or '')}",
        f"size={len(ctx.raw)}",
        f"action={verdict.action.value}",
        f"score={verdict.score:g}",
        f"reason={quoted(verdict.reason)}",
        f"symbols={verdict.symbols_text() or '-'}",
        f"reply={quoted(str(outcome.reply))}",
        f"time={elapsed * 1000:.1f}ms",
        f"plugins={timings or '-'}",
    ]
    if outcome.note:
        fields.append(f"note={quoted(outcome.note)}")
    log.info(" ".join(fields))
    metrics.record(ctx, outcome, elapsed)
