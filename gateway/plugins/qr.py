"""QR codes at end of DATA: links hidden in the pixels of a picture (quishing).

The decoding is the parsed message's (`ctx.message.qr_scan()`, gateway.mime.qr): made once, in
a worker thread, free for a message without pictures, and shared with the link checks, which
read the decoded links through `ctx.message.qr_urls()` / `all_urls()` like the text's. Put qr
before the plugins that read them, so its CPU is charged here. This plugin only says what the
scan found; its `QrScan` goes in `ctx.results` for plugins that want the codes themselves.

A QR code with a link is ordinary in some mail (tickets, invitations) and rare in most, so it
weighs little alone; a message that is little more than a picture of a QR link (a few words,
"scan to keep your password") is the quishing pattern and weighs more.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.message import Url, qr_code_urls
from gateway.mime.charsets import decode_text
from gateway.mime.model import MimeReport
from gateway.mime.qr import QrCode, QrScan
from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.verdict import Action, Finding

# Fewer words than this in every text body, beside a QR link: "little more than a picture".
FEW_WORDS = 50
_WORD = re.compile(r"\w{2,}")
_TAG = re.compile(r"<[^<>]{0,4000}>")
_HIDDEN_BLOCKS = ("style", "script", "head", "title")
_TEXT_CHARS = 64 * 1024  # of each body, for the word count: past this it is not "few words"


def _without_block(text: str, tag: str) -> str:
    """`text` without its <tag>...</tag> blocks (a block left open runs to the end), linear:
    one left-to-right pass of str.find, never a backtracking regex on hostile markup."""
    lower = text.lower()
    out: list[str] = []
    at = 0
    while True:
        start = lower.find(f"<{tag}", at)
        if start == -1:
            out.append(text[at:])
            return "".join(out)
        out.append(text[at:start])
        end = lower.find(f"</{tag}", start)
        if end == -1:
            return "".join(out)
        close = lower.find(">", end)
        at = len(text) if close == -1 else close + 1


def visible_words(text: str, limit: int = FEW_WORDS) -> int:
    """Words a reader sees in one text body (markup, styles and scripts removed), counted up
    to `limit`."""
    text = text[:_TEXT_CHARS]
    if "<" in text:
        for tag in _HIDDEN_BLOCKS:
            text = _without_block(text, tag)
        text = html.unescape(_TAG.sub(" ", text))
    count = 0
    for _ in _WORD.finditer(text):
        count += 1
        if count >= limit:
            break
    return count


def few_words(report: MimeReport) -> bool:
    """Every text body of the first reading holds fewer than FEW_WORDS visible words."""
    bodies = [leaf for leaf in report.leaves if leaf.is_text_body and leaf.reading == 0]
    return all(
        visible_words(decode_text(leaf.data[: _TEXT_CHARS * 4], leaf.charset)) < FEW_WORDS
        for leaf in bodies
    )


def _shown(codes: Sequence[tuple[QrCode, tuple[Url, ...]]]) -> str:
    parts = [f"{code.where}: {urls[0].url[:100]}" for code, urls in codes[:3]]
    more = f" (+{len(codes) - 3} more)" if len(codes) > 3 else ""
    return "; ".join(parts)[:300] + more


class QrCodes(PluginBase):
    name: ClassVar[str] = "qr"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        "QR_CODE_URL": "a picture of the message holds a QR code with a link (quishing: the "
        "link is opened on a phone, outside the link filters)",
        "QR_CODE_IN_PDF": "a picture inside a PDF attachment holds a QR code with a link",
        "QR_CODE_ONLY_CONTENT": "the message is little more than a picture of a QR code with a "
        f"link (under {FEW_WORDS} words of text): the quishing pattern",
        "QR_SCAN_LIMIT": "a bound of the QR scan ([mime] qr_*) left pictures undecoded: too "
        "many, too large (a decompression bomb), or out of time",
        "QR_SCAN_UNREADABLE": "a picture or PDF could not be decoded for the QR scan "
        "(corrupt, encrypted, or a format not decoded): informational",
    }
    provides: ClassVar[frozenset[type[object]]] = frozenset({QrScan})
    # a failure is a bug on hostile input: keep the message for review rather than deliver it
    # unchecked or defer it forever
    on_error: ClassVar[Action | None] = Action.QUARANTINE

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        scan = await ctx.message.qr_scan()
        ctx.results.put(scan)
        found: list[Finding] = []
        linked = [(code, urls) for code in scan.codes if (urls := qr_code_urls(code.text))]
        if linked:
            found.append(Finding("QR_CODE_URL", detail=_shown(linked)))
            in_pdf = [(code, urls) for code, urls in linked if code.in_pdf]
            if in_pdf:
                found.append(Finding("QR_CODE_IN_PDF", detail=_shown(in_pdf)))
            if few_words(await ctx.message.mime()):
                found.append(Finding("QR_CODE_ONLY_CONTENT", detail=_shown(linked)))
        if scan.skipped:
            found.append(Finding("QR_SCAN_LIMIT", detail="; ".join(scan.skipped)[:300]))
        if scan.unreadable:
            found.append(Finding("QR_SCAN_UNREADABLE", detail="; ".join(scan.unreadable)[:300]))
        return found
