"""sd_notify as systemd hears it: a real AF_UNIX datagram socket bound here as $NOTIFY_SOCKET and
a real `mailgate serve --dev` process. READY=1 comes once the port answers (with workers: once
every worker does, and only from the supervisor), RELOADING=1 then READY=1 around a SIGHUP,
STOPPING=1 on SIGTERM; without $NOTIFY_SOCKET nothing is sent."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import LOOPBACK
from test_signals import spawn_serve, wait_for_log, write_served_config

from gateway import service

TIMEOUT = 60.0  # bounds a failure only: model and policy load take seconds on a busy machine


@dataclass
class Datagram:
    pid: int
    fields: dict[str, str]


class NotifyListener:
    """What systemd's end of $NOTIFY_SOCKET would receive, with the sender's pid (SO_PASSCRED)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.address = address
        self.received: list[Datagram] = []

    def close(self) -> None:
        self.sock.close()

    def wait_for(self, key: str, proc: subprocess.Popen[bytes] | None = None) -> Datagram:
        """The next datagram carrying `key` (earlier ones are kept in `received`)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            self.sock.settimeout(0.5)
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                if proc is not None and proc.poll() is not None:
                    exited = f"mailgate exited {proc.returncode} before {key}"
                    raise AssertionError(exited) from None
                continue
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            lines = data.decode().split("\n")
            got = Datagram(pid, dict(line.split("=", 1) for line in lines if "=" in line))
            self.received.append(got)
            if key in got.fields:
                return got
        raise AssertionError(f"no {key}= in {TIMEOUT}s; got {self.received}")


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    """An abstract socket name, as systemd itself hands out ('@' in the variable)."""
    notify = NotifyListener(f"@mailgate-test-{uuid.uuid4().hex}")
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    try:
        yield notify
    finally:
        notify.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _greets(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        return sock.recv(512).startswith(b"220 ")


def test_ready_reloading_stopping_from_one_process(
    tmp_path: Path, listener: NotifyListener
) -> None:
    config, port = write_served_config(tmp_path)
    proc, log = spawn_serve(tmp_path, config)
    try:
        ready = listener.wait_for("READY", proc)
        assert ready.pid == proc.pid
        assert ready.fields["STATUS"].startswith(f"serving on {LOOPBACK}:{port}; policy ")
        assert _greets(port)  # READY=1 means the port answers: nothing to poll for

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", proc)
        assert reloading.fields["RELOADING"] == "1"
        assert int(reloading.fields["MONOTONIC_USEC"]) >= before
        again = listener.wait_for("READY", proc)
        assert again.fields["STATUS"].startswith("serving; policy ")
        wait_for_log(proc, log, str.count, ": reloaded ")

        proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING")
        assert stopping.fields["STOPPING"] == "1" and stopping.pid == proc.pid
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        _stop(proc)


def test_supervisor_is_ready_once_every_worker_serves(
    tmp_path: Path, listener: NotifyListener
) -> None:
    config, port = write_served_config(tmp_path, [("listen", "workers", "2")])
    proc, log = spawn_serve(tmp_path, config)
    try:
        ready = listener.wait_for("READY", proc)
        text = log.read_text(encoding="utf-8", errors="replace")
        assert text.count("]: listening on") == 2, text  # both workers, before READY
        assert ready.fields["STATUS"] == f"serving on {LOOPBACK}:{port} with 2 workers"
        assert _greets(port)

        proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING", proc)
        assert listener.wait_for("READY", proc).fields["STATUS"] == (
            "reload forwarded to 2 workers"
        )
        wait_for_log(proc, log, str.count, ": reloaded ", 2)

        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING")
        assert proc.wait(timeout=TIMEOUT) == 0
        # NotifyAccess=main: every datagram came from the supervisor, none from a worker
        assert {d.pid for d in listener.received} == {proc.pid}, listener.received
    finally:
        _stop(proc)


def test_a_socket_path_works_and_no_socket_is_a_no_op(
    path_listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert service.status("hello")
    got = path_listener.wait_for("STATUS")
    assert got.fields == {"STATUS": "hello"} and got.pid == os.getpid()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not service.status("unheard")
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not service.status("unheard")
    path_listener.close()
    Path(path_listener.address).unlink()  # nobody listening: told, not raised
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.address)
    assert not service.stopping()


@pytest.fixture
def path_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    folder = Path(f"/tmp/mailgate-notify-{uuid.uuid4().hex[:12]}")
    folder.mkdir()
    notify = NotifyListener(str(folder / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    try:
        yield notify
    finally:
        notify.close()
        shutil.rmtree(folder)


async def test_a_reload_is_told_around_it_once_ready_and_not_before(
    path_listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "_said_ready", False)
    reloads: list[str] = []
    sync = service.around_reload(lambda: reloads.append("sync"), lambda: "after sync")
    sync()  # before start-up's READY=1: a READY=1 now would say "serving" too early
    assert reloads == ["sync"]
    service.ready("started")
    sync()
    done = asyncio.Event()

    async def slow() -> None:
        await asyncio.sleep(0)
        reloads.append("async")
        done.set()

    service.around_reload(slow, lambda: "after async")()
    await done.wait()
    await asyncio.sleep(0)  # the task's done callbacks
    while len(path_listener.received) < 5:
        await asyncio.to_thread(path_listener.wait_for, "STATUS")
    said = [d.fields for d in path_listener.received]
    assert reloads == ["sync", "sync", "async"]
    assert [f.get("STATUS") for f in said] == [
        "started",
        "reloading",
        "after sync",
        "reloading",
        "after async",
    ]
    assert all("READY" in f for f in (said[0], said[2], said[4]))
    assert all(f.get("RELOADING") == "1" and "MONOTONIC_USEC" in f for f in (said[1], said[3]))
