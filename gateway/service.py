"""Tell systemd how the service is doing: the sd_notify(3) protocol, in a few lines of our own.

A `Type=notify` unit gives us $NOTIFY_SOCKET, an AF_UNIX datagram socket (a path, or an abstract
name written with a leading '@'). We send READY=1 once the port is bound (so `systemctl start`
returns when mail can flow, not when the process exists), RELOADING=1 and READY=1 around a SIGHUP
reload, STOPPING=1 on SIGTERM, and STATUS= lines `systemctl status` shows. Without $NOTIFY_SOCKET
(not under systemd) every call is a no-op. Only the main process notifies: a supervisor's workers
are started without the variable.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("mailgate")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"

_reloads: set[asyncio.Future[object]] = set()  # held until done: the loop keeps weak references


def _address(value: str) -> str | None:
    if value.startswith("@"):  # abstract namespace: the name starts with a NUL byte
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock:... and anything else: not ours to speak


def notify(*fields: str) -> bool:
    """Send `fields` (KEY=value lines) as one datagram; True when it was sent."""
    value = os.environ.get(NOTIFY_SOCKET_ENV)
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.debug("%s=%r is not a Unix socket: not notifying", NOTIFY_SOCKET_ENV, value)
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)  # never stall the event loop on a full receiver
        try:
            sock.sendto("\n".join(fields).encode("utf-8", "replace"), address)
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", value, exc)
            return False
    return True


_said_ready = False  # a reload before the first READY=1 must not announce readiness early


def ready(status: str) -> bool:
    global _said_ready
    _said_ready = True
    return notify("READY=1", f"STATUS={status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def reloading() -> bool:
    # MONOTONIC_USEC: when the reload began, which systemd (Type=notify-reload) pairs with it.
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={now}", "STATUS=reloading")


def stopping() -> bool:
    return notify("STOPPING=1", "STATUS=stopping: draining connections")


def around_reload(reload: Callable[[], object], after: Callable[[], str]) -> Callable[[], None]:
    """`reload`, told to systemd: RELOADING=1 before, READY=1 with STATUS=`after()` once it is
    done (a coroutine is awaited in a task first). Before start-up said READY=1, just `reload`."""

    def done(_: object = None) -> None:
        ready(after())

    def run() -> None:
        told = _said_ready  # still starting: systemd waits for start-up's own READY=1
        if told:
            reloading()
        result = reload()
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            _reloads.add(task)
            task.add_done_callback(_reloads.discard)
            if told:
                task.add_done_callback(done)
        elif told:
            done()

    return run


def around_stop(stop: Callable[[], object]) -> Callable[[], None]:
    """`stop`, told to systemd first (STOPPING=1): it then waits for us, not for a timeout."""

    def run() -> None:
        stopping()
        stop()

    return run
