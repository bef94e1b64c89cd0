"""End to end with a real Postfix (Debian's package) as the delivery server behind the gateway."""

from __future__ import annotations

import asyncio
import ipaddress

import aiosmtplib
import pytest
from harness import GatewayFactory, RunningGateway, message
from postfix_instance import PostfixInstance

pytestmark = pytest.mark.postfix


async def gateway_before(
    start_gateway: GatewayFactory, postfix: PostfixInstance, **changes: object
) -> RunningGateway:
    delivery = {"port": postfix.port, "command_timeout": 10, "data_timeout": 10}
    delivery.update(changes.pop("delivery", {}))  # type: ignore[arg-type]
    gw: RunningGateway = await start_gateway(delivery=delivery, **changes)
    return gw


async def test_mail_arrives_in_postfix_maildir(
    start_gateway: GatewayFactory, postfix: PostfixInstance
) -> None:
    gw = await gateway_before(start_gateway, postfix)
    original = message(to="user@example.com", body=b"Through the gateway.\r\n.dot line\r\n")
    errors, reply = await aiosmtplib.send(
        original,
        sender="alice@example.net",
        recipients=["user@example.com"],
        hostname=gw.host,
        port=gw.port,
        start_tls=False,
        local_hostname="client.example.net",
    )
    assert errors == {}
    assert reply.startswith("2.0.0 OK id=")
    assert "queued as" in reply  # the delivery server's own words, passed on
    [stored] = await asyncio.to_thread(postfix.wait_for_delivery, "user")
    # Postfix stores with LF line endings and puts its own trace fields on top.
    assert stored.endswith(original.replace(b"\r\n", b"\n"))
    head = stored[: len(stored) - len(original.replace(b"\r\n", b"\n"))]
    assert b"X-Mailgate-Action: relay\n" in head
    assert b"by mx.gateway.test (mailgate" in head


async def test_unknown_user_is_refused_by_postfix_at_rcpt(
    start_gateway: GatewayFactory, postfix: PostfixInstance
) -> None:
    gw = await gateway_before(start_gateway, postfix)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await aiosmtplib.send(
            message(),
            sender="alice@example.net",
            recipients=["nobody@example.com"],
            hostname=gw.host,
            port=gw.port,
            start_tls=False,
        )
    [error] = refused.value.recipients
    assert error.code == 550
    assert error.message.startswith("5.1.1 delivery server:")


@pytest.mark.parametrize("identity", ["xforward", "xclient"])
async def test_real_client_address_reaches_postfix(
    start_gateway: GatewayFactory, postfix: PostfixInstance, identity: str
) -> None:
    """Behind a load balancer (PROXY protocol), Postfix still sees the real client."""
    gw = await gateway_before(
        start_gateway,
        postfix,
        delivery={"client_identity": identity},
        listen={
            "proxy_protocol": True,
            "proxy_trusted": (ipaddress.ip_network("127.0.0.0/8"),),
        },
    )
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    body = message(to="alice@example.com")
    script = [
        b"PROXY TCP4 198.51.100.23 127.0.0.1 40000 25\r\n",
        b"EHLO client.example.net\r\n",
        b"MAIL FROM:<sender@example.net>\r\n",
        b"RCPT TO:<alice@example.com>\r\n",
        b"DATA\r\n",
        body + b".\r\n",
        b"QUIT\r\n",
    ]
    replies = []
    try:
        writer.write(script[0])
        for command in [None, *script[1:]]:
            if command is not None:
                writer.write(command)
            while True:
                line = await asyncio.wait_for(reader.readline(), 15)
                if line[3:4] != b"-":
                    replies.append(line)
                    break
    finally:
        writer.close()
        await writer.wait_closed()
    assert replies[5].startswith(b"250 2.0.0"), replies
    [stored] = await asyncio.to_thread(postfix.wait_for_delivery, "alice")
    postfix_received = stored.split(b"\nReceived: ")[1].split(b"\n")[0]
    if identity == "xforward":
        # XFORWARD feeds Postfix's logging (and its policy checks), not its Received field.
        line = await asyncio.to_thread(postfix.wait_for_log, "orig_client=")
        assert "orig_client=unknown[198.51.100.23]" in line
        assert "orig_queue_id=" in line
    else:
        # XCLIENT makes Postfix treat the session as the real client's own.
        assert postfix_received == b"from client.example.net (unknown [198.51.100.23])"
