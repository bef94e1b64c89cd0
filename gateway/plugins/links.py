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
from gateway.rfc5322 import mailboxes_of
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
    """The registrable domains of Reply-To when a mailing service writes for a business (its
    shared From is one of identity.toml's on_behalf_senders): that business's site is the
    sender's own. Anyone else's Reply-To vouches for no link."""
    behalf = ctx.rules.identity.on_behalf_senders
    authors = ctx.message.authors.domains
    if not authors or not all(
        behalf.matches(d) or behalf.matches(registrable_domain(d)) for d in authors
    ):
        return frozenset()
    boxes = mailboxes_of(ctx.message.values("reply-to"))
    return frozenset(registrable_domain(b.domain.rstrip(".").lower()) for b in boxes)
