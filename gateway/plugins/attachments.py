"""Attachments at end of DATA: what each file really is, archives, documents, HTML; the policy.

Reads the one parse of the message (`ctx.message.mime()`, made by the mime plugin or here on
first use), scans every leaf of every reading under its own time budget (on the loop for small
messages without archives or documents, in a worker thread otherwise) (gateway.mime.content),
then applies rules/attachments.toml for this envelope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.cputime import offload
from gateway.message import INLINE_BYTES
from gateway.mime.content import ContentReport, scan, scan_light
from gateway.mime.symbols import ATTACHMENT_SYMBOLS
from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.verdict import Finding

# Up to INLINE_BYTES (the mime plugin's limit) a message with no archive or document is scanned
# on the event loop, as the parse and the classifier are (about 1 ms, mostly libmagic): a thread
# hop and its GIL handovers cost more than they spare, and with `workers = N` every core is busy
# anyway. Archives and documents (whose inspection may run up to the time budget: 7z key
# derivation, oletools) and larger messages are scanned in a worker thread, so the loop never
# waits for them.


class AttachmentInspection(PluginBase):
    name: ClassVar[str] = "attachments"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = ATTACHMENT_SYMBOLS
    # what each file is (by content, archive members too): content rules on attachments read it
    provides: ClassVar[frozenset[type[object]]] = frozenset({ContentReport})

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        report = await ctx.message.mime()
        limits = ctx.settings.mime
        content = scan_light(report, limits) if len(ctx.raw) <= INLINE_BYTES else None
        if content is None:
            content = await offload(scan, report, limits)
        ctx.results.put(content)
        found = list(content.findings)
        if not report.complete and not any(f.symbol == "ATT_UNSCANNABLE" for f in found):
            # the MIME stage stopped early: what was not reached was not scanned either
            found.append(Finding("ATT_UNSCANNABLE", detail="message only partly parsed"))
        found.extend(ctx.rules.attachments.decide(content.files, ctx.mail_from, ctx.rcpt_tos))
        return found
