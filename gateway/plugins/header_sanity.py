"""Header sanity at end of DATA: the header fields RFC 5322 3.6 requires once, present once.

Two From fields is the classic way to show a mail client one sender and an authentication check
another; a missing Date or Message-ID is typical of bulk tools. Scores live in rules/scores.toml.

Fields are counted in the one lenient reading of the header (gateway.message) that DMARC reads
too: `From : x` is a From, and a line that is not a field does not hide the fields after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.verdict import Finding

# RFC 5322 3.6: fields that may appear at most once (From and Date exactly once).
_SINGLETONS = ("sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to", "subject")


class HeaderSanity(PluginBase):
    name: ClassVar[str] = "headers"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        "HDR_NO_HEADERS": "message has no header section at all",
        "HDR_FROM_MISSING": "no From header field (RFC 5322 requires exactly one)",
        "HDR_FROM_MULTIPLE": "more than one From header field (spoofing trick)",
        "HDR_DATE_MISSING": "no Date header field (RFC 5322 requires exactly one)",
        "HDR_DATE_MULTIPLE": "more than one Date header field",
        "HDR_MESSAGE_ID_MISSING": "no Message-ID header field",
        "HDR_DUPLICATE_FIELD": "a field allowed once (To, Subject, Reply-To...) appears twice",
    }

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        names = [f.name for f in ctx.message.fields if f.name]
        if not names:
            return [Finding("HDR_NO_HEADERS")]
        found: list[Finding] = []
        counts = {"from": 0, "date": 0, "message-id": 0}
        duplicates: dict[str, int] = {}
        for name in names:
            if name in counts:
                counts[name] += 1
            if name in _SINGLETONS:
                duplicates[name] = duplicates.get(name, 0) + 1
        if counts["from"] == 0:
            found.append(Finding("HDR_FROM_MISSING"))
        elif counts["from"] > 1:
            found.append(Finding("HDR_FROM_MULTIPLE", detail=f"{counts['from']} From fields"))
        if counts["date"] == 0:
            found.append(Finding("HDR_DATE_MISSING"))
        elif counts["date"] > 1:
            found.append(Finding("HDR_DATE_MULTIPLE"))
        if counts["message-id"] == 0:
            found.append(Finding("HDR_MESSAGE_ID_MISSING"))
        repeated = sorted(name for name, n in duplicates.items() if n > 1)
        if repeated:
            found.append(Finding("HDR_DUPLICATE_FIELD", detail=",".join(repeated)))
        return found
