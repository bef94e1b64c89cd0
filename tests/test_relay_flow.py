"""The main path over real sockets: client -> gateway -> downstream server."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
from pathlib import Path

import aiosmtplib
import pytest
from harness import REPO, GatewayFactory, RecordingSink, RunningGateway, message


async def send(
    gw: RunningGateway,
    msg: bytes,
    sender: str = "alice@example.net",
    rcpts: list[str] | None = None,
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    return await aiosmtplib.send(
        msg,
        sender=sender,
        recipients=rcpts or ["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
        start_tls=False,
        local_hostname="client.example.net",
    )


def split_added(received: bytes, original: bytes) -> bytes:
    """What the gateway put in front of the original bytes (asserts the rest is identical)."""
    assert received.endswith(original)
    return received[: len(received) - len(original)]


async def test_clean_mail_is_delivered_byte_identical_plus_trace_headers(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    original = message(body=b"Line one.\r\n.Leading dot stays.\r\n\r\nTrailing.\r\n")
    _, reply = await send(gw, original)
    assert reply.startswith("2.0.0 OK id=")
    [delivered] = await sink.arrived(1)
    added = split_added(delivered.content, original)
    lines = added.decode().split("\r\n")
    assert lines[0].startswith("Received: from client.example.net ([127.0.0.1])")
    assert "by mx.gateway.test" in added.decode()
    assert "X-Mailgate-Action: relay\r\n" in added.decode()
    assert "X-Mailgate-Score: 0\r\n" in added.decode()
    assert delivered.mail_from == "alice@example.net"
    assert delivered.rcpt_tos == ["bob@example.com"]


async def test_each_recipient_reaches_downstream_and_null_sender_is_kept(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    def bounce() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP(gw.host, gw.port, local_hostname="mta.example.net") as smtp:
            return smtp.sendmail("", ["a@example.com", "b@x.sub.example.org"], message())

    assert await asyncio.to_thread(bounce) == {}
    [delivered] = await sink.arrived(1)
    assert delivered.mail_from in ("", "<>")
    assert delivered.rcpt_tos == ["a@example.com", "b@x.sub.example.org"]


async def test_client_identity_is_forwarded_with_xforward(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    await send(gw, message())
    [delivered] = await sink.arrived(1)
    assert delivered.xforward["ADDR"] == "127.0.0.1"
    assert delivered.xforward["HELO"] == "client.example.net"
    assert delivered.xforward["PROTO"] == "ESMTP"
    assert delivered.xforward["IDENT"]


async def test_unknown_domain_refused_at_rcpt_and_nothing_relayed(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await send(gw, message(), rcpts=["someone@elsewhere.example"])
    [error] = refused.value.recipients
    assert error.code == 550
    assert error.message.startswith("5.7.1 Relaying denied")
    assert sink.delivered == []


@pytest.mark.parametrize(
    "rcpt", ["user%elsewhere.example@example.com", "host!user@example.com", '"a@b"@example.com']
)
async def test_routing_in_local_part_refused(gw: RunningGateway, rcpt: str) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await send(gw, message(), rcpts=[rcpt])
    assert refused.value.recipients[0].code == 550


async def test_downstream_refusal_of_one_recipient_is_its_own_rcpt_answer(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    sink.behaviour.rcpt_replies["nobody@example.com"] = "550 5.1.1 User unknown"
    errors, _ = await send(gw, message(), rcpts=["nobody@example.com", "bob@example.com"])
    assert errors["nobody@example.com"].code == 550
    assert "5.1.1" in errors["nobody@example.com"].message
    [delivered] = await sink.arrived(1)
    assert delivered.rcpt_tos == ["bob@example.com"]


async def test_blocklisted_sender_refused_at_mail(
    start_gateway: GatewayFactory, sink: RecordingSink, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "lists.toml").write_text(
        '[client_ip]\nallow = []\nblock = []\n[sender]\nallow = []\nblock = ["spammer.example"]\n'
    )
    gw: RunningGateway = await start_gateway()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await send(gw, message(), sender="x@spammer.example")
    assert refused.value.code == 550
    assert "Sender address blocked" in refused.value.message
    assert sink.delivered == []
    assert not any(c.startswith("MAIL") for c in sink.commands)


async def test_smtplib_client_sees_the_advertised_extensions(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    """A plain smtplib client, as sending MTAs behave, run in a thread beside the gateway."""

    def talk() -> tuple[int, dict[str, str], dict[str, tuple[int, bytes]]]:
        with smtplib.SMTP(gw.host, gw.port, local_hostname="client.example.net") as smtp:
            code, _ = smtp.ehlo()
            features = dict(smtp.esmtp_features)
            refused = smtp.sendmail("alice@example.net", ["bob@example.com"], message())
            return code, features, refused

    code, features, refused = await asyncio.to_thread(talk)
    assert code == 250
    assert refused == {}
    for extension in ("pipelining", "8bitmime", "smtputf8", "size", "enhancedstatuscodes"):
        assert extension in features
    assert "auth" not in features
    assert "starttls" not in features  # no certificate configured
    assert len(await sink.arrived(1)) == 1
