"""The quarantine's vocabulary, shared by every store backend, the gateway and the CLI.

`Store` is the seam: the gateway needs only `put`; the CLI needs the rest. The embedded default is
`gateway.quarantine.sqlite.SqliteStore` (an SQLite index beside one .eml file per message); a
PostgreSQL store for several gateways can implement the same protocol later.

Everything in an `Entry` came from a sender and is hostile: render it through gateway.text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from gateway.quarantine.store import StoreError

QUARANTINED = "quarantined"  # held, waiting for an admin
RELEASING = "releasing"  # a release is in progress (claimed by one CLI process)
RELEASED = "released"  # delivered to the delivery server on an admin's order; kept until expiry
STATUSES = (QUARANTINED, RELEASING, RELEASED)
LABELS = ("spam", "ham")
DAY = 86400.0


class NotFound(StoreError):
    """No listed entry has this id (never stored, deleted, or expired)."""


class ReleaseRefused(StoreError):
    """A release was not started: the entry is released already, or another one is under way."""


@dataclass(frozen=True)
class FindingRecord:
    symbol: str
    score: float
    detail: str = ""


@dataclass(frozen=True)
class Entry:
    """One listed quarantine entry: what the gateway recorded, and what admins did since."""

    id: str
    status: str
    metadata: Mapping[str, Any]  # as gateway.transaction.metadata wrote it
    released_at: float | None = None
    release_note: str | None = None  # the last release's outcome (or failure), for humans
    label: str | None = None  # "spam" / "ham" once an admin used `learn`

    def _text(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return None if value is None else str(value)

    def _number(self, key: str) -> float:
        value = self.metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 0.0
        return float(value) if math.isfinite(value) else 0.0

    @property
    def received(self) -> float:
        return self._number("time")

    @property
    def mail_from(self) -> str:
        return self._text("mail_from") or ""

    @property
    def rcpt_tos(self) -> list[str]:
        value = self.metadata.get("rcpt_tos")
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def mail_options(self) -> list[str]:
        value = self.metadata.get("mail_options")
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def client_ip(self) -> str:
        return self._text("client_ip") or ""

    @property
    def client_port(self) -> int:
        return int(self._number("client_port"))

    @property
    def helo(self) -> str | None:
        return self._text("helo")

    @property
    def tls(self) -> str | None:
        value = self.metadata.get("tls")
        if not isinstance(value, dict):
            return None
        return f"{value.get('version', '?')} {value.get('cipher', '?')}"

    @property
    def message_id(self) -> str | None:
        return self._text("message_id")

    @property
    def header_from(self) -> str | None:
        return self._text("from")

    @property
    def subject(self) -> str | None:
        return self._text("subject")

    @property
    def size(self) -> int:
        return int(self._number("size"))

    @property
    def score(self) -> float:
        return self._number("score")

    @property
    def reason(self) -> str:
        return self._text("reason") or ""

    @property
    def policy_version(self) -> str | None:
        return self._text("policy_version")

    @property
    def expires(self) -> float | None:
        return None if self.metadata.get("expires") is None else self._number("expires")

    @property
    def findings(self) -> list[FindingRecord]:
        value = self.metadata.get("findings")
        records: list[FindingRecord] = []
        for item in value if isinstance(value, list) else []:
            if isinstance(item, dict):
                score = item.get("score")
                records.append(
                    FindingRecord(
                        symbol=str(item.get("symbol", "?")),
                        score=float(score) if isinstance(score, int | float) else 0.0,
                        detail=str(item.get("detail") or ""),
                    )
                )
        return records


@dataclass(frozen=True)
class Selection:
    """Which entries a command acts on; every given criterion must hold (AND).

    Addresses (`sender`, `recipient`): a whole address matches exactly (case-insensitive),
    `@domain` matches a domain, and `*` is a wildcard (`*@*.example.net`).
    """

    ids: tuple[str, ...] = ()
    since: float | None = None  # received at or after (unix time)
    until: float | None = None  # received before
    sender: str | None = None  # envelope sender (MAIL FROM)
    recipient: str | None = None  # any envelope recipient
    symbol: str | None = None  # one of the findings
    min_score: float | None = None
    reason: str | None = None  # substring of the verdict's reason, case-insensitive
    status: str | None = None
    expired_by: float | None = None  # expiry at or before this time

    def is_everything(self) -> bool:
        return self == Selection()


@dataclass(frozen=True)
class Stats:
    total: int
    by_status: Mapping[str, int]
    by_reason: Sequence[tuple[str, int]]
    by_symbol: Sequence[tuple[str, int]]
    by_day: Sequence[tuple[str, int]]  # UTC days, "YYYY-MM-DD"


@dataclass(frozen=True)
class Feedback:
    """An admin's label for the classifier: the message itself is kept apart from the quarantine
    (it survives delete and expiry) so the training set does not shrink as entries expire."""

    id: str
    label: str
    labelled_at: float
    labelled_by: str
    message_path: str  # relative to the quarantine folder
    extra: Mapping[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """A quarantine store. Blocking: the gateway calls it through asyncio.to_thread.

    `put` is the only call on the SMTP path and must be durable when it returns: the gateway
    answers 250 right after. If the process dies at any instant inside `put`, the entry is either
    complete and listed or absent from every listing.
    """

    def put(self, entry_id: str, raw: bytes, metadata: Mapping[str, Any]) -> None: ...

    def get(self, entry_id: str) -> tuple[bytes, dict[str, Any]]: ...

    def entry(self, entry_id: str) -> Entry: ...

    def open_message(self, entry_id: str) -> BinaryIO: ...

    def ids(self) -> list[str]: ...

    def select(
        self, selection: Selection, limit: int | None = None, offset: int = 0
    ) -> list[Entry]: ...

    def count(self, selection: Selection) -> int: ...

    def stats(self, selection: Selection) -> Stats: ...

    def delete(self, entry_ids: Sequence[str]) -> list[str]: ...

    def begin_release(self, entry_id: str, *, again: bool = False) -> Entry: ...

    def end_release(self, entry_id: str, *, delivered: bool, note: str) -> None: ...

    def label(self, entry_id: str, label: str, user: str) -> Feedback: ...

    def feedback(self, since: float | None = None) -> list[Feedback]: ...

    def sweep(self, min_age: float = 3600.0) -> int: ...

    def close(self) -> None: ...


def storable(value: str) -> str:
    """Text SQLite can hold (valid UTF-8): undecodable bytes kept as visible \\xNN escapes."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            data = value.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate no byte stands for
            data = value.encode("utf-8", errors="backslashreplace")
        return data.decode("utf-8", errors="backslashreplace")
