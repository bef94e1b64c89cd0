"""The load generator: a fixed number of concurrent SMTP connections, in the bench process.

Messages are dealt round-robin to `connections` workers; each worker sends its share over one
connection at a time, opening a new one every `per_connection` messages (connect, EHLO, the
messages, QUIT). Per-message latency is the time of MAIL + RCPT + DATA up to the final reply;
connection setup is counted in throughput but not in latency. A deadline bounds every run: once
passed, workers send nothing more and the run is marked truncated.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib

from bench.sink import SINK_TOKEN

LOOPBACK = "127.0.0.1"
HELO = "loadgen.bench.test"  # bench.dnsd serves its SPF record
RECIPIENT = "user@example.com"
TIMEOUT = 30.0

# Outcome names, from the sender's point of view.
RELAYED = "relayed"  # 250 that came from the sink (through the gateway or directly)
KEPT = "kept"  # 250 not from the sink: the gateway quarantined the message
DEFERRED = "4xx"
REFUSED = "5xx"
FAILED = "error"  # no SMTP reply at all: a dropped connection, a timeout


@dataclass
class LoadResult:
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def answered(self) -> int:
        """Transactions that got a final SMTP reply (any code)."""
        return len(self.latencies)


def sender_domain(index: int, tag: str) -> str:
    """The envelope sender domain of one message: unique per index and tag, served by bench.dnsd,
    so a gateway's SPF check of it is never answered from its DNS cache."""
    return f"m{index}.{tag}.senders.bench.test"


def senders(count: int, tag: str) -> list[str]:
    return [f"loadgen@{sender_domain(i, tag)}" for i in range(count)]


def client_tls() -> ssl.SSLContext:
    """The load generator's side of STARTTLS: encrypt, trust the bench's self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _classify(code: int, text: str) -> str:
    if 200 <= code < 300:
        return RELAYED if SINK_TOKEN in text else KEPT
    return DEFERRED if 400 <= code < 500 else REFUSED


async def _send(smtp: aiosmtplib.SMTP, sender: str, message: bytes, result: LoadResult) -> bool:
    """One transaction; False if the connection is no longer usable."""
    started = time.perf_counter()
    try:
        _, reply = await smtp.sendmail(sender, [RECIPIENT], message)
        outcome = _classify(250, reply)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        first = exc.recipients[0] if exc.recipients else None
        outcome = _classify(first.code, first.message) if first else REFUSED
    except aiosmtplib.SMTPResponseException as exc:
        outcome = _classify(exc.code, exc.message)
        if exc.code == 421:
            result.latencies.append(time.perf_counter() - started)
            result.outcomes[outcome] += 1
            return False
    except (aiosmtplib.SMTPException, OSError) as exc:
        result.outcomes[FAILED] += 1
        if len(result.errors) < 10:
            result.errors.append(f"{type(exc).__name__}: {exc}")
        return False
    result.latencies.append(time.perf_counter() - started)
    result.outcomes[outcome] += 1
    return True


async def _connect(port: int, tls: ssl.SSLContext | None = None) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(
        hostname=LOOPBACK,
        port=port,
        local_hostname=HELO,
        timeout=TIMEOUT,
        use_tls=False,
        start_tls=False,
    )
    await smtp.connect()
    await smtp.ehlo()
    if tls is not None:
        await smtp.starttls(tls_context=tls)
        await smtp.ehlo()
    return smtp


async def _worker(
    port: int,
    share: Sequence[tuple[str, bytes]],
    per_connection: int,
    deadline: float,
    result: LoadResult,
    tls: ssl.SSLContext | None = None,
    slots: Sequence[float] = (),
) -> None:
    """Send `share` in order; with `slots`, message i is not sent before time slots[i]."""
    pos = 0
    while pos < len(share):
        if time.monotonic() >= deadline:
            result.truncated = True
            return
        chunk = share[pos : pos + per_connection]
        pos += len(chunk)
        try:
            smtp = await _connect(port, tls)
        except (aiosmtplib.SMTPException, OSError) as exc:
            result.outcomes[FAILED] += len(chunk)
            if len(result.errors) < 10:
                result.errors.append(f"connect: {type(exc).__name__}: {exc}")
            continue
        try:
            for index, (sender, message) in enumerate(chunk):
                if time.monotonic() >= deadline:
                    result.truncated = True
                    return
                if slots:
                    await asyncio.sleep(
                        max(0.0, slots[pos - len(chunk) + index] - time.monotonic())
                    )
                if not await _send(smtp, sender, message, result):
                    pos -= len(chunk) - index - 1  # the rest of the chunk: on a new connection
                    break
            else:
                await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass  # QUIT failing changes nothing measured
        finally:
            smtp.close()


async def run_load(
    port: int,
    messages: Sequence[tuple[str, bytes]],
    connections: int,
    per_connection: int,
    time_limit: float,
    tls: ssl.SSLContext | None = None,
    rate: float | None = None,
) -> LoadResult:
    """Send every (sender, message) once over `connections` concurrent workers; bounded by time;
    with `tls`, every connection does STARTTLS (then EHLO again) before its first message.

    Without `rate`, each worker sends as fast as its replies come (closed loop: throughput). With
    `rate`, message i is due at i / rate seconds (paced: latency below saturation); latency is
    always counted from the moment a message is sent to its final reply."""
    result = LoadResult()
    shares = [messages[i::connections] for i in range(connections)]
    deadline = time.monotonic() + time_limit
    begin = time.monotonic() + 0.05
    due = [begin + i / rate for i in range(len(messages))] if rate else []
    started = time.perf_counter()
    workers = asyncio.gather(
        *(
            _worker(port, share, per_connection, deadline, result, tls, due[i::connections])
            for i, share in enumerate(shares)
            if share
        )
    )
    try:
        # Past the deadline a worker sends nothing new, but a stuck command may still wait for
        # its own timeout: this is the hard stop behind both.
        await asyncio.wait_for(workers, time_limit + TIMEOUT + 5)
    except TimeoutError:
        result.truncated = True
    result.wall = time.perf_counter() - started
    return result
