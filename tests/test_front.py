"""The SMTP front's connection-level features: PROXY protocol, STARTTLS, connect-phase refusal."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import aiosmtplib
import pytest
import trustme
from harness import (
    LOOPBACK,
    REPO,
    GatewayFactory,
    RecordingSink,
    RunningGateway,
    make_settings,
    message,
)
from reply_ids import without_id

import gateway.config
from gateway.config import Settings, TlsSettings


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One whole (possibly multi-line) SMTP reply."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 5)
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return b"".join(lines)


async def converse(
    gw: RunningGateway, preamble: bytes, commands: list[bytes]
) -> tuple[bytes, list[bytes]]:
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    try:
        writer.write(preamble)
        greeting = await read_reply(reader)
        replies = []
        for command in commands:
            writer.write(command)
            replies.append(await read_reply(reader))
        return greeting, replies
    finally:
        writer.close()
        await writer.wait_closed()


PROXY_SETTINGS = {
    "listen": {
        "proxy_protocol": True,
        "proxy_trusted": (gateway.config.ipaddress.ip_network("127.0.0.0/8"),),
    }
}


async def test_proxy_v1_from_trusted_balancer_gives_the_real_client(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    gw: RunningGateway = await start_gateway(**PROXY_SETTINGS)
    body = message().replace(b"\r\n.", b"\r\n..")
    greeting, replies = await converse(
        gw,
        b"PROXY TCP4 198.51.100.23 127.0.0.1 40000 25\r\n",
        [
            b"EHLO client.example.net\r\n",
            b"MAIL FROM:<alice@example.net>\r\n",
            b"RCPT TO:<bob@example.com>\r\n",
            b"DATA\r\n",
            body + b".\r\n",
            b"QUIT\r\n",
        ],
    )
    assert greeting.startswith(b"220 ")
    assert replies[4].startswith(b"250 2.0.0"), replies
    [delivered] = await sink.arrived(1)
    assert delivered.xforward["ADDR"] == "198.51.100.23"
    assert b"([198.51.100.23])" in delivered.content.split(b"\r\n\r\n")[0]


def proxy_v2_header(src: str, src_port: int) -> bytes:
    """A PROXY protocol v2 header (binary, PROXY command, TCP over IPv4)."""
    import ipaddress as ip
    import struct

    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = ip.IPv4Address(src).packed + ip.IPv4Address("127.0.0.1").packed
    addresses += struct.pack("!HH", src_port, 25)
    return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


async def test_proxy_v2_from_trusted_balancer_gives_the_real_client(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    gw: RunningGateway = await start_gateway(**PROXY_SETTINGS)
    greeting, replies = await converse(
        gw,
        proxy_v2_header("203.0.113.9", 41000),
        [
            b"EHLO client.example.net\r\n",
            b"MAIL FROM:<alice@example.net>\r\n",
            b"RCPT TO:<bob@example.com>\r\n",
            b"DATA\r\n",
            message() + b".\r\n",
        ],
    )
    assert greeting.startswith(b"220 ")
    assert replies[4].startswith(b"250 2.0.0"), replies
    [delivered] = await sink.arrived(1)
    assert delivered.xforward["ADDR"] == "203.0.113.9"
    assert delivered.xforward["PORT"] == "41000"


async def test_proxy_header_from_untrusted_peer_is_refused(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    settings = {
        "listen": {
            "proxy_protocol": True,
            "proxy_trusted": (gateway.config.ipaddress.ip_network("192.0.2.0/24"),),
        }
    }
    gw: RunningGateway = await start_gateway(**settings)
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    writer.write(b"PROXY TCP4 198.51.100.23 127.0.0.1 40000 25\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    assert data == b""  # closed without a greeting
    assert sink.delivered == []


async def test_blocked_client_ip_gets_554_greeting(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "lists.toml").write_text(
        '[client_ip]\nallow = []\nblock = ["127.0.0.0/8"]\n[sender]\nallow = []\nblock = []\n'
    )
    gw: RunningGateway = await start_gateway()
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    assert without_id(data.decode()) == "554 5.7.1 Client host blocked by policy"
    assert gw.gateway.connections == {}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_settings(tmp_path: Path, sink: RecordingSink, ca: trustme.CA) -> Settings:
    cert = ca.issue_cert("mx.gateway.test")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return make_settings(tmp_path, sink.port, tls=TlsSettings(cert_file, key_file))


async def test_starttls_is_offered_and_recorded_in_received(
    start_gateway: GatewayFactory, sink: RecordingSink, tmp_path: Path, ca: trustme.CA
) -> None:
    from gateway.server import GatewayServer, make_tls_context

    settings = tls_settings(tmp_path, sink, ca)
    gw: RunningGateway = await start_gateway(settings)
    # The factory builds its server without TLS; serve this gateway with a TLS context too.
    server = GatewayServer(gw.gateway, make_tls_context(settings))
    host, port = await server.start()
    try:
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        async with aiosmtplib.SMTP(
            hostname=host,
            port=port,
            start_tls=False,
            tls_context=client_context,
            local_hostname="client.example.net",
        ) as smtp:
            await smtp.ehlo()
            assert smtp.supports_extension("starttls")
            await smtp.starttls(server_hostname="mx.gateway.test")
            await smtp.ehlo()
            assert not smtp.supports_extension("starttls")
            await smtp.sendmail("alice@example.net", ["bob@example.com"], message())
    finally:
        await server.stop(grace=1)
    [delivered] = await sink.arrived(1)
    header = delivered.content.split(b"\r\n\r\n")[0].decode()
    assert "with ESMTPS" in header
    assert "(TLSv1.3:" in header or "(TLSv1.2:" in header


async def test_tls_below_1_2_is_refused(
    start_gateway: GatewayFactory, sink: RecordingSink, tmp_path: Path, ca: trustme.CA
) -> None:
    from gateway.server import make_tls_context

    context = make_tls_context(tls_settings(tmp_path, sink, ca))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_loopback_constant_is_loopback() -> None:
    assert LOOPBACK.startswith("127.")
