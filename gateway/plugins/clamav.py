"""ClamAV at end of DATA, through clamd's INSTREAM protocol ([plugins.clamav] address in config).

The whole message goes to clamd (which parses MIME and archives itself); when the MIME stage
found the message ambiguous, the leaves only the other reading shows (and uuencoded or
re-decoded content) are streamed too, so a part clamd's own parser misses is still scanned.
A dead or slow clamd is CLAMAV_UNAVAILABLE, a refusal to scan CLAMAV_UNSCANNED: rules/ decides
(tempfail and quarantine by default). Never a silent pass.

Its settings are its own `[plugins.clamav]` table (`ClamavConfig`); the older top-level
`[clamav]` table is still read when that is absent, with a warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import ClassVar

from pydantic import Field

from gateway.mime.budgets import ClamavSettings
from gateway.mime.clamd import ClamdError, ClamdReply, instream
from gateway.mime.symbols import CLAMAV_SYMBOLS
from gateway.plugin import MessageContext, Phase, PluginBase, Services
from gateway.schema import Table
from gateway.verdict import Finding

_MAX_EXTRA_STREAMS = 16


class ClamavConfig(Table):
    """`[plugins.clamav]`: where clamd listens, how long it may take, what it accepts."""

    address: str = Field(min_length=1)  # a Unix socket path, or "host:port" (TCP)
    timeout: float = Field(default=8.0, gt=0, allow_inf_nan=False)  # keep under [plugins] timeout
    chunk_size: int = Field(default=64 * 1024, gt=0)  # bytes per INSTREAM chunk
    max_stream: int = Field(default=25 * 1024 * 1024, gt=0)  # clamd's StreamMaxLength


class ClamavScan(PluginBase):
    name: ClassVar[str] = "clamav"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = CLAMAV_SYMBOLS
    config: ClassVar[type[Table] | None] = ClamavConfig
    replaces_tables: ClassVar[tuple[str, ...]] = ("clamav",)

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        own = services.config_for(self.name, ClamavConfig)
        # without [plugins.clamav]: the older [clamav] table (config.py still reads it)
        self.settings = ClamavSettings(**own.model_dump()) if own else services.settings.clamav

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        address = self.settings.address
        if address is None:
            return [Finding("CLAMAV_UNAVAILABLE", detail="no [plugins.clamav] address")]
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
