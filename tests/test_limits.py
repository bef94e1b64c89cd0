"""Limits from config, reply codes, and failure replies, over real sockets.

Each limit is checked for the reply the client gets (code and RFC 3463 enhanced status) and for
what the delivery server saw: a refused message must never reach it. The raw client `Wire` (from
test_smuggling) writes exact bytes and reads replies as sent, so sizes and timings are ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence

import pytest
from harness import GatewayFactory, RecordingSink, RunningGateway, message
from reply_ids import without_id
from sink_probe import eventually
from test_smuggling import RECIPIENT, SENDER, Wire

import gateway.session
from gateway.plugin import MessageContext, Phase
from gateway.plugins.header_sanity import HeaderSanity
from gateway.plugins.lists import AllowBlockLists
from gateway.relay import Downstream
from gateway.session import Session
from gateway.verdict import Finding

# "250 2.1.0 text": basic code and enhanced status of the same class (RFC 3463 / RFC 2034).
ENHANCED = re.compile(r"^([245])\d\d \1\.\d{1,3}\.\d{1,3} ")
SECRET = "s3cret-internal-detail"


def dot_stuffed(data: bytes) -> bytes:
    return data.replace(b"\r\n.", b"\r\n..")


async def transaction(
    wire: Wire, body: bytes, sender: str = SENDER, rcpts: Sequence[str] = (RECIPIENT,)
) -> str:
    """MAIL, RCPT(s), DATA and a CRLF-terminated message; the reply to the end of DATA."""
    assert (await wire.command(f"MAIL FROM:<{sender}>")).startswith("250 2.1.0")
    for rcpt in rcpts:
        assert (await wire.command(f"RCPT TO:<{rcpt}>")).startswith("250 2.1.5")
    assert (await wire.command("DATA")).startswith("354")
    await wire.send(dot_stuffed(body) + b".\r\n")
    return await wire.reply()


async def session(gw: RunningGateway) -> Wire:
    wire = await Wire.connect(gw)
    assert wire.greeting.startswith("220 ")
    assert (await wire.command("EHLO client.example.net")).startswith("250")
    return wire


# -- message size -------------------------------------------------------------------------------


async def test_size_parameter_over_the_limit_is_refused_at_mail(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    gw: RunningGateway = await start_gateway(limits={"max_message_size": 1000})
    wire = await Wire.connect(gw)
    try:
        ehlo = await wire.command("EHLO client.example.net")
        assert "250-SIZE 1000" in ehlo.split("\n")
        reply = await wire.command(f"MAIL FROM:<{SENDER}> SIZE=1001")
        assert reply.startswith("552 5.3.4 "), reply
        assert sink.commands == []  # refused before the delivery server was asked
        assert (await wire.command(f"MAIL FROM:<{SENDER}> SIZE=1000")).startswith("250 2.1.0")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    assert sink.commands == [f"MAIL {SENDER}"]
    assert sink.delivered == []


async def test_data_over_the_limit_without_size_is_refused_and_not_relayed(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    gw: RunningGateway = await start_gateway(limits={"max_message_size": 1000})
    big = message(body=(b"y" * 70 + b"\r\n") * 20)
    small = message(body=b"small\r\n")
    wire = await session(gw)
    try:
        reply = await transaction(wire, big)
        assert reply.startswith("552 5.3.4 "), reply
        assert sink.delivered == []
        assert "DATA" not in sink.commands
        # The session goes on: the next transaction is delivered, and only it.
        assert (await transaction(wire, small)).startswith("250 2.0.0 OK id=")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    [delivered] = await sink.arrived(1)
    assert delivered.content.endswith(small)
    assert sink.commands.count("DATA") == 1


async def test_refused_data_leaves_the_connection_idle_for_shutdown(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    """After a 552 the client is between transactions: shutdown answers it 421 at once."""
    gw: RunningGateway = await start_gateway(limits={"max_message_size": 1000})
    wire = await session(gw)
    try:
        reply = await transaction(wire, message(body=(b"y" * 70 + b"\r\n") * 20))
        assert reply.startswith("552 5.3.4 "), reply
        started = time.monotonic()
        stopping = asyncio.create_task(gw.server.stop(grace=20))
        [last] = await wire.replies_until_closed(within=15)
        assert without_id(last) == "421 4.3.2 Service shutting down, try again later"
        assert time.monotonic() - started < 10  # at once, not after the 20 s grace
        await stopping
    finally:
        await wire.close()
    assert sink.delivered == []


# -- line and command length --------------------------------------------------------------------


async def test_data_line_over_max_line_length_is_refused_and_not_relayed(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    gw: RunningGateway = await start_gateway(limits={"max_line_length": 200})
    # A line of exactly the limit passes, also when it starts with a dot (stuffed on the wire).
    fits = message(body=b"a" * 200 + b"\r\n." + b"b" * 199 + b"\r\n")
    too_long = message(body=b"short\r\n" + b"c" * 260 + b"\r\nshort\r\n")
    wire = await session(gw)
    try:
        reply = await transaction(wire, too_long)
        assert reply.startswith("500 5.5.2 Line too long"), reply
        assert sink.delivered == []
        assert "DATA" not in sink.commands
        assert (await transaction(wire, fits)).startswith("250 2.0.0 OK id=")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    [delivered] = await sink.arrived(1)
    assert delivered.content.endswith(fits)


async def test_command_line_over_512_bytes_is_refused(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    wire = await session(gw)
    try:
        over_512 = f"MAIL FROM:<{'a' * 600}@example.net>"
        assert without_id(await wire.command(over_512)) == "500 5.5.2 Command line too long"
        # Past the stream's own line limit too: the whole line is swallowed, none of it obeyed.
        huge = f"MAIL FROM:<{'a' * 10000}@example.net> RCPT TO:<{RECIPIENT}>"
        assert without_id(await wire.command(huge)) == "500 5.5.2 Command line too long"
        assert (await wire.command("NOOP")).startswith("250 2.0.0")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
        assert await wire.replies_until_closed() == []
    finally:
        await wire.close()
    assert sink.commands == []


# -- recipients -----------------------------------------------------------------------------------


async def test_recipients_over_max_recipients_get_452_and_the_others_deliver(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    gw: RunningGateway = await start_gateway(limits={"max_recipients": 2})
    wire = await session(gw)
    try:
        assert (await wire.command(f"MAIL FROM:<{SENDER}>")).startswith("250 2.1.0")
        assert (await wire.command("RCPT TO:<one@example.com>")).startswith("250 2.1.5")
        assert (await wire.command("RCPT TO:<two@example.com>")).startswith("250 2.1.5")
        reply = await wire.command("RCPT TO:<three@example.com>")
        assert reply.startswith("452 4.5.3 "), reply
        assert (await wire.command("RCPT TO:<four@example.com>")).startswith("452 4.5.3 ")
        assert (await wire.command("DATA")).startswith("354")
        await wire.send(message() + b".\r\n")
        assert (await wire.reply()).startswith("250 2.0.0 OK id=")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    [delivered] = await sink.arrived(1)
    assert delivered.rcpt_tos == ["one@example.com", "two@example.com"]
    assert not any(c in sink.commands for c in ("RCPT three@example.com", "RCPT four@example.com"))


# -- connections ----------------------------------------------------------------------------------


async def test_connections_per_ip_over_the_limit_get_421_greeting(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    gw: RunningGateway = await start_gateway(limits={"max_connections_per_ip": 2})
    first, second = await Wire.connect(gw), await Wire.connect(gw)
    try:
        assert first.greeting.startswith("220 ") and second.greeting.startswith("220 ")
        third = await Wire.connect(gw)
        assert without_id(third.greeting) == "421 4.7.0 Too many connections from your address"
        assert await third.replies_until_closed() == []
        await third.close()
        # A refused connection took no slot, and a closed one gives its slot back.
        assert gw.gateway.connections == {"127.0.0.1": 2}
        assert (await first.command("QUIT")).startswith("221 2.0.0")
        await eventually(lambda: gw.gateway.connections == {"127.0.0.1": 1})
        fourth = await Wire.connect(gw)
        assert fourth.greeting.startswith("220 ")
        await fourth.close()
    finally:
        await first.close()
        await second.close()
    assert sink.commands == []


async def test_total_connections_over_the_limit_get_421_greeting(
    start_gateway: GatewayFactory,
) -> None:
    gw: RunningGateway = await start_gateway(limits={"max_connections": 1})
    first = await Wire.connect(gw)
    try:
        assert first.greeting.startswith("220 ")
        second = await Wire.connect(gw)
        assert without_id(second.greeting) == "421 4.7.0 Too many connections, try again later"
        assert await second.replies_until_closed() == []
        await second.close()
    finally:
        await first.close()


# -- timeouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["after greeting", "mid-transaction"])
async def test_idle_client_is_disconnected(
    start_gateway: GatewayFactory, sink: RecordingSink, where: str
) -> None:
    gw: RunningGateway = await start_gateway(limits={"idle_timeout": 0.5})
    wire = await Wire.connect(gw)
    try:
        if where == "mid-transaction":
            assert (await wire.command("EHLO client.example.net")).startswith("250")
            assert (await wire.command(f"MAIL FROM:<{SENDER}>")).startswith("250")
            assert (await wire.command(f"RCPT TO:<{RECIPIENT}>")).startswith("250")
        started = time.monotonic()
        # Generous upper bound (a loaded CI machine); a timer that never fires still fails it.
        assert await wire.replies_until_closed(within=15) == []
        elapsed = time.monotonic() - started
        assert elapsed >= 0.4, elapsed
    finally:
        await wire.close()
    await eventually(lambda: gw.gateway.connections == {})
    assert sink.delivered == []
    assert "DATA" not in sink.commands


async def test_client_slower_than_data_timeout_is_disconnected_and_nothing_relayed(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    """DATA as a whole gets `data_timeout`: a client trickling bytes cannot stretch it."""
    gw: RunningGateway = await start_gateway(limits={"data_timeout": 0.5, "idle_timeout": 10})
    wire = await session(gw)

    async def trickle() -> None:
        await wire.send(message(body=b""))
        with contextlib.suppress(ConnectionError, OSError):
            for n in range(600):  # 30 s of trickle: longer than the bound below
                await wire.send(b"line %d\r\n" % n)
                await asyncio.sleep(0.05)

    try:
        assert (await wire.command(f"MAIL FROM:<{SENDER}>")).startswith("250 2.1.0")
        assert (await wire.command(f"RCPT TO:<{RECIPIENT}>")).startswith("250 2.1.5")
        assert (await wire.command("DATA")).startswith("354")
        started = time.monotonic()
        sender = asyncio.create_task(trickle())
        try:
            # Closed long before the trickle ends, however loaded the machine: a timeout that
            # each line restarted would let the trickle run its 30 s.
            assert await wire.replies_until_closed(within=15) == []
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        elapsed = time.monotonic() - started
        assert elapsed >= 0.4, elapsed
    finally:
        await wire.close()
    await eventually(lambda: gw.gateway.connections == {})
    assert sink.delivered == []
    assert "DATA" not in sink.commands


async def test_data_timeout_does_not_cut_off_a_slow_delivery_server(
    start_gateway: GatewayFactory, sink: RecordingSink
) -> None:
    """Once the message is in, the client waits for the delivery server, not for data_timeout."""
    gw: RunningGateway = await start_gateway(limits={"data_timeout": 0.5, "idle_timeout": 0.5})
    sink.behaviour.data_delay = 1.0  # under the delivery data_timeout (2 s) of the harness
    wire = await session(gw)
    try:
        assert (await transaction(wire, message())).startswith("250 2.0.0 OK id=")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    assert len(await sink.arrived(1)) == 1


# -- reply codes ----------------------------------------------------------------------------------


async def test_every_reply_carries_an_enhanced_status_code(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    """aiosmtpd composes many replies itself; `with_status` gives each its RFC 3463 code."""
    script = [
        ("MAIL FROM:<alice@example.net>", "503 5.5.1"),  # before EHLO
        ("EHLO client.example.net", None),
        ("FOO bar", "500 5.5.2"),
        ("", "500 5.5.2"),
        (f"RCPT TO:<{RECIPIENT}>", "503 5.5.1"),  # RCPT before MAIL
        ("DATA", "503 5.5.1"),  # DATA before MAIL
        ("MAIL TO:<alice@example.net>", "501 5.5.4"),
        (f"MAIL FROM:<{SENDER}>", "250 2.1.0"),
        (f"MAIL FROM:<{SENDER}>", "503 5.5.1"),  # nested MAIL
        ("DATA", "503 5.5.1"),  # DATA before RCPT
        ("NOOP", "250 2.0.0"),
        ("HELP", "250 2.0.0"),
        ("VRFY bob", "252 2.5.0"),
        ("EXPN list", "502 5.5.1"),
        ("STARTTLS", "454 4.7.0"),  # no certificate configured
        ("RSET", "250 2.0.0"),
        ("QUIT", "221 2.0.0"),
    ]
    wire = await Wire.connect(gw)
    try:
        assert wire.greeting.startswith("220 ")
        for command, expected in script:
            reply = await wire.command(command)
            if expected is None:  # RFC 2034: no enhanced codes in the EHLO response
                assert all(line.startswith("250") for line in reply.split("\n")), reply
                continue
            assert reply.startswith(f"{expected} "), (command, reply)
            assert ENHANCED.match(reply), (command, reply)
    finally:
        await wire.close()
    assert sink.delivered == []


async def test_auth_is_refused_and_not_advertised(gw: RunningGateway, sink: RecordingSink) -> None:
    wire = await Wire.connect(gw)
    try:
        ehlo = await wire.command("EHLO client.example.net")
        assert not any(line[4:].upper().startswith("AUTH") for line in ehlo.split("\n")), ehlo
        assert "ENHANCEDSTATUSCODES" in ehlo
        for attempt in ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "AUTH LOGIN", "AUTH CRAM-MD5"):
            refused = without_id(await wire.command(attempt))
            assert refused == "503 5.5.1 Error: authentication not enabled"
        # Still a normal MX session afterwards.
        assert (await transaction(wire, message())).startswith("250 2.0.0 OK id=")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    assert len(await sink.arrived(1)) == 1


# -- failures inside the gateway ----------------------------------------------------------------


def assert_nothing_leaked(reply: str) -> None:
    """Not aiosmtpd's "500 Error: (RuntimeError) text": no exception class, no exception text."""
    assert SECRET not in reply
    assert "RuntimeError" not in reply
    assert "Error:" not in reply


async def test_plugin_exception_at_data_is_its_error_symbol_and_a_tempfail(
    gw: RunningGateway,
    sink: RecordingSink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(self: HeaderSanity, phase: Phase, ctx: MessageContext) -> list[Finding]:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(HeaderSanity, "check", broken)
    caplog.set_level(logging.INFO, logger="mailgate")
    wire = await session(gw)
    try:
        reply = await transaction(wire, message())
        assert reply.startswith("451 4.7.1 "), reply  # rules/actions.toml: HEADERS_ERROR tempfail
        assert_nothing_leaked(reply)
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    assert sink.delivered == []
    assert "DATA" not in sink.commands
    [line] = [r.getMessage() for r in caplog.records if r.name == "mailgate.message"]
    assert "action=tempfail" in line
    assert "HEADERS_ERROR(" in line
    assert 'reason="forced by HEADERS_ERROR"' in line


async def test_plugin_exception_at_mail_tempfails_the_sender(
    gw: RunningGateway, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = AllowBlockLists.check

    async def broken_at_mail(
        self: AllowBlockLists, phase: Phase, ctx: MessageContext
    ) -> Sequence[Finding]:
        if phase is Phase.MAIL:
            raise RuntimeError(SECRET)
        return await original(self, phase, ctx)

    monkeypatch.setattr(AllowBlockLists, "check", broken_at_mail)
    wire = await session(gw)
    try:
        reply = await wire.command(f"MAIL FROM:<{SENDER}>")
        assert reply.startswith("451 4.7.1 "), reply
        assert_nothing_leaked(reply)
        assert (await wire.command(f"RCPT TO:<{RECIPIENT}>")).startswith("503 5.5.1")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    assert sink.commands == []


async def test_plugin_exception_at_connect_turns_the_client_away_temporarily(
    gw: RunningGateway, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: AllowBlockLists, phase: Phase, ctx: MessageContext) -> list[Finding]:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(AllowBlockLists, "check", broken)
    wire = await Wire.connect(gw)
    try:
        assert wire.greeting.startswith("421 4.7.1 "), wire.greeting  # 421, never 554
        assert_nothing_leaked(wire.greeting)
        assert await wire.replies_until_closed() == []
    finally:
        await wire.close()
    assert sink.commands == []


async def test_unexpected_exception_at_end_of_data_is_451_without_details(
    gw: RunningGateway, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(gateway.session, "conclude", broken)
    wire = await session(gw)
    try:
        reply = await transaction(wire, message())
        assert reply.startswith("451 4.3.0 Internal error, try again later (id="), reply
        assert_nothing_leaked(reply)
        assert sink.delivered == []
        # The session survives the failure: once the fault is gone, mail flows again.
        monkeypatch.undo()
        assert (await transaction(wire, message())).startswith("250 2.0.0 OK id=")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    assert len(await sink.arrived(1)) == 1


async def test_unexpected_exception_in_a_command_hook_is_451_without_details(
    gw: RunningGateway, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(Downstream, "begin", broken)
    wire = await session(gw)
    try:
        reply = await wire.command(f"MAIL FROM:<{SENDER}>")
        assert without_id(reply) == "451 4.3.0 Internal error, try again later", reply
        assert (await wire.command(f"RCPT TO:<{RECIPIENT}>")).startswith("503 5.5.1")
        assert (await wire.command("NOOP")).startswith("250 2.0.0")
        monkeypatch.undo()
        assert (await transaction(wire, message())).startswith("250 2.0.0 OK id=")
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    assert len(await sink.arrived(1)) == 1


async def test_unexpected_exception_before_the_greeting_is_421_without_details(
    gw: RunningGateway, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CONNECT phase runs before aiosmtpd's command loop: it must not leave the client mute."""
    original = Session.on_connect

    async def broken(self: Session, peer: tuple[str, int]) -> object:
        await original(self, peer)  # count the connection, then fail
        raise RuntimeError(SECRET)

    monkeypatch.setattr(Session, "on_connect", broken)
    wire = await Wire.connect(gw)
    try:
        assert without_id(wire.greeting) == "421 4.3.0 Internal error, try again later"
        assert await wire.replies_until_closed() == []
    finally:
        await wire.close()
    await eventually(lambda: gw.gateway.connections == {})
    assert sink.commands == []
