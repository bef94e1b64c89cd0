"""Crash safety: `mailgate serve` killed with SIGKILL while it quarantines.

The rule: a message the client was told 250 for is a complete, listed entry; a message the
client was not told 250 for is not listed, with one exception no protocol can remove: the
process dies after the entry is committed and before the 250 leaves (the client retries, and the
quarantine holds a duplicate, never a loss: RFC 5321 6.1). Such entries are only ever messages
whose final dot had been sent; the tests count them and check exactly that.

The gateway runs as a real subprocess with a policy that quarantines everything, under a burst
of concurrent clients, and is killed at random moments, several times over the same quarantine
folder (so each start also recovers the index the previous process left mid-write). A second
test kills it at each named point inside `put`, deterministically.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import RecordingSink, free_port
from quarantine_fixtures import mailgate_command, quarantine_everything, run_mailgate, write_config

from gateway.quarantine import Selection, SqliteStore

HERE = Path(__file__).resolve().parent
CRASHPOINT = HERE / "quarantine_crashpoint.py"
CRASH_POINTS = ("eml-partial", "eml-renamed", "json-renamed", "before-commit", "after-commit")
QID = re.compile(rb"id=([0-9A-F]{12})")
ROUNDS = 8
CLIENTS = 6


@dataclass
class Attempt:
    tag: str
    message: bytes
    state: str = "unsent"  # unsent -> sent (final dot handed to the kernel) -> accepted/refused
    qid: str | None = None


class Client(threading.Thread):
    """Sends message after message on one connection until the connection dies."""

    def __init__(self, port: int, prefix: str, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.prefix = prefix
        self.rng = rng
        self.attempts: list[Attempt] = []

    def run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError:
            return
        with sock, sock.makefile("rb") as replies:

            def reply() -> bytes:
                while True:
                    line = replies.readline()
                    if not line:
                        raise ConnectionError("closed")
                    if line[3:4] != b"-":
                        return line

            try:
                reply()
                sock.sendall(b"EHLO burst.example.net\r\n")
                reply()
                for n in range(10_000):
                    tag = f"{self.prefix}-{n}"
                    attempt = Attempt(tag, make_message(tag, self.rng))
                    self.attempts.append(attempt)
                    for command in (b"MAIL FROM:<burst@example.net>", b"RCPT TO:<bob@example.com>"):
                        sock.sendall(command + b"\r\n")
                        if not reply().startswith(b"250"):
                            raise ConnectionError("refused")
                    sock.sendall(b"DATA\r\n")
                    if not reply().startswith(b"354"):
                        raise ConnectionError("refused")
                    sock.sendall(attempt.message + b".\r\n")
                    attempt.state = "sent"
                    final = reply()
                    match = QID.search(final)
                    if final.startswith(b"250") and match:
                        attempt.state, attempt.qid = "accepted", match.group(1).decode()
                    else:
                        attempt.state = "refused"
            except (OSError, ConnectionError):
                return


def make_message(tag: str, rng: random.Random) -> bytes:
    lines = rng.randint(10, 3000)  # 1 KB to 230 KB: the writes take a while, kills land inside
    body = b"".join(b"%d %s\r\n" % (i, b"x" * 72) for i in range(lines))
    return (
        f"From: burst@example.net\r\nTo: bob@example.com\r\nSubject: {tag}\r\n"
        f"Message-ID: <{tag}@example.net>\r\n\r\n"
    ).encode() + body


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    port: int


def start(
    config: Path, port: int, log: Path, point: str | None = None, wait: float = 15
) -> Gateway:
    command = [*mailgate_command(), "--config", str(config), "serve"]
    if point is not None:
        command = [sys.executable, str(CRASHPOINT), point, "--config", str(config), "serve"]
    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output, env=env)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return Gateway(process, port)
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.02)
    process.kill()
    process.wait()
    pytest.fail(f"the gateway did not start:\n{log.read_text(errors='replace')}")


def kill(gateway: Gateway) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(gateway.process.pid, signal.SIGKILL)
    gateway.process.wait(timeout=10)


@pytest.fixture
def crash_config(tmp_path: Path, sink: RecordingSink) -> tuple[Path, int]:
    port = free_port()
    config = write_config(
        tmp_path / "gateway.toml",
        quarantine=tmp_path / "quarantine",
        rules=quarantine_everything(tmp_path / "rules"),
        delivery_port=sink.port,
        listen_port=port,
    )
    return config, port


def check_invariant(store: SqliteStore, attempts: list[Attempt]) -> dict[str, int]:
    """Told 250 => listed and complete; listed => complete, and told 250 or at least sent."""
    by_tag = {a.tag: a for a in attempts}
    listed = {e.id: e for e in store.select(Selection())}
    counts = {"accepted": 0, "committed_unacknowledged": 0, "not_listed": 0}
    for attempt in attempts:
        if attempt.state == "accepted":
            assert attempt.qid in listed, f"told 250 but not listed: {attempt.tag}"
            counts["accepted"] += 1
    tags = set()
    for entry_id, entry in listed.items():
        raw, metadata = store.get(entry_id)  # complete: the message file is there
        sent = by_tag.get(entry.subject or "")
        if sent is None:
            continue  # from an earlier round
        tags.add(sent.tag)
        assert raw.endswith(sent.message), f"{entry_id}: stored message differs"
        assert metadata["rcpt_tos"] == ["bob@example.com"]
        assert metadata["mail_from"] == "burst@example.net"
        if sent.state != "accepted":
            # The one window: committed, then killed before the 250 went out.
            assert sent.state == "sent", f"listed although never fully sent: {sent}"
            counts["committed_unacknowledged"] += 1
    counts["not_listed"] = sum(1 for a in attempts if a.tag not in tags)
    return counts


def test_sigkill_at_random_moments_during_a_burst_keeps_the_rule(
    crash_config: tuple[Path, int], tmp_path: Path
) -> None:
    config, port = crash_config
    seed = int(os.environ.get("MAILGATE_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    quarantine = tmp_path / "quarantine"
    totals: dict[str, int] = {}
    all_attempts: list[Attempt] = []
    for round_number in range(ROUNDS):
        gateway = start(config, port, tmp_path / "gateway.log")
        clients = [
            Client(port, f"r{round_number}c{c}", random.Random(rng.random()))
            for c in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        time.sleep(rng.uniform(0.1, 0.6))
        kill(gateway)
        for client in clients:
            client.join(timeout=15)
            assert not client.is_alive()
        attempts = [a for client in clients for a in client.attempts]
        all_attempts += attempts
        store = SqliteStore(quarantine, create=False)  # what an admin sees after the crash
        counts = check_invariant(store, all_attempts)
        store.close()
        for key, value in counts.items():
            totals[key] = value
    # Enough happened for the test to mean something (seed in the message to replay a run).
    assert totals["accepted"] >= ROUNDS, (seed, totals)
    assert totals["not_listed"] >= 1, (seed, totals)

    # The CLI, a separate process, sees the same entries; the leftovers of the kills go.
    listed = run_mailgate("--config", config, "quarantine", "list", "--limit", "0")
    assert listed.returncode == 0, listed.stderr
    accepted = [a.qid for a in all_attempts if a.qid]
    assert all(qid and qid.encode() in listed.stdout for qid in accepted)
    store = SqliteStore(quarantine)
    swept = store.sweep(min_age=0)
    expected = {f"{i}{ext}" for i in store.ids() for ext in (".eml", ".json")}
    assert {p.name for p in quarantine.iterdir() if p.is_file()} == expected
    assert list((quarantine / ".tmp").iterdir()) == []
    print(f"crash test seed {seed}: {totals} over {len(all_attempts)} attempts; swept {swept}")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_point_inside_put(
    crash_config: tuple[Path, int], tmp_path: Path, point: str
) -> None:
    config, port = crash_config
    quarantine = tmp_path / "quarantine"
    gateway = start(config, port, tmp_path / "gateway.log", point=point)
    client = Client(port, point, random.Random(1))
    client.start()
    client.join(timeout=15)
    assert gateway.process.wait(timeout=10) == -signal.SIGKILL
    first = client.attempts[0]
    assert first.state == "sent"  # the final dot went out; no reply came back
    store = SqliteStore(quarantine, create=False)
    listed = store.ids()
    if point == "after-commit":
        [entry_id] = listed  # committed: complete and listed (a duplicate when the client retries)
        assert store.get(entry_id)[0].endswith(first.message)
    else:
        assert listed == []
    store.close()

    # The next start serves at once over whatever the killed process left.
    gateway = start(config, port, tmp_path / "gateway.log")
    try:
        client = Client(port, f"{point}-after", random.Random(2))
        client.start()
        deadline = time.monotonic() + 10
        while not any(a.state == "accepted" for a in client.attempts):
            assert time.monotonic() < deadline, client.attempts
            time.sleep(0.01)
    finally:
        kill(gateway)
        client.join(timeout=15)
    store = SqliteStore(quarantine)
    accepted = [a.qid for a in client.attempts if a.state == "accepted"]
    assert set(accepted) <= set(store.ids())
    store.sweep(min_age=0)
    expected = {f"{i}{ext}" for i in store.ids() for ext in (".eml", ".json")}
    assert {p.name for p in quarantine.iterdir() if p.is_file()} == expected
