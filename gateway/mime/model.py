"""What the MIME stage learned about one message: leaves to scan, findings, whether it is complete.

A `MimeReport` is built once per message (by `gateway.mime.parse.analyze`) and shared by every
plugin through `MessageContext.mime`. It is plain, immutable data: the parse trees are not kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.mime.charsets import decode_text
from gateway.verdict import Finding


class BudgetExceeded(Exception):
    """A hostile message made us do more work than a budget allows; `symbol` names the budget."""

    def __init__(self, symbol: str, detail: str) -> None:
        super().__init__(f"{symbol}: {detail}")
        self.symbol = symbol
        self.detail = detail


class Deadline:
    """A wall-clock budget checked between units of work (chunks, parts, archive members)."""

    def __init__(self, seconds: float, symbol: str) -> None:
        self.started = time.monotonic()
        self.end = self.started + seconds
        self.seconds = seconds
        self.symbol = symbol

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise BudgetExceeded(self.symbol, f"more than {self.seconds:g}s")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True, slots=True)
class Leaf:
    """One piece of content a mail client may show or save, decoded.

    `kind` is "part" (a MIME leaf), "preamble"/"epilogue" (text around multipart parts),
    "body" (the payload of a multipart without usable boundaries), "uuencoded" (a `begin 644`
    block inside a text part, which some clients show as an attachment), "alternate" (a second
    decoding of a part whose encoding is ambiguous), "container" (a message/rfc822 or multipart
    entity that has a file name, which a client saves under it; `data` is empty, its content
    is in the leaves below it) or "raw" (the whole message, when it could not be parsed).
    `reading` is 0 for CPython's reading (first field and parameter win, as in most clients)
    and another number for each other reading of an ambiguous message (last-wins, another
    reading of a boundary, parts a loose reader finds...).
    `names` are the file names the entity declares, wherever a client looks for one;
    `name_variants` are other readings of those names (an RFC 5322 reader removes comments
    and unescapes quoted-pairs; a description that looks like a file name): checked like
    names, but not counted as different names.
    """

    path: str
    kind: str
    content_type: str
    disposition: str
    names: tuple[str, ...]
    cte: str
    data: bytes
    reading: int = 0
    name_variants: tuple[str, ...] = ()
    charset: str = ""  # the part's declared charset (lower-case), "" when none: to decode text

    @property
    def name(self) -> str | None:
        return self.names[0] if self.names else None

    @property
    def is_attachment(self) -> bool:
        return bool(self.names) or self.disposition == "attachment"

    @property
    def is_text_body(self) -> bool:
        return (
            not self.is_attachment
            and self.kind in ("part", "body")
            and self.content_type in ("text/plain", "text/html")
        )


@dataclass(frozen=True)
class MimeReport:
    """The MIME stage's result: findings (symbols of the mime plugin), every leaf of every reading.

    `complete` is false when a budget tripped or the parser failed: `leaves` may then miss content,
    and the findings say why (policy quarantines such messages by default).
    """

    findings: tuple[Finding, ...]
    leaves: tuple[Leaf, ...]
    complete: bool
    readings: int
    parts: int
    depth: int
    elapsed: float
    # libmagic's answer for each leaf's content, by the identity of its `data`: the content scan
    # and the message's URL list both ask what a leaf really is, and libmagic costs about a
    # millisecond a call. Per message only (a cache across messages would make the bench's
    # repeating sample look cheaper than real mail).
    leaf_types: dict[int, tuple[bytes, str]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def symbols(self) -> set[str]:
        return {f.symbol for f in self.findings}

    def attachments(self) -> list[Leaf]:
        return [leaf for leaf in self.leaves if leaf.is_attachment]

    def body_text(self, limit: int = 1 << 20) -> str:
        """Text of the message bodies (plain, and HTML with its markup), bounded, for heuristics."""
        out: list[str] = []
        size = 0
        for leaf in self.leaves:
            if leaf.is_text_body and size < limit:
                chunk = decode_text(leaf.data[: (limit - size) * 4], leaf.charset)[: limit - size]
                out.append(chunk)
                size += len(chunk)
        return "\n".join(out)
