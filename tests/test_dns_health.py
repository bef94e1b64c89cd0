"""A nameserver that stops answering is named in one WARNING, and its return in one INFO.

Real packets only: a UDP socket on loopback that is bound and never answers stands for a dead
resolver, and the loopback DNS server of the tests (gateway.devdns), told to stay silent or to
let one name time out, for a live one. Nothing leaves loopback.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_server import DnsTestServer
from harness import LOOPBACK, GatewayFactory, RecordingSink, make_settings
from sink_probe import eventually
from test_smuggling import SENDER, Wire

from gateway.config import DnsSettings, PluginSettings
from gateway.dns import DnsStatus, Resolver

WAIT = 30.0  # bounds only a failure: a loaded CI machine may be slow


class SilencingDnsServer(DnsTestServer):
    """The loopback DNS server, which can be told to answer nothing at all (a dead resolver)."""

    silent = False

    def answer(self, data: bytes, proto: str) -> tuple[bytes | None, float]:
        if self.silent:
            return None, 0.0
        answered: tuple[bytes | None, float] = super().answer(data, proto)
        return answered


@pytest.fixture
def dns_server() -> Iterator[SilencingDnsServer]:
    server = SilencingDnsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback UDP port that is bound and never answers: queries to it time out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])


def dns_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "mailgate.dns" and r.levelno == level
    ]


async def test_a_dead_resolver_is_named_in_one_warning_while_mail_is_deferred(
    start_gateway: GatewayFactory,
    sink: RecordingSink,
    tmp_path: Path,
    dead_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    settings = make_settings(
        tmp_path, sink.port, plugins=PluginSettings(order=("lists", "headers", "spf"))
    )
    dns = DnsSettings(nameservers=(LOOPBACK,), port=dead_port, timeout=0.5)
    gw = await start_gateway(dataclasses.replace(settings, dns=dns))
    for _ in range(2):  # SPF runs at MAIL: each transaction is deferred there
        wire = await Wire.connect(gw)
        try:
            assert (await wire.command("EHLO client.example.net")).startswith("250")
            reply = await wire.command(f"MAIL FROM:<{SENDER}>")
        finally:
            await wire.close()
        assert reply.startswith("451 4.7.24 SPF check failed temporarily"), reply
        await eventually(lambda: dns_lines(caplog, logging.WARNING))
    [warning] = dns_lines(caplog, logging.WARNING)
    assert warning.startswith(
        f"DNS server {LOOPBACK}:{dead_port} (from [dns] nameservers) does not answer: "
        "no answer within 0.5s"
    ), warning
    assert sink.delivered == []


async def test_a_slow_name_is_not_taken_for_a_dead_server(
    dns_server: SilencingDnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.dns")
    dns_server.load({"slow.example": ["TIMEOUT"]})
    resolver = Resolver(nameservers=(dns_server.host,), port=dns_server.port, timeout=0.5)
    try:
        result = await resolver.query("slow.example", "TXT")
        assert result.status is DnsStatus.TIMEOUT
        await resolver.health.settled()
        assert resolver.health.down == {}
        assert dns_lines(caplog, logging.WARNING) == []
    finally:
        await resolver.aclose()


async def test_a_silent_server_is_warned_of_once_and_its_return_said_once(
    dns_server: SilencingDnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.dns")
    dns_server.load({"example.net": [("TXT", "v=spf1 -all")]})
    resolver = Resolver(nameservers=(dns_server.host,), port=dns_server.port, timeout=0.5)
    resolver.health.recheck = 0  # every lookup may check: the WARNING must still come once
    where = f"DNS server {dns_server.host}:{dns_server.port} (from the nameservers given)"
    try:
        dns_server.silent = True
        for name in ("a.example", "b.example", "c.example"):
            assert (await resolver.query(name, "TXT")).status is DnsStatus.TIMEOUT
            await resolver.health.settled()
        [warning] = dns_lines(caplog, logging.WARNING)
        assert warning.startswith(f"{where} does not answer: no answer within 0.5s"), warning

        dns_server.silent = False
        assert (await resolver.query("example.net", "TXT")).status is DnsStatus.ANSWER
        await resolver.health.settled()
        assert dns_lines(caplog, logging.INFO) == [f"{where} answers again"]
        assert resolver.health.down == {}

        dns_server.silent = True  # it flaps: down again, but warned of within warn_every
        assert (await resolver.query("d.example", "TXT")).status is DnsStatus.TIMEOUT
        await resolver.health.settled()
        assert resolver.health.down != {}
        assert len(dns_lines(caplog, logging.WARNING)) == 1
    finally:
        await resolver.aclose()
