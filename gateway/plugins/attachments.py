"""Attachments at end of DATA: what each file really is, archives, documents, HTML; the policy.

Reads the one parse of the message (`ctx.mime`, made by the mime plugin or here on first use),
scans every leaf of every reading in a worker thread under its own time budget
(gateway.mime.content), then applies rules/attachments.toml for this envelope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.cputime import offload
from gateway.mime.content import ContentReport, scan
from gateway.mime.symbols import ATTACHMENT_SYMBOLS
from gateway.plugin import MessageContext, Phase, Services
from gateway.plugins.mime import mime_report
from gateway.verdict import Finding


class AttachmentInspection:
    name: ClassVar[str] = "attachments"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = ATTACHMENT_SYMBOLS

    def __init__(self, services: Services) -> None:
        self.services = services

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        report = await mime_report(ctx)
        content: ContentReport = await offload(scan, report, ctx.settings.mime)
        found = list(content.findings)
        if not report.complete and not any(f.symbol == "ATT_UNSCANNABLE" for f in found):
            # the MIME stage stopped early: what was not reached was not scanned either
            found.append(Finding("ATT_UNSCANNABLE", detail="message only partly parsed"))
        found.extend(ctx.rules.attachments.decide(content.files, ctx.mail_from, ctx.rcpt_tos))
        return found
