"""Message-level limits at end of DATA: mail loops and unusually wide recipient lists.

Hard limits (size, recipients per transaction, line length) are enforced by the SMTP front from
config; these are softer signals that policy scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.verdict import Finding

LOOP_HOPS = 50  # Received fields before we call it a loop (Postfix's hopcount_limit default)
MANY_RECIPIENTS = 50  # envelope recipients in one transaction that make a message "bulk"


class MessageLimits(PluginBase):
    name: ClassVar[str] = "limits"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        "MSG_MAIL_LOOP": f"{LOOP_HOPS} or more Received fields: the message is looping",
        "MSG_MANY_RECIPIENTS": f"{MANY_RECIPIENTS} or more envelope recipients",
        "MSG_EMPTY": "the message is empty",
    }

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        found: list[Finding] = []
        if not ctx.raw.strip():
            found.append(Finding("MSG_EMPTY"))
        hops = ctx.message.count("received")
        if hops >= LOOP_HOPS:
            found.append(Finding("MSG_MAIL_LOOP", detail=f"{hops} Received fields"))
        if len(ctx.rcpt_tos) >= MANY_RECIPIENTS:
            found.append(Finding("MSG_MANY_RECIPIENTS", detail=f"{len(ctx.rcpt_tos)} recipients"))
        return found
