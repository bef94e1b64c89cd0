"""A durable file store for quarantined messages: one .eml and one .json per message.

The gateway answers 250 for a quarantined message only after `put` returned, and `put` returns
only after both files and the folder entry are on disk (write a temp file, fsync, rename, fsync
the folder). The .json is written last and is the commit mark: an .eml without its .json is the
remains of a crash before the client was told 250, and is never listed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_ID = re.compile(r"^[A-Z0-9]{6,32}$")


class StoreError(Exception):
    """The message could not be stored durably (disk full, read-only, permissions)."""


class QuarantineStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _prepare(self) -> Path:
        tmp = self.directory / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def put(self, entry_id: str, raw: bytes, metadata: Mapping[str, Any]) -> Path:
        """Store durably or raise StoreError; blocking, so callers run it off the event loop."""
        if not _ID.match(entry_id):
            raise StoreError(f"invalid quarantine id {entry_id!r}")
        tmp = self.directory / ".tmp"
        try:
            self._prepare()
            eml = self.directory / f"{entry_id}.eml"
            meta = self.directory / f"{entry_id}.json"
            _write_durably(tmp / f"{entry_id}.eml", eml, raw)
            document = json.dumps(dict(metadata), ensure_ascii=True, indent=1, sort_keys=True)
            _write_durably(tmp / f"{entry_id}.json", meta, document.encode("ascii"))
            _fsync_dir(self.directory)
        except OSError as exc:
            # The client will hear 4xx and send again under a new id: leave no trace of this
            # attempt, neither temp files nor a final .eml (or .json) that did land.
            leftovers = [tmp / f"{entry_id}.eml", tmp / f"{entry_id}.json"]
            leftovers += [self.directory / f"{entry_id}.json", self.directory / f"{entry_id}.eml"]
            for leftover in leftovers:
                # Best effort: when the folder itself is unusable (ENOTDIR, EACCES, EROFS) the
                # unlink fails too, and that must not replace the StoreError callers handle.
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
            raise StoreError(f"cannot store in {self.directory}: {exc.strerror or exc}") from exc
        return eml

    def get(self, entry_id: str) -> tuple[bytes, dict[str, Any]]:
        if not _ID.match(entry_id):
            raise StoreError(f"invalid quarantine id {entry_id!r}")
        meta = json.loads((self.directory / f"{entry_id}.json").read_text(encoding="ascii"))
        return (self.directory / f"{entry_id}.eml").read_bytes(), meta

    def ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json") if _ID.match(p.stem))


def _write_durably(tmp: Path, final: Path, data: bytes) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
