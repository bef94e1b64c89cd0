"""The cost of STARTTLS per connection: connections per second, plain against STARTTLS, in one run.

    python3 bench/tls_cost.py [--rounds 4] [--seconds 3] [--clients 8] [--ec] [--no-message]

One gateway process (`mailgate serve`, a fresh self-signed certificate) and one discard delivery
server (this script, `--serve-sink`) run as separate processes; this process is the load. Rounds
alternate plain and STARTTLS so both see the same machine state, and the result is printed as a
ratio measured in this run, never as a bare absolute time. Two workloads:

- session: connect, greeting, EHLO, [STARTTLS, EHLO], QUIT: the handshake's cost alone;
- message: the same with one small message relayed (MAIL, RCPT, DATA, 250 from downstream).

The gateway's own CPU per connection (from /proc, Linux) is printed beside the rate: on a small
machine the load generator competes for the cores, and CPU per connection is then the steadier
figure. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LOOPBACK = "127.0.0.1"
HOSTNAME = "mx.bench.test"
MESSAGE = (
    b"From: a@example.net\r\nTo: b@example.com\r\nSubject: tls cost\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <tls-cost@example.net>\r\n\r\n"
    + b"Hello over TLS or not.\r\n"
    * 40
)
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# -- the discard delivery server ---------------------------------------------------------------


def serve_sink(port: int) -> int:
    """A delivery server that accepts everything and keeps nothing (runs in its own process)."""
    from aiosmtpd.controller import Controller

    class Discard:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 2.0.0 Ok: discarded"

    controller = Controller(Discard(), hostname=LOOPBACK, port=port, data_size_limit=None)
    controller.start()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()
    return 0


# -- the processes -----------------------------------------------------------------------------


@dataclass
class Setup:
    workdir: Path
    gateway_port: int
    cert_file: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def gateway_pid(self) -> int:
        return self.procs[-1].pid


def start(workdir: Path, key_type: str) -> Setup:
    from gateway.certs import make_selfsigned

    cert, key = workdir / "cert.pem", workdir / "key.pem"
    make_selfsigned(HOSTNAME, cert, key, days=2, key_type=key_type)
    shutil.copytree(REPO / "rules", workdir / "rules")
    gateway_port, sink_port = free_port(), free_port()
    config = workdir / "gateway.toml"
    config.write_text(
        f"""
[listen]
address = "{LOOPBACK}"
port = {gateway_port}
hostname = "{HOSTNAME}"
[relay]
domains = ["example.com"]
[limits]
max_connections = 10000
max_connections_per_ip = 10000
[tls]
cert_file = "{cert}"
key_file = "{key}"
[delivery]
host = "{LOOPBACK}"
port = {sink_port}
client_identity = "none"
[paths]
rules = "rules"
quarantine = "quarantine"
dev_maildir = "maildir"
[logging]
level = "warning"
"""
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MAILGATE_CONFIG", None)
    setup = Setup(workdir, gateway_port, cert)
    for argv, port in (
        ([sys.executable, __file__, "--serve-sink", str(sink_port)], sink_port),
        ([sys.executable, "-m", "gateway", "--config", str(config), "serve"], gateway_port),
    ):
        log = (workdir / f"{len(setup.procs)}.log").open("wb")
        setup.procs.append(
            subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
        wait_for_banner(port, setup)
    return setup


def wait_for_banner(port: int, setup: Setup) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for proc in setup.procs:
            if proc.poll() is not None:
                raise SystemExit(f"a process exited early; see {setup.workdir}/*.log")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answered on port {port}")


def stop(setup: Setup) -> None:
    for proc in reversed(setup.procs):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in setup.procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the load ----------------------------------------------------------------------------------


async def reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            if line[:1] not in (b"2", b"3"):
                raise ConnectionError(line.decode(errors="replace").strip())
            return line


async def session(port: int, context: ssl.SSLContext | None, message: bool) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        await reply(reader)
        writer.write(b"EHLO client.bench.test\r\n")
        await reply(reader)
        if context is not None:
            writer.write(b"STARTTLS\r\n")
            await reply(reader)
            await writer.start_tls(context, server_hostname=HOSTNAME)
            writer.write(b"EHLO client.bench.test\r\n")
            await reply(reader)
        if message:
            for command in (b"MAIL FROM:<a@example.net>", b"RCPT TO:<b@example.com>", b"DATA"):
                writer.write(command + b"\r\n")
                await reply(reader)
            writer.write(MESSAGE + b".\r\n")
            await reply(reader)
        writer.write(b"QUIT\r\n")
        await reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


@dataclass
class Tally:
    sessions: int = 0
    failures: int = 0
    seconds: float = 0.0
    cpu: float = 0.0


async def round_of(
    setup: Setup, context: ssl.SSLContext | None, message: bool, clients: int, seconds: float
) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            try:
                await session(setup.gateway_port, context, message)
                tally.sessions += 1
            except (OSError, ssl.SSLError, ConnectionError):
                tally.failures += 1

    cpu = cpu_seconds(setup.gateway_pid)
    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(clients)))
    tally.seconds = time.monotonic() - started
    tally.cpu = cpu_seconds(setup.gateway_pid) - cpu
    return tally


async def measure(setup: Setup, args: argparse.Namespace, message: bool) -> dict[str, Tally]:
    context = ssl.create_default_context(cafile=str(setup.cert_file))  # verify, like a careful MTA
    totals = {"plain": Tally(), "starttls": Tally()}
    modes: list[tuple[str, ssl.SSLContext | None]] = [("plain", None), ("starttls", context)]
    await round_of(setup, context, message, args.clients, 0.5)  # warm-up, not counted
    for n in range(args.rounds):
        for name, ctx in modes if n % 2 == 0 else modes[::-1]:
            tally = await round_of(setup, ctx, message, args.clients, args.seconds)
            total = totals[name]
            total.sessions += tally.sessions
            total.failures += tally.failures
            total.seconds += tally.seconds
            total.cpu += tally.cpu
    return totals


def report(workload: str, totals: dict[str, Tally]) -> str:
    lines = [f"{workload}:"]
    rates: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name, tally in totals.items():
        rates[name] = tally.sessions / tally.seconds if tally.seconds else 0.0
        cpu[name] = tally.cpu / tally.sessions * 1000 if tally.sessions else 0.0
        lines.append(
            f"  {name:<9} {tally.sessions:>7} connections  {rates[name]:>8.1f} conn/s  "
            f"gateway CPU {cpu[name]:6.2f} ms/conn  failures {tally.failures}"
        )
    if rates["plain"] and cpu["plain"]:
        lines.append(
            f"  ratio starttls/plain: {rates['starttls'] / rates['plain']:.2f} x the rate, "
            f"{cpu['starttls'] / cpu['plain']:.2f} x the gateway CPU per connection"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per mode (default 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--ec", action="store_true", help="ECDSA P-256 certificate (default RSA)")
    parser.add_argument("--no-message", action="store_true", help="handshake-only sessions")
    parser.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_sink:
        return serve_sink(args.serve_sink)
    key_type = "ec" if args.ec else "rsa"
    with tempfile.TemporaryDirectory(prefix="mailgate-tls-cost-") as tmp:
        setup = start(Path(tmp), key_type)
        try:
            print(
                f"mailgate STARTTLS cost: {args.rounds} rounds x {args.seconds:g} s per mode, "
                f"interleaved; {args.clients} concurrent clients; "
                f"{'ECDSA P-256' if args.ec else 'RSA-2048'} certificate; "
                f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}",
                flush=True,
            )
            print(
                report(
                    "session (EHLO [STARTTLS EHLO] QUIT)",
                    asyncio.run(measure(setup, args, message=False)),
                ),
                flush=True,
            )
            if not args.no_message:
                print(
                    report(
                        "one message per connection",
                        asyncio.run(measure(setup, args, message=True)),
                    ),
                    flush=True,
                )
        finally:
            stop(setup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
