"""[logging]: JSON lines to a file (reopened on SIGUSR1 and SIGHUP, as logrotate needs), syslog
over a real datagram socket, an unwritable file refused at start, and the queue id on every line
a transaction writes: a delivery failure in a real process, and a plugin's lines (and its tasks')
in two concurrent SMTP sessions that never swap ids."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from logging import LogRecord
from pathlib import Path
from typing import Any, ClassVar

import aiosmtplib
import pytest
from harness import HARNESS_ORDER, LOOPBACK, RecordingSink, make_settings, message
from test_signals import mailgate_command, write_served_config

from gateway.app import Gateway
from gateway.config import PluginSettings
from gateway.logcontext import QidFilter
from gateway.logsetup import JsonFormatter, SafeFormatter
from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.plugins import builtin_registry
from gateway.server import GatewayServer
from gateway.verdict import Finding

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def served_config(
    tmp_path: Path,
    logging_keys: Mapping[str, str],
    changes: Sequence[tuple[str, str, str]] = (),
    extra: str = "",
) -> tuple[Path, int]:
    """The shipped config for a test process, its [logging] table replaced by `logging_keys`."""
    config, port = write_served_config(tmp_path, list(changes), extra)
    text = config.read_text(encoding="utf-8")
    table = "[logging]\n" + "".join(f"{k} = {v}\n" for k, v in logging_keys.items())
    text, count = re.subn(r"(?m)^\[logging\]\n(?:[^\[\n].*\n|\n)*", table + "\n", text)
    assert count == 1, text
    config.write_text(text, encoding="utf-8")
    return config, port


class Process:
    """`mailgate serve` as a real process; stderr (what is not in the log file) in a file."""

    def __init__(self, tmp_path: Path, config: Path, port: int, dev: bool = True) -> None:
        self.port = port
        self.stderr = tmp_path / "stderr.log"
        env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
        with open(self.stderr, "wb") as err, open(tmp_path / "stdout.log", "wb") as out:
            self.proc = subprocess.Popen(
                [*mailgate_command(), "--config", str(config), "serve", *(["--dev"] * dev)],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def alive(self) -> None:
        assert self.proc.poll() is None, f"mailgate exited:\n{self.stderr.read_text()}"

    def wait_greeting(self, timeout: float = 60.0) -> None:
        """Signal handlers are in place once the loop greets."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220 "):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"no greeting on {self.port}:\n{self.stderr.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=10)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of `path`, each of which must be one JSON object (a partial last line is
    still being written: left for the next poll)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.split("\n")[:-1]  # complete lines only
    return [json.loads(line) for line in lines]


def wait_entries(
    proc: Process, path: Path, enough: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """The log's entries once `enough(entries)`; `timeout` bounds a failure only."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = json_lines(path)
        if enough(entries):
            return entries
        proc.alive()
        time.sleep(0.05)
    raise AssertionError(f"not logged in {timeout}s to {path}:\n{json_lines(path)}")


def wait_json(
    proc: Process, path: Path, want: Callable[[dict[str, Any]], bool], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """The log's entries once one of them satisfies `want`."""
    return wait_entries(proc, path, lambda entries: any(map(want, entries)), timeout)


def send_one(port: int) -> str:
    """One message through the gateway; the queue id its reply names."""
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.example.net", timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.net")
        client.rcpt("bob@example.com")
        code, reply = client.data(message())
    assert code == 250, reply
    found = re.search(rb"id=([0-9A-F]{12})", reply)
    assert found, reply
    return found.group(1).decode()


@pytest.fixture
def json_file_server(tmp_path: Path) -> Iterator[tuple[Process, Path]]:
    log = tmp_path / "log" / "mailgate.log"
    log.parent.mkdir()
    config, port = served_config(
        tmp_path,
        {"format": '"json"', "destination": '"file"', "file": '"../log/mailgate.log"'},
    )
    proc = Process(tmp_path, config, port)
    try:
        proc.wait_greeting()
        yield proc, log
    finally:
        proc.stop()


def test_json_lines_to_a_file_carry_the_queue_id(json_file_server: tuple[Process, Path]) -> None:
    proc, log = json_file_server
    qid = send_one(proc.port)
    entries = wait_json(proc, log, lambda e: e["logger"] == "mailgate.message")
    [line] = [e for e in entries if e["logger"] == "mailgate.message"]
    assert line["qid"] == qid and f"qid={qid}" in line["message"]
    assert line["level"] == "INFO" and line["pid"] == proc.proc.pid and "worker" not in line
    for entry in entries:  # every line parsed as one object with the common keys
        assert TIME.match(entry["time"]), entry
        assert {"time", "level", "logger", "message", "pid"} <= set(entry)
    assert any(e["message"].startswith("listening on") for e in entries)
    assert "listening on" not in proc.stderr.read_text()  # the file, not stderr


def _moved_then_signalled(proc: Process, log: Path, signum: int, name: str) -> None:
    """logrotate without copytruncate: the file renamed, then the signal; a new file must be
    created at the same path and written, the renamed one no longer."""
    rotated = log.with_name(name)
    log.rename(rotated)
    proc.proc.send_signal(signum)
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline:
        proc.alive()
        time.sleep(0.05)
    assert log.exists(), f"no new log file after signal {signum}:\n{proc.stderr.read_text()}"
    before = rotated.read_text(encoding="utf-8")
    qid = send_one(proc.port)
    wait_json(proc, log, lambda e: e.get("qid") == qid and e["logger"] == "mailgate.message")
    assert rotated.read_text(encoding="utf-8") == before  # nothing more went to the old one


def test_sigusr1_and_sighup_reopen_a_rotated_log_file(
    json_file_server: tuple[Process, Path],
) -> None:
    proc, log = json_file_server
    wait_json(proc, log, lambda e: e["message"].startswith("listening on"))
    _moved_then_signalled(proc, log, signal.SIGUSR1, "mailgate.log.1")
    _moved_then_signalled(proc, log, signal.SIGHUP, "mailgate.log.2")
    # SIGHUP still reloads: what it says is in the new file
    wait_json(proc, log, lambda e: e["message"].startswith("reloaded "))
    proc.alive()


def test_with_workers_sigusr1_reopens_every_process_log(tmp_path: Path) -> None:
    # The supervisor reopens its own handle and forwards SIGUSR1; each worker reopens its own.
    log = tmp_path / "mailgate.log"
    config, port = served_config(
        tmp_path,
        {"format": '"json"', "destination": '"file"', "file": '"../mailgate.log"'},
        changes=[("listen", "workers", "2")],
    )

    def listening(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in entries if e["message"].startswith("listening on")]

    def reopened(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in entries if e["message"].endswith(" reopened")]

    proc = Process(tmp_path, config, port)
    try:
        started = wait_entries(proc, log, lambda entries: len(listening(entries)) == 2, 120)
        workers = {e["worker"]: e["pid"] for e in listening(started)}
        assert sorted(workers) == [0, 1]
        log.rename(tmp_path / "mailgate.log.1")
        proc.proc.send_signal(signal.SIGUSR1)
        entries = wait_entries(proc, log, lambda entries: len(reopened(entries)) == 3)
        by_pid = {e["pid"]: e.get("worker") for e in reopened(entries)}
        assert by_pid == {proc.proc.pid: None, workers[0]: 0, workers[1]: 1}
    finally:
        proc.stop()


def test_an_unwritable_log_file_stops_serve_at_start_naming_it(tmp_path: Path) -> None:
    config, port = served_config(
        tmp_path, {"destination": '"file"', "file": '"../no/such/folder/mailgate.log"'}
    )
    proc = Process(tmp_path, config, port)
    assert proc.proc.wait(timeout=120) == 1
    err = proc.stderr.read_text()
    path = tmp_path / "no" / "such" / "folder" / "mailgate.log"
    assert f"cannot write the log file {path}: No such file or directory" in err, err
    assert re.search(rf"{re.escape(str(config))}:\d+: key 'logging.file'", err), err
    assert "Traceback" not in err


def _syslog_lines(sock: socket.socket, until: str, timeout: float = 60.0) -> list[bytes]:
    """Datagrams received until one contains `until`; `timeout` bounds a failure only."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            continue
        if until.encode() in got[-1]:
            return got
    raise AssertionError(f"{until!r} not received over syslog:\n{got}")


SYSLOG_LINE = re.compile(
    rb"^<(\d+)>(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d "
    rb"(?:(\S+) )?mailgate\[(\d+)\]: (.*)$",
    re.DOTALL,
)


@pytest.mark.parametrize("transport", ["unix", "udp"])
def test_syslog_gets_rfc3164_lines_with_ident_and_mail_facility(
    tmp_path: Path, transport: str
) -> None:
    if transport == "unix":
        address = str(tmp_path / "dev-log")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        address = f"{LOOPBACK}:{sock.getsockname()[1]}"
    with sock:
        config, port = served_config(
            tmp_path,
            {"destination": '"syslog"', "syslog_address": f'"{address}"', "facility": '"mail"'},
        )
        proc = Process(tmp_path, config, port)
        try:
            proc.wait_greeting()
            qid = send_one(port)
            received = _syslog_lines(sock, f"qid={qid} client=")
        finally:
            proc.stop()
    parsed = [SYSLOG_LINE.match(datagram) for datagram in received]
    assert all(parsed), received
    for match in parsed:
        assert match is not None
        pri, host, pid = int(match.group(1)), match.group(2), int(match.group(3))
        assert pri >> 3 == 2, match.group(0)  # LOG_MAIL
        assert pid == proc.proc.pid
        assert (host is None) == (transport == "unix")  # a remote syslog needs our host name
    [line] = [m for m in parsed if m is not None and f"qid={qid} client=".encode() in m.group(4)]
    assert int(line.group(1)) & 7 == 6  # INFO
    assert b"mailgate.message: qid=" in line.group(4)
    assert not any(datagram.endswith(b"\x00") for datagram in received)


def test_a_delivery_failure_warning_carries_the_queue_id(tmp_path: Path) -> None:
    # No --dev: nothing listens on the delivery port, so MAIL meets a refused connection and
    # relay.py's warning (which knows no queue id) is written during the transaction.
    log = tmp_path / "mailgate.log"
    config, port = served_config(
        tmp_path,
        {"format": '"json"', "destination": '"file"', "file": '"../mailgate.log"'},
        changes=[("plugins", "order", '["headers"]')],  # no DNS asked during the transaction
        # without --dev the resolver is [dns]'s: loopback, where nothing answers the probe
        extra='\n[dns]\nnameservers = ["127.0.0.1"]\n',
    )
    proc = Process(tmp_path, config, port, dev=False)
    try:
        proc.wait_greeting()
        with smtplib.SMTP(LOOPBACK, port, local_hostname="client.example.net", timeout=30) as c:
            c.ehlo()
            code, _ = c.mail("alice@example.net")
            assert code == 451
        entries = wait_json(proc, log, lambda e: "phase=MAIL refused" in e["message"])
    finally:
        proc.stop()
    [refusal] = [e for e in entries if "phase=MAIL refused" in e["message"]]
    qid = refusal["qid"]
    assert f"qid={qid}" in refusal["message"]
    [warning] = [e for e in entries if e["logger"] == "mailgate.relay"]
    assert warning["level"] == "WARNING" and warning["qid"] == qid, warning
    assert "qid" not in warning["message"]  # the id comes from the context, not the call
    assert all("qid" not in e for e in entries if e["message"].startswith("listening on"))


# -- in-process: two concurrent sessions, a plugin that logs and starts tasks that log --------


class Noisy(PluginBase):
    """Logs at MAIL and at DATA, from itself and from a task it starts, after waiting for the
    other session to be in the same phase: the two transactions' lines interleave."""

    name: ClassVar[str] = "noisy"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.MAIL, Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {}
    on_error = None
    arrived: ClassVar[dict[str, int]] = {}
    both: ClassVar[dict[str, asyncio.Event]] = {}

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        log = logging.getLogger("mailgate.plugins.noisy")
        key = phase.value
        event = self.both.setdefault(key, asyncio.Event())
        self.arrived[key] = self.arrived.get(key, 0) + 1
        if self.arrived[key] == 2:
            event.set()
        await asyncio.wait_for(event.wait(), 30)  # the other session is here too
        log.warning("noisy %s for %s", key, ctx.queue_id)

        async def later() -> None:
            await asyncio.sleep(0)
            log.warning("noisy task %s for %s", key, ctx.queue_id)

        await asyncio.create_task(later())
        await asyncio.to_thread(log.warning, "noisy thread %s for %s", key, ctx.queue_id)
        return []


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(QidFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_concurrent_sessions_never_mix_queue_ids(tmp_path: Path, sink: RecordingSink) -> None:
    registry = builtin_registry()
    registry.register(Noisy)
    Noisy.arrived.clear()
    Noisy.both.clear()
    settings = make_settings(
        tmp_path, sink.port, plugins=PluginSettings(order=(*HARNESS_ORDER, "noisy"))
    )
    gateway = Gateway.create(settings, registry)
    server = GatewayServer(gateway)
    collect = Collect()
    logger = logging.getLogger("mailgate")
    old_level = logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        host, port = await server.start()

        async def one(n: int) -> str:
            client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=60)
            await client.connect()
            try:
                _, reply = await client.sendmail(
                    f"sender{n}@example.net", ["bob@example.com"], message()
                )
            finally:
                await client.quit()
            found = re.search(r"id=([0-9A-F]{12})", reply)
            assert found, reply
            return found.group(1)

        qids = await asyncio.gather(one(1), one(2))
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
        await server.stop(grace=1)
    assert len(set(qids)) == 2
    noisy = [r for r in collect.records if r.name == "mailgate.plugins.noisy"]
    assert len(noisy) == 2 * 2 * 3, [r.getMessage() for r in noisy]  # 2 sessions, 2 phases
    for record in noisy:
        named = record.getMessage().rsplit(" ", 1)[1]  # the id the plugin saw
        assert record.qid == named, record.getMessage()
    assert {r.qid for r in noisy} == set(qids)
    # outside a transaction (start-up, the connection's own lines) there is no id
    assert all(r.qid is None for r in collect.records if "listening on" in r.getMessage())
    text = SafeFormatter("%(name)s: %(qid_field)s%(message)s")
    assert text.format(noisy[0]).startswith(f"mailgate.plugins.noisy: qid={noisy[0].qid} noisy")


# -- the formatters --------------------------------------------------------------------------


def _record(msg: str, *args: object, exc: bool = False, qid: str | None = None) -> LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("invalid literal for int(): '\x1b]0;pwned\x07'")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("mailgate.chain", logging.ERROR, __file__, 1, msg, args, exc_info)
    record.qid = qid
    return record


def test_json_lines_escape_everything_and_keep_the_traceback_apart() -> None:
    line = JsonFormatter(worker=3).format(
        _record("plugin %s raised\nsecond line \u202e", "x\x1b[2J", exc=True, qid="ABC123")
    )
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["qid"] == "ABC123" and entry["worker"] == 3 and entry["level"] == "ERROR"
    # decoded (jq -r), still no control character from the wire
    assert entry["message"] == "plugin x\\x1b[2J raised\nsecond line \\u202e"
    assert entry["traceback"].startswith("Traceback (most recent call last):\n")
    assert "ValueError: invalid literal for int(): '\\x1b]0;pwned\\x07'" in entry["traceback"]
    assert "\x1b" not in entry["traceback"] and "Traceback" not in entry["message"]


def test_text_lines_name_the_queue_id_once() -> None:
    formatter = SafeFormatter("%(levelname)s %(name)s: %(qid_field)s%(message)s")
    assert formatter.format(_record("clamd down", qid="ABC123")) == (
        "ERROR mailgate.chain: qid=ABC123 clamd down"
    )
    # our own per-message lines already say it: not twice
    assert formatter.format(_record("qid=%s plugin=x raised", "ABC123", qid="ABC123")) == (
        "ERROR mailgate.chain: qid=ABC123 plugin=x raised"
    )
    assert formatter.format(_record("listening", qid=None)) == "ERROR mailgate.chain: listening"


def test_a_log_file_that_cannot_be_reopened_keeps_the_old_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.logsetup import ReopeningFileHandler

    folder = tmp_path / "log"
    folder.mkdir()
    handler = ReopeningFileHandler(folder / "m.log")
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        handler.emit(_record("one"))
        (folder / "m.log").rename(tmp_path / "m.log.1")
        folder.rmdir()  # the folder is gone: the new file cannot be made
        handler.reopen()
        assert "cannot reopen log file" in capsys.readouterr().err
        handler.emit(_record("two"))
        handler.flush()
        assert (tmp_path / "m.log.1").read_text() == "one\ntwo\n"
    finally:
        handler.close()


def test_a_stalled_destination_drops_and_counts_instead_of_growing() -> None:
    """The writer thread's queue is bounded; what finds it full is counted, then said."""
    import queue as queue_module

    from gateway.logsetup import _Enqueue

    records: queue_module.Queue[logging.LogRecord] = queue_module.Queue(2)
    handler = _Enqueue(records)
    log = logging.getLogger("mailgate.test.stalled")
    for n in range(5):
        handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "line %d", (n,), None))
    assert records.qsize() == 2 and handler.dropped == 3
    records.get_nowait(), records.get_nowait()  # the writer caught up
    handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "after", (), None))
    said = [records.get_nowait().getMessage(), records.get_nowait().getMessage()]
    assert said == ["3 log lines dropped: the log destination did not keep up", "after"]


def test_a_full_disk_is_said_once_on_stderr_and_logging_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """/dev/full answers every write with ENOSPC: one line says so, no traceback per record,
    and the process (the mail path) is never stopped by its log."""
    from gateway.logsetup import ReopeningFileHandler

    handler = ReopeningFileHandler(Path("/dev/full"))
    log = logging.getLogger("mailgate.test.full")
    try:
        for n in range(3):
            handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "m %d", (n,), None))
    finally:
        handler.close()
    err = capsys.readouterr().err
    assert err.count("cannot write to log file /dev/full") == 1, err
    assert "No space left on device" in err and "Traceback" not in err
