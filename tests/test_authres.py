"""Authentication-Results (RFC 8601): what we write, how values are quoted, and forged ones removed.

Chen et al. (USENIX Security 2020) showed result injection: dkimpy accepts
`d=legitimate.com'a.attack.com`, and a writer that copies it unquoted lets a reader see a result
for legitimate.com. Every value we write is bare only when it is plainly a domain, an address or
a token; anything else is a quoted-string. The `authres` package (RFC 8601 parser) reads back
what we write.
"""

from __future__ import annotations

from pathlib import Path

import aiosmtplib
import authres
import pytest
from auth_helpers import field_values, key_zone, mail, sign, start_auth_gateway
from dns_server import DnsTestServer
from harness import GatewayFactory, RecordingSink, RunningGateway, message

from gateway.auth.dkim import DkimResult, DkimSignature, DkimVerdict
from gateway.auth.results import authentication_results, parse_results, pvalue
from gateway.auth.spf import SpfEvaluation, SpfIdentity, SpfResult, SpfVerdict
from gateway.header_edit import strip_authentication_results

ID = "mx.gateway.test"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("example.com", "example.com"),
        ("Example.COM.", "Example.COM"),
        ("alice@example.com", "alice@example.com"),
        ("@example.com", "@example.com"),
        ("rsa-sha256", "rsa-sha256"),
        ("legitimate.com'a.attack.com", '"legitimate.com\'a.attack.com"'),
        ("legitimate.com(.attack.com", '"legitimate.com(.attack.com"'),
        ("any@legitimate.com'@any.attack.com", '"any@legitimate.com\'@any.attack.com"'),
        ("a;dkim=pass header.d=bank.example", '"a;dkim=pass header.d=bank.example"'),
        ('x"y\\z', '"x\\"y\\\\z"'),
        ("line\r\nX-Injected: 1", '"line??X-Injected: 1"'),
        ("bücher.example", '"b?cher.example"'),
        ("an/rZvG+", '"an/rZvG+"'),  # "/" is a tspecial (RFC 2045)
    ],
)
def test_values_are_quoted_unless_plainly_safe(value: str, written: str) -> None:
    assert pvalue(value) == written


def _signature(domain: str, result: DkimVerdict = DkimVerdict.PASS) -> DkimSignature:
    return DkimSignature(
        result, domain=domain, selector="sel", algorithm="rsa-sha256", b_prefix="AbCdEfGh"
    )


def test_injected_signing_domain_stays_one_value() -> None:
    dkim = DkimResult((_signature("legitimate.com'a.attack.com", DkimVerdict.PERMERROR),))
    field = authentication_results(ID, dkim=dkim)
    _name, _, value = field.decode().partition(":")
    authserv, results = parse_results(value)
    assert authserv == ID
    [(method, result, props)] = results
    assert (method, result) == ("dkim", "permerror")
    assert props["header.d"] == "legitimate.com'a.attack.com"
    # An independent RFC 8601 parser finds no result for legitimate.com either. (authres 1.2
    # drops a quoted value that another property follows, so it sees no header.d at all.)
    parsed = authres.AuthenticationResultsHeader.parse(field.decode().replace("\r\n", ""))
    assert parsed.authserv_id == ID
    [dkim_result] = parsed.results
    values = [str(p.value) for p in dkim_result.properties]
    assert "legitimate.com" not in values and values[0] == "sel"


def test_full_field_parses_with_authres() -> None:
    spf = SpfResult(
        mailfrom=SpfEvaluation(
            identity=SpfIdentity.MAILFROM,
            result=SpfVerdict.PASS,
            domain="good.example",
            sender="alice@good.example",
            client_ip="192.0.2.1",
            helo="mx.good.example",
        )
    )
    dkim = DkimResult((_signature("good.example"), _signature("other.example", DkimVerdict.FAIL)))
    field = authentication_results(ID, spf=spf, dkim=dkim).decode()
    assert field.endswith("\r\n") and all(len(line) < 200 for line in field.split("\r\n"))
    parsed = authres.AuthenticationResultsHeader.parse(field.replace("\r\n", ""))
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dkim", "fail"),
    ]


def test_nothing_checked_is_none() -> None:
    assert authentication_results(ID) == b"Authentication-Results: mx.gateway.test; none\r\n"


# -- forged fields claiming our authserv-id ----------------------------------------------------

BODY = b"\r\nAuthentication-Results: mx.gateway.test; dkim=pass (in the body: kept)\r\n"


@pytest.mark.parametrize(
    "forged",
    [
        b"Authentication-Results: mx.gateway.test; dkim=pass header.d=bank.example\r\n",
        b"authentication-results: MX.Gateway.Test; dmarc=pass\r\n",
        b"Authentication-Results : mx.gateway.test; spf=pass\r\n",
        b"Authentication-Results:\r\n\tmx.gateway.test;\r\n\tdkim=pass header.d=bank.example\r\n",
        b"Authentication-Results: (our gateway) mx.gateway.test 1; dkim=pass\r\n",
        b'Authentication-Results: "mx.gateway.test"; dkim=pass\r\n',
        b"Authentication-Results: mx.gateway.test.; dkim=pass\r\n",
    ],
)
def test_forged_results_with_our_id_are_removed(forged: bytes) -> None:
    theirs = b"Authentication-Results: mx.other.example; spf=pass smtp.mailfrom=a@b.example\r\n"
    raw = forged + theirs + b"Subject: x\r\n" + forged + BODY
    stripped, removed = strip_authentication_results(raw, ID)
    assert removed == 2
    assert stripped == theirs + b"Subject: x\r\n" + BODY


def test_similar_ids_are_kept() -> None:
    raw = (
        b"Authentication-Results: mx.gateway.test.evil.example; dkim=pass\r\n"
        b"Authentication-Results: evil-mx.gateway.test; dkim=pass\r\n"
        b"Subject: x\r\n\r\nbody\r\n"
    )
    assert strip_authentication_results(raw, ID) == (raw, 0)


def test_forged_field_after_a_broken_line_is_still_removed() -> None:
    raw = (
        b"Subject: x\r\nnot a header line\r\n"
        b"Authentication-Results: mx.gateway.test; dkim=pass\r\n\r\nbody\r\n"
    )
    stripped, removed = strip_authentication_results(raw, ID)
    assert removed == 1 and b"Authentication-Results" not in stripped


# -- over the wire --------------------------------------------------------------------------------


async def test_every_relayed_message_gets_our_results_and_forged_ones_go(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    forged = b"Authentication-Results: mx.gateway.test; dmarc=pass header.from=bank.example\r\n"
    theirs = b"Authentication-Results: mx.other.example; spf=fail\r\n"
    await aiosmtplib.send(
        forged + theirs + message(),
        sender="alice@example.net",
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
    )
    [delivered] = await sink.arrived(1)
    values = field_values(delivered.content, "Authentication-Results")
    assert values == ["mx.gateway.test; none", "mx.other.example; spf=fail"]
    assert delivered.content.endswith(theirs + message())


async def test_results_and_received_spf_with_the_auth_plugins(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> None:
    dns_server.load(key_zone())
    dns_server.load(
        {
            "good.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
            "_dmarc.good.example": [("TXT", "v=DMARC1; p=reject")],
        }
    )
    gw = await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)
    forged = b"Authentication-Results: mx.gateway.test; dkim=pass header.d=bank.example\r\n"
    await aiosmtplib.send(
        forged + sign(mail()),
        sender="alice@good.example",
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
        local_hostname="[127.0.0.1]",
    )
    [delivered] = await sink.arrived(1)
    [ar] = field_values(delivered.content, "Authentication-Results")
    assert ar.startswith("mx.gateway.test; spf=pass smtp.mailfrom=alice@good.example;")
    assert "dkim=pass (2048-bit key) header.d=good.example header.s=rsa2048" in ar
    assert "arc=none" in ar and "dmarc=pass (p=reject) header.from=good.example" in ar
    assert "bank.example" not in delivered.content.decode()
    [spf] = field_values(delivered.content, "Received-SPF")
    assert spf.startswith("Pass (mx.gateway.test: domain of good.example designates 127.0.0.1")
    lines = delivered.content.decode().split("\r\n")
    assert lines[0].startswith("Received: ")  # our trace fields stay on top
