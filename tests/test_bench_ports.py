"""The bench's port choice for a multi-worker gateway: worker i binds its metrics endpoint on
base + i, so every port of the run must be free and outside the kernel's ephemeral range, where
any outgoing connection may take one between the choice and the bind."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import procs


def test_a_port_run_is_free_and_below_the_ephemeral_range() -> None:
    low, _ = procs._ephemeral_range()
    for count in (1, 2, 4):
        base = procs.free_port_run(count)
        assert base >= 1024 and base + count <= low
        held = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind((procs.LOOPBACK, port))
        finally:
            for sock in held:
                sock.close()


def test_a_child_that_exited_stops_the_bench_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text("mailgate: worker 1 (pid 7) cannot start (its error is above)\n")
    popen = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    popen.wait()
    with log.open("ab") as log_file:
        child = procs.Child("full, 2 workers", popen, 0, log, log_file)
        with pytest.raises(procs.ProcessError, match="exited with status 1:\nmailgate: worker 1"):
            procs.ensure_alive(child)
