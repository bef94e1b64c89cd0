"""Quarantine storage: messages held for an admin's review instead of being delivered.

`Store` is the interface; `QuarantineStore` the embedded default (SQLite index + .eml files).
"""

from gateway.quarantine.model import (
    Entry,
    NotFound,
    ReleaseRefused,
    Selection,
    Stats,
    Store,
)
from gateway.quarantine.sqlite import SqliteStore
from gateway.quarantine.store import StoreError

QuarantineStore = SqliteStore

__all__ = [
    "Entry",
    "NotFound",
    "QuarantineStore",
    "ReleaseRefused",
    "Selection",
    "SqliteStore",
    "Stats",
    "Store",
    "StoreError",
]
