"""The spf plugin in a running gateway: SMTP client -> gateway (+ loopback DNS) -> downstream."""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
from pathlib import Path

import aiosmtplib
import pytest
from dns_server import DnsTestServer
from harness import REPO, GatewayFactory, RecordingSink, RunningGateway, make_settings, message

from gateway.auth.spf import SpfIdentity, SpfResult, SpfVerdict
from gateway.config import DnsSettings, PluginSettings, load_settings
from gateway.dns import Resolver
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins import builtin_registry
from gateway.plugins.spf import SpfCheck
from gateway.policy import load_rules

ORDER = ("lists", "headers", "limits", "spf")
ZONE = {
    "good.example": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")],
    "bad.example": [("TXT", "v=spf1 ip4:192.0.2.1 -all")],
    "client.good.example": [("TXT", "v=spf1 a -all"), ("A", "127.0.0.1")],
    "slow.example": ["TIMEOUT"],
}


@pytest.fixture
async def spf_gw(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> RunningGateway:
    dns_server.load(ZONE)
    settings = make_settings(tmp_path, sink.port, plugins=PluginSettings(order=ORDER, timeout=5))
    dns = DnsSettings(nameservers=(dns_server.host,), port=dns_server.port, timeout=0.5)
    running: RunningGateway = await start_gateway(settings=dataclasses.replace(settings, dns=dns))
    return running


async def send(
    gw: RunningGateway, sender: str, helo: str = "client.good.example"
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    return await aiosmtplib.send(
        message(sender=sender),
        sender=sender,
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
        start_tls=False,
        local_hostname=helo,
    )


def symbols_of(content: bytes) -> str:
    head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").decode()
    [line] = [h for h in head.split("\r\n") if h.startswith("X-Mailgate-Symbols:")]
    return line


async def test_spf_pass_is_relayed_with_its_symbols(
    spf_gw: RunningGateway, sink: RecordingSink
) -> None:
    await send(spf_gw, "alice@good.example")
    [delivered] = await sink.arrived(1)
    symbols = symbols_of(delivered.content)
    assert "SPF_PASS(0)" in symbols and "SPF_HELO_PASS(0)" in symbols


async def test_spf_fail_is_scored_not_forced(spf_gw: RunningGateway, sink: RecordingSink) -> None:
    await send(spf_gw, "alice@bad.example")
    [delivered] = await sink.arrived(1)
    assert "SPF_FAIL(2)" in symbols_of(delivered.content)


async def test_dns_timeout_is_a_4xx_at_mail_never_a_pass(
    spf_gw: RunningGateway, sink: RecordingSink
) -> None:
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await send(spf_gw, "alice@slow.example")
    assert refused.value.code == 451
    assert refused.value.message.startswith("4.7.24 SPF check failed temporarily")
    assert not any(c.startswith("MAIL") for c in sink.commands)
    assert sink.delivered == []


async def test_dns_servfail_is_a_4xx_at_mail(
    spf_gw: RunningGateway, sink: RecordingSink, dns_server: DnsTestServer
) -> None:
    dns_server.servfail("good.example", "TXT")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await send(spf_gw, "alice@good.example")
    assert refused.value.code == 451


async def test_null_sender_is_checked_as_postmaster_at_helo(
    spf_gw: RunningGateway, sink: RecordingSink
) -> None:
    def bounce() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP(spf_gw.host, spf_gw.port, local_hostname="client.good.example") as smtp:
            return smtp.sendmail("", ["bob@example.com"], message())

    assert await asyncio.to_thread(bounce) == {}
    [delivered] = await sink.arrived(1)
    symbols = symbols_of(delivered.content)
    assert "SPF_PASS" in symbols and "SPF_HELO_" not in symbols


async def test_invalid_mail_from_domain_is_a_finding_not_a_lookup(
    spf_gw: RunningGateway, sink: RecordingSink, dns_server: DnsTestServer
) -> None:
    await send(spf_gw, "alice@localhost", helo="[127.0.0.1]")
    [delivered] = await sink.arrived(1)
    symbols = symbols_of(delivered.content)
    assert "SPF_BAD_MAILFROM(1.5)" in symbols and "SPF_NONE(0)" in symbols
    assert "SPF_BAD_HELO" not in symbols  # an address literal is a legal HELO
    assert dns_server.queries == []


async def test_plugin_error_defers_the_message(
    spf_gw: RunningGateway, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    [plugin] = [p for p in spf_gw.gateway.chain.plugins if p.name == "spf"]
    assert isinstance(plugin, SpfCheck)

    async def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(plugin.evaluator, "check", broken)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await send(spf_gw, "alice@good.example")
    assert refused.value.code == 451


# -- the plugin alone ---------------------------------------------------------------------------


async def test_result_is_a_typed_field_for_dmarc(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(ZONE)
    settings = load_settings(None)
    plugin = SpfCheck(Services(settings, dns_resolver))
    ctx = MessageContext(
        client=ClientInfo(ip="127.0.0.1", port=25, helo="client.good.example"),
        rules=load_rules(REPO / "rules"),
        settings=settings,
        mail_from="alice@bad.example",
    )
    findings = await plugin.check(Phase.MAIL, ctx)
    assert [f.symbol for f in findings] == ["SPF_FAIL", "SPF_HELO_PASS"]
    spf = ctx.results.get(SpfResult)
    assert spf is not None and not spf.null_sender
    assert spf.mailfrom.identity is SpfIdentity.MAILFROM
    assert (spf.mailfrom.result, spf.mailfrom.domain) == (SpfVerdict.FAIL, "bad.example")
    assert spf.helo is not None and spf.helo.result is SpfVerdict.PASS


@pytest.mark.parametrize(
    ("helo", "bad_helo"),
    [("localhost", True), ("[127.0.0.1]", False), ("[IPv6:::1]", False), ("[nonsense]", True)],
)
async def test_bad_helo(
    dns_server: DnsTestServer, dns_resolver: Resolver, helo: str, bad_helo: bool
) -> None:
    dns_server.load(ZONE)
    settings = load_settings(None)
    plugin = SpfCheck(Services(settings, dns_resolver))
    ctx = MessageContext(
        client=ClientInfo(ip="127.0.0.1", port=25, helo=helo),
        rules=load_rules(REPO / "rules"),
        settings=settings,
        mail_from="alice@good.example",
    )
    symbols = [f.symbol for f in await plugin.check(Phase.MAIL, ctx)]
    assert symbols[0] == "SPF_PASS"
    assert ("SPF_BAD_HELO" in symbols) is bad_helo


def test_shipped_rules_score_every_spf_symbol() -> None:
    registry = builtin_registry()
    assert registry.check_policy(ORDER, load_rules(REPO / "rules")) == []


def test_spf_is_in_the_default_order() -> None:
    """On by default: without [dns] nameservers the resolver is the system's (resolv.conf)."""
    assert "spf" in PluginSettings().order
    assert "spf" in load_settings(REPO / "config" / "gateway.toml").plugins.order
