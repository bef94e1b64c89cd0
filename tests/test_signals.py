"""`mailgate serve --dev` as a real process: delivery to the dev Maildir, SIGHUP reloads of rules/
(a broken edit refused, the running policy kept; a good edit applied to open connections), and
SIGTERM (an idle client gets 421 4.3.2, the process exits 0 within the grace period)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import LOOPBACK, REPO, free_port, message

GRACE = 5.0


def mailgate_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m gateway`."""
    script = Path(sys.executable).parent / "mailgate"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def set_key(text: str, table: str, key: str, value: str) -> str:
    """Replace `key = ...` inside `[table]` of a TOML text (the shipped file's layout)."""
    lines = text.splitlines()
    current = None
    for n, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            current = header.group(1).strip()
        elif current == table and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            lines[n] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    raise AssertionError(f"[{table}] {key} not found in the shipped config")


def write_served_config(
    tmp_path: Path, changes: list[tuple[str, str, str]] | None = None, extra: str = ""
) -> tuple[Path, int]:
    """tmp_path/etc/gateway.toml from the shipped config: loopback on free ports, a copy of
    rules/ and quarantine and Maildir folders beside it. Returns (config, listening port)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    (tmp_path / "models").symlink_to(REPO / "models")  # the classifier's, at ../models
    port, delivery_port = free_port(), free_port()
    text = (REPO / "config" / "gateway.toml").read_text(encoding="utf-8")
    for table, key, value in [
        ("listen", "address", f'"{LOOPBACK}"'),
        ("listen", "port", str(port)),
        ("delivery", "host", f'"{LOOPBACK}"'),
        ("delivery", "port", str(delivery_port)),
        ("limits", "shutdown_grace", str(GRACE)),
        ("paths", "rules", '"../rules"'),
        ("paths", "quarantine", '"../quarantine"'),
        ("paths", "dev_maildir", '"../maildir"'),
        *(changes or []),
    ]:
        text = set_key(text, table, key, value)
    config = etc / "gateway.toml"
    config.write_text(text + extra, encoding="utf-8")
    return config, port


def wait_for_log(
    proc: subprocess.Popen[bytes],
    log: Path,
    occurrences: Callable[[str, str], int],
    needle: str,
    count: int = 1,
    timeout: float = 120.0,
) -> str:
    """The log once `occurrences(text, needle)` reaches `count`, polled (another process writes
    it); fails at once if the process exits. `timeout` bounds a failure only: generous."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace")
        if occurrences(text, needle) >= count:
            return text
        assert proc.poll() is None, f"mailgate exited:\n{text}"
        time.sleep(0.02)
    text = log.read_text(encoding="utf-8", errors="replace")
    raise AssertionError(f"{needle!r} (x{count}) not logged in {timeout}s:\n{text}")


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    rules: Path
    maildir: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, needle: str, count: int = 1, timeout: float = 120.0) -> str:
        return wait_for_log(self.proc, self.log, str.count, needle, count, timeout)

    def delivered(self) -> list[bytes]:
        folder = self.maildir / "new"
        if not folder.is_dir():
            return []
        files = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        return [f.read_bytes() for f in files]

    def wait_delivered(self, count: int, timeout: float = 120.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.delivered()

    def smtp(self) -> smtplib.SMTP:
        client = smtplib.SMTP(LOOPBACK, self.port, local_hostname="client.example.net", timeout=5)
        client.ehlo()
        return client


def _wait_for_banner(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Ready means the loop answers: a 220 greeting comes after signal handlers are installed."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mailgate exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220 "):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"mailgate did not greet on port {port}:\n{log.read_text()}")


def spawn_serve(
    tmp_path: Path, config: Path, dev: bool = True
) -> tuple[subprocess.Popen[bytes], Path]:
    """`mailgate --config CONFIG serve --dev` in `tmp_path`; its log is tmp_path/mailgate.log.
    `dev=False`: `serve` proper (the file's [dns], no dev sink)."""
    log = tmp_path / "mailgate.log"
    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    with open(log, "wb") as err, open(tmp_path / "stdout.log", "wb") as out:
        proc = subprocess.Popen(
            [*mailgate_command(), "--config", str(config), "serve", *(["--dev"] * dev)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    return proc, log


def stop_serving(proc: subprocess.Popen[bytes], grace: float = GRACE) -> None:
    """SIGTERM (drain and stop) a served process, SIGKILL if it outlives the grace."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    config, port = write_served_config(tmp_path)
    proc, log = spawn_serve(tmp_path, config)
    try:
        _wait_for_banner(proc, port, log)
        yield Served(proc, port, tmp_path / "rules", tmp_path / "maildir", log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def policy_version(log_text: str, pattern: str) -> str:
    versions = re.findall(pattern + r"([0-9a-f]{12})", log_text)
    assert versions, log_text
    return str(versions[-1])


def test_dev_serve_delivers_to_the_maildir(served: Served) -> None:
    with served.smtp() as client:
        refused = client.sendmail("alice@example.net", ["bob@example.com"], message())
        assert refused == {}
    [delivered] = served.wait_delivered(1)
    # our trace fields on top, then the message exactly as sent
    assert delivered.startswith(b"Received: from client.example.net ([127.0.0.1])\r\n")
    assert b"\r\nX-Mailgate-Action: relay\r\n" in delivered
    assert delivered.endswith(message())


def test_sighup_refuses_broken_rules_and_applies_good_ones_to_open_connections(
    served: Served,
) -> None:
    old = policy_version(served.wait_log("listening on"), r"policy ")
    with served.smtp() as client:
        assert client.sendmail("carol@example.net", ["bob@example.com"], message()) == {}
    assert len(served.wait_delivered(1)) == 1

    # A broken edit: carol blocked, but a bad network on another line refuses the whole file.
    lists = served.rules / "lists.toml"
    shipped = lists.read_text(encoding="utf-8")
    broken = set_key(shipped, "client_ip", "block", '["192.0.2.0/24", "10.0.0.0/33"]')
    broken = set_key(broken, "sender", "block", '["carol@example.net"]')
    lists.write_text(broken, encoding="utf-8")
    bad_line = next(
        n for n, line in enumerate(broken.splitlines(), start=1) if "10.0.0.0/33" in line
    )
    served.proc.send_signal(signal.SIGHUP)
    text = served.wait_log("refused, keeping the running configuration")
    assert f"keeping the running configuration and policy {old}" in text
    assert f"{lists}:{bad_line}: key 'client_ip.block': '10.0.0.0/33'" in text
    assert served.proc.poll() is None
    # the old policy still rules: carol's mail goes through exactly as before
    with served.smtp() as client:
        assert client.sendmail("carol@example.net", ["bob@example.com"], message()) == {}
    assert len(served.wait_delivered(2)) == 2

    # A connection opened under the old policy stays open across the reload.
    client = served.smtp()
    try:
        lists.write_text(broken.replace('"10.0.0.0/33"', '"10.0.0.0/8"'), encoding="utf-8")
        served.proc.send_signal(signal.SIGHUP)
        text = served.wait_log("gateway.toml: no setting changed; policy")
        new = policy_version(text, r"no setting changed; policy ")
        assert new != old
        # the new policy applies at the next MAIL on the same connection
        code, reply = client.mail("carol@example.net")
        assert code == 550, reply
        assert reply.startswith(b"5.7.1 Sender address blocked by policy")
        # ...and the connection still works for a sender the policy lets through
        assert client.rset()[0] == 250
        assert client.sendmail("alice@example.net", ["bob@example.com"], message()) == {}
        client.quit()
    finally:
        client.close()
    delivered = served.wait_delivered(3)
    assert len(delivered) == 3
    assert b"<alice@example.net>" in delivered[-1]
    assert served.proc.poll() is None


def read_reply(sock: socket.socket) -> bytes:
    """One whole SMTP reply (up to its last line, `NNN text`), or what came before EOF."""
    data = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_sigterm_gives_idle_client_421_and_exits_0(served: Served) -> None:
    with socket.create_connection((LOOPBACK, served.port), timeout=5) as sock:
        assert read_reply(sock).startswith(b"220 ")
        sock.sendall(b"EHLO client.example.net\r\n")
        assert read_reply(sock).startswith(b"250-")
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        reply = read_reply(sock)
        assert reply.startswith(b"421 4.3.2 "), reply
        assert sock.recv(4096) == b""  # and the connection is closed
    assert served.proc.wait(timeout=GRACE + 5) == 0
    assert time.monotonic() - started < GRACE
    assert "stopped" in served.log_text()
