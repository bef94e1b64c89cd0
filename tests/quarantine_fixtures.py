"""Fixtures and helpers for the quarantine tests (a pytest plugin, listed in conftest.py).

`qcli` runs `mailgate --config <file> quarantine ...` in this process against the same
quarantine folder and delivery server (`sink`) as the harness's gateway, and returns what it
wrote as bytes, so tests can look for raw control bytes in the output.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest
from harness import REPO, RecordingSink, RunningGateway

from gateway.cli import main

QID = re.compile(r"id=([0-9A-F]{12})")
# What must never reach an admin's terminal from message content: ESC, BEL, CR, NUL, backspace,
# C1 CSI/OSC (UTF-8 encoded), and the bidi overrides that reorder what is shown.
FORBIDDEN_OUTPUT = (
    b"\x1b",
    b"\x07",
    b"\r",
    b"\x00",
    b"\x08",
    b"\x7f",
    b"\xc2\x9b",
    b"\xc2\x9d",
    "\u202e".encode(),
    "\u2066".encode(),
)


@dataclass
class CliResult:
    code: int
    out: bytes
    err: bytes

    @property
    def text(self) -> str:
        return self.out.decode("utf-8")  # strict: the output must be valid UTF-8


_CLI_LOCK = threading.Lock()  # sys.stdout is one per process

# What a release puts in place of `X-Mailgate-Action: quarantine` (gateway.header_edit).
RELEASED_FIELDS = re.compile(
    rb"X-Mailgate-Action: release\r\nX-Mailgate-Released: (?P<date>[^;\r\n]+) by "
    rb"(?P<user>[^;\r\n]+); verdict=quarantine\r\n"
)


def as_stored(released: bytes) -> bytes:
    """A released message as the quarantine stored it: the release marks taken back out."""
    assert RELEASED_FIELDS.search(released) is not None, released[:600]
    return RELEASED_FIELDS.sub(b"X-Mailgate-Action: quarantine\r\n", released, count=1)


def run_cli(*args: str | Path) -> CliResult:
    """`mailgate ARGS...` in this process; stdout and stderr captured as bytes."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    with _CLI_LOCK, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out.flush()
        err.flush()
    buffer_out = out.buffer
    buffer_err = err.buffer
    assert isinstance(buffer_out, io.BytesIO) and isinstance(buffer_err, io.BytesIO)
    return CliResult(code, buffer_out.getvalue(), buffer_err.getvalue())


def mailgate_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m gateway`."""
    script = Path(sys.executable).parent / "mailgate"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def run_mailgate(*args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """The real command, as a separate process."""
    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    return subprocess.run(
        [*mailgate_command(), *map(str, args)],
        env=env,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def quarantine_everything(rules: Path) -> Path:
    """Make a rules/ copy quarantine every message: thresholds.quarantine = -100 (and the tag
    threshold with it, which must not be above it)."""
    if not rules.exists():
        shutil.copytree(REPO / "rules", rules)
    actions = rules / "actions.toml"
    text = actions.read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^(tag|quarantine) = [-0-9.]+", r"\1 = -100.0", text)
    assert count in (1, 2)
    actions.write_text(text, encoding="utf-8")
    return rules


def write_config(
    path: Path,
    *,
    quarantine: Path,
    rules: Path,
    delivery_port: int,
    listen_port: int = 2525,
    extra: str = "",
) -> Path:
    """A gateway.toml for the CLI (or a gateway process) on loopback."""
    path.write_text(
        f"""
[listen]
address = "127.0.0.1"
port = {listen_port}
hostname = "mx.gateway.test"

[relay]
domains = ["example.com", ".sub.example.org"]

[limits]
idle_timeout = 30
data_timeout = 30
shutdown_grace = 2

[delivery]
host = "127.0.0.1"
port = {delivery_port}
connect_timeout = 2
command_timeout = 2
data_timeout = 60  # a release of 100 MB on a loaded 2-core CI machine (only bounds failures)

[plugins]
order = ["lists", "headers", "limits"]

[dns]
nameservers = ["127.0.0.1"]  # no plugin here asks; the start-up probe stays on loopback

[paths]
rules = "{rules}"
quarantine = "{quarantine}"
dev_maildir = "{quarantine.parent / "maildir"}"

[logging]
level = "warning"
{extra}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def quarantine_all(tmp_path: Path) -> Path:
    """The harness gateway of this test will quarantine every message it accepts."""
    return quarantine_everything(tmp_path / "rules")


@pytest.fixture
def cli_config(tmp_path: Path, sink: RecordingSink) -> Path:
    """Config for the CLI: the harness gateway's quarantine folder and the `sink`."""
    rules = tmp_path / "rules"
    if not rules.exists():
        shutil.copytree(REPO / "rules", rules)
    return write_config(
        tmp_path / "cli.toml",
        quarantine=tmp_path / "quarantine",
        rules=rules,
        delivery_port=sink.port,
    )


QuarantineCli = Callable[..., CliResult]


@pytest.fixture
def qcli(cli_config: Path) -> QuarantineCli:
    """`qcli("list", "--json")` runs `mailgate --config <cli_config> quarantine list --json`."""

    def run(*args: str | Path) -> CliResult:
        return run_cli("--config", cli_config, "quarantine", *args)

    return run


@dataclass
class Sent:
    code: int
    text: str

    @property
    def qid(self) -> str:
        match = QID.search(self.text)
        assert match, self.text
        return match.group(1)


async def send(
    gw: RunningGateway,
    msg: bytes,
    sender: str = "alice@example.net",
    rcpts: Sequence[str] = ("bob@example.com",),
    mail_options: Sequence[str] = (),
) -> Sent:
    """One transaction over a fresh connection; the final reply (raises on MAIL/RCPT refusal)."""
    client = aiosmtplib.SMTP(
        hostname=gw.host,
        port=gw.port,
        start_tls=False,
        local_hostname="client.example.net",
        timeout=120,  # per command: 100 MB DATA on a loaded CI machine (only bounds failures)
    )
    await client.connect()
    try:
        await client.mail(sender, options=list(mail_options), encoding="utf-8")
        for rcpt in rcpts:
            await client.rcpt(rcpt, encoding="utf-8")
        try:
            response = await client.data(msg)
        except aiosmtplib.SMTPResponseException as exc:
            return Sent(exc.code, exc.message)
        return Sent(response.code, response.message)
    finally:
        if client.is_connected:
            await client.quit()
