"""DMARC for the identity a reader may show when From names no one: Sender and Resent-From.

A From field with no address, a group, several addresses or an unparseable value gives DMARC
no author domain (or only the attacker's); many readers then show Sender ("on behalf of") or
Resent-From instead. The attacker passes SPF and DKIM for attack.example; bank.example publishes
p=reject on the loopback DNS server. These messages must never be relayed on a score margin:
DMARC is applied to the Sender and Resent-From domains too, and the forced action follows.
A well-formed From keeps DMARC on From alone (RFC 7489), whatever Sender says.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiosmtplib
import pytest
from auth_helpers import RSA1024, field_values, key_zone, mail, sign, start_auth_gateway
from dns_server import DnsTestServer
from harness import GatewayFactory, RecordingSink, RunningGateway

from gateway.quarantine.model import NotFound

ZONE = {
    "_dmarc.bank.example": [("TXT", "v=DMARC1; p=reject")],
    "_dmarc.branch.example": [("TXT", "v=DMARC1; p=quarantine")],
    "_dmarc.good.example": [("TXT", "v=DMARC1; p=reject")],
    "good.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "attack.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "client.test.example": [("A", "127.0.0.1")],
}

ODD_FROMS = {
    "no-address": b"From: Bank Security Team\r\n",
    "empty": b"From:\r\n",
    "empty-angle": b"From: Bank Security <>\r\n",
    "group": b"From: Bank Security:;\r\n",
    "group-attacker": b"From: Bank Security: <x@attack.example>;\r\n",
    "several": b"From: <a@attack.example>, <b@attack.example>\r\n",
    "unparseable": b'From: "Bank Security <<@>>\r\n',
    "missing": b"",
}
VICTIM_FIELDS = {
    "sender": b"Sender: Bank Security <security@bank.example>\r\n",
    "resent-from": b"Resent-From: security@bank.example\r\n",
    "resent-sender": b"Resent-Sender: <security@bank.example>\r\n",
}


@pytest.fixture
async def gw(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> RunningGateway:
    dns_server.load(key_zone())
    dns_server.load(
        {"rsa1024._domainkey.attack.example": key_zone()["rsa1024._domainkey.good.example"]}
    )
    dns_server.load(ZONE)
    return await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)


async def outcome(
    gw: RunningGateway, sink: RecordingSink, content: bytes, sender: str
) -> tuple[str, set[str]]:
    """(action, symbols) the gateway decided for `content`."""
    action, symbols, _ = await decided(gw, sink, content, sender)
    return action, symbols


async def decided(
    gw: RunningGateway, sink: RecordingSink, content: bytes, sender: str
) -> tuple[str, set[str], bytes]:
    """(action, symbols, the message as relayed or quarantined) for `content`."""
    try:
        _, reply = await aiosmtplib.send(
            content,
            sender=sender,
            recipients=["bob@example.com"],
            hostname=gw.host,
            port=gw.port,
            local_hostname="client.test.example",
        )
    except aiosmtplib.SMTPDataError as exc:
        return f"{exc.code}", set(), b""
    match = re.search(r"id=([0-9A-F]{12})", reply)
    assert match, reply
    try:
        raw, meta = gw.gateway.store.get(match.group(1))
    except NotFound:
        [delivered] = await sink.arrived(1)
        sink.delivered.clear()
        [line] = field_values(delivered.content, "X-Mailgate-Symbols")
        [action] = field_values(delivered.content, "X-Mailgate-Action")
        return action, {item.split("(")[0] for item in line.split()}, delivered.content
    return meta["action"], {f["symbol"] for f in meta["findings"]}, raw


def spoof(from_field: bytes, victim: bytes) -> bytes:
    message = mail(from_field=from_field, extra=victim)
    if not from_field:  # dkimpy will not sign a message without From
        return message
    return sign(message, domain="attack.example", selector="rsa1024", key=RSA1024)


@pytest.mark.parametrize("victim", list(VICTIM_FIELDS))
@pytest.mark.parametrize("odd", list(ODD_FROMS))
async def test_victim_in_sender_behind_an_odd_from_is_refused(
    gw: RunningGateway, sink: RecordingSink, odd: str, victim: str
) -> None:
    content = spoof(ODD_FROMS[odd], VICTIM_FIELDS[victim])
    action, symbols = await outcome(gw, sink, content, "bounce@attack.example")
    assert action == "550", (action, sorted(symbols))
    assert sink.delivered == []


async def test_well_formed_from_is_evaluated_alone(gw: RunningGateway, sink: RecordingSink) -> None:
    """RFC 7489: DMARC is about From. A list or an "on behalf of" service puts its own address in
    Sender; with a well-formed From, Sender's domain is not evaluated."""
    content = spoof(b"From: Alice <alice@attack.example>\r\n", VICTIM_FIELDS["sender"])
    action, symbols = await outcome(gw, sink, content, "bounce@attack.example")
    assert action == "relay" and "DMARC_REJECT" not in symbols
    assert "DMARC_SENDER_EVALUATED" not in symbols


async def test_authenticated_sender_behind_an_odd_from_passes(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    """A newsletter with a group From whose Sender domain signs its own mail: no refusal."""
    message = mail(from_field=b"From: Subscribers:;\r\n", extra=b"Sender: <news@good.example>\r\n")
    content = sign(message, include_headers=[b"from", b"sender", b"to", b"subject"])
    action, symbols, stored = await decided(gw, sink, content, "news@good.example")
    # not refused; a group From alone still scores (DMARC_FROM_GROUP + DMARC_BAD_FROM)
    assert action in ("relay", "tag", "quarantine")
    assert {"DMARC_PASS", "DMARC_SENDER_EVALUATED"} <= symbols and "DMARC_REJECT" not in symbols
    [results] = field_values(stored, "Authentication-Results")
    assert "dmarc=pass (p=reject) header.sender=good.example" in results


async def test_sender_domain_policy_quarantine_and_results_field(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    content = spoof(b"From: Branch Office\r\n", b"Resent-From: <ops@branch.example>\r\n")
    action, symbols = await outcome(gw, sink, content, "bounce@attack.example")
    assert action == "quarantine" and "DMARC_QUARANTINE" in symbols


@pytest.mark.parametrize(
    "victim",
    [
        b"Sender: <<security@bank.example\r\n",  # unparseable: every domain a reader may see
        b"Sender: Bank <security@bank.example>, <x@attack.example>\r\n",
        b"Sender: =?utf-8?q?security=40bank.example?=\r\n",  # address only in an encoded-word
    ],
)
async def test_odd_sender_field_is_read_every_way(
    gw: RunningGateway, sink: RecordingSink, victim: bytes
) -> None:
    action, _ = await outcome(gw, sink, spoof(ODD_FROMS["group"], victim), "bounce@attack.example")
    assert action == "550"
