"""The named training sources of the two public corpora, and what each one's artefacts are.

`mailgate model train --corpora DIR` reads every source found under DIR (the layout of
../shared/corpora: spamassassin/ and modern/), each message rewritten first so that nothing the
archive, the collector or a list's spam filter added can teach the model "which corpus" rather
than "spam":

- everywhere: the fields a spam filter or the collector added (X-Spam-*, X-VA-Spam-*,
  X-Amavis-*, X-Virus-Scanned, X-Headers-End, X-policyd-weight, X-Mailbox-Line, Old-Return-Path,
  X-Original-To, Delivered-To) are dropped; they are the answer, or the archive's address;
- the SourceForge spam: the "[SPAM]" / "***SPAM***" tags its filter put in Subject;
- the GlitchyZorua archive: its redaction token "[removed]" is taken out of the text, and the
  header fields it redacted (From, To, Message-ID, Return-Path, ...) are "blind": they give no
  traits at all (features.extract), rather than "no From domain" traits only that archive has.

What every source shares is handled by the features themselves, at run time too: list fields
(List-*, X-Mailman-*, X-BeenThere, Sender, Precedence...) are never read, a list's footer and
Subject tag are cut, a From or Reply-To that a list rewrote to its own address is ignored, and
the collectors' names (the SpamAssassin preset, and lfdr.de, the archive that received every
modern message) are redacted. The phishing folder is spam of the same SourceForge lists (other
messages than the two spam folders): its messages are spam marked `phish`, reported on their own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.classifier.corpus import LABELS, CorpusError, Message, iter_source, sort_time

# Fields added by a spam filter or by the collecting side, dropped from every message.
FILTER_FIELDS = re.compile(
    rb"^(?:x-spam-[\w-]*|x-va-spam-[\w-]*|x-amavis-[\w-]*|x-virus-scanned|x-headers-end|"
    rb"x-policyd-weight|x-mailbox-line|old-return-path|x-original-to|delivered-to)$",
    re.I,
)
_SPAM_TAG = re.compile(rb"(?:\s*(?:\[spam\]|\*{2,3}\s*spam\s*\*{2,3}))+\s*", re.I)
REMOVED = b"[removed]"  # the GlitchyZorua archive's redaction token

# Names of the modern corpus' collector: the archive (lfdr.de) that received every message.
MODERN_REDACT = (r"lfdr\.de",)
MODERN_COLLECTOR = (r"lfdr\.de",)


@dataclass(frozen=True)
class Artefacts:
    """What to take out of one source's messages before training on them."""

    spam_tags: bool = False  # "[SPAM]" / "***SPAM***" in Subject
    redaction_token: bytes = b""  # removed from the text; fields holding it are blind
    # fields that give no traits in any message of the source: the header a renderer wrote
    blind_fields: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Source:
    name: str  # "<corpus>/<folder>", e.g. "modern/ham/nbd.other.debian.org"
    corpus: str  # "spamassassin" or "modern"
    label: str  # "ham" or "spam"
    folder: str  # relative to the corpora root
    artefacts: Artefacts = Artefacts()
    phish: bool = False  # its spam is phishing (reported on its own too)
    # False: its Date fields were written by whoever made the messages (rendered templates),
    # so they count as undated: always trained on, never the "newer" mail of a time split
    dated: bool = True


_SA = "spamassassin"
_MODERN = "modern"
_COMMERCIAL = "commercial"
_SF_SPAM = Artefacts(spam_tags=True)
_RENDERED_FIELDS = frozenset({"from", "to", "reply-to", "return-path", "message-id"})

SOURCES: tuple[Source, ...] = (
    *(
        Source(f"{_SA}/{folder}", _SA, label, f"{_SA}/{folder}")
        for folder, label in (
            ("easy_ham", "ham"),
            ("easy_ham_2", "ham"),
            ("hard_ham", "ham"),
            ("spam", "spam"),
            ("spam_2", "spam"),
        )
    ),
    *(
        Source(f"{_MODERN}/ham/{name}", _MODERN, "ham", f"{_MODERN}/ham/{name}")
        for name in (
            "blinux-list.redhat.com",
            "speakup.linux-speakup.org",
            "cake.lists.bufferbloat.net",
            "samba-technical.lists.samba.org",
            "nbd.other.debian.org",
            "kernel-hardening.lists.openwall.com",
            "linux-f2fs-devel.lists.sourceforge.net",
        )
    ),
    Source(
        f"{_MODERN}/spam/sf-lists-flagged",
        _MODERN,
        "spam",
        f"{_MODERN}/spam/sf-lists-flagged",
        _SF_SPAM,
    ),
    Source(
        f"{_MODERN}/spam/sf-lists-unflagged",
        _MODERN,
        "spam",
        f"{_MODERN}/spam/sf-lists-unflagged",
        _SF_SPAM,
    ),
    Source(
        f"{_MODERN}/spam/glitchyzorua-spam-archive",
        _MODERN,
        "spam",
        f"{_MODERN}/spam/glitchyzorua-spam-archive",
        Artefacts(redaction_token=REMOVED),
    ),
    # Optional: modern receipts, notices and newsletters that companies really sent, as their
    # recipients published them; the shared corpora have no such ham. Used when present under
    # the corpora root (the shipped model keeps such mail out, to check itself on).
    Source(f"{_COMMERCIAL}/ham/published", _COMMERCIAL, "ham", f"{_COMMERCIAL}/ham/published"),
    # Optional: the e-mail templates organisations and open-source products publish
    # (models/commercial-ham.tsv names each one's repository, path and commit: account,
    # billing, order and notification mail), rendered into messages. The text and links are
    # theirs, the header fields the renderer's: those give no traits (the addresses, the
    # Message-ID), so the model learns their register and not the renderer.
    Source(
        f"{_COMMERCIAL}/ham/templates",
        _COMMERCIAL,
        "ham",
        f"{_COMMERCIAL}/ham/templates",
        Artefacts(blind_fields=_RENDERED_FIELDS),
        dated=False,
    ),
    Source(
        f"{_MODERN}/phish/sf-lists-heuristic",
        _MODERN,
        "spam",
        f"{_MODERN}/phish/sf-lists-heuristic",
        _SF_SPAM,
        phish=True,
    ),
)


# Spam that reached an unmoderated list and so sits in its ham folder: advance-fee, donation,
# inheritance and rent scams, romance openers, B2B cold offers and fake requests for quotation.
# Found by reading every message of the seven ham lists that is neither a reply nor a patch (and
# nbd's replies from free-mail senders); only nbd's list had any. Not picked by a model's score:
# they are trained and judged as the spam they are, counted in their list's source.
RELABELLED_SPAM: dict[str, frozenset[str]] = {
    "modern/ham/nbd.other.debian.org": frozenset(
        {
            "16b4f48f6c00901b3a046a7390a26bb386176119.eml",
            "2122aa1d48d0d162791b041e8c5f041d8a8d96c9.eml",
            "363afe71eb68a2212467804114a9228d84fd8058.eml",
            "41c29c414ec2a8ee832fc09080857ff0bb44a994.eml",
            "49278424b94c4da528ae35d3bab4f2b1bfb2aedc.eml",
            "50000785ac6dbb9c36f6888f4cfb272a7e90a6be.eml",
            "55f5b99b7ed7734d1039de8d6ec4f0830567c55d.eml",
            "601e74ce3f482585f1c5d3e1c4b68aa7739de9ee.eml",
            "72df14a027f39a649db9c825eee788b2d99baf79.eml",
            "7ccf361dbd946ba09371dfd14ccb7f097a56c277.eml",
            "8006d42c6d2de6b1bf9efda06e4ebee220ff3bde.eml",
            "81b6284f6cdb3450ea54913aa2034394a1a3f29e.eml",
            "83910e11a5d4a793f63f87ba36afde00fb27dee4.eml",
            "89b8a871814cd04184f3c144fcee13f2322f362e.eml",
            "993657d94ba61d2a9631a92a0a2c4835043376eb.eml",
            "9946cc998746e6bee416e023498480d9bb3da291.eml",
            "a6b7705e599fe8647dc27bca87e7d959eff9219b.eml",
            "a7352819b2585f365fc347b8a9a2df6f8e0594c8.eml",
            "bac71f96913260eeadd895e8ca521b1783c63030.eml",
            "bfe2fd678946089d19513aef05f4771ff29cdca9.eml",
            "d602dd4cf8ba18fe796ecff689c9ff227619da2f.eml",
            "f65401936e989dbecb26e7f79a923bac3d299043.eml",
        }
    ),
}


def discover(root: Path) -> list[Source]:
    """The sources present under `root` (a corpora folder); an error when there is none."""
    found = [s for s in SOURCES if (root / s.folder).is_dir()]
    if not found:
        raise CorpusError(f"{root}: no known corpus source inside (spamassassin/, modern/)")
    return found


def _header_end(raw: bytes) -> int:
    ends = [i + n for i, n in ((raw.find(b"\r\n\r\n"), 4), (raw.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else len(raw)


def neutralise(raw: bytes, artefacts: Artefacts) -> tuple[bytes, frozenset[str]]:
    """The message without its corpus artefacts, and the names of its blind (redacted) fields.

    Linear in the size of the message; a header it cannot split is left as it is.
    """
    end = _header_end(raw)
    head, body = raw[:end], raw[end:]
    kept: list[bytes] = []
    blind: set[str] = set()
    token = artefacts.redaction_token
    for field in re.split(rb"\n(?![ \t])", head):
        name, colon, value = field.partition(b":")
        if colon and FILTER_FIELDS.match(name.strip()):
            continue
        lowered = name.strip().lower()
        if colon and artefacts.spam_tags and lowered == b"subject":
            value = _SPAM_TAG.sub(b" ", value).rstrip(b" ") or b""
            if not value.startswith(b" "):
                value = b" " + value
            field = name + colon + value
        if token and colon and token in value:
            blind.add(lowered.decode("ascii", "replace"))
            field = name + colon + value.replace(token, b"")
        kept.append(field)
    out = b"\n".join(kept)
    if token:
        body = body.replace(token, b"")
    return out + body, frozenset(blind | artefacts.blind_fields)


def load(
    root: Path, sources: Iterable[Source] | None = None, limit: int | None = None
) -> list[Message]:
    """Every message of the sources (all found under `root` by default), neutralised, each
    named by its source, phishing marked, the spam of RELABELLED_SPAM labelled spam. `limit`
    caps messages per source."""
    chosen = list(sources) if sources is not None else discover(root)
    out: list[Message] = []
    for source in chosen:
        label = LABELS[source.label]
        relabelled = RELABELLED_SPAM.get(source.name, frozenset())
        for i, (name, raw) in enumerate(iter_source(root / source.folder)):
            if limit is not None and i >= limit:
                break
            clean, blind = neutralise(raw, source.artefacts)
            out.append(
                Message(
                    clean,
                    LABELS["spam"] if name in relabelled else label,
                    source.name,
                    name,
                    sort_time(clean) if source.dated else math.nan,
                    blind=blind,
                    phish=source.phish,
                    corpus=source.corpus,
                )
            )
    return out


@dataclass
class _Tally:
    corpus: str
    messages: int = 0
    phishing: int = 0
    spam: int = 0
    first: float = math.inf
    last: float = -math.inf


def _day(stamp: float) -> str | None:
    return datetime.fromtimestamp(stamp, UTC).date().isoformat() if math.isfinite(stamp) else None


def describe(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """What a model was trained on, per source (for the card)."""
    tallies: dict[str, _Tally] = {}
    for m in messages:
        tally = tallies.get(m.source)
        if tally is None:
            tally = tallies[m.source] = _Tally(m.corpus)
        tally.messages += 1
        tally.spam += m.label
        tally.phishing += m.phish
        if not math.isnan(m.time):
            tally.first = min(tally.first, m.time)
            tally.last = max(tally.last, m.time)
    out = []
    for name, t in tallies.items():
        spam_source = 2 * t.spam > t.messages
        row: dict[str, Any] = {
            "label": "spam" if spam_source else "ham",
            "source": name,
            "corpus": t.corpus,
            "messages": t.messages,
            "phishing": t.phishing,
            "dates": [_day(t.first), _day(t.last)],
        }
        if not spam_source and t.spam:
            row["relabelled_spam"] = t.spam  # spam found in a ham list (RELABELLED_SPAM)
        out.append(row)
    return out
