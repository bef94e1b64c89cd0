"""`python quarantine_crashpoint.py POINT mailgate-args...`: run the gateway, and have it SIGKILL
itself at one point inside the quarantine store's `put` (a crash there, deterministically).

Points, in the order `put` reaches them:
  eml-partial    half of the .eml written to its temp file
  eml-renamed    the .eml in place, before the .json is written
  json-renamed   both files in place, before the index transaction
  before-commit  the index rows inserted, the transaction not committed
  after-commit   committed: the entry is listed; the client has not been told 250 yet
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.cli import main
from gateway.quarantine import store
from gateway.quarantine.sqlite import SqliteStore

POINTS = ("eml-partial", "eml-renamed", "json-renamed", "before-commit", "after-commit")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    real_write = store._write_durably
    writes = []

    def write(tmp: Path, final: Path, data: bytes, sync: bool = True) -> None:
        writes.append(final)
        if point == "eml-partial":
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, data[: len(data) // 2])
            die()
        real_write(tmp, final, data, sync=sync)
        if (point == "eml-renamed" and len(writes) == 1) or (
            point == "json-renamed" and len(writes) == 2
        ):
            die()

    real_insert = SqliteStore._insert_rows
    real_commit = SqliteStore._commit_entry

    def insert(*args: Any) -> None:
        real_insert(*args)
        if point == "before-commit":
            die()

    def commit(self: SqliteStore, *args: Any) -> None:
        real_commit(self, *args)
        if point == "after-commit":
            die()

    store._write_durably = write
    SqliteStore._insert_rows = staticmethod(insert)  # type: ignore[method-assign,assignment]
    SqliteStore._commit_entry = commit  # type: ignore[method-assign,assignment]


if __name__ == "__main__":
    if sys.argv[1] not in POINTS:
        sys.exit(f"unknown point {sys.argv[1]!r}; known: {', '.join(POINTS)}")
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
