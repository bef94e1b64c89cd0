"""The processes under test: the sink and the gateways, started, probed, measured and stopped.

CPU time and peak memory come from /proc (Linux), so the bench needs no extra dependency:
`/proc/<pid>/stat` fields 14 and 15 (utime, stime, all threads of the process, in clock ticks)
and `VmHWM` in `/proc/<pid>/status` (the resident set's high-water mark).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


class ProcessError(Exception):
    """A process under test did not start, or died; the message carries its log tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports, for what a gateway binds as base + i (the
    metrics endpoint of worker i). Taken below the kernel's ephemeral range: a port picked there
    by binding port 0 is free now, but its neighbour can be any outgoing connection's source
    port by the time worker i binds it (a 2-worker bench died on "address already in use")."""
    low, _ = _ephemeral_range()
    top = min(low, 65536) - count
    chooser = random.Random()
    for _ in range(200):
        base = chooser.randrange(10000, max(top, 10001))
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise ProcessError(f"no run of {count} free loopback ports below {low}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (every thread), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After "pid (comm) ", fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children_of(parent: int) -> list[int]:
    """Live child processes of `parent`, from /proc/<pid>/stat (field 4, the parent pid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (every core, every process, the kernel)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def peak_rss_bytes(pid: int) -> int:
    """VmHWM from /proc/<pid>/status: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Child:
    """One process under test, its log file, and the loopback port it serves."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log_file: IO[bytes]
    sampler: subprocess.Popen[bytes] | None = None
    metrics_ports: tuple[int, ...] = ()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """This process and its direct children (a supervisor's workers)."""
        return [self.pid, *children_of(self.pid)]

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += cpu_seconds(pid)
        return total

    def peak_rss(self) -> int:
        """The largest peak RSS of one process (with workers: the fattest worker)."""
        peaks = [0]
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError):
                peaks.append(peak_rss_bytes(pid))
        return max(peaks)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def log_problems(self) -> int:
        """Lines the process logged at WARNING or above (the bench expects none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(
            1
            for line in text.splitlines()
            if " WARNING " in line or " ERROR " in line or "Traceback" in line
        )

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, wait up to `grace`, then SIGKILL; only ever this one process id.
        A py-spy sampler gets SIGINT first, on which it writes its profile."""
        if self.sampler is not None and self.sampler.poll() is None:
            self.sampler.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sampler.wait(timeout=30.0)
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=grace)
        self.log_file.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Measure the working tree, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("MAILGATE_CONFIG", None)
    return env


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the bench dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(name: str, argv: Sequence[str], port: int, workdir: Path) -> Child:
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    try:
        popen = subprocess.Popen(
            list(argv),
            cwd=workdir,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    except BaseException:
        log_file.close()
        raise
    return Child(name, popen, port, log_path, log_file)


def start_sink(workdir: Path) -> Child:
    port = free_port()
    argv = [sys.executable, "-m", "bench.sink", "--host", LOOPBACK, "--port", str(port)]
    return spawn("sink", argv, port, workdir)


def start_dns(workdir: Path, records: dict[str, str] | None = None) -> Child:
    """The bench DNS server; `records` adds TXT records (name -> text) under bench.test."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.dnsd", "--host", LOOPBACK, "--port", str(port)]
    if records:
        path = workdir / "dns-records.json"
        path.write_text(json.dumps(records))
        argv += ["--records", str(path)]
    return spawn("dns", argv, port, workdir)


def _gateway_has_dns_settings() -> bool:
    from gateway.config import Settings

    return "dns" in {f.name for f in dataclasses.fields(Settings)}


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def write_gateway_config(
    workdir: Path,
    name: str,
    listen_port: int,
    sink_port: int,
    dns_port: int,
    order: Sequence[str],
    workers: int = 1,
    tls: tuple[Path, Path] | None = None,
    metrics_port: int | None = None,
) -> Path:
    """A private config and rules/ copy: loopback ports, this plugin order, the shipped policy;
    `workers` processes, and STARTTLS with `tls` (certificate, key) when given."""
    home = workdir / name
    (home / "config").mkdir(parents=True)
    shutil.copytree(REPO / "rules", home / "rules")
    config = home / "config" / "gateway.toml"
    dns = ""
    if _gateway_has_dns_settings():
        dns = f"""
[dns]
nameservers = ["{LOOPBACK}"]
port = {dns_port}
timeout = 5
"""
    tls_table = f'[tls]\ncert_file = "{tls[0]}"\nkey_file = "{tls[1]}"\n' if tls else ""
    metrics = f'[metrics]\naddress = "{LOOPBACK}:{metrics_port}"\n' if metrics_port else ""
    config.write_text(
        f"""# written by python3 -m bench for scenario {name}
[listen]
address = "{LOOPBACK}"
port = {listen_port}
hostname = "mailgate.bench.test"
{f"workers = {workers}" if workers > 1 else ""}
{tls_table}
[relay]
domains = ["example.com"]

[limits]
max_connections = 10000
max_connections_per_ip = 10000   # every bench connection comes from 127.0.0.1
shutdown_grace = 2

[delivery]
host = "{LOOPBACK}"
port = {sink_port}
connect_timeout = 10
command_timeout = 30
data_timeout = 30

[plugins]
order = {_toml_list(order)}
{dns}
{metrics}
[paths]
rules = "../rules"
quarantine = "../quarantine"
dev_maildir = "../maildir"

[logging]
level = "info"
"""
    )
    return config


def start_gateway(
    workdir: Path,
    name: str,
    sink_port: int,
    dns_port: int,
    order: Sequence[str],
    profile: Path | None = None,
    workers: int = 1,
    tls: tuple[Path, Path] | None = None,
    profiler: str = "cprofile",
) -> Child:
    """`python3 -m gateway --config <tmp> serve` in its own process, optionally under cProfile
    or py-spy (which samples every thread and writes collapsed stacks)."""
    port = free_port()
    metrics_port = free_port_run(workers)  # worker i serves port + i
    config = write_gateway_config(
        workdir, name, port, sink_port, dns_port, order, workers, tls, metrics_port
    )
    spy = None
    argv = [sys.executable, "-m", "gateway"]
    if profile is not None and profiler == "py-spy":
        spy = shutil.which("py-spy")
        if spy is None:
            raise ProcessError("--profiler py-spy: py-spy is not installed (pip install py-spy)")
    elif profile is not None:
        argv = [sys.executable, "-m", "bench.cpuprofile", str(profile)]
    argv += ["--config", str(config), "serve"]
    child = spawn(name, argv, port, workdir)
    child.metrics_ports = tuple(metrics_port + i for i in range(workers))
    if spy is not None and profile is not None:
        # Attached rather than wrapping: the gateway keeps its own pid and signals, and py-spy
        # writes its collapsed stacks when stop() sends it SIGINT.
        sampler = [spy, "record", "--pid", str(child.pid), "--subprocesses", "--format", "raw"]
        sampler += ["--rate", "250", "--nonblocking", "--output", str(profile)]
        child.sampler = subprocess.Popen(
            sampler, stdin=subprocess.DEVNULL, stdout=child.log_file, stderr=subprocess.STDOUT
        )
    return child


def ensure_alive(child: Child) -> None:
    """Raise with the child's log if it has exited: a gateway that stopped mid-run (a worker
    that could not start stops every worker) leaves numbers that measure nothing."""
    if child.popen.poll() is not None:
        raise ProcessError(
            f"{child.name} exited with status {child.popen.returncode}:\n{child.log_tail()}"
        )


async def wait_ready(child: Child, limit: float = 120.0, smtp: bool = True) -> None:
    """Poll until the child accepts a connection (and greets with 220, for SMTP servers);
    raise with its log if it dies or is not ready in time. The limit is generous: a gateway
    loads its model and tables at start-up, which a loaded 2-core CI machine makes slow, and a
    child that dies is noticed at once anyway."""
    deadline = time.monotonic() + limit
    last: BaseException | None = None
    while time.monotonic() < deadline:
        ensure_alive(child)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, child.port), 2
            )
        except (OSError, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.05)
            continue
        if not smtp:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        try:
            greeting = await asyncio.wait_for(reader.readline(), 5)
            writer.write(b"QUIT\r\n")
            await writer.drain()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if greeting.startswith(b"220"):
            return
        raise ProcessError(f"{child.name} greeted with {greeting!r}:\n{child.log_tail()}")
    raise ProcessError(f"{child.name} not ready after {limit:g}s ({last}):\n{child.log_tail()}")


async def _get_metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()
    return raw.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")


async def plugin_cpu(child: Child) -> dict[str, float]:
    """CPU seconds per plugin so far, summed over the gateway's workers, from its Prometheus
    endpoint; the key "" holds the messages concluded, "dns hit" / "dns miss" the DNS lookups
    answered from the cache or not. Empty if the endpoint does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for port in child.metrics_ports:
        try:
            text = await _get_metrics(port)
        except (OSError, TimeoutError):
            return {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "mailgate_plugin_cpu_seconds_total":
                    name = sample.labels["plugin"]
                    totals[name] = totals.get(name, 0.0) + sample.value
                elif sample.name == "mailgate_messages_total":
                    totals[""] = totals.get("", 0.0) + sample.value
                elif sample.name == "mailgate_dns_cpu_seconds_total":
                    totals["resolver"] = totals.get("resolver", 0.0) + sample.value
                elif sample.name == "mailgate_dns_cache_total":
                    key = f"dns {sample.labels['result']}"
                    totals[key] = totals.get(key, 0.0) + sample.value
    return totals
