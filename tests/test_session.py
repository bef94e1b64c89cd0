"""The Session on its own: every refusal path and the delivery rules, without a socket.

A Session is driven event by event (on_connect, on_helo, on_mail, ...) against `MockDelivery`,
whose replies each test scripts, so these tests show what the session decides and what it asks
of the delivery server, and nothing of aiosmtpd. The same behaviour over real sockets is in
test_front, test_limits, test_tls_policy, test_smuggling and test_downstream_faults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from harness import make_settings, message
from reply_ids import without_id

from gateway.app import Gateway, PolicyError
from gateway.config import TlsSettings
from gateway.delivery import DeliveryCall, MockDelivery
from gateway.plugin import TlsInfo
from gateway.session import Session
from gateway.verdict import SmtpReply

PEER = ("192.0.2.7", 40000)
SENDER = "alice@example.net"
RECIPIENT = "bob@example.com"
TLS13 = TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", bits=256)

MakeSession = Callable[..., Awaitable[tuple[Session, MockDelivery]]]


@pytest.fixture
async def make_session(tmp_path: Path) -> AsyncIterator[MakeSession]:
    """A connected, greeted Session over MockDelivery; rules/ files replaced as asked."""
    gateways: list[Gateway] = []

    async def make(
        handler: Callable[[DeliveryCall], SmtpReply | None] | None = None,
        rules: dict[str, str] | None = None,
        ehlo: bool = True,
        **changes: Any,
    ) -> tuple[Session, MockDelivery]:
        settings = make_settings(tmp_path, 1, **changes)
        for name, text in (rules or {}).items():
            (settings.rules_dir / name).write_text(text, encoding="utf-8")
        gateway = Gateway.create(settings)
        gateways.append(gateway)
        delivery = MockDelivery(handler) if handler else MockDelivery()
        session = Session(gateway, delivery)
        assert await session.on_connect(PEER) is None
        if ehlo:
            assert await session.on_helo("client.example.net", esmtp=True) is None
        return session, delivery

    yield make
    for gateway in gateways:
        await gateway.aclose()


# A certificate path is enough for rules that require TLS to load; nothing opens it here.
WITH_CERT = {"tls": TlsSettings(cert_file=Path("cert.pem"), key_file=Path("key.pem"))}


def tls_rules(**require: str) -> dict[str, str]:
    lines = "\n".join(f"{key} = {value}" for key, value in require.items())
    return {"tls.toml": f"[require_tls]\n{lines}\n"}


async def transaction(session: Session, body: bytes | None = None) -> SmtpReply:
    assert (await session.on_mail(SENDER, [])).code == 250
    assert (await session.on_rcpt(RECIPIENT, [])).code == 250
    return await session.on_data(message() if body is None else body)


# -- the 250-only-after-250 rule and reply mapping -------------------------------------------------


async def test_relayed_message_is_250_only_after_the_delivery_servers_250(
    make_session: MakeSession,
) -> None:
    session, delivery = await make_session()
    reply = await transaction(session)
    assert reply.code == 250 and reply.status == "2.0.0"
    assert reply.text.startswith("OK id=") and "(delivery server: Ok: queued)" in reply.text
    assert delivery.commands == [f"MAIL {SENDER}", f"RCPT {RECIPIENT}", "DATA"]
    [sent] = delivery.delivered
    assert sent.startswith(b"Received: from client.example.net") and sent.endswith(message())
    assert session.idle


@pytest.mark.parametrize(
    "answer", [SmtpReply(451, "4.3.0", "delivery server: busy"), SmtpReply(554, "5.7.1", "no")]
)
async def test_a_refusal_of_data_by_the_delivery_server_is_what_the_client_hears(
    make_session: MakeSession, answer: SmtpReply
) -> None:
    def handler(call: DeliveryCall) -> SmtpReply | None:
        return answer if call.command == "DATA" else None

    session, delivery = await make_session(handler)
    # never a 250 the delivery server did not give; its answer, with our id
    assert without_id(str(await transaction(session))) == str(answer)
    assert delivery.delivered == []


async def test_refusal_at_mail_by_the_delivery_server_opens_no_transaction(
    make_session: MakeSession,
) -> None:
    unavailable = SmtpReply(451, "4.4.1", "Delivery server unavailable, try again later")

    def handler(call: DeliveryCall) -> SmtpReply | None:
        return unavailable if call.command == "MAIL" else None

    session, delivery = await make_session(handler)
    assert without_id(str(await session.on_mail(SENDER, []))) == str(unavailable)
    assert session.ctx is None
    assert str(await session.on_rcpt(RECIPIENT, [])) == "503 5.5.1 Error: need MAIL command"
    assert delivery.commands == [f"MAIL {SENDER}"]


async def test_recipient_refused_by_the_delivery_server_is_not_in_the_transaction(
    make_session: MakeSession,
) -> None:
    unknown = SmtpReply(550, "5.1.1", "delivery server: no such user")

    def handler(call: DeliveryCall) -> SmtpReply | None:
        return unknown if call.argument == "nobody@example.com" else None

    session, _ = await make_session(handler)
    assert (await session.on_mail(SENDER, [])).code == 250
    assert without_id(str(await session.on_rcpt("nobody@example.com", []))) == str(unknown)
    assert (await session.on_rcpt(RECIPIENT, [])).code == 250
    assert session.ctx is not None and session.ctx.rcpt_tos == [RECIPIENT]
    assert (await session.on_data(message())).code == 250


async def test_relay_control_and_recipient_limit_never_reach_the_delivery_server(
    make_session: MakeSession,
) -> None:
    session, delivery = await make_session(limits={"max_recipients": 1})
    assert (await session.on_mail(SENDER, [])).code == 250
    assert str(await session.on_rcpt("x@elsewhere.test", [])).startswith("550 5.7.1 Relaying")
    assert (await session.on_rcpt(RECIPIENT, [])).code == 250
    assert str(await session.on_rcpt("carol@example.com", [])) == "452 4.5.3 Too many recipients"
    assert delivery.commands == [f"MAIL {SENDER}", f"RCPT {RECIPIENT}"]


async def test_rset_resets_the_delivery_transaction(make_session: MakeSession) -> None:
    session, delivery = await make_session()
    assert (await session.on_mail(SENDER, [])).code == 250
    assert str(await session.on_rset()) == "250 2.0.0 OK"
    assert session.ctx is None and delivery.commands[-1] == "RSET"
    assert str(await session.on_data(message())) == "503 5.5.1 Error: need MAIL command"


async def test_an_internal_error_while_concluding_is_451_with_the_id(
    make_session: MakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.session

    async def broken(*args: object) -> SmtpReply:
        raise RuntimeError("internal detail")

    session, delivery = await make_session()
    monkeypatch.setattr(gateway.session, "conclude", broken)
    reply = await transaction(session)
    assert reply.code == 451 and reply.status == "4.3.0"
    assert reply.text.startswith("Internal error, try again later (id=")
    assert "internal detail" not in str(reply)
    assert delivery.commands[-1] == "ABORT" and not session.busy


# -- connection limits and shutdown ----------------------------------------------------------------


async def test_connection_limit_per_ip_refuses_the_greeting_and_counts_back(
    make_session: MakeSession,
) -> None:
    session, _ = await make_session(limits={"max_connections_per_ip": 1})
    second = Session(session.gateway, MockDelivery())
    assert str(await second.on_connect(PEER)) == (
        "421 4.7.0 Too many connections from your address"
    )
    session.on_disconnect()
    assert session.gateway.connections == {}
    assert await Session(session.gateway, MockDelivery()).on_connect(PEER) is None


async def test_shutting_down_refuses_mail_and_closes_after_data(make_session: MakeSession) -> None:
    session, delivery = await make_session()
    session.gateway.shutting_down = True
    assert (
        str(await session.on_mail(SENDER, [])) == "421 4.3.2 Service shutting down, try again later"
    )
    assert str(session.after_data()) == "421 4.3.2 Service shutting down, try again later"
    assert delivery.commands == []


# -- TLS requirements: findings that policy decides ------------------------------------------------


async def test_tls_required_for_a_client_network_is_policys_530_until_starttls(
    make_session: MakeSession,
) -> None:
    session, _ = await make_session(
        rules=tls_rules(client_networks='["192.0.2.0/24"]'), ehlo=False, **WITH_CERT
    )
    assert session.tls_required
    assert str(session.starttls_refusal) == "530 5.7.0 Must issue a STARTTLS command first"
    session.on_starttls(TLS13)
    assert not session.tls_required
    assert await session.on_helo("client.example.net", esmtp=True) is None
    assert (await transaction(session)).code == 250


async def test_a_client_outside_the_networks_need_not_use_tls(make_session: MakeSession) -> None:
    session, _ = await make_session(
        rules=tls_rules(client_networks='["198.51.100.0/24"]'), **WITH_CERT
    )
    assert not session.tls_required


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("tempfail", "451 4.7.1 TLS required: use STARTTLS, then try again (id="),
        ("reject", "550 5.7.1 TLS required: use STARTTLS (id="),
    ],
)
async def test_tls_required_for_the_sender_domain_follows_tls_toml_action(
    make_session: MakeSession, action: str, expected: str
) -> None:
    rules = tls_rules(sender_domains='["example.net"]', action=f'"{action}"')
    session, delivery = await make_session(rules=rules, **WITH_CERT)
    assert str(await session.on_mail(SENDER, [])).startswith(expected)
    assert session.ctx is None and delivery.commands == []  # never asked, never inspected
    session.on_starttls(TLS13)
    assert await session.on_helo("client.example.net", esmtp=True) is None
    assert (await transaction(session)).code == 250


async def test_tls_required_for_one_recipient_refuses_only_that_recipient(
    make_session: MakeSession,
) -> None:
    rules = tls_rules(recipient_domains='["secure.example.com"]')
    session, delivery = await make_session(
        rules=rules, relay={"domains": ("example.com", "secure.example.com")}, **WITH_CERT
    )
    assert (await session.on_mail(SENDER, [])).code == 250
    refused = await session.on_rcpt("eve@secure.example.com", [])
    assert str(refused).startswith("451 4.7.1 TLS required: use STARTTLS, then try again (id=")
    assert session.ctx is not None
    assert "SMTP_TLS_REQUIRED_RECIPIENT" not in [f.symbol for f in session.ctx.findings]
    assert (await session.on_rcpt(RECIPIENT, [])).code == 250
    assert (await session.on_data(message())).code == 250
    assert delivery.commands == [f"MAIL {SENDER}", f"RCPT {RECIPIENT}", "DATA"]


async def test_requiretls_without_tls_is_530(make_session: MakeSession) -> None:
    session, delivery = await make_session()
    reply = await session.on_mail(SENDER, ["REQUIRETLS"])
    assert str(reply).startswith(
        "530 5.7.0 Must issue a STARTTLS command first (REQUIRETLS asks for TLS) (id="
    )
    assert delivery.commands == []


async def test_requiretls_over_tls_without_verified_delivery_is_550_5_7_30(
    make_session: MakeSession,
) -> None:
    session, delivery = await make_session()
    session.on_starttls(TLS13)
    assert await session.on_helo("client.example.net", esmtp=True) is None
    assert "REQUIRETLS" not in session.ehlo_keywords(["SIZE 1000", "STARTTLS", "AUTH PLAIN"])
    reply = await session.on_mail(SENDER, ["REQUIRETLS"])
    assert str(reply).startswith("550 5.7.30 REQUIRETLS support required (id=")
    assert delivery.commands == []


async def test_policy_decides_the_front_refusals(make_session: MakeSession, tmp_path: Path) -> None:
    """The reply is the forced action's in rules/actions.toml, not a constant of the code."""
    actions = (Path(__file__).parent.parent / "rules" / "actions.toml").read_text()
    actions = actions.replace(
        'SMTP_REQUIRETLS_WITHOUT_TLS = { action = "reject", reply = "530 5.7.0 Must issue a '
        'STARTTLS command first (REQUIRETLS asks for TLS)" }',
        'SMTP_REQUIRETLS_WITHOUT_TLS = { action = "tempfail", reply = "454 4.7.0 TLS first" }',
    )
    session, _ = await make_session(rules={"actions.toml": actions})
    assert str(await session.on_mail(SENDER, ["REQUIRETLS"])).startswith("454 4.7.0 TLS first")


async def test_the_tls_action_has_one_home(tmp_path: Path) -> None:
    """The two domain symbols take their action from tls.toml; actions.toml may not set it too."""
    settings = make_settings(tmp_path, 1)
    actions = settings.rules_dir / "actions.toml"
    actions.write_text(actions.read_text() + 'SMTP_TLS_REQUIRED_SENDER = "reject"\n')
    with pytest.raises(PolicyError, match=r"is set by require_tls\.action in tls\.toml"):
        Gateway.create(settings)


# -- bare line endings -----------------------------------------------------------------------------

SMUGGLED = message(body=b"Hello\n.\r\nMAIL FROM:<mallory@example.net>\r\n")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (SMUGGLED, "550 5.6.0 Message has bare CR or LF; lines must end with CRLF"),
        (message(body=b"a\r\n\x00.\r\nb\r\n"), "550 5.6.0 Message has a NUL character"),
    ],
)
async def test_bare_line_endings_and_nul_are_refused_by_policy(
    make_session: MakeSession, body: bytes, expected: str
) -> None:
    session, delivery = await make_session()
    reply = await transaction(session, body)
    assert str(reply).startswith(expected) and "(id=" in reply.text
    assert delivery.commands[-1] == "RSET" and delivery.delivered == []


async def test_bare_line_endings_are_repaired_in_normalize_mode(make_session: MakeSession) -> None:
    session, delivery = await make_session(limits={"bare_line_endings": "normalize"})
    assert (await transaction(session, SMUGGLED)).code == 250
    [sent] = delivery.delivered
    assert b"Hello\r\n.\r\nMAIL FROM" in sent and b"\n." not in sent.replace(b"\r\n", b"")


async def test_bare_line_ending_not_forced_by_policy_is_repaired_and_scored(
    make_session: MakeSession,
) -> None:
    """Take the forced line out: the finding is scored, and the message still never relays as
    sent (it is normalized), so no reader downstream sees a second message."""
    actions = (Path(__file__).parent.parent / "rules" / "actions.toml").read_text()
    kept = [line for line in actions.splitlines() if not line.startswith("SMTP_BARE_LINE")]
    session, delivery = await make_session(rules={"actions.toml": "\n".join(kept) + "\n"})
    assert (await transaction(session, SMUGGLED)).code == 250
    [sent] = delivery.delivered
    assert b"Hello\r\n.\r\n" in sent
    assert b"SMTP_BARE_LINE_ENDING(0)" in sent  # X-Mailgate-Symbols: the finding was kept
