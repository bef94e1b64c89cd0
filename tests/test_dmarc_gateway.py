"""DKIM, DMARC and ARC in a running gateway: SMTP client -> gateway (+ loopback DNS) -> downstream.

The default rules/ honour p=reject (550 5.7.1 at end of DATA) and p=quarantine (kept in
quarantine, 250); a DNS timeout is a 4xx, never a pass; admins soften in rules/; a trusted ARC
sealer's chain overrides a failure caused by forwarding.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiosmtplib
import dkim
import pytest
from auth_helpers import (
    RSA1024,
    WEAK_PRIVATE,
    field_values,
    key_zone,
    mail,
    sign,
    start_auth_gateway,
)
from dns_server import DnsTestServer
from harness import GatewayFactory, RecordingSink, RunningGateway

from gateway.plugins.dmarc import DmarcCheck

ZONE = {
    "good.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.good.example": [("TXT", "v=DMARC1; p=reject")],
    "_dmarc.quarantined.example": [("TXT", "v=DMARC1; p=quarantine")],
    "_dmarc.monitor.example": [("TXT", "v=DMARC1; p=none")],
    "_dmarc.half.example": [("TXT", "v=DMARC1; p=reject; pct=50")],
    "_dmarc.slow.example": ["TIMEOUT"],
    "attack.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "forward.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "client.test.example": [("A", "127.0.0.1")],
}


@pytest.fixture
async def auth_gw(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> RunningGateway:
    load_zones(dns_server)
    return await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)


def load_zones(dns_server: DnsTestServer) -> None:
    keys = key_zone()
    dns_server.load(keys)
    dns_server.load(ZONE)
    # The list's ARC key: the vectors' RSA 1024 key, published for forward.example too.
    dns_server.load({"rsa1024._domainkey.forward.example": keys["rsa1024._domainkey.good.example"]})


async def send(
    gw: RunningGateway, content: bytes, sender: str = "alice@good.example"
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    return await aiosmtplib.send(
        content,
        sender=sender,
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
        local_hostname="client.test.example",
    )


def symbols(content: bytes) -> str:
    [line] = field_values(content, "X-Mailgate-Symbols")
    return line


async def test_aligned_dkim_and_spf_pass(auth_gw: RunningGateway, sink: RecordingSink) -> None:
    await send(auth_gw, sign(mail()))
    [delivered] = await sink.arrived(1)
    assert "DMARC_PASS" in symbols(delivered.content)
    [ar] = field_values(delivered.content, "Authentication-Results")
    assert ar.startswith("mx.gateway.test;")
    assert "dmarc=pass (p=reject) header.from=good.example" in ar


async def test_p_reject_is_a_550_at_end_of_data(
    auth_gw: RunningGateway, sink: RecordingSink
) -> None:
    spoof = sign(mail(), domain="attack.example", selector="rsa2048")  # key not published there
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(auth_gw, spoof, sender="bounce@attack.example")
    assert refused.value.code == 550
    assert refused.value.message.startswith(
        "5.7.1 Unauthenticated email from this domain is not accepted due to its DMARC policy"
    )
    assert sink.delivered == []


async def test_p_quarantine_keeps_the_message_with_its_results(
    auth_gw: RunningGateway, sink: RecordingSink
) -> None:
    _, reply = await send(
        auth_gw, mail(sender="ceo@quarantined.example"), sender="bounce@attack.example"
    )
    match = re.search(r"Message accepted \(id=([0-9A-F]{12})\)", reply)
    assert match, reply
    raw, meta = auth_gw.gateway.store.get(match.group(1))
    assert meta["action"] == "quarantine"
    assert "DMARC_QUARANTINE" in {f["symbol"] for f in meta["findings"]}
    [ar] = field_values(raw, "Authentication-Results")
    assert ar.startswith("mx.gateway.test;")
    assert "dmarc=fail (p=quarantine dis=quarantine) header.from=quarantined.example" in ar
    assert sink.delivered == []


async def test_p_none_failure_is_relayed_and_scored(
    auth_gw: RunningGateway, sink: RecordingSink
) -> None:
    await send(auth_gw, mail(sender="a@monitor.example"), sender="bounce@attack.example")
    [delivered] = await sink.arrived(1)
    assert "DMARC_NONE_POLICY(1)" in symbols(delivered.content)
    assert "DMARC_AUTH_UNALIGNED" in symbols(delivered.content)


async def test_pct_sampling_is_injected(auth_gw: RunningGateway, sink: RecordingSink) -> None:
    [plugin] = [p for p in auth_gw.gateway.chain.plugins if p.name == "dmarc"]
    assert isinstance(plugin, DmarcCheck)
    plugin.evaluator.random = lambda: 0.75  # outside pct=50: reject lowered to quarantine
    _, reply = await send(auth_gw, mail(sender="a@half.example"), sender="bounce@attack.example")
    assert "Message accepted" in reply
    plugin.evaluator.random = lambda: 0.25  # inside pct=50: reject
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(auth_gw, mail(sender="a@half.example"), sender="bounce@attack.example")
    assert refused.value.code == 550


async def test_dmarc_dns_timeout_is_a_4xx_never_a_pass(
    auth_gw: RunningGateway, sink: RecordingSink
) -> None:
    with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
        await send(auth_gw, mail(sender="a@slow.example"), sender="bounce@attack.example")
    assert deferred.value.code == 451
    assert deferred.value.message.startswith("4.7.1 DMARC policy could not be checked")
    assert sink.delivered == []


async def test_dkim_key_timeout_is_a_4xx_never_a_pass(
    auth_gw: RunningGateway, sink: RecordingSink
) -> None:
    with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
        await send(auth_gw, sign(mail(), selector="slow"))
    assert deferred.value.code == 451
    assert deferred.value.message.startswith("4.7.1 DKIM key lookup failed temporarily")
    assert sink.delivered == []


@pytest.mark.parametrize(
    "from_field",
    [
        b"From: <first@attack.example>\r\nFrom: <admin@good.example>\r\n",  # A8
        b"From: <first@attack.example>\r\nFrom : <admin@good.example>\r\n",  # A10
        b"From\r\n : <first@attack.example>\r\nFrom: <admin@good.example>\r\n",  # A11
        b"From: <first@attack.example>, <admin@good.example>\r\n",  # A14
        b"From: <@attack.example,@any.example:admin@good.example>\r\n",  # A16
        b"From: <any@attack.example>admin@good.example\r\n",  # A19
    ],
)
async def test_espoofer_from_tricks_are_refused(
    auth_gw: RunningGateway, sink: RecordingSink, from_field: bytes
) -> None:
    """The attacker passes SPF and DKIM for attack.example; good.example's p=reject still bites."""
    spoof = mail(from_field=from_field)
    if not from_field.startswith(b"From\r\n"):  # dkimpy cannot sign a folded field name
        spoof = sign(spoof, domain="attack.example", selector="rsa1024", key=RSA1024)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(auth_gw, spoof, sender="bounce@attack.example")
    assert refused.value.code == 550
    assert sink.delivered == []


async def test_admins_can_soften_reject_to_quarantine(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> None:
    load_zones(dns_server)
    gw = await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)
    actions = gw.settings.rules_dir / "actions.toml"
    text = actions.read_text()
    text = re.sub(r"(?m)^DMARC_REJECT = .*$", 'DMARC_REJECT = "quarantine"', text)
    actions.write_text(text)
    assert gw.gateway.reload_rules()
    _, reply = await send(gw, mail(), sender="bounce@attack.example")
    assert "Message accepted" in reply


# -- ARC: a trusted forwarder's chain overrides a failure caused by forwarding ---------------


def forwarded_by_list(sealer: str = "forward.example") -> bytes:
    """good.example signs; the list rewrites the Subject (DKIM breaks), records what it saw in
    Authentication-Results, and ARC-seals the result."""
    original = sign(mail())
    listed = original.replace(b"Subject: lunch", b"Subject: [team] lunch")
    ar = (
        f"Authentication-Results: lists.{sealer}; dkim=pass header.d=good.example;"
        f" spf=pass smtp.mailfrom=alice@good.example; dmarc=pass header.from=good.example\r\n"
    ).encode()
    message = ar + listed
    arc_set = dkim.arc_sign(
        message,
        b"rsa1024",
        sealer.encode(),
        RSA1024,
        f"lists.{sealer}".encode(),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return b"".join(arc_set) + listed


async def test_untrusted_arc_chain_does_not_override(
    auth_gw: RunningGateway, sink: RecordingSink
) -> None:
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(auth_gw, forwarded_by_list(), sender="list-bounces@forward.example")
    assert refused.value.code == 550


async def test_trusted_arc_sealer_overrides_dmarc_failure(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> None:
    load_zones(dns_server)
    gw = await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)
    trust_forwarder(gw)
    await send(gw, forwarded_by_list(), sender="list-bounces@forward.example")
    [delivered] = await sink.arrived(1)
    found = symbols(delivered.content)
    assert "DMARC_ARC_OVERRIDE" in found and "DMARC_REJECT" not in found
    assert "ARC_PASS" in found and "ARC_TRUSTED_SEALER" in found
    [ar] = field_values(delivered.content, "Authentication-Results")
    assert "arc=pass" in ar and "arc override by forward.example" in ar


@pytest.mark.parametrize(("trusted", "code"), [(True, 451), (False, 550)])
async def test_arc_key_timeout(
    tmp_path: Path,
    sink: RecordingSink,
    dns_server: DnsTestServer,
    start_gateway: GatewayFactory,
    trusted: bool,
    code: int,
) -> None:
    """A trusted sealer's chain that cannot be checked defers (it might override); an untrusted
    one changes nothing, so p=reject still rejects."""
    load_zones(dns_server)
    gw = await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)
    if trusted:
        trust_forwarder(gw)
    message = forwarded_by_list()
    dns_server.timeout("rsa1024._domainkey.forward.example")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(gw, message, sender="list-bounces@forward.example")
    assert refused.value.code == code
    assert sink.delivered == []


def trust_forwarder(gw: RunningGateway) -> None:
    auth = gw.settings.rules_dir / "auth.toml"
    auth.write_text(
        auth.read_text().replace("trusted_sealers = []", 'trusted_sealers = ["forward.example"]')
    )
    assert gw.gateway.reload_rules()


async def test_l_tag_with_appended_content_gets_no_dmarc_credit(
    auth_gw: RunningGateway, sink: RecordingSink
) -> None:
    """A body-length signature still verifies after content is appended, but gives no credit."""
    signed = sign(mail(body=b"See you at noon.\r\n"), length=True)
    forged = signed + b"PS: wire the money to account 666 today.\r\n"
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(auth_gw, forged, sender="bounce@attack.example")
    assert refused.value.code == 550  # good.example's p=reject: no aligned credit left


async def test_weak_key_gets_no_dmarc_credit(auth_gw: RunningGateway, sink: RecordingSink) -> None:
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(
            auth_gw, sign(mail(), selector="weak", key=WEAK_PRIVATE), sender="x@attack.example"
        )
    assert refused.value.code == 550
