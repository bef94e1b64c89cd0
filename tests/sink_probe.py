"""Helpers for fault tests: which downstream connection carried each MAIL, and polling.

`RecordingSink` records commands but not connections. `SinkConnections` wraps the sink's MAIL
hook so each MAIL remembers the aiosmtpd protocol object (one per TCP connection) that carried
it; aiosmtpd sets that object's `transport` to None in `connection_lost`, so a test can see from
the sink's side that a connection went away.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from harness import RecordingSink


class SinkConnections:
    """Install before the gateway first connects: aiosmtpd binds hooks per connection."""

    def __init__(self, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch) -> None:
        self.servers: list[SMTP] = []
        self.drop_mail = 0  # how many of the next MAIL commands close the connection instead
        original = sink.handle_MAIL

        async def handle_MAIL(
            server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
        ) -> str:
            self.servers.append(server)
            if self.drop_mail:  # as if the server had closed the connection while it sat idle
                self.drop_mail -= 1
                server.transport.close()
                return "421 4.3.0 gone"  # never reaches the client: the connection is gone
            return await original(server, session, envelope, address, options)

        monkeypatch.setattr(sink, "handle_MAIL", handle_MAIL)

    def distinct(self) -> list[SMTP]:
        """The connections that carried a MAIL, in order, each once."""
        seen: dict[int, SMTP] = {}
        for server in self.servers:
            seen.setdefault(id(server), server)
        return list(seen.values())

    def still_open(self) -> list[SMTP]:
        return [server for server in self.distinct() if server.transport is not None]


async def eventually(check: Callable[[], Any], within: float = 30.0) -> None:
    """Poll `check` (on the test loop, so the gateway keeps running) until it is truthy.

    `within` only bounds a failure, so it is generous: a loaded CI machine can be slow."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            try:
                what = inspect.getsource(check).strip()
            except (OSError, TypeError):
                what = repr(check)
            raise AssertionError(f"not true within {within}s: {what}")
        await asyncio.sleep(0.02)
