"""Allow and block lists for the client IP (at CONNECT) and the envelope sender (at MAIL).

The lists themselves are policy (rules/lists.toml); what a hit means is too (scores and forced
actions in rules/). A sender allow-list entry is only a claim by the client, so the shipped policy
gives it a bounded negative score rather than a forced relay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.verdict import Finding


class AllowBlockLists(PluginBase):
    name: ClassVar[str] = "lists"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.CONNECT, Phase.MAIL})
    symbols: ClassVar[Mapping[str, str]] = {
        "LIST_CLIENT_BLOCKED": "client IP is on the block list (rules/lists.toml client_ip.block)",
        "LIST_CLIENT_ALLOWED": "client IP is on the allow list (rules/lists.toml client_ip.allow)",
        "LIST_SENDER_BLOCKED": "envelope sender is on the block list (rules/lists.toml)",
        "LIST_SENDER_ALLOWED": "envelope sender is on the allow list (rules/lists.toml)",
    }

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        lists = ctx.rules.lists
        found: list[Finding] = []
        if phase is Phase.CONNECT:
            if lists.client_block.matches(ctx.client.ip):
                found.append(Finding("LIST_CLIENT_BLOCKED", detail=ctx.client.ip))
            if lists.client_allow.matches(ctx.client.ip):
                found.append(Finding("LIST_CLIENT_ALLOWED", detail=ctx.client.ip))
        elif phase is Phase.MAIL and ctx.mail_from:
            if lists.sender_block.matches(ctx.mail_from):
                found.append(Finding("LIST_SENDER_BLOCKED", detail=ctx.mail_from))
            if lists.sender_allow.matches(ctx.mail_from):
                found.append(Finding("LIST_SENDER_ALLOWED", detail=ctx.mail_from))
        return found
