"""Forged Received-SPF fields that name our receiver are removed before we add ours.

A sender may write "Received-SPF: pass ... receiver=<our hostname>" into the message it sends; a
delivery server or MUA that trusts the topmost Received-SPF (or any that names the gateway) would
believe it. Fields of other receivers (earlier hops) are kept, like foreign Authentication-Results.
"""

from __future__ import annotations

from pathlib import Path

import aiosmtplib
import pytest
from auth_helpers import field_values, key_zone, mail, sign, start_auth_gateway
from dns_server import DnsTestServer
from harness import GatewayFactory, RecordingSink, RunningGateway, message

from gateway.header_edit import strip_received_spf

ID = "mx.gateway.test"
BODY = b"\r\nReceived-SPF: pass receiver=mx.gateway.test (in the body: kept)\r\n"


@pytest.mark.parametrize(
    "forged",
    [
        b"Received-SPF: pass (mx.gateway.test: domain of bank.example designates 192.0.2.1 as "
        b"permitted sender) client-ip=192.0.2.1; envelope-from=a@bank.example; "
        b"receiver=mx.gateway.test; identity=mailfrom\r\n",
        b"received-spf: Pass client-ip=192.0.2.1; receiver=MX.Gateway.Test.\r\n",
        b"Received-SPF : pass receiver=mx.gateway.test\r\n",
        b"Received-SPF: pass\r\n\tclient-ip=192.0.2.1;\r\n\treceiver=mx.gateway.test\r\n",
        b'Received-SPF: pass client-ip=192.0.2.1; receiver="mx.gateway.test"\r\n',
        b"Received-SPF: pass (mx.gateway.test: 192.0.2.1 is permitted)\r\n",
    ],
)
def test_forged_received_spf_naming_us_is_removed(forged: bytes) -> None:
    theirs = b"Received-SPF: pass client-ip=192.0.2.9; receiver=mx.other.example\r\n"
    raw = forged + theirs + b"Subject: x\r\n" + forged + BODY
    stripped, removed = strip_received_spf(raw, ID)
    assert removed == 2
    assert stripped == theirs + b"Subject: x\r\n" + BODY


def test_other_receivers_and_similar_names_are_kept() -> None:
    raw = (
        b"Received-SPF: pass receiver=mx.gateway.test.evil.example\r\n"
        b"Received-SPF: pass receiver=evil-mx.gateway.test\r\n"
        b"Received-SPF: pass (mx.other.example: ok) receiver=mx.other.example\r\n"
        b"Subject: x\r\n\r\nbody\r\n"
    )
    assert strip_received_spf(raw, ID) == (raw, 0)


def test_forged_field_after_a_broken_line_is_still_removed() -> None:
    raw = (
        b"Subject: x\r\nnot a header line\r\n"
        b"Received-SPF: pass receiver=mx.gateway.test\r\n\r\nb\r\n"
    )
    stripped, removed = strip_received_spf(raw, ID)
    assert removed == 1 and b"Received-SPF" not in stripped


# -- over SMTP ------------------------------------------------------------------------------------


async def test_forged_received_spf_goes_without_the_spf_plugin(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    forged = b"Received-SPF: pass client-ip=192.0.2.1; receiver=mx.gateway.test\r\n"
    theirs = b"Received-SPF: fail client-ip=192.0.2.9; receiver=mx.other.example\r\n"
    await aiosmtplib.send(
        forged + theirs + message(),
        sender="alice@example.net",
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
    )
    [delivered] = await sink.arrived(1)
    values = field_values(delivered.content, "Received-SPF")
    assert values == ["fail client-ip=192.0.2.9; receiver=mx.other.example"]
    assert delivered.content.endswith(theirs + message())


async def test_only_our_received_spf_names_us_with_the_spf_plugin(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> None:
    dns_server.load(key_zone())
    dns_server.load(
        {
            "good.example": [("TXT", "v=spf1 -all")],
            "_dmarc.good.example": [("TXT", "v=DMARC1; p=none")],
        }
    )
    gw = await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)
    forged = (
        b"Received-SPF: Pass (mx.gateway.test: domain of good.example designates 127.0.0.1 as "
        b"permitted sender)\r\n\tclient-ip=127.0.0.1; envelope-from=alice@good.example;\r\n"
        b"\treceiver=mx.gateway.test; identity=mailfrom\r\n"
    )
    await aiosmtplib.send(
        forged + sign(mail()),
        sender="alice@good.example",
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
        local_hostname="[127.0.0.1]",
    )
    [delivered] = await sink.arrived(1)
    [spf] = field_values(delivered.content, "Received-SPF")
    assert spf.startswith("Fail (mx.gateway.test: domain of good.example does not designate")
    assert delivered.content.count(b"receiver=mx.gateway.test") == 1
