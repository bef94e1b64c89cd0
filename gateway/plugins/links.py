"""Links at end of DATA: where every URL of the message really goes (gateway.linkcheck).

Reads the message's one URL list (the same the classifier and the reputation checks read) and
rules/links.toml (shorteners, redirectors, hosting services, click trackers), loaded and
reloaded with the rest of rules/. The sender's site is the From's registrable domain: its own
click tracking and its forms are not off-site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.domains import registrable_domain
from gateway.linkcheck import LINK_SYMBOLS, check_links
from gateway.mime.qr import QrScan
from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.rfc5322 import parse_address_list, unfold
from gateway.verdict import Finding


class LinkInspection(PluginBase):
    name: ClassVar[str] = "links"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = LINK_SYMBOLS
    # when qr runs, it runs first, so its decoding is metered as qr's, not ours
    optional_requires: ClassVar[frozenset[type]] = frozenset({QrScan})

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        urls = await ctx.message.all_urls()  # QR codes' links too (the qr plugin scans first)
        if not urls:
            return []
        domains = ctx.message.authors.domains
        sender = registrable_domain(domains[0]) if domains else ""
        return check_links(urls, ctx.rules.links, sender, _reply_domains(ctx))


def _reply_domains(ctx: MessageContext) -> frozenset[str]:
    """The registrable domains Reply-To names (bounded, as every header read is)."""
    found: set[str] = set()
    for value in ctx.message.values("reply-to")[:4]:
        for box in parse_address_list(unfold(value[:2000])).mailboxes[:8]:
            if box.domain:
                found.add(registrable_domain(box.domain.rstrip(".").lower()))
    return frozenset(found)
