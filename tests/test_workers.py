"""`[listen] workers = 2` as real processes: a supervisor, two workers sharing the port through
SO_REUSEPORT, both serving; a worker killed with -9 is restarted and mail keeps flowing; SIGTERM
stops every process within the shutdown grace."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import LOOPBACK, message
from test_signals import (
    mailgate_command,
    spawn_serve,
    stop_serving,
    wait_for_log,
    write_served_config,
)

GRACE = 5.0
# Waits bound a failure only: a loaded 2-core CI may take far longer than a quiet machine to
# start two workers (each loads the model and every plugin).
WORKER_PID = re.compile(r"mailgate\.message\[worker (\d+) pid (\d+)\]: qid=")


@dataclass
class Cluster:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    maildir: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 120.0) -> str:
        def matches(text: str, pattern: str) -> int:
            return len(re.findall(pattern, text))

        return wait_for_log(self.proc, self.log, matches, pattern, count, timeout)

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> its latest pid, from the supervisor's log."""
        found = re.findall(r"worker (\d+) started: pid (\d+)", self.log_text())
        return {int(i): int(p) for i, p in found}

    def send(self, n: int) -> None:
        client = smtplib.SMTP(LOOPBACK, self.port, local_hostname="client.example.net", timeout=5)
        client.ehlo()
        client.sendmail("sender@example.net", ["user@example.com"], message(subject=f"workers {n}"))
        client.quit()

    def handled_by(self) -> set[int]:
        return {int(pid) for _, pid in WORKER_PID.findall(self.log_text())}


def _wait_for_workers(cluster: Cluster, count: int) -> None:
    if count == 1:
        cluster.wait_log(r"mailgate: listening on", 1)
    else:
        cluster.wait_log(r"mailgate\[worker \d+ pid \d+\]: listening on", count)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running(tmp_path, workers=2) as cluster:
        yield cluster


@contextlib.contextmanager
def running(tmp_path: Path, workers: int, extra: str = "") -> Iterator[Cluster]:
    """`mailgate serve --dev` with `workers`, `extra` appended to the config; ready when every
    worker has logged that it listens."""
    config, port = write_served_config(tmp_path, [("listen", "workers", str(workers))], extra)
    proc, log = spawn_serve(tmp_path, config)
    cluster = Cluster(proc, port, log, tmp_path / "maildir")
    try:
        _wait_for_workers(cluster, workers)
        yield cluster
    finally:
        pids = list(cluster.worker_pids().values())
        stop_serving(proc, GRACE)
        for pid in pids:  # never leave a worker behind holding the port
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of the (still running) supervisor counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_two_workers_both_serve(cluster: Cluster) -> None:
    pids = set(cluster.worker_pids().values())
    assert len(pids) == 2
    sent = 0
    while cluster.handled_by() != pids and sent < 60:
        cluster.send(sent)
        sent += 1
        cluster.wait_log(WORKER_PID.pattern, sent)
    assert cluster.handled_by() == pids, cluster.log_text()


def test_killed_worker_is_restarted_and_mail_flows(cluster: Cluster) -> None:
    before = cluster.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    text = cluster.wait_log(r"worker 0 started: pid \d+", 2)
    assert "worker 0 (pid" in text and "died" in text
    after = cluster.worker_pids()
    assert after[0] != before[0] and after[1] == before[1]
    _wait_for_workers(cluster, 3)
    for n in range(6):
        cluster.send(n)
    cluster.wait_log(WORKER_PID.pattern, 6)


def test_sigterm_stops_every_process_within_the_grace(cluster: Cluster) -> None:
    pids = list(cluster.worker_pids().values())
    started = time.monotonic()
    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(timeout=GRACE + 10) == 0
    assert time.monotonic() - started < GRACE
    assert not [pid for pid in pids if _alive(pid)]
    assert cluster.log_text().count("stopped") >= 3  # both workers, then the supervisor


def test_sighup_reaches_every_worker(cluster: Cluster) -> None:
    cluster.proc.send_signal(signal.SIGHUP)
    text = cluster.wait_log(r"mailgate\[worker \d+ pid \d+\]: reloaded \S+gateway.toml", 2)
    workers = re.findall(r"mailgate\[worker (\d+) pid \d+\]: reloaded \S+gateway.toml", text)
    assert len(set(workers)) == 2


def test_sighup_while_workers_start_kills_none_and_reaches_each(tmp_path: Path) -> None:
    """A reload asked for while the workers still load (no handler yet: the default action would
    kill them) waits for each worker to say it is ready, then reaches it."""
    config, port = write_served_config(tmp_path, [("listen", "workers", "2")])
    proc, log = spawn_serve(tmp_path, config)
    cluster = Cluster(proc, port, log, tmp_path / "maildir")
    try:
        cluster.wait_log(r"worker 1 started: pid \d+", 1)
        proc.send_signal(signal.SIGHUP)
        text = cluster.wait_log(r"mailgate\[worker \d+ pid \d+\]: reloaded \S+gateway.toml", 2)
        assert "died" not in text, text
        _wait_for_workers(cluster, 2)
    finally:
        pids = list(cluster.worker_pids().values())
        stop_serving(proc, GRACE)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_broken_policy_stops_the_supervisor_before_any_worker_starts(tmp_path: Path) -> None:
    """The supervisor does not load the policy itself (it stays small); `mailgate check` in a
    child process does, and its error, naming the file and key, is what the admin reads."""
    config, _ = write_served_config(tmp_path, [("listen", "workers", "2")])
    (tmp_path / "rules" / "scores.toml").write_text("[scores]\nHDR_DATE_MISSING = 'high'\n")
    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    done = subprocess.run(
        [*mailgate_command(), "--config", str(config), "serve", "--dev"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "scores.toml" in done.stderr and "HDR_DATE_MISSING" in done.stderr, done.stderr
    assert "worker 0 started" not in done.stderr


def test_the_supervisor_holds_no_model_or_plugins(cluster: Cluster) -> None:
    """Its peak RSS stays well under a worker's (34 MiB against 113 MiB here): the model and
    the plugins live in the workers only."""

    def peak(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]

    workers = list(cluster.worker_pids().values())
    assert workers
    assert peak(cluster.proc.pid) < 0.6 * min(peak(pid) for pid in workers)
