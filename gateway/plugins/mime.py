"""MIME structure at end of DATA: the message parsed once, defects and ambiguities as symbols.

The parse (gateway.mime.parse) runs in a worker thread with its own time budget, so a large or
hostile message does not stall the event loop; it is the parsed message's own report
(`ctx.message.mime()`, gateway.message), shared with the attachments and clamav plugins,
whichever of them runs first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.mime.symbols import MIME_SYMBOLS
from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.verdict import Finding


class MimeStructure(PluginBase):
    name: ClassVar[str] = "mime"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = MIME_SYMBOLS

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        report = await ctx.message.mime()
        return list(report.findings)
