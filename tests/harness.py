"""Test harness: a real downstream SMTP server with fault injection, and a real running gateway.

The downstream (`RecordingSink`) is aiosmtpd in its own thread and event loop, like a separate
mail server; it records what it received byte for byte and can be told to misbehave (refuse,
defer, stall, drop the connection), after the fake MTA of GNU Mailman's testing/mta.py.
The gateway runs on the test's own event loop on an ephemeral loopback port, so tests talk to it
with aiosmtplib, or with smtplib through asyncio.to_thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.app import Gateway
from gateway.config import (
    DeliverySettings,
    LimitSettings,
    ListenSettings,
    PluginSettings,
    RelaySettings,
    Settings,
    TlsSettings,
)
from gateway.devsink import XFORWARD_KEYWORD, EhloOffers, SinkController
from gateway.server import GatewayServer
from gateway.tls import ServerTls

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
# The plugins of a harness gateway unless a test names others: the checks that need no DNS and
# no model, so a test of the SMTP path never asks a resolver (tests use loopback DNS only: the
# authentication tests start their own, tests/dns_fixtures.py) and starts fast.
HARNESS_ORDER = ("lists", "headers", "limits", "mime", "attachments")


@dataclass
class Delivered:
    """One message as the downstream server received it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]
    xforward: dict[str, str]


@dataclass
class SinkBehaviour:
    """What the downstream does next; tests flip these to inject faults."""

    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    data_delay: float = 0.0
    drop_after_data: bool = False
    offer_xforward: bool = True
    offer_smtputf8: bool = True


class RecordingSink(EhloOffers):
    """aiosmtpd handler: records deliveries, replies as `behaviour` says."""

    controller_class: type[SinkController] = SinkController

    def __init__(self) -> None:
        self.behaviour = SinkBehaviour()
        self.delivered: list[Delivered] = []
        self.pending_xforward: dict[str, str] = {}
        self.connections = 0
        self.commands: list[str] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.controller: Any = None
        self.port = 0

    # -- aiosmtpd hooks -------------------------------------------------------------------

    def ehlo_changes(self, session: Session) -> tuple[list[str], set[str]]:
        add = [XFORWARD_KEYWORD] if self.behaviour.offer_xforward else []
        drop = set() if self.behaviour.offer_smtputf8 else {"SMTPUTF8"}
        return add, drop

    def record_xforward(self, attributes: dict[str, str]) -> None:
        self.pending_xforward.update(attributes)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.commands.append(f"MAIL {address}")
        if self.behaviour.mail_reply:
            return self.behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.commands.append(f"RCPT {address}")
        reply = self.behaviour.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("RSET")
        return "250 2.0.0 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("DATA")
        behaviour = self.behaviour
        if behaviour.data_delay:
            await asyncio.sleep(behaviour.data_delay)
        if behaviour.drop_after_data:
            server.transport.close()
            return "421 4.3.0 dropped"  # never reaches the client: the connection is gone
        if behaviour.data_reply:
            return behaviour.data_reply
        with self._arrived:
            self.delivered.append(
                Delivered(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    content=bytes(envelope.original_content),
                    mail_options=list(envelope.mail_options),
                    xforward=dict(self.pending_xforward),
                )
            )
            self._arrived.notify_all()
        self.pending_xforward = {}
        return "250 2.0.0 Ok: queued as SINK1"

    # -- control --------------------------------------------------------------------------

    def start(self) -> None:
        self.port = free_port()
        self.controller = self.controller_class(
            self,
            hostname=LOOPBACK,
            port=self.port,
            server_hostname="sink.test",
            enable_SMTPUTF8=True,
            data_size_limit=None,
            **self.controller_options(),
        )
        self.controller.start()

    def controller_options(self) -> dict[str, Any]:
        """More aiosmtpd SMTP options for a subclass (TLS: the STARTTLS context)."""
        return {}

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        """The deliveries once `count` have arrived (or `timeout` passed: the caller's assert
        shows how many did). Woken by each delivery, so the bound only matters on failure;
        it is generous because a loaded CI machine can be slow to deliver."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.delivered) >= count, timeout)
            return list(self.delivered)

    async def arrived(self, count: int) -> list[Delivered]:
        """`wait_for` from a coroutine: waits in a thread, so the test loop (and the gateway on
        it) keeps running while the sink is still receiving."""
        return await asyncio.to_thread(self.wait_for, count)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def make_settings(tmp_path: Path, delivery_port: int, **changes: Any) -> Settings:
    """Settings for a test gateway: loopback, ephemeral port, a private copy of rules/.

    `changes` replace fields of the sections by name, e.g. limits={"max_recipients": 2}.
    """
    rules = tmp_path / "rules"
    if not rules.exists():
        shutil.copytree(REPO / "rules", rules)
    sections: dict[str, Any] = {
        "listen": ListenSettings(host=LOOPBACK, port=0, hostname="mx.gateway.test"),
        "relay": RelaySettings(domains=("example.com", ".sub.example.org")),
        "limits": LimitSettings(idle_timeout=30, data_timeout=30, shutdown_grace=2),
        "tls": TlsSettings(),
        "delivery": DeliverySettings(
            host=LOOPBACK,
            port=delivery_port,
            connect_timeout=2,
            command_timeout=2,
            data_timeout=2,
        ),
        "plugins": PluginSettings(order=HARNESS_ORDER),
    }
    for name, value in changes.items():
        if name in sections and isinstance(value, dict):
            sections[name] = dataclasses.replace(sections[name], **value)
        elif name in sections:
            sections[name] = value
    return Settings(
        source=None,
        rules_dir=rules,
        quarantine_dir=tmp_path / "quarantine",
        dev_maildir=tmp_path / "maildir",
        **sections,
    )


@dataclass
class RunningGateway:
    gateway: Gateway
    server: GatewayServer
    host: str
    port: int

    @property
    def settings(self) -> Settings:
        return self.gateway.settings


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    recording = RecordingSink()
    recording.start()
    try:
        yield recording
    finally:
        recording.stop()


GatewayFactory = Callable[..., Any]


async def launch(settings: Settings, tls: ServerTls | None = None) -> RunningGateway:
    """A gateway serving `settings` on this loop (stop it with `item.server.stop`)."""
    gateway = Gateway.create(settings)
    server = GatewayServer(gateway, tls)
    host, port = await server.start()
    return RunningGateway(gateway, server, host, port)


@contextlib.asynccontextmanager
async def gateways() -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    """`launch`, remembering what it started so that all of it is stopped on exit."""
    running: list[RunningGateway] = []

    async def launch_one(settings: Settings, tls: ServerTls | None = None) -> RunningGateway:
        running.append(await launch(settings, tls))
        return running[-1]

    try:
        yield launch_one
    finally:
        for item in running:
            await item.server.stop(grace=1)


@pytest.fixture
async def start_gateway(tmp_path: Path, sink: RecordingSink) -> AsyncIterator[GatewayFactory]:
    """Start gateways on this test's loop: `await start_gateway(limits={...})`."""
    async with gateways() as launch_one:

        async def start(settings: Settings | None = None, **changes: Any) -> RunningGateway:
            return await launch_one(settings or make_settings(tmp_path, sink.port, **changes))

        yield start


@pytest.fixture
async def gw(start_gateway: GatewayFactory) -> RunningGateway:
    """A gateway with the default test settings, relaying to `sink`."""
    result: RunningGateway = await start_gateway()
    return result


def message(
    subject: str = "hello",
    sender: str = "alice@example.net",
    to: str = "bob@example.com",
    body: bytes = b"Hello Bob.\r\n",
    extra: bytes = b"",
) -> bytes:
    """A small well-formed RFC 5322 message with CRLF line endings."""
    return (
        (
            f"From: Alice <{sender}>\r\n"
            f"To: Bob <{to}>\r\n"
            f"Subject: {subject}\r\n"
            "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
            "Message-ID: <test-1@example.net>\r\n"
        ).encode()
        + extra
        + b"\r\n"
        + body
    )
