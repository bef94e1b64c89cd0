"""Housekeeping the gateway runs by itself: expiry of old entries and removal of crash leftovers.

Each entry carries its expiry time, set when it was stored from `[quarantine] retention_days`;
the gateway deletes expired entries an hour after it starts and every hour after that, off the
event loop. `mailgate quarantine purge --expired` does the same on demand.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.quarantine.model import RELEASING, Selection, Store
from gateway.quarantine.store import StoreError

log = logging.getLogger("mailgate.quarantine")

FIRST_RUN = 60.0  # seconds after start: not in the way of start-up, soon enough after a restart
INTERVAL = 3600.0
ORPHAN_AGE = 3600.0  # files no entry lists are removed once this old (no `put` takes so long)


def expire(store: Store, now: float, batch: int = 500) -> list[str]:
    """Delete every entry whose expiry time has passed (not one being released right now)."""
    removed: list[str] = []
    while True:
        due = [
            e.id
            for e in store.select(Selection(expired_by=now), limit=batch)
            if e.status != RELEASING
        ]
        gone = store.delete(due) if due else []
        removed += gone
        if len(due) < batch or not gone:
            return removed


def maintain_once(store: Store, now: float | None = None) -> tuple[int, int]:
    """One round: (entries expired, leftover files removed)."""
    expired = expire(store, time.time() if now is None else now)
    swept = store.sweep(ORPHAN_AGE)
    return len(expired), swept


async def run_maintenance(
    store: Store, first_run: float = FIRST_RUN, interval: float = INTERVAL
) -> None:
    """Run `maintain_once` periodically until cancelled; failures are logged, never raised."""
    await asyncio.sleep(first_run)
    while True:
        try:
            expired, swept = await asyncio.to_thread(maintain_once, store)
        except StoreError as exc:
            log.warning("quarantine maintenance failed, next try in %gs: %s", interval, exc)
        else:
            if expired or swept:
                log.info(
                    "quarantine maintenance: %d expired entries deleted, %d leftover files removed",
                    expired,
                    swept,
                )
        await asyncio.sleep(interval)
