"""The README's run command: `mailgate serve --demo` shows a message going through end to end."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from harness import REPO, free_port
from test_signals import mailgate_command, set_key


def test_serve_demo_delivers_a_message_to_the_dev_maildir(tmp_path: Path) -> None:
    text = (REPO / "config" / "gateway.toml").read_text()
    port, delivery_port = free_port(), free_port()
    text = set_key(text, "listen", "port", str(port))
    text = set_key(text, "delivery", "port", str(delivery_port))
    text = set_key(text, "paths", "rules", f'"{REPO / "rules"}"')
    text = set_key(text, "paths", "quarantine", f'"{tmp_path / "quarantine"}"')
    text = set_key(text, "paths", "dev_maildir", f'"{tmp_path / "maildir"}"')
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    proc = subprocess.Popen(
        [*mailgate_command(), "--config", str(config), "serve", "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if b"demo: gateway listening" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
    output = b"".join(lines) + rest
    assert proc.returncode == 0, output.decode(errors="replace")
    assert b"demo: the gateway answered: 2.0.0 OK id=" in output
    delivered = list((tmp_path / "maildir" / "new").iterdir())
    assert len(delivered) == 1
    content = delivered[0].read_bytes()
    assert content.startswith(b"Received: from demo.example.net ([127.0.0.1])")
    assert b"X-Mailgate-Action: relay\r\n" in content
    assert content.endswith(b"This message went through mailgate end to end.\r\n")
    assert b"action=relay" in output  # the one log line per message
