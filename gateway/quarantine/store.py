"""Durable files for the quarantine, and the error every store raises.

The gateway answers 250 for a quarantined message only after the store's `put` returned, and
`put` writes each file the one safe way: a temp file, fsync, rename over the final name, fsync the
folder (`_write_durably`, `_fsync_dir`). The store itself, with its index and its commit mark, is
gateway.quarantine.sqlite.SqliteStore; these helpers stay here, apart from it, so that tests can
give this module an `os` whose disk fills up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_ID = re.compile(r"^[A-Z0-9]{6,32}$")


class StoreError(Exception):
    """The message could not be stored durably (disk full, read-only, permissions)."""


def _write_durably(tmp: Path, final: Path, data: bytes, *, sync: bool = True) -> None:
    """Write `data` to `final` through `tmp`, so no reader sees half a file. With sync=False the
    content is not forced to disk (a power cut may leave the file empty): for copies of what
    is durable elsewhere, where an fsync would cost every message for nothing."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
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
