"""SPF evaluation (gateway.auth.spf) over the wire, against the loopback DNS server."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import socket
import time
from typing import Any

import pytest
import spf as pyspf
from dns_server import DnsTestServer

from gateway.auth.spf import (
    SpfEvaluation,
    SpfEvaluator,
    SpfIdentity,
    SpfVerdict,
    received_spf,
    split_sender,
    valid_domain,
)
from gateway.dns import Resolver

CLIENT = "192.0.2.10"
ZONE = {
    "pass.example": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
    "fail.example": [("TXT", "v=spf1 ip4:198.51.100.1 -all")],
    "soft.example": [("TXT", "v=spf1 ~all")],
    "neutral.example": [("TXT", "v=spf1 ?all")],
    "nospf.example": [("TXT", "google-site-verification=abc"), ("A", "192.0.2.99")],
    "broken.example": [("TXT", "v=spf1 ip4:192.0.2.0/24 moo -all")],
    "two.example": [("TXT", "v=spf1 -all"), ("TXT", "v=spf1 +all")],
    "exp.example": [("TXT", "v=spf1 -all exp=why.exp.example")],
    "why.exp.example": [("TXT", "%{i} is not one of %{d}'s servers")],
    "mx.example": [
        ("TXT", "v=spf1 mx -all"),
        ("MX", (10, "m1.mx.example")),
        ("MX", (20, "m2.mx.example")),
    ],
    "m1.mx.example": [("A", "198.51.100.1")],
    "m2.mx.example": [("A", "192.0.2.10")],
    "inc.example": [("TXT", "v=spf1 include:pass.example -all")],
    "helo.example": [("TXT", "v=spf1 a -all"), ("A", "192.0.2.10")],
    "badhelo.example": [("TXT", "v=spf1 -all")],
    "six.example": [("TXT", "v=spf1 ip6:2001:db8::/32 -all")],
    "ptr.example": [("TXT", "v=spf1 ptr -all")],
    "slowinc.example": [("TXT", "v=spf1 include:slow.example -all")],
}


def evaluator(resolver: Resolver, **kwargs: Any) -> SpfEvaluator:
    return SpfEvaluator(resolver, receiver="mx.gateway.test", **kwargs)


@pytest.fixture
def zone(dns_server: DnsTestServer) -> DnsTestServer:
    dns_server.load(ZONE)
    return dns_server


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("alice@pass.example", SpfVerdict.PASS),
        ("alice@fail.example", SpfVerdict.FAIL),
        ("alice@soft.example", SpfVerdict.SOFTFAIL),
        ("alice@neutral.example", SpfVerdict.NEUTRAL),
        ("alice@nospf.example", SpfVerdict.NONE),
        ("alice@nxdomain.example", SpfVerdict.NONE),
        ("alice@broken.example", SpfVerdict.PERMERROR),
        ("alice@two.example", SpfVerdict.PERMERROR),
        ("alice@mx.example", SpfVerdict.PASS),
        ("alice@inc.example", SpfVerdict.PASS),
        ("ALICE@PASS.EXAMPLE.", SpfVerdict.PASS),
    ],
)
async def test_results(
    zone: DnsTestServer, dns_resolver: Resolver, sender: str, expected: SpfVerdict
) -> None:
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, sender, "mta.pass.example")
    assert check.result is expected, check
    assert check.identity is SpfIdentity.MAILFROM and check.identity_valid


async def test_fail_carries_the_domain_explanation(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, "bob@exp.example", "h.example")
    assert check.result is SpfVerdict.FAIL
    assert check.explanation == "192.0.2.10 is not one of exp.example's servers"
    assert check.mechanism == "-all"


async def test_dns_timeout_is_temperror_never_pass(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    zone.timeout("pass.example", "TXT")
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, "a@pass.example", "h.example")
    assert check.result is SpfVerdict.TEMPERROR
    assert "timeout" in check.reason


async def test_servfail_is_temperror(zone: DnsTestServer, dns_resolver: Resolver) -> None:
    zone.servfail("pass.example")
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, "a@pass.example", "h.example")
    assert check.result is SpfVerdict.TEMPERROR
    assert "servfail" in check.reason


async def test_timeout_inside_an_include_is_temperror(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    zone.load({"slow.example": ["TIMEOUT"]})
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, "a@slowinc.example", "h.example")
    assert check.result is SpfVerdict.TEMPERROR


async def test_whole_evaluation_has_a_lifetime(zone: DnsTestServer) -> None:
    zone.load({"slow.example": ["TIMEOUT"]})
    resolver = Resolver([zone.host], zone.port, timeout=5)
    started = time.monotonic()
    check = await evaluator(resolver, lifetime=0.3).check_mailfrom(
        CLIENT, "a@slowinc.example", "h.example"
    )
    assert check.result is SpfVerdict.TEMPERROR
    assert "longer than" in check.reason
    assert time.monotonic() - started < 2
    await resolver.aclose()


async def test_ptr_lookup_error_means_no_match_not_temperror(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    zone.timeout("10.2.0.192.in-addr.arpa")  # RFC 7208 5.5: "ptr" just does not match
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, "a@ptr.example", "h.example")
    assert check.result is SpfVerdict.FAIL


async def test_ptr_match(zone: DnsTestServer, dns_resolver: Resolver) -> None:
    zone.load(
        {
            "10.2.0.192.in-addr.arpa": [("PTR", "mail.ptr.example")],
            "mail.ptr.example": [("A", CLIENT)],
        }
    )
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, "a@ptr.example", "h.example")
    assert check.result is SpfVerdict.PASS


async def test_ipv6_client(zone: DnsTestServer, dns_resolver: Resolver) -> None:
    spf = evaluator(dns_resolver)
    assert (await spf.check_mailfrom("2001:db8::5", "a@six.example", "h")).result is SpfVerdict.PASS
    assert (await spf.check_mailfrom("2001:db9::5", "a@six.example", "h")).result is SpfVerdict.FAIL
    # An IPv4-mapped IPv6 client is its IPv4 address (RFC 7208 5.6).
    mapped = await spf.check_mailfrom("::ffff:192.0.2.10", "a@pass.example", "h")
    assert mapped.result is SpfVerdict.PASS


async def test_lookup_limit_gives_permerror(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    includes = " ".join(f"include:i{n}.limit.example" for n in range(11))
    dns_server.add("limit.example", "TXT", f"v=spf1 {includes} -all")
    for n in range(11):
        dns_server.add(f"i{n}.limit.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, "a@limit.example", "h.example")
    assert check.result is SpfVerdict.PERMERROR
    assert "DNS lookups" in check.reason
    assert check.dns_lookups <= 12


async def test_void_lookup_limit_gives_permerror(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.add(
        "void.example", "TXT", "v=spf1 a:n1.void.example a:n2.void.example a:n3.void.example -all"
    )
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, "a@void.example", "h.example")
    assert check.result is SpfVerdict.PERMERROR
    assert "Void lookup" in check.reason


async def test_mx_targets_are_prefetched_concurrently(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, "a@mx.example", "h.example")
    assert check.result is SpfVerdict.PASS
    names = [q.name for q in zone.queries]
    assert names.count("m1.mx.example") == 1 and names.count("m2.mx.example") == 1


async def test_null_sender_checks_postmaster_at_helo(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    result = await evaluator(dns_resolver).check(CLIENT, "", "helo.example")
    assert result.null_sender and result.helo is None
    assert result.mailfrom.result is SpfVerdict.PASS
    assert result.mailfrom.identity is SpfIdentity.MAILFROM
    assert result.mailfrom.sender == "postmaster@helo.example"
    assert result.mailfrom.domain == "helo.example"


async def test_mail_from_and_helo_are_both_checked(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    result = await evaluator(dns_resolver).check(CLIENT, "a@fail.example", "badhelo.example")
    assert result.mailfrom.result is SpfVerdict.FAIL
    assert result.helo is not None
    assert result.helo.identity is SpfIdentity.HELO
    assert result.helo.result is SpfVerdict.FAIL
    assert result.helo.domain == "badhelo.example"


async def test_helo_result_is_reused_for_the_same_client_for_a_minute(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    now = [1000.0]
    checker = evaluator(dns_resolver, clock=lambda: now[0])
    first = await checker.check(CLIENT, "a@fail.example", "badhelo.example")
    dns_resolver.clear_cache()
    asked = len(zone.queries)
    second = await checker.check(CLIENT, "b@fail.example", "BadHelo.example")
    assert second.helo == first.helo  # the same evaluation, no HELO lookup sent again
    helo_queries = [q for q in zone.queries[asked:] if "badhelo" in str(q).lower()]
    assert helo_queries == []
    other = await checker.check("192.0.2.99", "a@fail.example", "badhelo.example")
    assert other.helo is not None and other.helo.client_ip == "192.0.2.99"  # another client
    now[0] += 61
    dns_resolver.clear_cache()
    asked = len(zone.queries)
    await checker.check(CLIENT, "a@fail.example", "badhelo.example")
    assert any("badhelo" in str(q).lower() for q in zone.queries[asked:])  # expired: asked again


@pytest.mark.parametrize(
    "sender",
    [
        "a@localhost",
        "a@[192.0.2.1]",
        "a@192.0.2.1",
        "a@under_score.example",
        "a@-dash.example",
        "a@dash-.example",
        "a@a..example",
        "a@" + "x" * 64 + ".example",
        "a@bücher.example",
        "a@evil.example\r\nX-Injected: 1",
        "a@evil.example;rm",
        "no-at-sign",
        "a@",
    ],
)
async def test_invalid_identities_are_findings_never_lookups(
    dns_server: DnsTestServer, dns_resolver: Resolver, sender: str
) -> None:
    result = await evaluator(dns_resolver).check(CLIENT, sender, "[192.0.2.1]")
    assert result.mailfrom.result is SpfVerdict.NONE
    assert not result.mailfrom.identity_valid
    assert result.helo is None
    assert dns_server.queries == []


@pytest.mark.parametrize("helo", ["localhost", "[192.0.2.1]", "a_b.example", "", "x..example"])
async def test_invalid_helo_is_never_looked_up(
    dns_server: DnsTestServer, dns_resolver: Resolver, helo: str
) -> None:
    result = await evaluator(dns_resolver).check(CLIENT, "", helo)
    assert result.mailfrom.result is SpfVerdict.NONE and not result.mailfrom.identity_valid
    assert dns_server.queries == []


async def test_at_sign_in_a_quoted_local_part(zone: DnsTestServer, dns_resolver: Resolver) -> None:
    zone.add("local.example", "TXT", "v=spf1 exists:%{l}.x.local.example -all")
    zone.add('"a@b".x.local.example', "A", "127.0.0.2")
    check = await evaluator(dns_resolver).check_mailfrom(CLIENT, '"a@b"@local.example', "h.example")
    assert check.domain == "local.example"
    assert check.result is SpfVerdict.PASS


async def test_no_system_resolver_is_ever_used(
    zone: DnsTestServer, dns_resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("blocking system resolver called")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        monkeypatch.setattr(socket, name, forbidden)
    result = await evaluator(dns_resolver).check(CLIENT, "a@mx.example", "helo.example")
    assert result.mailfrom.result is SpfVerdict.PASS


async def test_the_loop_keeps_running_during_an_evaluation(zone: DnsTestServer) -> None:
    for name in ("mx.example", "m1.mx.example", "m2.mx.example"):
        zone.delay(name, 0.3)  # a blocking lookup would stall the loop this long
    resolver = Resolver([zone.host], zone.port, timeout=2)
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.ensure_future(heartbeat())
    check = await evaluator(resolver).check_mailfrom(CLIENT, "a@mx.example", "h.example")
    beat.cancel()
    assert check.result is SpfVerdict.PASS
    assert len(gaps) > 20 and max(gaps) < 0.2
    await resolver.aclose()


def test_pyspf_outside_the_evaluator_cannot_reach_dns() -> None:
    """pyspf's own blocking DNS is replaced for the whole process: a stray use is a temperror."""
    query = pyspf.query(i=CLIENT, s="a@example.com", h="h.example")
    result, _code, _text = query.check()
    assert result == "temperror"


async def test_concurrent_evaluations_do_not_mix(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    spf = evaluator(dns_resolver)
    senders = ["a@pass.example", "a@fail.example", "a@mx.example", "a@soft.example"] * 5
    results = await asyncio.gather(*(spf.check_mailfrom(CLIENT, s, "h.example") for s in senders))
    expected = [SpfVerdict.PASS, SpfVerdict.FAIL, SpfVerdict.PASS, SpfVerdict.SOFTFAIL] * 5
    assert [r.result for r in results] == expected


# -- identities -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("example.com", True),
        ("EXAMPLE.com.", True),
        ("a-b.c0.example", True),
        ("x" * 63 + ".example", True),
        ("localhost", False),
        ("1.2.3.4", False),
        ("example.123", False),
        ("-a.example", False),
        ("a-.example", False),
        ("a_b.example", False),
        ("a..example", False),
        (".", False),
        ("[1.2.3.4]", False),
        ("ex ample.com", False),
        ("exämple.com", False),
        (".".join(["a" * 63] * 4), False),
    ],
)
def test_valid_domain(name: str, ok: bool) -> None:
    assert valid_domain(name) is ok


def test_split_sender() -> None:
    assert split_sender("a@example.com") == ("a", "example.com")
    assert split_sender("@example.com") == ("postmaster", "example.com")
    assert split_sender('"x@y"@example.com') == ('"x@y"', "example.com")
    assert split_sender("example.com") is None


# -- Received-SPF -----------------------------------------------------------------------------


def evaluation(**changes: Any) -> SpfEvaluation:
    fields: dict[str, Any] = {
        "identity": SpfIdentity.MAILFROM,
        "result": SpfVerdict.PASS,
        "domain": "example.com",
        "sender": "alice@example.com",
        "client_ip": "192.0.2.10",
        "helo": "mta.example.com",
        "mechanism": "ip4:192.0.2.0/24",
    }
    fields.update(changes)
    return SpfEvaluation(**fields)


def parse_field(raw: bytes) -> str:
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw + b"\r\n")
    values = message.get_all("Received-SPF")
    assert values is not None and len(values) == 1 and len(message.keys()) == 1
    return " ".join(str(values[0]).split())


def test_received_spf_pass() -> None:
    raw = received_spf(evaluation(), "mx.gateway.test")
    assert raw.endswith(b"\r\n") and raw.startswith(b"Received-SPF: Pass")
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert parse_field(raw) == (
        "Pass (mx.gateway.test: domain of example.com designates 192.0.2.10 as permitted "
        'sender) client-ip=192.0.2.10; envelope-from="alice@example.com"; '
        'helo=mta.example.com; receiver=mx.gateway.test; mechanism="ip4:192.0.2.0/24"; '
        "identity=mailfrom"
    )


@pytest.mark.parametrize(
    ("result", "word"),
    [
        (SpfVerdict.FAIL, "Fail"),
        (SpfVerdict.SOFTFAIL, "SoftFail"),
        (SpfVerdict.NEUTRAL, "Neutral"),
        (SpfVerdict.NONE, "None"),
        (SpfVerdict.TEMPERROR, "TempError"),
        (SpfVerdict.PERMERROR, "PermError"),
    ],
)
def test_received_spf_results(result: SpfVerdict, word: str) -> None:
    raw = received_spf(evaluation(result=result, reason="boom", mechanism=""), "mx.test")
    text = parse_field(raw)
    assert text.startswith(word + " (mx.test: ")
    assert ("problem=boom" in text) is (result in (SpfVerdict.TEMPERROR, SpfVerdict.PERMERROR))


def test_received_spf_helo_identity_has_no_envelope_from() -> None:
    raw = received_spf(
        evaluation(identity=SpfIdentity.HELO, sender="postmaster@mta.example.com"), "mx.test"
    )
    text = parse_field(raw)
    assert "envelope-from" not in text and text.endswith("identity=helo")


def test_received_spf_cannot_be_used_for_injection() -> None:
    hostile = evaluation(
        sender='x"; identity=helo\r\nAuthentication-Results: mx.test; dmarc=pass\r\n(@a.example',
        helo="h) pass (\\",
        domain="a.example",
        result=SpfVerdict.PERMERROR,
        reason="bad\x00 record \u202e",
        mechanism="",
    )
    raw = received_spf(hostile, "mx.test")
    assert raw.isascii()
    assert raw.count(b"\r\n") == raw.count(b"\r\n\t") + 1  # only folds, one field
    text = parse_field(raw)
    assert 'envelope-from="x\\"; identity=helo??Authentication-Results: mx.test; ' in text
    assert 'helo="h) pass (\\\\"' in text
    assert text.endswith("identity=mailfrom")
    assert text.count("identity=") == 2  # the second one is inside the quoted sender


async def test_a_warm_cache_needs_no_new_queries(
    zone: DnsTestServer, dns_resolver: Resolver
) -> None:
    spf = evaluator(dns_resolver)
    first = await spf.check_mailfrom(CLIENT, "a@mx.example", "h.example")
    sent = len(zone.queries)
    second = await spf.check_mailfrom(CLIENT, "a@mx.example", "h.example")
    assert first.result is second.result is SpfVerdict.PASS
    assert len(zone.queries) == sent
