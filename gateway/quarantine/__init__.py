"""Quarantine storage: messages held for an admin's review instead of being delivered."""

from gateway.quarantine.store import QuarantineStore, StoreError

__all__ = ["QuarantineStore", "StoreError"]
