"""ClamAV at end of DATA, through clamd's INSTREAM protocol ([clamav] address in config).

The whole message goes to clamd (which parses MIME and archives itself); when the MIME stage
found the message ambiguous, the leaves only the other reading shows (and uuencoded or
re-decoded content) are streamed too, so a part clamd's own parser misses is still scanned.
A dead or slow clamd is CLAMAV_UNAVAILABLE, a refusal to scan CLAMAV_UNSCANNED: rules/ decides
(tempfail and quarantine by default). Never a silent pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.mime.clamd import ClamdError, ClamdReply, instream
from gateway.mime.symbols import CLAMAV_SYMBOLS
from gateway.plugin import MessageContext, Phase, Services
from gateway.verdict import Finding

_MAX_EXTRA_STREAMS = 16


class ClamavScan:
    name: ClassVar[str] = "clamav"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = CLAMAV_SYMBOLS

    def __init__(self, services: Services) -> None:
        self.settings = services.settings.clamav

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        address = self.settings.address
        if address is None:
            return [Finding("CLAMAV_UNAVAILABLE", detail="no [clamav] address configured")]
        streams = [("message", ctx.raw)]
        report = await ctx.message.mime()
        extra = [
            leaf
            for leaf in report.leaves
            if leaf.reading > 0 or leaf.kind in ("uuencoded", "alternate", "body")
        ]
        streams += [(leaf.path, leaf.data) for leaf in extra[:_MAX_EXTRA_STREAMS]]
        details: dict[str, list[str]] = {}
        try:
            async with asyncio.timeout(self.settings.timeout):
                for label, data in streams:
                    if len(data) > self.settings.max_stream:
                        details.setdefault("CLAMAV_UNSCANNED", []).append(
                            f"{label}: {len(data)} bytes, over max_stream"
                        )
                        continue
                    reply: ClamdReply = await instream(address, data, self.settings.chunk_size)
                    if reply.found:
                        details.setdefault("CLAMAV_VIRUS", []).append(f"{reply.found} ({label})")
                    elif reply.error:
                        details.setdefault("CLAMAV_UNSCANNED", []).append(
                            f"{reply.error} ({label})"
                        )
        except TimeoutError:
            return [
                Finding("CLAMAV_UNAVAILABLE", detail=f"no answer in {self.settings.timeout:g}s")
            ]
        except ClamdError as exc:
            return [Finding("CLAMAV_UNAVAILABLE", detail=str(exc)[:200])]
        return [Finding(symbol, detail="; ".join(items)[:300]) for symbol, items in details.items()]
