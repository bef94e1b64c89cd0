"""Refusals, connections, TLS sessions and deliveries as the metrics endpoint counts them, one
path at a time: a gateway on this loop (real sockets, a real downstream), its endpoint scraped
over HTTP on loopback, and every tracked counter that moved accounted for exactly."""

from __future__ import annotations

import asyncio
import re
import shutil
import smtplib
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import trustme
from harness import (
    LOOPBACK,
    REPO,
    GatewayFactory,
    RecordingSink,
    RunningGateway,
    free_port,
    message,
)
from metrics_helpers import changes, samples
from tls_helpers import TlsSink, client_context, sink_server_context

from gateway.metrics import MetricsServer, Reason, classify

WAIT = 30.0  # against a hang only

Scrape = Callable[[dict[str, float]], Awaitable[None]]


def _key(phase: str, reason: str, code_class: str) -> str:
    return f'mailgate_refusals_total{{code_class="{code_class}",phase="{phase}",reason="{reason}"}}'


ACCEPTED = "mailgate_connections_accepted_total"


def closed(reason: str) -> str:
    return f'mailgate_connections_closed_total{{reason="{reason}"}}'


@pytest.fixture
async def counted() -> AsyncIterator[Callable[[RunningGateway], Awaitable[Scrape]]]:
    """`moved = await counted(gw)`: the endpoint on; `await moved({...})` waits until the tracked
    counters moved by exactly that since the last call (or fails after WAIT with what did)."""
    servers: list[MetricsServer] = []

    async def start(gw: RunningGateway) -> Scrape:
        server = MetricsServer(gw.gateway, LOOPBACK, 0)
        servers.append(server)
        _, port = await server.start()

        def read() -> dict[str, float]:
            url = f"http://{LOOPBACK}:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                return samples(answer.read().decode())

        last = await asyncio.to_thread(read)

        async def moved(want: dict[str, float]) -> None:
            nonlocal last
            deadline = time.monotonic() + WAIT
            while True:
                now = await asyncio.to_thread(read)
                got = changes(last, now)
                if got == want or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            last = now
            assert got == want

        return moved

    yield start
    for server in servers:
        await server.stop()


def send_plain(port: int, raw: bytes) -> int:
    """One message with HELO (no SIZE= at MAIL: the limits are met in DATA); its reply code."""
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.example.net", timeout=WAIT) as smtp:
        smtp.helo()
        try:
            smtp.sendmail("alice@example.net", ["bob@example.com"], raw)
        except smtplib.SMTPDataError as refused:
            return refused.smtp_code
    return 250


def converse(port: int, *commands: str) -> list[bytes]:
    """Greeting, then each command's reply (first line); QUIT at the end."""
    with socket.create_connection((LOOPBACK, port), timeout=WAIT) as sock:
        lines = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = lines.readline()
                if line[3:4] != b"-":
                    return line

        replies = [reply()]
        for command in commands:
            sock.sendall(command.encode() + b"\r\n")
            replies.append(reply())
        sock.sendall(b"QUIT\r\n")
        replies.append(reply())
    return replies


async def test_delivery_servers_own_refusals_at_rcpt(
    start_gateway: GatewayFactory, sink: RecordingSink, counted: Any
) -> None:
    gw = await start_gateway()
    moved = await counted(gw)
    sink.behaviour.rcpt_replies = {
        "gone@example.com": "550 5.1.1 No such user",
        "full@example.com": "452 4.2.2 Mailbox full",
    }
    replies = await asyncio.to_thread(
        converse,
        gw.port,
        "EHLO client.example.net",
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<gone@example.com>",
        "RCPT TO:<full@example.com>",
    )
    assert replies[3].startswith(b"550 5.1.1") and replies[4].startswith(b"452 4.2.2"), replies
    await moved(
        {
            _key("rcpt", "downstream_reject", "5"): 1,
            _key("rcpt", "downstream_tempfail", "4"): 1,
            ACCEPTED: 1,
            closed("quit"): 1,
        }
    )


async def test_recipient_limits_and_routing(
    start_gateway: GatewayFactory, sink: RecordingSink, counted: Any
) -> None:
    gw = await start_gateway(limits={"max_recipients": 1})
    moved = await counted(gw)
    await asyncio.to_thread(
        converse,
        gw.port,
        "EHLO client.example.net",
        "RCPT TO:<bob@example.com>",  # before MAIL
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<a%b@example.com>",
        "RCPT TO:<bob@example.com>",
        "RCPT TO:<carol@example.com>",
        "FROB",
        "AUTH PLAIN",
        "HELO",
    )
    await moved(
        {
            _key("other", "not_supported", "5"): 1,
            _key("helo", "syntax", "5"): 1,
            _key("rcpt", "sequence", "5"): 1,
            _key("rcpt", "routing_address", "5"): 1,
            _key("rcpt", "too_many_recipients", "4"): 1,
            _key("other", "unknown_command", "5"): 1,
            ACCEPTED: 1,
            closed("quit"): 1,
        }
    )


async def test_data_refusals_and_end_of_data_verdicts(
    start_gateway: GatewayFactory, sink: RecordingSink, counted: Any
) -> None:
    gw = await start_gateway(limits={"max_message_size": 4000})
    moved = await counted(gw)

    def send(body: bytes) -> int:
        return send_plain(gw.port, message(body=body))

    assert await asyncio.to_thread(send, b"x" * 5000 + b"\r\n") == 500
    assert await asyncio.to_thread(send, b"a bare\nline feed\r\n") == 550
    sink.behaviour.data_reply = "451 4.3.0 try again"
    assert await asyncio.to_thread(send, b"Hello.\r\n") == 451
    sink.behaviour.data_reply = None
    assert await asyncio.to_thread(send, b"Hello.\r\n") == 250
    await moved(
        {
            _key("data", "line_too_long", "5"): 1,  # one line of 5000: the line limit first
            _key("data", "bare_line_ending", "5"): 1,
            _key("data", "downstream_tempfail", "4"): 1,
            'mailgate_messages_total{action="reject"}': 1,
            'mailgate_messages_total{action="relay"}': 2,
            'mailgate_relay_replies_total{reply_class="4xx"}': 1,
            'mailgate_relay_replies_total{reply_class="2xx"}': 1,
            'mailgate_deliveries_total{result="temp"}': 1,
            'mailgate_deliveries_total{result="accepted"}': 1,
            "mailgate_delivery_seconds_count": 2,
            ACCEPTED: 4,
            closed("quit"): 4,
        }
    )


async def test_message_size_refused_while_streaming(
    start_gateway: GatewayFactory, sink: RecordingSink, counted: Any
) -> None:
    gw = await start_gateway(limits={"max_message_size": 4000})
    moved = await counted(gw)

    big = message(body=b"line\r\n" * 800)
    assert await asyncio.to_thread(send_plain, gw.port, big) == 552

    def announced() -> int:
        with smtplib.SMTP(
            LOOPBACK, gw.port, local_hostname="client.example.net", timeout=WAIT
        ) as s:
            s.ehlo()
            return s.mail("alice@example.net", ["SIZE=5000"])[0]

    assert await asyncio.to_thread(announced) == 552  # SIZE= at MAIL: aiosmtpd's own reply
    await moved(
        {
            _key("data", "message_size", "5"): 1,
            _key("mail", "message_size", "5"): 1,
            ACCEPTED: 2,
            closed("quit"): 2,
        }
    )


async def test_delivery_server_down_at_mail(
    start_gateway: GatewayFactory, sink: RecordingSink, counted: Any
) -> None:
    gw = await start_gateway(delivery={"port": free_port()})  # nothing listens there
    moved = await counted(gw)
    replies = await asyncio.to_thread(
        converse, gw.port, "EHLO client.example.net", "MAIL FROM:<alice@example.net>"
    )
    assert replies[2].startswith(b"451 4.4."), replies
    await moved(
        {
            _key("mail", "downstream_unavailable", "4"): 1,
            'mailgate_deliveries_total{result="unavailable"}': 1,
            "mailgate_delivery_seconds_count": 1,
            ACCEPTED: 1,
            closed("quit"): 1,
        }
    )


async def test_error_limit_disconnects(
    start_gateway: GatewayFactory, sink: RecordingSink, counted: Any
) -> None:
    gw = await start_gateway()
    moved = await counted(gw)

    def errors() -> bytes:
        with socket.create_connection((LOOPBACK, gw.port), timeout=WAIT) as sock:
            lines = sock.makefile("rb")
            lines.readline()
            sock.sendall(b"HELO client.example.net\r\n" + b"RCPT TO:<bob@example.com>\r\n" * 20)
            text = lines.read()  # to the close
        return text

    text = await asyncio.to_thread(errors)
    last = text.rstrip().rsplit(b"\r\n", 1)[-1]
    assert re.fullmatch(
        rb"421 4\.7\.0 Error: too many errors, closing connection \(id=[0-9A-F]{12}\)", last
    ), text
    await moved(
        {
            _key("rcpt", "sequence", "5"): 20,
            _key("rcpt", "error_limit", "4"): 1,
            ACCEPTED: 1,
            closed("error_limit"): 1,
        }
    )


async def test_data_timeout(
    start_gateway: GatewayFactory, sink: RecordingSink, counted: Any
) -> None:
    gw = await start_gateway(limits={"data_timeout": 0.5})
    moved = await counted(gw)

    def stall() -> bytes:
        with socket.create_connection((LOOPBACK, gw.port), timeout=WAIT) as sock:
            lines = sock.makefile("rb")
            sock.sendall(
                b"HELO client.example.net\r\nMAIL FROM:<alice@example.net>\r\n"
                b"RCPT TO:<bob@example.com>\r\nDATA\r\nSubject: slow\r\n"
            )
            return lines.read()  # until the gateway gives up and closes

    assert b"354" in await asyncio.to_thread(stall)
    await moved({_key("data", "timeout", "none"): 1, ACCEPTED: 1, closed("timeout"): 1})


async def test_proxy_header_errors(
    start_gateway: GatewayFactory, sink: RecordingSink, counted: Any
) -> None:
    gw = await start_gateway(
        listen={"proxy_protocol": True, "proxy_trusted": (ip_network("192.0.2.0/24"),)}
    )
    moved = await counted(gw)

    def send(header: bytes) -> bytes:
        with socket.create_connection((LOOPBACK, gw.port), timeout=WAIT) as sock:
            sock.sendall(header)
            return sock.makefile("rb").read()

    assert await asyncio.to_thread(send, b"PROXY NONSENSE\r\n") == b""
    # well formed, from a peer (127.0.0.1) that is not a trusted balancer
    valid = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 25\r\n"
    assert await asyncio.to_thread(send, valid) == b""
    await moved(
        {
            _key("connect", "proxy_invalid", "none"): 1,
            _key("connect", "proxy_untrusted", "none"): 1,
            'mailgate_connections_refused_total{reason="proxy_invalid"}': 1,
            'mailgate_connections_refused_total{reason="proxy_untrusted"}': 1,
            ACCEPTED: 2,
            closed("refused"): 2,
        }
    )


async def test_tls_handshake_failure_and_tls_twice(
    start_tls_gateway: Any, counted: Any, ca: trustme.CA
) -> None:
    gw: RunningGateway = await start_tls_gateway()
    moved = await counted(gw)

    def garbage_handshake() -> bytes:
        with socket.create_connection((LOOPBACK, gw.port), timeout=WAIT) as sock:
            lines = sock.makefile("rb")
            lines.readline()
            sock.sendall(b"EHLO client.example.net\r\n")
            while lines.readline()[3:4] == b"-":
                pass
            sock.sendall(b"STARTTLS\r\n")
            assert lines.readline().startswith(b"220")
            sock.sendall(b"this is not a TLS ClientHello\r\n" * 4)
            return lines.read()

    await asyncio.to_thread(garbage_handshake)

    def twice() -> int:
        with smtplib.SMTP(
            LOOPBACK, gw.port, local_hostname="client.example.net", timeout=WAIT
        ) as s:
            s.starttls(context=client_context())
            s.ehlo()
            return s.docmd("STARTTLS")[0]

    assert await asyncio.to_thread(twice) == 554
    await moved(
        {
            _key("starttls", "handshake_failed", "none"): 1,
            _key("starttls", "tls_already_active", "5"): 1,
            'mailgate_tls_sessions_total{direction="inbound",version="TLSv1.3"}': 1,
            ACCEPTED: 2,
            closed("tls_failed"): 1,
            closed("quit"): 1,
        }
    )


async def test_outbound_tls_session_is_counted(
    start_tls_gateway: Any, tls_sinks: Callable[..., TlsSink], counted: Any, ca: trustme.CA
) -> None:
    downstream = tls_sinks(sink_server_context(ca))
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port, delivery={"tls": "opportunistic"}
    )
    moved = await counted(gw)

    def send() -> None:
        with smtplib.SMTP(
            LOOPBACK, gw.port, local_hostname="client.example.net", timeout=WAIT
        ) as s:
            s.sendmail("alice@example.net", ["bob@example.com"], message())

    await asyncio.to_thread(send)
    await moved(
        {
            'mailgate_tls_sessions_total{direction="outbound",version="TLSv1.3"}': 1,
            'mailgate_messages_total{action="relay"}': 1,
            'mailgate_relay_replies_total{reply_class="2xx"}': 1,
            'mailgate_deliveries_total{result="accepted"}': 1,
            "mailgate_delivery_seconds_count": 1,
            ACCEPTED: 1,
            closed("quit"): 1,
        }
    )


async def test_access_lists_refuse_at_connect_and_mail(
    tmp_path: Path, start_gateway: GatewayFactory, sink: RecordingSink, counted: Any
) -> None:
    lists = tmp_path / "rules" / "lists.toml"
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    shipped = lists.read_text()
    lists.write_text(shipped.replace("block = []", f'block = ["{LOOPBACK}"]', 1))
    blocked = await start_gateway()
    clients, senders = shipped.split("[sender]")
    lists.write_text(
        clients + "[sender]" + senders.replace("block = []", 'block = ["example.net"]')
    )
    gw = await start_gateway()
    moved = await counted(gw)

    def greeting(port: int) -> bytes:
        with socket.create_connection((LOOPBACK, port), timeout=WAIT) as sock:
            return sock.makefile("rb").read()  # the refusal, then the close

    assert (await asyncio.to_thread(greeting, blocked.port)).startswith(b"554 5.7.1")
    replies = await asyncio.to_thread(
        converse, gw.port, "EHLO client.example.net", "MAIL FROM:<alice@example.net>"
    )
    assert replies[2].startswith(b"550 5.7.1"), replies
    await moved(
        {
            _key("connect", "access_list", "5"): 1,
            'mailgate_connections_refused_total{reason="access_list"}': 1,
            closed("refused"): 1,
            _key("mail", "access_list", "5"): 1,
            ACCEPTED: 2,
            closed("quit"): 1,
        }
    )


async def test_commands_before_a_required_starttls(
    tmp_path: Path, start_tls_gateway: Any, counted: Any
) -> None:
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    tls_rules = tmp_path / "rules" / "tls.toml"
    tls_rules.write_text(tls_rules.read_text().replace("all = false", "all = true"))
    gw: RunningGateway = await start_tls_gateway()
    moved = await counted(gw)
    replies = await asyncio.to_thread(
        converse, gw.port, "EHLO client.example.net", "MAIL FROM:<alice@example.net>"
    )
    assert replies[2].startswith(b"530 5.7.0"), replies
    await moved({_key("starttls", "tls_required", "5"): 1, ACCEPTED: 1, closed("quit"): 1})


@pytest.mark.parametrize(
    ("status", "command", "phase", "reason"),
    [
        ("500 Command line too long", "MAIL", "other", Reason.LINE_TOO_LONG),
        ('500 Error: command "FROB" not recognized', None, "other", Reason.UNKNOWN_COMMAND),
        (
            "502 5.5.1 Too many unrecognized commands, goodbye.",
            None,
            "other",
            Reason.UNKNOWN_COMMAND,
        ),
        ("421 4.7.0 NOOP sent too many times", "NOOP", "other", Reason.CALL_LIMIT),
        ("530 Must issue a STARTTLS command first", "MAIL", "starttls", Reason.TLS_REQUIRED),
        ("454 TLS not available", "STARTTLS", "starttls", Reason.TLS_UNAVAILABLE),
        ("501 Syntax: HELO hostname", "HELO", "helo", Reason.SYNTAX),
        ("503 Error: nested MAIL command", "MAIL", "mail", Reason.SEQUENCE),
        (
            "552 Error: message size exceeds fixed maximum message size",
            "MAIL",
            "mail",
            Reason.MESSAGE_SIZE,
        ),
        (
            "555 MAIL FROM parameters not recognized or not implemented",
            "MAIL",
            "mail",
            Reason.SYNTAX,
        ),
    ],
)
def test_aiosmtpds_own_replies_are_classified(
    status: str, command: str | None, phase: str, reason: Reason
) -> None:
    assert classify(status, command) == (phase, reason)
