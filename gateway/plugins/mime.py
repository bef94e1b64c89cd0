"""MIME structure at end of DATA: the message parsed once, defects and ambiguities as symbols.

The parse (gateway.mime.parse) runs in a worker thread with its own time budget, so a large or
hostile message does not stall the event loop; its result is kept on `ctx.mime` for the
attachments and clamav plugins, whichever of them runs first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.cputime import offload
from gateway.mime.model import MimeReport
from gateway.mime.parse import analyze
from gateway.mime.symbols import MIME_SYMBOLS
from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.verdict import Finding

# Up to this size the walk takes well under a millisecond: a thread hop would cost more. The
# attachments plugin uses the same limit for its scan.
INLINE_BYTES = 32 * 1024


async def mime_report(ctx: MessageContext) -> MimeReport:
    """The one parse of this message, made on first use and shared through `ctx.mime`."""
    if ctx.mime is None:
        limits = ctx.settings.mime
        if len(ctx.raw) <= INLINE_BYTES:
            ctx.mime = analyze(ctx.raw, limits)
        else:
            ctx.mime = await offload(analyze, ctx.raw, limits)
    return ctx.mime


class MimeStructure(PluginBase):
    name: ClassVar[str] = "mime"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = MIME_SYMBOLS

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        report = await mime_report(ctx)
        return list(report.findings)
