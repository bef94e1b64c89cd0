"""gateway.relay on its own: reply mapping, xtext, and `Downstream` driven against the sink.

XCLIENT is exercised against a real Postfix elsewhere; here the sink speaks XFORWARD only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from harness import LOOPBACK, RecordingSink, free_port, message
from sink_probe import SinkConnections, eventually

from gateway.config import DeliverySettings
from gateway.plugin import ClientInfo
from gateway.relay import Downstream, deliver, reply_from_downstream, xtext
from gateway.verdict import Replies, SmtpReply

CLIENT = ClientInfo(ip="192.0.2.7", port=40123, helo="client.example.net", esmtp=True)
QID = "0A1B2C3D4E5F"
MAIL_CMD = "MAIL alice@example.net"
RCPT_CMD = "RCPT bob@example.com"

# -- xtext (RFC 3461 4) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("client.example.net", "client.example.net"),
        ("[192.0.2.7]", "[192.0.2.7]"),
        ("a+b=c", "a+2Bb+3Dc"),  # the two characters xtext itself uses
        ("two words", "two+20words"),
        ("tab\there", "tab+09here"),
        ("cr\r\nlf", "cr+0D+0Alf"),
        ("\x7f", "+7F"),
        ("jörg", "j+C3+B6rg"),  # UTF-8 bytes, each encoded
        ("bad\udcffbyte", "bad+FFbyte"),  # a surrogate-escaped raw byte stays that byte
        ("", ""),
    ],
)
def test_xtext(value: str, encoded: str) -> None:
    assert xtext(value) == encoded


def test_xtext_output_is_always_safe_ascii() -> None:
    everything = "".join(chr(c) for c in range(256))
    out = xtext(everything)
    assert all(33 <= ord(c) < 127 for c in out)
    assert "=" not in out


# -- reply_from_downstream --------------------------------------------------------------------


def ours(code: int, status: str, text: str) -> SmtpReply:
    return SmtpReply(code, status, f"delivery server: {text}")


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (250, "2.0.0 Ok: queued as ABC", ours(250, "2.0.0", "Ok: queued as ABC")),
        (251, "2.1.5 will forward", SmtpReply(251, "2.1.5", "delivery server: will forward")),
        (550, "5.1.1 User unknown", SmtpReply(550, "5.1.1", "delivery server: User unknown")),
        (450, "4.2.1 Mailbox busy", SmtpReply(450, "4.2.1", "delivery server: Mailbox busy")),
        (554, "5.7.134 three digit detail", ours(554, "5.7.134", "three digit detail")),
        # The enhanced code must agree with the basic code's class, or it is not trusted.
        (550, "4.1.1 mixed up", SmtpReply(550, "5.0.0", "delivery server: 4.1.1 mixed up")),
        (452, "no enhanced code", SmtpReply(452, "4.0.0", "delivery server: no enhanced code")),
        (553, "5.1.8", SmtpReply(553, "5.1.8", "delivery server: ")),  # a code and no text
        (550, "", SmtpReply(550, "5.0.0", "delivery server: ")),
        # A closing server closes its own side; our client's connection stays: 451, not 421.
        (421, "4.3.2 Shutting down", Replies.DOWNSTREAM_UNAVAILABLE),
        (421, "", Replies.DOWNSTREAM_UNAVAILABLE),
        # Nonsense codes are a broken server: retry later, never a positive or a crash.
        (354, "go ahead", Replies.DOWNSTREAM_UNAVAILABLE),
        (334, "", Replies.DOWNSTREAM_UNAVAILABLE),
        (199, "x", Replies.DOWNSTREAM_UNAVAILABLE),
        (600, "x", Replies.DOWNSTREAM_UNAVAILABLE),
        (-1, "x", Replies.DOWNSTREAM_UNAVAILABLE),
    ],
)
def test_reply_from_downstream(code: int, text: str, expected: SmtpReply) -> None:
    assert reply_from_downstream(code, text) == expected


def test_reply_from_downstream_is_one_clean_bounded_line() -> None:
    hostile = "5.7.1 line one\n5.7.1 line two\r\n\x1b[31mred\x00 \u202eevil caf\u00e9 " + "x" * 2000
    reply = reply_from_downstream(550, hostile)
    wire = str(reply)
    assert reply.code == 550
    assert reply.status == "5.7.1"
    assert wire.startswith("550 5.7.1 delivery server: line one 5.7.1 line two")
    assert wire.isascii()
    assert all(c.isprintable() for c in wire)
    assert len(wire) < 520


# -- Downstream against the sink --------------------------------------------------------------


def settings_for(port: int, **changes: float) -> DeliverySettings:
    values: dict[str, float] = {"connect_timeout": 2, "command_timeout": 2, "data_timeout": 2}
    values.update(changes)
    return DeliverySettings(host=LOOPBACK, port=port, **values)  # type: ignore[arg-type]


@pytest.fixture
async def downstream(sink: RecordingSink) -> AsyncIterator[Downstream]:
    relay = Downstream(settings_for(sink.port), "mx.gateway.test")
    try:
        yield relay
    finally:
        relay.abort()


async def one_transaction(downstream: Downstream, msg: bytes) -> list[SmtpReply]:
    replies = [await downstream.begin(CLIENT, QID, "alice@example.net", [])]
    replies.append(await downstream.rcpt("bob@example.com"))
    replies.append(await downstream.data(msg))
    return replies


async def test_transaction_relays_the_bytes_and_forwards_the_client_identity(
    downstream: Downstream, sink: RecordingSink
) -> None:
    original = message(body=b".leading dot\r\nend\r\n")
    replies = await one_transaction(downstream, original)
    assert [r.code for r in replies] == [250, 250, 250]
    assert replies[-1].text == "delivery server: Ok: queued as SINK1"
    [delivered] = sink.delivered
    assert delivered.content == original
    assert delivered.mail_from == "alice@example.net"
    assert delivered.rcpt_tos == ["bob@example.com"]
    assert delivered.xforward == {
        "NAME": "[UNAVAILABLE]",
        "ADDR": "192.0.2.7",
        "PORT": "40123",
        "PROTO": "ESMTP",
        "HELO": "client.example.net",
        "SOURCE": "REMOTE",
        "IDENT": QID,
    }


async def test_xforward_values_are_xtext_and_skipped_when_not_offered(
    sink: RecordingSink,
) -> None:
    odd = ClientInfo(ip="192.0.2.7", port=1, helo="odd host+name=x", esmtp=False)
    relay = Downstream(settings_for(sink.port), "mx.gateway.test")
    try:
        await relay.begin(odd, QID, "alice@example.net", [])
        await relay.rcpt("bob@example.com")
        await relay.data(message())
        assert sink.delivered[0].xforward["HELO"] == "odd+20host+2Bname+3Dx"
        assert sink.delivered[0].xforward["PROTO"] == "SMTP"
        await relay.close()
        sink.behaviour.offer_xforward = False
        await relay.begin(odd, QID, "alice@example.net", [])
        await relay.rcpt("bob@example.com")
        await relay.data(message())
        assert sink.delivered[1].xforward == {}
    finally:
        relay.abort()


async def test_mail_parameters_pass_only_when_the_server_offers_them(
    downstream: Downstream, sink: RecordingSink
) -> None:
    # The sink offers 8BITMIME and SMTPUTF8 but no SIZE (it has no size limit); DSN parameters
    # are never passed (the gateway does not implement DSN end to end).
    options = ["SIZE=1234", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=abc"]
    reply = await downstream.begin(CLIENT, QID, "alice@example.net", options)
    assert reply.code == 250
    await downstream.rcpt("bob@example.com")
    await downstream.data(message())
    assert sink.delivered[0].mail_options == ["BODY=8BITMIME", "SMTPUTF8"]


async def test_smtputf8_without_server_support_is_refused_before_mail(
    downstream: Downstream, sink: RecordingSink
) -> None:
    sink.behaviour.offer_smtputf8 = False
    reply = await downstream.begin(CLIENT, QID, "jörg@example.net", ["SMTPUTF8"])
    assert reply == Replies.SMTPUTF8_UNSUPPORTED
    assert sink.commands == []
    assert await downstream.rcpt("bob@example.com") == Replies.DOWNSTREAM_UNAVAILABLE


async def test_connection_is_reused_with_rset_only_when_a_transaction_is_open(
    downstream: Downstream, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = SinkConnections(sink, monkeypatch)
    assert [r.code for r in await one_transaction(downstream, message())] == [250, 250, 250]
    await downstream.reset()  # nothing open after DATA: no RSET on the wire
    await downstream.begin(CLIENT, QID, "alice@example.net", [])
    await downstream.rcpt("bob@example.com")
    await downstream.reset()  # abandoned (quarantined, refused, client RSET): RSET
    await downstream.begin(CLIENT, QID, "alice@example.net", [])
    await downstream.begin(CLIENT, QID, "alice@example.net", [])  # still open: RSET first
    assert sink.commands == [
        *(MAIL_CMD, RCPT_CMD, "DATA"),
        *(MAIL_CMD, RCPT_CMD, "RSET"),
        *(MAIL_CMD, "RSET", MAIL_CMD),
    ]
    assert len(connections.distinct()) == 1
    assert downstream.connected


async def test_rcpt_and_data_without_a_transaction_send_nothing(
    downstream: Downstream, sink: RecordingSink
) -> None:
    assert await downstream.rcpt("bob@example.com") == Replies.DOWNSTREAM_UNAVAILABLE
    assert await downstream.data(message()) == Replies.DOWNSTREAM_UNAVAILABLE
    await downstream.reset()
    assert sink.commands == []
    assert not downstream.connected


async def test_refused_mail_opens_no_transaction(
    downstream: Downstream, sink: RecordingSink
) -> None:
    sink.behaviour.mail_reply = "553 5.1.8 Bad sender"
    reply = await downstream.begin(CLIENT, QID, "alice@example.net", [])
    assert reply == SmtpReply(553, "5.1.8", "delivery server: Bad sender")
    assert await downstream.rcpt("bob@example.com") == Replies.DOWNSTREAM_UNAVAILABLE
    assert sink.commands == [MAIL_CMD]
    assert downstream.connected  # a refusal is no reason to hang up


async def test_nonsense_reply_to_mail_is_a_tempfail_not_a_positive(
    downstream: Downstream, sink: RecordingSink
) -> None:
    sink.behaviour.mail_reply = "354 go ahead"
    assert await downstream.begin(CLIENT, QID, "alice@example.net", []) == (
        Replies.DOWNSTREAM_UNAVAILABLE
    )
    assert await downstream.data(message()) == Replies.DOWNSTREAM_UNAVAILABLE
    assert sink.delivered == []


@pytest.mark.parametrize("phase", ["MAIL", "RCPT", "DATA"])
async def test_421_closes_the_connection(
    downstream: Downstream, sink: RecordingSink, phase: str
) -> None:
    reply = "421 4.3.2 Shutting down"
    if phase == "MAIL":
        sink.behaviour.mail_reply = reply
    elif phase == "RCPT":
        sink.behaviour.rcpt_replies["bob@example.com"] = reply
    else:
        sink.behaviour.data_reply = reply
    replies = await one_transaction(downstream, message())
    assert Replies.DOWNSTREAM_UNAVAILABLE in replies
    assert all(r.code != 250 for r in replies[len(replies) - 1 :])
    assert not downstream.connected
    assert sink.delivered == []


async def test_closed_port_is_451_441(sink: RecordingSink) -> None:
    relay = Downstream(settings_for(free_port()), "mx.gateway.test")
    assert await relay.begin(CLIENT, QID, "alice@example.net", []) == (
        Replies.DOWNSTREAM_UNAVAILABLE
    )
    assert not relay.connected


async def test_server_that_never_greets_is_451_442_after_connect_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        relay = Downstream(settings_for(port, connect_timeout=0.3), "mx.gateway.test")
        started = time.monotonic()
        reply = await relay.begin(CLIENT, QID, "alice@example.net", [])
        assert reply == Replies.DOWNSTREAM_TIMEOUT
        assert time.monotonic() - started < 1.5
        assert not relay.connected
        assert len(accepted) == 1
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_idle_connection_closed_by_the_server_is_retried_once(
    downstream: Downstream, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = SinkConnections(sink, monkeypatch)
    assert (await one_transaction(downstream, message()))[-1].code == 250
    connections.drop_mail = 1  # the reused connection dies under the next MAIL
    reply = await downstream.begin(CLIENT, QID, "alice@example.net", [])
    assert reply.code == 250
    assert len(connections.distinct()) == 2
    assert (await downstream.rcpt("bob@example.com")).code == 250
    assert (await downstream.data(message())).code == 250
    assert len(sink.delivered) == 2


async def test_no_retry_beyond_once_and_none_on_a_fresh_connection(
    downstream: Downstream, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = SinkConnections(sink, monkeypatch)
    connections.drop_mail = 1
    # A fresh connection that fails is not an idle one gone stale: no retry.
    assert await downstream.begin(CLIENT, QID, "alice@example.net", []) == (
        Replies.DOWNSTREAM_UNAVAILABLE
    )
    assert len(connections.distinct()) == 1
    assert (await one_transaction(downstream, message()))[-1].code == 250
    connections.drop_mail = 2  # the stale one and its replacement both fail
    assert await downstream.begin(CLIENT, QID, "alice@example.net", []) == (
        Replies.DOWNSTREAM_UNAVAILABLE
    )
    assert len(connections.distinct()) == 3
    assert not downstream.connected


async def test_dropped_during_data_is_451_and_disconnected(
    downstream: Downstream, sink: RecordingSink
) -> None:
    sink.behaviour.drop_after_data = True
    replies = await one_transaction(downstream, message())
    assert replies[-1] == Replies.DOWNSTREAM_UNAVAILABLE
    assert not downstream.connected
    sink.behaviour.drop_after_data = False
    assert (await one_transaction(downstream, message()))[-1].code == 250


async def test_data_timeout_is_451_442_and_disconnected(sink: RecordingSink) -> None:
    relay = Downstream(settings_for(sink.port, data_timeout=0.2), "mx.gateway.test")
    sink.behaviour.data_delay = 1.0
    try:
        started = time.monotonic()
        replies = await one_transaction(relay, message())
        assert replies[-1] == Replies.DOWNSTREAM_TIMEOUT
        assert time.monotonic() - started < 0.8
        assert not relay.connected
    finally:
        relay.abort()


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_close_and_abort_release_the_connection(
    downstream: Downstream, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    connections = SinkConnections(sink, monkeypatch)
    await downstream.begin(CLIENT, QID, "alice@example.net", [])
    assert len(connections.still_open()) == 1
    if how == "close":
        await downstream.close()
    else:
        downstream.abort()
    assert not downstream.connected
    await eventually(lambda: not connections.still_open())
    assert sink.commands == [MAIL_CMD]
    assert await downstream.data(message()) == Replies.DOWNSTREAM_UNAVAILABLE


# -- deliver(): one whole transaction (quarantine release) ------------------------------------


async def test_deliver_reports_refused_recipients_and_delivers_to_the_rest(
    sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = SinkConnections(sink, monkeypatch)
    sink.behaviour.rcpt_replies["nobody@example.com"] = "550 5.1.1 User unknown"
    reply, refused = await deliver(
        settings_for(sink.port),
        "mx.gateway.test",
        CLIENT,
        QID,
        "alice@example.net",
        ["nobody@example.com", "bob@example.com"],
        message(),
    )
    assert reply.code == 250
    assert refused == {
        "nobody@example.com": SmtpReply(550, "5.1.1", "delivery server: User unknown")
    }
    assert sink.delivered[0].rcpt_tos == ["bob@example.com"]
    await eventually(lambda: not connections.still_open())


async def test_deliver_with_every_recipient_refused_sends_no_data(
    sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = SinkConnections(sink, monkeypatch)
    sink.behaviour.rcpt_replies["bob@example.com"] = "450 4.2.1 Mailbox busy"
    reply, refused = await deliver(
        settings_for(sink.port),
        "mx.gateway.test",
        CLIENT,
        QID,
        "alice@example.net",
        ["bob@example.com"],
        message(),
    )
    assert reply == SmtpReply(450, "4.2.1", "delivery server: Mailbox busy")
    assert list(refused) == ["bob@example.com"]
    assert sink.commands == [MAIL_CMD, RCPT_CMD, "RSET"]
    await eventually(lambda: not connections.still_open())


async def test_deliver_to_a_closed_port_is_451_441() -> None:
    reply, refused = await deliver(
        settings_for(free_port()),
        "mx.gateway.test",
        CLIENT,
        QID,
        "alice@example.net",
        ["bob@example.com"],
        message(),
    )
    assert reply == Replies.DOWNSTREAM_UNAVAILABLE
    assert refused == {}


def test_received_field_writes_ipv6_address_literals() -> None:
    from gateway.plugin import ClientInfo
    from gateway.trace_fields import received_field

    field = received_field(
        ClientInfo(ip="2001:db8::7", port=1, helo="h.example", esmtp=True),
        "mx.test",
        "ABCDEF123456",
        ["a@example.com"],
    )
    assert field.startswith(b"Received: from h.example ([IPv6:2001:db8::7])")


def test_forged_verdict_fields_are_removed_however_they_are_written() -> None:
    from gateway.header_edit import strip_our_fields

    forged = (
        b"X-Mailgate-Action: relay\r\n"
        b"x-mailgate-score : -100\r\n"
        b"X-MAILGATE-Symbols:\r\n\tLIST_CLIENT_ALLOWED(-10)\r\n"
    )
    rest = b"Subject: hi\r\n\r\nX-Mailgate-Action: in the body stays\r\n"
    stripped, removed = strip_our_fields(forged + rest)
    assert removed == 3
    assert stripped == rest
    assert strip_our_fields(rest) == (rest, 0)
