"""ClamAV through a REAL clamd (Debian's clamav-daemon), started here with a local signature file.

The signature database is one line written by the fixture: the EICAR test file as an .ndb body
signature (its hex, so neither this source nor the database is itself an EICAR file). freshclam
is never run and nothing leaves the machine: clamd listens on a Unix socket and on 127.0.0.1.
The EICAR file is found by clamd in a plain attachment, a zip and a zip inside a zip (clamd's
own MIME and archive parsers), and by the gateway's own scan (ATT_EICAR_TEST) alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest
from harness import LOOPBACK, GatewayFactory, RecordingSink, free_port, make_settings, message
from mime_samples import eicar, with_attachment, zip_of

from gateway.config import PluginSettings, Settings
from gateway.mime.budgets import ClamavSettings
from gateway.mime.clamd import instream, ping
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins.clamav import ClamavScan
from gateway.policy import load_rules

STREAM_MAX = 5 * 1024 * 1024  # clamd's StreamMaxLength here, and our [clamav] max_stream


@dataclass
class Clamd:
    socket_path: Path
    tcp: str
    process: subprocess.Popen[bytes]


def _unavailable(reason: str) -> None:
    """Skip on a developer machine without clamd, but fail in CI, which installs it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI is set: .ci/run installs clamav-daemon)", pytrace=False)
    pytest.skip(reason)


def _clamd_binary() -> str | None:
    return shutil.which("clamd") or next(
        (p for p in ("/usr/sbin/clamd", "/usr/bin/clamd") if Path(p).exists()), None
    )


@pytest.fixture(scope="module")
def clamd() -> Iterator[Clamd]:
    binary = _clamd_binary()
    if binary is None:
        _unavailable("clamd is not installed (apt-get install clamav-daemon)")
        raise AssertionError  # unreachable: skip or fail raised
    folder = Path(tempfile.mkdtemp(prefix="mailgate-clamd-"))
    database = folder / "db"
    database.mkdir()
    (database / "mailgate-test.ndb").write_text(f"Mailgate.Test.EICAR:0:*:{eicar().hex()}\n")
    port = free_port()
    sock = folder / "clamd.sock"
    log = folder / "clamd.log"
    config = folder / "clamd.conf"
    config.write_text(
        "\n".join(
            [
                "Foreground yes",
                f"LocalSocket {sock}",
                f"TCPSocket {port}",
                f"TCPAddr {LOOPBACK}",
                f"DatabaseDirectory {database}",
                f"LogFile {log}",
                f"PidFile {folder / 'clamd.pid'}",
                f"StreamMaxLength {STREAM_MAX}",
                "Bytecode no",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        [binary, "--config-file", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if sock.exists():
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(2)
                    probe.connect(str(sock))
                    probe.sendall(b"zPING\0")
                    if probe.recv(16).startswith(b"PONG"):
                        break
            time.sleep(0.1)
        else:
            stderr = (
                process.stderr.read().decode()
                if process.poll() is not None and process.stderr
                else ""
            )
            text = log.read_text() if log.exists() else ""
            pytest.fail(f"clamd did not start: {stderr}\n{text[-2000:]}", pytrace=False)
        yield Clamd(sock, f"{LOOPBACK}:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
        shutil.rmtree(folder, ignore_errors=True)


def _variants() -> dict[str, bytes]:
    return {
        "plain": with_attachment(eicar(), "eicar.com"),
        "zip": with_attachment(zip_of({"eicar.com": eicar()}), "eicar.zip"),
        "zip-in-zip": with_attachment(
            zip_of({"inner.zip": zip_of({"eicar.com": eicar()})}), "outer.zip"
        ),
    }


@pytest.mark.parametrize("variant", ["plain", "zip", "zip-in-zip"])
async def test_real_clamd_finds_eicar_over_instream(clamd: Clamd, variant: str) -> None:
    raw = _variants()[variant]
    for address in (str(clamd.socket_path), clamd.tcp):
        assert await ping(address)
        reply = await instream(address, raw, chunk_size=1000)
        assert reply.found is not None and reply.found.startswith("Mailgate.Test.EICAR"), reply
    assert (await instream(clamd.tcp, message())).clean


def _context(settings: Settings, raw: bytes) -> MessageContext:
    return MessageContext(
        client=ClientInfo(ip="192.0.2.1", port=1),
        rules=load_rules(settings.rules_dir),
        settings=settings,
        raw=raw,
        mail_from="alice@example.net",
        rcpt_tos=["bob@example.com"],
    )


def _settings(tmp_path: Path, address: str, timeout: float = 5.0) -> Settings:
    base = make_settings(tmp_path, 1)
    clamav = ClamavSettings(address=address, timeout=timeout, max_stream=STREAM_MAX)
    return dataclasses.replace(base, clamav=clamav)


@pytest.mark.parametrize("variant", ["plain", "zip", "zip-in-zip"])
async def test_plugin_reports_the_virus(clamd: Clamd, tmp_path: Path, variant: str) -> None:
    settings = _settings(tmp_path, str(clamd.socket_path))
    ctx = _context(settings, _variants()[variant])
    findings = await ClamavScan(Services(settings)).check(Phase.DATA, ctx)
    assert [f.symbol for f in findings] == ["CLAMAV_VIRUS"]
    assert "Mailgate.Test.EICAR" in findings[0].detail
    assert ctx.rules.decide(list(findings)).action.value == "reject"


async def test_over_the_stream_limit_is_unscanned_not_clean(clamd: Clamd, tmp_path: Path) -> None:
    settings = _settings(tmp_path, clamd.tcp)
    ctx = _context(settings, with_attachment(os.urandom(6 * 1024 * 1024), "big.bin"))
    findings = await ClamavScan(Services(settings)).check(Phase.DATA, ctx)
    assert [f.symbol for f in findings] == ["CLAMAV_UNSCANNED"]
    assert ctx.rules.decide(list(findings)).action.value == "quarantine"


async def test_dead_clamd_is_a_finding_that_defers(tmp_path: Path) -> None:
    for address in (str(tmp_path / "no-such.sock"), f"{LOOPBACK}:{free_port()}"):
        settings = _settings(tmp_path, address)
        ctx = _context(settings, message())
        findings = await ClamavScan(Services(settings)).check(Phase.DATA, ctx)
        assert [f.symbol for f in findings] == ["CLAMAV_UNAVAILABLE"]
        verdict = ctx.rules.decide(list(findings))
        assert verdict.action.value == "tempfail" and verdict.reply.code == 451


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[str]:
    """A clamd that accepts and never answers."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(swallow, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{LOOPBACK}:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_slow_clamd_times_out_into_a_finding(tmp_path: Path) -> None:
    async with _silent_server() as address:
        settings = _settings(tmp_path, address, timeout=0.3)
        ctx = _context(settings, message())
        started = time.monotonic()
        findings = await ClamavScan(Services(settings)).check(Phase.DATA, ctx)
        assert time.monotonic() - started < 3
    assert [f.symbol for f in findings] == ["CLAMAV_UNAVAILABLE"]
    assert "no answer" in findings[0].detail


async def _send(host: str, port: int, raw: bytes) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
    await client.connect()
    try:
        _errors, reply = await client.sendmail("alice@example.net", ["bob@example.com"], raw)
        return 250, reply
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()


async def test_through_the_gateway_over_smtp(
    clamd: Clamd, tmp_path: Path, sink: RecordingSink, start_gateway: GatewayFactory
) -> None:
    base = make_settings(
        tmp_path, sink.port, plugins=PluginSettings(order=("mime", "attachments", "clamav"))
    )
    settings = dataclasses.replace(base, clamav=ClamavSettings(address=str(clamd.socket_path)))
    gw = await start_gateway(settings=settings)
    code, text = await _send(gw.host, gw.port, _variants()["zip-in-zip"])
    assert code == 554, text
    assert "5.7.1" in text
    code, _text = await _send(gw.host, gw.port, message())
    assert code == 250
    delivered = await asyncio.to_thread(sink.wait_for, 1)
    assert len(delivered) == 1
    assert eicar() not in delivered[0].content
