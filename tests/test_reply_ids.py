"""Every refusal the front sends names an id, and the log has a line with that id and why.

Each path is driven over a real socket against the real gateway and a real delivery server
(tests/harness.py): the id at the end of the reply must be the transaction's queue id after MAIL
and the session's id before it, and a log line must carry that same id. `test_every_refusal_
constant_is_driven_here_or_named_elsewhere` fails when a new reply constant appears that no
test here drives, so the next one cannot slip by without an id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import GatewayFactory, RecordingSink, RunningGateway, free_port, message
from reply_ids import reply_id, without_id
from test_smuggling import RECIPIENT, SENDER, Wire

from gateway import front_replies
from gateway.relay import Downstream
from gateway.session import ERROR_LIMIT
from gateway.tls import TlsReplies
from gateway.verdict import Replies, SmtpReply


@dataclass
class Run:
    """What a scenario has at hand: a started gateway, its delivery server, a way to start
    another with other settings, and the folder for its rules."""

    gw: RunningGateway
    sink: RecordingSink
    start: GatewayFactory
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    wires: list[Wire] = field(default_factory=list)

    async def connect(self, gw: RunningGateway | None = None) -> Wire:
        """A raw client connection, closed when the test ends."""
        wire = await Wire.connect(gw or self.gw)
        self.wires.append(wire)
        return wire


async def _ehlo(run: Run, gw: RunningGateway | None = None) -> Wire:
    wire = await run.connect(gw)
    assert wire.greeting.startswith("220 ")
    assert (await wire.command("EHLO client.example.net")).startswith("250")
    return wire


async def _in_transaction(run: Run, gw: RunningGateway | None = None) -> Wire:
    wire = await _ehlo(run, gw)
    assert (await wire.command(f"MAIL FROM:<{SENDER}>")).startswith("250 2.1.0")
    return wire


async def _data(wire: Wire, content: bytes) -> str:
    assert (await wire.command(f"RCPT TO:<{RECIPIENT}>")).startswith("250 2.1.5")
    assert (await wire.command("DATA")).startswith("354")
    return await wire.command(content + b"\r\n.")


# Each scenario: (the reply constant or a name, whether the id is a queue id, the driver).
Scenario = Callable[[Run], Awaitable[str]]


async def relay_denied(run: Run) -> str:
    return await (await _in_transaction(run)).command("RCPT TO:<x@elsewhere.example>")


async def routing_characters(run: Run) -> str:
    return await (await _in_transaction(run)).command("RCPT TO:<a%b@example.com>")


async def delivery_server_refuses_rcpt(run: Run) -> str:
    run.sink.behaviour.rcpt_replies[RECIPIENT] = "550 5.1.1 No such user"
    return await (await _in_transaction(run)).command(f"RCPT TO:<{RECIPIENT}>")


async def delivery_server_refuses_mail(run: Run) -> str:
    run.sink.behaviour.mail_reply = "451 4.7.1 greylisted"
    return await (await _ehlo(run)).command(f"MAIL FROM:<{SENDER}>")


async def delivery_server_refuses_data(run: Run) -> str:
    run.sink.behaviour.data_reply = "554 5.7.1 content refused"
    return await _data(await _in_transaction(run), message())


async def delivery_server_down(run: Run) -> str:
    gw = await run.start(delivery={"port": free_port()})
    return await (await _ehlo(run, gw)).command(f"MAIL FROM:<{SENDER}>")


async def delivery_server_times_out(run: Run) -> str:
    run.sink.behaviour.data_delay = 4.0  # the harness gives DATA 2 s
    return await _data(await _in_transaction(run), message())


async def no_smtputf8_downstream(run: Run) -> str:
    run.sink.behaviour.offer_smtputf8 = False
    return await (await _ehlo(run)).command(f"MAIL FROM:<{SENDER}> SMTPUTF8")


async def too_many_recipients(run: Run) -> str:
    gw = await run.start(limits={"max_recipients": 1})
    wire = await _in_transaction(run, gw)
    assert (await wire.command(f"RCPT TO:<{RECIPIENT}>")).startswith("250")
    return await wire.command("RCPT TO:<carol@example.com>")


async def need_mail(run: Run) -> str:
    return await (await _ehlo(run)).command(f"RCPT TO:<{RECIPIENT}>")


async def auth(run: Run) -> str:
    return await (await _ehlo(run)).command("AUTH PLAIN AGFsaWNlAHNlY3JldA==")


async def control_character(run: Run) -> str:
    return await (await _ehlo(run)).command(b"MAIL FROM:<a\x01b@example.net>")


async def bad_parameter(run: Run) -> str:
    return await (await _ehlo(run)).command(f"MAIL FROM:<{SENDER}> SIZE=\u00b2".encode())


async def unclosed_address(run: Run) -> str:
    return await (await _ehlo(run)).command("MAIL FROM:<a@example.net")


async def invalid_utf8(run: Run) -> str:
    return await (await _ehlo(run)).command(b"MAIL FROM:<\xff@example.net>")


async def needs_smtputf8(run: Run) -> str:
    return await (await _ehlo(run)).command("MAIL FROM:<jörg@example.net>".encode())


async def no_postmaster_domain(run: Run) -> str:
    gw = await run.start(relay={"domains": (".sub.example.org",)})
    return await (await _in_transaction(run, gw)).command("RCPT TO:<postmaster>")


async def too_many_errors(run: Run) -> str:
    wire = await _ehlo(run)
    for _ in range(ERROR_LIMIT - 1):
        assert (await wire.command(f"RCPT TO:<{RECIPIENT}>")).startswith("503 ")
    await wire.send(f"RCPT TO:<{RECIPIENT}>\r\n".encode())
    replies = await wire.replies_until_closed()
    assert len(replies) == 2 and replies[0].startswith("503 "), replies
    return replies[1]


async def message_too_big(run: Run) -> str:
    gw = await run.start(limits={"max_message_size": 2000})
    return await _data(await _in_transaction(run, gw), message(body=b"x" * 70 * 40 + b"\r\n"))


async def header_too_big(run: Run) -> str:
    gw = await run.start(limits={"max_header_size": 1024})
    return await _data(
        await _in_transaction(run, gw), message(extra=b"X-Big: " + b"y" * 2000 + b"\r\n")
    )


async def line_too_long(run: Run) -> str:
    gw = await run.start(limits={"max_line_length": 1000})
    return await _data(await _in_transaction(run, gw), message(body=b"z" * 2000 + b"\r\n"))


async def too_many_connections(run: Run) -> str:
    gw = await run.start(limits={"max_connections_per_ip": 1})
    await run.connect(gw)
    return (await run.connect(gw)).greeting


async def shutting_down(run: Run) -> str:
    wire = await _ehlo(run)
    stopping = asyncio.create_task(run.gw.server.stop(grace=5))
    [reply] = await wire.replies_until_closed()
    await stopping
    return reply


async def internal_error(run: Run) -> str:
    async def broken(self: Downstream, *args: object) -> SmtpReply:
        raise RuntimeError("s3cret")

    run.monkeypatch.setattr(Downstream, "begin", broken)
    return await (await _ehlo(run)).command(f"MAIL FROM:<{SENDER}>")


def _lists(run: Run, client_ip: str = "", sender: str = "") -> None:
    """rules/lists.toml for the next gateway started (the running one has read its rules)."""
    lists = f"[client_ip]\nallow = []\nblock = [{client_ip}]\n[sender]\nallow = []\n"
    (run.tmp_path / "rules" / "lists.toml").write_text(lists + f"block = [{sender}]\n")


async def policy_refuses_sender(run: Run) -> str:
    _lists(run, sender=f'"{SENDER}"')
    gw = await run.start()
    return await (await _ehlo(run, gw)).command(f"MAIL FROM:<{SENDER}>")


async def policy_refuses_client(run: Run) -> str:
    _lists(run, client_ip='"127.0.0.0/8"')
    gw = await run.start()
    return (await run.connect(gw)).greeting


async def unknown_command(run: Run) -> str:
    return await (await _ehlo(run)).command("XYZZY")


# name -> (is the id the queue id, driver); the name of a reply constant where there is one.
SCENARIOS: dict[str, tuple[bool, Scenario]] = {
    "RELAY_DENIED": (True, relay_denied),
    "BAD_RECIPIENT_SYNTAX": (True, routing_characters),
    "delivery server 5xx at RCPT": (True, delivery_server_refuses_rcpt),
    "delivery server 4xx at MAIL": (True, delivery_server_refuses_mail),
    "delivery server 5xx at DATA": (True, delivery_server_refuses_data),
    "DOWNSTREAM_UNAVAILABLE": (True, delivery_server_down),
    "DOWNSTREAM_TIMEOUT": (True, delivery_server_times_out),
    "SMTPUTF8_UNSUPPORTED": (True, no_smtputf8_downstream),
    "TOO_MANY_RECIPIENTS": (True, too_many_recipients),
    "NEED_MAIL": (False, need_mail),
    "AUTH_NOT_ENABLED": (False, auth),
    "CONTROL_CHARACTER": (False, control_character),
    "BAD_PARAMETER": (False, bad_parameter),
    "UNCLOSED_ADDRESS": (False, unclosed_address),
    "INVALID_UTF8": (False, invalid_utf8),
    "NEEDS_SMTPUTF8": (False, needs_smtputf8),
    "NO_POSTMASTER_DOMAIN": (True, no_postmaster_domain),
    "TOO_MANY_ERRORS": (False, too_many_errors),
    "MESSAGE_TOO_BIG": (True, message_too_big),
    "HEADER_TOO_BIG": (True, header_too_big),
    "LINE_TOO_LONG": (True, line_too_long),
    "TOO_MANY_CONNECTIONS": (False, too_many_connections),
    "SHUTTING_DOWN": (False, shutting_down),
    "INTERNAL_ERROR": (False, internal_error),
    "policy refusal at MAIL": (True, policy_refuses_sender),
    "policy refusal at CONNECT": (False, policy_refuses_client),
    "aiosmtpd's own 500": (False, unknown_command),
}

# Reply constants not driven here, each with the test that drives its path. They are sent by
# the same code as a driven one (the session's refusal with its id, or the adapter's stamp).
ELSEWHERE = {
    "POLICY_REJECT": "a verdict at DATA: transaction._with_id, as delivery server 5xx at DATA",
    "TEMPFAIL": "a verdict at DATA: test_ladder.py",
    "QUARANTINE_FAILED": "the store failing: test_quarantine_faults.py",
    "DATA_AFTER_REFUSAL": "stamped by the adapter's _close_with, as TOO_MANY_ERRORS",
    "TLS_ALREADY_ACTIVE": "inside TLS: test_tls_front.py; the adapter's push, as CONTROL_CHARACTER",
    "REQUIRETLS_UNSUPPORTED": "verified TLS downstream: test_tls_delivery.py; as 4xx at MAIL",
    "DOWNSTREAM_NO_STARTTLS": "TLS downstream: test_tls_delivery.py; as DOWNSTREAM_UNAVAILABLE",
    "DOWNSTREAM_TLS_FAILED": "TLS downstream: test_tls_delivery.py; as DOWNSTREAM_UNAVAILABLE",
    "DOWNSTREAM_NOT_VERIFIED": "TLS downstream: test_tls_delivery.py; as DOWNSTREAM_UNAVAILABLE",
}


def _refusal_constants() -> set[str]:
    found = set()
    for holder in (Replies, TlsReplies, front_replies):
        for name, value in vars(holder).items():
            if isinstance(value, SmtpReply) and value.code >= 400:
                found.add(name)
    return found


def test_every_refusal_constant_is_driven_here_or_named_elsewhere() -> None:
    constants = _refusal_constants()
    missing = constants - set(SCENARIOS) - set(ELSEWHERE)
    assert missing == set(), f"drive these over SMTP in SCENARIOS: {sorted(missing)}"
    assert set(ELSEWHERE) <= constants  # no stale names


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_every_refusal_names_the_id_its_log_line_carries(
    name: str,
    gw: RunningGateway,
    sink: RecordingSink,
    start_gateway: GatewayFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    queue_id, scenario = SCENARIOS[name]
    run = Run(gw, sink, start_gateway, tmp_path, monkeypatch)
    try:
        reply = await scenario(run)
    finally:
        for wire in run.wires:
            await wire.close()
    assert reply[:1] in ("4", "5"), reply
    if name in vars(Replies) or name in vars(front_replies):
        constant = getattr(Replies, name, None) or getattr(front_replies, name)
        assert without_id(reply).startswith(f"{constant.code} {constant.status}"), reply
    ident = reply_id(reply)
    key = "qid" if queue_id else "session"
    lines = [r.getMessage() for r in caplog.records if f"{key}={ident}" in r.getMessage()]
    assert lines, f"no log line with {key}={ident} for {reply!r}"
    # The reason is in that line: the reply given (escaped), and the verdict if one made it.
    assert any(f'reply="{reply[:9]}' in line for line in lines), (reply, lines)
