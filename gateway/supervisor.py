"""`[listen] workers = N`: a supervisor process running N gateway workers on one port.

Each worker is a fresh interpreter (`python -m gateway --config ... serve --worker I`), never a fork
of a running event loop; each binds the listening address with SO_REUSEPORT and the kernel spreads
connections across them. The supervisor restarts a worker that dies (with backoff), forwards SIGHUP
(reload rules and certificates) and SIGUSR1 (reopen the log file; each worker writes its own handle)
to every worker, and on SIGTERM/SIGINT asks them to drain and stop, waiting up to the shutdown
grace before killing what is left. Under systemd it alone notifies (READY=1 once every worker
serves); with `[listen] user`, each worker gives root up after its bind while the supervisor stays
root to restart them (gateway.privileges).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from gateway import service
from gateway.config import Settings
from gateway.logsetup import install_reopen_signal, reopen_logs

log = logging.getLogger("mailgate")

BACKOFF_START = 0.1  # seconds before the first restart; doubles while workers keep dying fast
BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0  # a worker that lived this long resets the backoff


# A worker that exits with this before it was ever ready cannot start for a reason a restart
# does not change (its port taken, the user it must become unable to write the quarantine):
# the supervisor stops instead of restarting it forever. sysexits.h's EX_CONFIG.
EXIT_CANNOT_START = 78

READY_FD_ENV = "MAILGATE_READY_FD"  # a worker writes one byte here once it serves


def tell_supervisor_ready() -> None:
    """In a worker: say we listen with our signal handlers in place (a no-op when not a worker)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None or not fd.isdigit():
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), b"R")
        os.close(int(fd))


def worker_command(config: Path | None, index: int) -> list[str]:
    command = [sys.executable, "-m", "gateway"]
    if config is not None:
        command += ["--config", str(config)]
    return [*command, "serve", "--worker", str(index)]


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.listen.workers
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()
        self.restarts = 0
        # A worker takes SIGHUP only once it says it is ready (its handler is in place: before
        # that the default action would kill it); one asked for meanwhile is sent then.
        self.ready: set[int] = set()
        self.reload_pending: set[int] = set()
        self.reopen_pending: set[int] = set()  # SIGUSR1 (reopen the log file) likewise
        self.all_ready = asyncio.Event()
        self.failed = False  # a worker could not start: we stop, and exit 1

    @staticmethod
    def _worker_environment() -> dict[str, str]:
        # Only we speak to systemd (NotifyAccess=main): READY=1 once every worker is.
        return {k: v for k, v in os.environ.items() if k != service.NOTIFY_SOCKET_ENV}

    async def _notify_when_ready(self) -> None:
        await self.all_ready.wait()
        listen = self.settings.listen
        service.ready(f"serving on {listen.host}:{listen.port} with {self.count} workers")

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        read_end, write_end = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *worker_command(self.settings.source, index),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(write_end,),
                env={**self._worker_environment(), READY_FD_ENV: str(write_end)},
            )
        finally:
            os.close(write_end)
        self.procs[index] = proc
        self.ready.discard(index)
        log.info("worker %d started: pid %d", index, proc.pid)
        asyncio.get_running_loop().add_reader(read_end, self._on_ready, index, proc, read_end)
        return proc

    def _on_ready(self, index: int, proc: asyncio.subprocess.Process, fd: int) -> None:
        try:
            said = os.read(fd, 16)
        except OSError:
            said = b""
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        if not said or self.procs.get(index) is not proc:
            return  # died before it was ready
        self.ready.add(index)
        if len(self.ready) == self.count:
            self.all_ready.set()
        for pending, signum in (
            (self.reopen_pending, signal.SIGUSR1),
            (self.reload_pending, signal.SIGHUP),
        ):
            if index in pending:
                pending.discard(index)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    def _forward(self, signum: int, pending: set[int]) -> None:
        """`signum` to every ready worker; one not ready yet gets it once it is (_on_ready)."""
        for index, proc in self.procs.items():
            if proc.returncode is not None:
                continue
            if index in self.ready:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)
            else:
                pending.add(index)

    def reload_all(self) -> None:
        reopen_logs()  # our own log file; each worker reopens its own on the SIGHUP
        self._forward(signal.SIGHUP, self.reload_pending)

    def reopen_all(self) -> None:
        reopen_logs()
        self._forward(signal.SIGUSR1, self.reopen_pending)

    async def _keep(self, index: int) -> None:
        """Run worker `index`; restart it whenever it dies, until we are stopping."""
        backoff = BACKOFF_START
        while not self.stopping.is_set():
            started = time.monotonic()
            proc = await self._spawn(index)
            code = await proc.wait()
            if self.stopping.is_set():
                log.info("worker %d (pid %d) stopped: exit %d", index, proc.pid, code)
                return
            if code == EXIT_CANNOT_START and index not in self.ready:
                log.error(
                    "worker %d (pid %d) cannot start (its error is above): stopping every worker",
                    index,
                    proc.pid,
                )
                service.status(f"worker {index} cannot start; stopping")
                self.failed = True
                self.stop()
                return
            if time.monotonic() - started >= STABLE_AFTER:
                backoff = BACKOFF_START
            log.error(
                "worker %d (pid %d) died (exit %d); restarting in %.1fs",
                index,
                proc.pid,
                code,
                backoff,
            )
            self.restarts += 1
            service.status(f"worker {index} died (exit {code}); restarting it")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def signal_all(self, signum: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping %d workers", self.count)
            self.stopping.set()
            self.signal_all(signal.SIGTERM)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # systemd hears of a reload as forwarded: each worker then reloads on its own.
        told_reload = service.around_reload(
            self.reload_all, lambda: f"reload forwarded to {self.count} workers"
        )
        loop.add_signal_handler(signal.SIGHUP, told_reload)
        loop.add_signal_handler(signal.SIGTERM, service.around_stop(self.stop))
        loop.add_signal_handler(signal.SIGINT, service.around_stop(self.stop))
        install_reopen_signal(loop, self.reopen_all)
        log.info("supervisor pid %d: starting %d workers", os.getpid(), self.count)
        keepers = [asyncio.create_task(self._keep(i)) for i in range(self.count)]
        notifier = asyncio.create_task(self._notify_when_ready())
        await self.stopping.wait()
        notifier.cancel()
        grace = self.settings.limits.shutdown_grace + 5.0
        _, pending = await asyncio.wait(keepers, timeout=grace)
        if pending:
            log.warning("workers still running %gs after SIGTERM: killing them", grace)
            self.signal_all(signal.SIGKILL)
            await asyncio.wait(pending, timeout=5.0)
        log.info("stopped")
        return 1 if self.failed else 0


async def wait_listening(host: str, port: int, within: float = 30.0) -> bool:
    """True once something accepts on host:port (the workers are up)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


async def watch_parent(stop: asyncio.Event) -> None:
    """A worker whose supervisor vanished (kill -9) stops instead of holding the port."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.warning("supervisor (pid %d) is gone: stopping", parent)
            stop.set()
