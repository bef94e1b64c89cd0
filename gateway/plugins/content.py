"""The admin's content rules at end of DATA (rules/content.toml, content.d/), and GTUBE.

The rules are compiled when rules/ loads (gateway.content_rules); here they read a
`MessageView` made from the one parsed message: decoded header values, the body text, the
decoded parts with their markup, the raw bytes, the URLs with their registrable domains, the
attachments as the attachments plugin typed them (by content, when it ran first; by their
declared type otherwise), the author and Reply-To addresses, the envelope sender and the client
IP. Each text is cut to its limit (`[plugins.content]`), and RE2 runs in linear time, so the
cost of the rules is bounded by those limits times the number of rules, whatever the message;
a view larger than INLINE_BYTES is matched in a worker thread.

The symbols of the admin's rules are declared by the rules themselves (`rule_symbols`), each
with its description and score, and reloaded with them on SIGHUP. Composite rules are not run
here: the chain evaluates them after every plugin, over every symbol.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, ClassVar

from pydantic import Field

from gateway.content_rules import ContentRules, MessageView, PartHits, TextLimits, utf8
from gateway.cputime import offload
from gateway.message import INLINE_BYTES, decode_encoded_words
from gateway.mime.content import ContentReport
from gateway.plugin import MessageContext, Phase, PluginBase, Services
from gateway.policy import RuleSet
from gateway.rfc5322 import parse_address_list
from gateway.schema import Table
from gateway.verdict import Finding

# The Generic Test for Unsolicited Bulk Email (SpamAssassin): any spam filter refuses a message
# whose body holds it, so an admin can test the path end to end. Built from two halves so that
# this source file is not itself a hit.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
MAX_REPLY_TO_FIELDS = 5
MAX_ADDRESSES = 50  # per identity (From mailboxes, Reply-To mailboxes)

Limit = Annotated[int, Field(gt=0)]


class ContentConfig(Table):
    """`[plugins.content]`: how much of each text the rules see (the front of it)."""

    header_chars: Limit = TextLimits.header_chars
    all_header_chars: Limit = TextLimits.all_header_chars
    body_chars: Limit = TextLimits.body_chars
    rawbody_chars: Limit = TextLimits.rawbody_chars
    full_bytes: Limit = TextLimits.full_bytes

    def limits(self) -> TextLimits:
        return TextLimits(**self.model_dump())


class ContentRulesPlugin(PluginBase):
    name: ClassVar[str] = "content"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        "GTUBE": "the GTUBE test string is in the body (a spam filter test)",
    }
    config: ClassVar[type[Table] | None] = ContentConfig
    optional_requires: ClassVar[frozenset[type[object]]] = frozenset({ContentReport})
    provides: ClassVar[frozenset[type[object]]] = frozenset({PartHits})  # for the composites
    # advisory, like the classifier: a failure must not defer all mail (rules/ may say so)
    on_error = None

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        table = services.config_for(self.name, ContentConfig) or ContentConfig()
        self.limits = table.limits()

    @classmethod
    def rule_symbols(cls, rules: RuleSet) -> Mapping[str, str]:
        return rules.content.rule_symbols

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        found: list[Finding] = []
        text = await ctx.message.text()
        if GTUBE in text:
            found.append(Finding("GTUBE", detail="GTUBE test string in the body"))
        rules = ctx.rules.content
        if not rules.rules:
            return found
        view = await self.view(ctx, rules)
        size = len(view.body) + len(view.rawbody) + len(view.full) + len(view.all_headers)
        if size <= INLINE_BYTES:
            hits, parts = rules.evaluate(view)
        else:
            hits, parts = await offload(rules.evaluate, view)
        ctx.results.put(parts)
        return found + hits

    async def view(self, ctx: MessageContext, rules: ContentRules) -> MessageView:
        """The parts of the message the loaded rules read, each cut to its limit."""
        message, limits, needs = ctx.message, self.limits, rules.needs
        fields: list[tuple[str, bytes]] = []
        if "fields" in needs:
            wanted = rules.header_names
            for item in message.fields:
                if item.name in wanted:
                    value = decode_encoded_words(item.unfolded, limits.header_chars)
                    fields.append((item.name, utf8(value)))
        all_headers = b""
        if "all_headers" in needs:
            lines: list[bytes] = []
            size = 0
            for item in message.fields:
                if size >= limits.all_header_chars:
                    break
                name = item.written_name(message.raw).strip()
                value = decode_encoded_words(item.unfolded, limits.header_chars)
                line = name + b": " + utf8(value) if name else utf8(value)
                lines.append(line)
                size += len(line) + 1
            all_headers = b"\n".join(lines)[: limits.all_header_chars]
        body = b""
        if "body" in needs:
            body = utf8(visible((await message.text())[: limits.body_chars]))
        rawbody = b""
        if "rawbody" in needs:
            rawbody = utf8((await message.mime()).body_text(limits.rawbody_chars))
        urls: tuple[tuple[bytes, str, str], ...] = ()
        if "urls" in needs:
            urls = tuple((utf8(u.url), u.host, u.domain) for u in await message.urls())
        files: tuple[tuple[bytes, bytes], ...] = ()
        if "files" in needs:
            files = await _files(ctx)
        from_addresses: tuple[str, ...] = ()
        if "from_addresses" in needs:
            from_addresses = tuple(
                f"{m.local}@{m.domain}" for m in message.authors.mailboxes[:MAX_ADDRESSES]
            )
        reply_to: list[str] = []
        if "reply_to_addresses" in needs:
            for value in message.values("reply-to")[:MAX_REPLY_TO_FIELDS]:
                for mailbox in parse_address_list(value).mailboxes[:MAX_ADDRESSES]:
                    reply_to.append(f"{mailbox.local}@{mailbox.domain}")
        return MessageView(
            fields=tuple(fields),
            all_headers=all_headers,
            body=body,
            rawbody=rawbody,
            full=message.raw[: limits.full_bytes] if "full" in needs else b"",
            urls=urls,
            files=files,
            from_addresses=from_addresses,
            reply_to_addresses=tuple(reply_to),
            envelope_from=ctx.mail_from or "",
            client_ip=ctx.client.ip,
        )


def visible(text: str) -> str:
    """`text` without invisible format characters (Unicode Cf: soft hyphens, zero-width joiners,
    bidi controls), which a reader never sees and phishing puts between letters ("P\u200dass
    word") so that no phrase matches."""
    return _INVISIBLE.sub("", text)


# Unicode category Cf (Unicode 14, Python 3.11's unicodedata; a test checks it is complete),
# written out: building it from unicodedata costs a second at start-up
_INVISIBLE = re.compile(
    "[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f]"
)


async def _files(ctx: MessageContext) -> tuple[tuple[bytes, bytes], ...]:
    """(name, type) of every attachment: archive members too and the type libmagic found, from
    the attachments plugin's scan when it ran; else the MIME leaves and their declared types."""
    scanned = ctx.results.get(ContentReport)
    if scanned is not None:
        return tuple((utf8(f.name or ""), utf8(f.mime_type)) for f in scanned.files)
    report = await ctx.message.mime()
    return tuple((utf8(leaf.name or ""), utf8(leaf.content_type)) for leaf in report.attachments())
