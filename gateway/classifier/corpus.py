"""Labelled mail for training and evaluation: folders of .eml files, Maildirs, mbox files, and
admin feedback (a folder with ham/ and spam/ inside, or a JSONL file of {"label", "path"}).

Every message is read as bytes. Messages are put in time order by their Date field when it is
plausible (within a year before and two days after arrival), else by their arrival time (the
newest Received timestamp, or an mbox "From " line), so forged dates of spam cannot move it.
"""

from __future__ import annotations

import json
import mailbox
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.classifier.features import message_times

HAM, SPAM = 0, 1
LABELS = {"ham": HAM, "spam": SPAM}
# Names of files that sit in mail folders but are not messages (the SpamAssassin corpus' `cmds`).
NOT_MESSAGES = {"cmds", "SHA256SUMS", "LICENSE", "README"}
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


class CorpusError(Exception):
    """A source that cannot be read as labelled mail; the message names it."""


@dataclass(frozen=True)
class Message:
    raw: bytes
    label: int
    source: str  # the folder or file it came from, as given
    name: str  # its file name or mbox key
    time: float  # seconds since the epoch; nan when no date at all
    feedback: bool = False
    blind: frozenset[str] = frozenset()  # header fields the corpus redacted (corpora.neutralise)
    phish: bool = False  # spam of the phishing subset (corpora)
    corpus: str = ""  # the named corpus it belongs to (corpora), "" for plain folders


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(MAX_MESSAGE_BYTES)


def iter_source(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, raw) of every message in a folder, Maildir or mbox file, in file name order."""
    if path.is_dir():
        if (path / "cur").is_dir() or (path / "new").is_dir():
            folders = [path / "cur", path / "new"]
        else:
            folders = [path]
        for folder in folders:
            if not folder.is_dir():
                continue
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if (
                    entry.name.startswith(".")
                    or entry.name in NOT_MESSAGES
                    or not entry.is_file(follow_symlinks=False)
                ):
                    continue
                yield entry.name, _read(Path(entry.path))
        return
    if not path.is_file():
        raise CorpusError(f"{path}: no such file or folder")
    with path.open("rb") as handle:
        head = handle.read(5)
    if head == b"From ":
        box = mailbox.mbox(str(path), create=False)
        try:
            for key in box.iterkeys():
                yield f"{path.name}:{key}", box.get_bytes(key)
        finally:
            box.close()
        return
    yield path.name, _read(path)


def sort_time(raw: bytes) -> float:
    """The time a message is ordered by (see the module doc); nan when it has no date at all."""
    times = message_times(raw)
    date, arrival = times.date, times.arrival
    if date is not None and arrival is not None:
        if arrival - timedelta(days=365) <= date <= arrival + timedelta(days=2):
            return date.timestamp()
        return arrival.timestamp()
    if date is not None:
        return date.timestamp()
    if arrival is not None:
        return arrival.timestamp()
    return math.nan


def load(
    sources: Iterable[tuple[str, Path]], feedback: bool = False, limit: int | None = None
) -> list[Message]:
    """Read labelled sources ("ham" or "spam", path); `limit` caps messages per source."""
    out: list[Message] = []
    for label_name, path in sources:
        label = LABELS[label_name]
        for i, (name, raw) in enumerate(iter_source(path)):
            if limit is not None and i >= limit:
                break
            out.append(Message(raw, label, str(path), name, sort_time(raw), feedback))
    return out


def feedback_sources(path: Path) -> list[tuple[str, Path]]:
    """Admin labels: a folder holding ham/ and spam/ (each a folder, Maildir or mbox), or a JSONL
    file with one {"label": "ham"|"spam", "path": "message.eml"} per line (paths relative to the
    file). This is what `mailgate quarantine feedback --jsonl` exports. The quarantine folder itself
    works too: its index holds the labels recorded by `mailgate quarantine learn`."""
    from gateway.quarantine.sqlite import INDEX_DIR, INDEX_FILE, SqliteStore

    if (path / INDEX_DIR / INDEX_FILE).is_file():
        store = SqliteStore(path, create=False)
        return [(f.label, path / f.message_path) for f in store.feedback()]
    if path.is_dir():
        found = [(name, path / name) for name in ("ham", "spam") if (path / name).exists()]
        if not found:
            raise CorpusError(f"{path}: a feedback folder needs ham/ or spam/ inside")
        return found
    if not path.is_file():
        raise CorpusError(f"{path}: no such file or folder")
    out: list[tuple[str, Path]] = []
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                label = entry["label"]
                target = entry["path"]
            except (ValueError, KeyError, TypeError):
                raise CorpusError(
                    f'{path}:{number}: expected {{"label": "ham"|"spam", "path": "..."}}'
                ) from None
            if label not in LABELS or not isinstance(target, str):
                raise CorpusError(f'{path}:{number}: label must be "ham" or "spam"')
            message = Path(target)
            if not message.is_absolute():
                message = path.parent / message
            out.append((label, message))
    return out


def time_order(messages: list[Message]) -> list[Message]:
    """Oldest first; messages with no date at all count as the oldest (they go to training)."""
    return sorted(
        messages, key=lambda m: (not math.isnan(m.time), 0.0 if math.isnan(m.time) else m.time)
    )


def labels_of(messages: Iterable[Message]) -> npt.NDArray[np.int64]:
    return np.fromiter((m.label for m in messages), dtype=np.int64)
