"""DMARC (gateway.auth.dmarc) and the author parse (gateway.rfc5322), over the loopback DNS server.

Each policy (none, quarantine, reject) and each alignment mode (relaxed, strict) for SPF and DKIM,
the subdomain policy (sp) and the Organizational Domain fallback, pct sampling with an injected
random source, temporary errors, and the espoofer From cases (Chen et al. 2020).
"""

from __future__ import annotations

import pytest
from dns_server import DnsTestServer

from gateway.auth.dkim import DkimResult, DkimSignature, DkimVerdict
from gateway.auth.dmarc import (
    DmarcEvaluator,
    DmarcPolicy,
    DmarcRecord,
    DmarcVerdict,
    aligned,
    organizational_domain,
    parse_record,
)
from gateway.auth.spf import SpfEvaluation, SpfIdentity, SpfResult, SpfVerdict
from gateway.dns import Resolver
from gateway.plugins.dmarc import dmarc_findings
from gateway.rfc5322 import author_info

ZONE = {
    "_dmarc.reject.example": [("TXT", "v=DMARC1; p=reject")],
    "_dmarc.quarantine.example": [
        ("TXT", "v=DMARC1; p=quarantine; rua=mailto:d@quarantine.example")
    ],
    "_dmarc.none.example": [("TXT", "v=DMARC1; p=none")],
    "_dmarc.strict.example": [("TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")],
    # sp= for subdomains found through the Organizational Domain fallback.
    "_dmarc.parent.example": [("TXT", "v=DMARC1; p=reject; sp=quarantine")],
    "_dmarc.own.parent.example": [("TXT", "v=DMARC1; p=none")],
    "_dmarc.half.example": [("TXT", "v=DMARC1; p=reject; pct=50")],
    "_dmarc.two.example": [("TXT", "v=DMARC1; p=reject"), ("TXT", "v=DMARC1; p=none")],
    "_dmarc.nop.example": [("TXT", "v=DMARC1; adkim=s")],
    "_dmarc.noprua.example": [("TXT", "v=DMARC1; rua=mailto:r@noprua.example")],
    "_dmarc.other.example": [("TXT", "v=spf1 -all"), ("TXT", "some verification token")],
    "_dmarc.co.uk": [("TXT", "v=DMARC1; p=reject")],  # a public suffix: never consulted
    "_dmarc.slow.example": ["TIMEOUT"],
}


def spf(domain: str, result: SpfVerdict = SpfVerdict.PASS) -> SpfResult:
    return SpfResult(
        mailfrom=SpfEvaluation(
            identity=SpfIdentity.MAILFROM,
            result=result,
            domain=domain,
            sender=f"bounce@{domain}",
            client_ip="192.0.2.1",
            helo="mx.example",
        )
    )


def dkim(*domains: str, result: DkimVerdict = DkimVerdict.PASS) -> DkimResult:
    return DkimResult(tuple(DkimSignature(result, domain=d, selector="s") for d in domains))


@pytest.fixture
def evaluator(dns_server: DnsTestServer, dns_resolver: Resolver) -> DmarcEvaluator:
    dns_server.load(ZONE)
    return DmarcEvaluator(dns_resolver, lifetime=3, random=lambda: 0.0)


# -- organisational domain and alignment ------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("a.b.example.com", "example.com"),
        ("mail.example.co.uk", "example.co.uk"),
        ("x.y.example.org.", "example.org"),
        ("co.uk", "co.uk"),
        ("a.b.example", "b.example"),  # unknown TLD: the default rule "*"
        ("user.github.io", "user.github.io"),  # a private-section suffix
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


def test_alignment_modes() -> None:
    assert aligned("mail.example.com", "example.com", "r")
    assert not aligned("mail.example.com", "example.com", "s")
    assert aligned("EXAMPLE.com.", "example.com", "s")
    assert not aligned("example.co.uk", "other.co.uk", "r")  # same public suffix is not enough
    assert not aligned("", "example.com", "r")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"v=DMARC1; p=reject", DmarcRecord(DmarcPolicy.REJECT)),
        (
            b"v=DMARC1;p=quarantine;sp=none;pct=25;adkim=s",
            DmarcRecord(DmarcPolicy.QUARANTINE, DmarcPolicy.NONE, "s", "r", 25),
        ),
        (b"v=DMARC1; p=REJECT; pct=500; aspf=x", DmarcRecord(DmarcPolicy.REJECT, pct=100)),
        (b"v=DMARC1; p=none; sp=bogus", DmarcRecord(DmarcPolicy.NONE, DmarcPolicy.NONE)),
        (b"v=DMARC1; rua=mailto:a@b.example", DmarcRecord(DmarcPolicy.NONE)),  # 6.6.3 step 6
        (b"v=DMARC1; p=maybe", "no valid p= tag"),
        (b"v=DMARC1; p=reject; garbage", "malformed tag"),
    ],
)
def test_parse_record(text: bytes, expected: object) -> None:
    assert parse_record(text) == expected


# -- evaluation: each policy, each alignment mode -----------------------------------------------


@pytest.mark.parametrize(
    ("domain", "policy"),
    [
        ("reject.example", DmarcPolicy.REJECT),
        ("quarantine.example", DmarcPolicy.QUARANTINE),
        ("none.example", DmarcPolicy.NONE),
    ],
)
async def test_each_policy_on_failure(
    evaluator: DmarcEvaluator, domain: str, policy: DmarcPolicy
) -> None:
    ev = await evaluator.evaluate_domain(domain, spf("attack.example"), dkim("attack.example"))
    assert (ev.verdict, ev.policy, ev.applied) == (DmarcVerdict.FAIL, policy, policy)
    assert ev.unaligned_auth


@pytest.mark.parametrize(
    ("spf_domain", "dkim_domain", "verdict"),
    [
        ("reject.example", "", DmarcVerdict.PASS),  # SPF, exact
        ("bounces.reject.example", "", DmarcVerdict.PASS),  # SPF, relaxed
        ("", "reject.example", DmarcVerdict.PASS),  # DKIM, exact
        ("", "mail.reject.example", DmarcVerdict.PASS),  # DKIM, relaxed
        ("", "", DmarcVerdict.FAIL),
    ],
)
async def test_relaxed_alignment(
    evaluator: DmarcEvaluator, spf_domain: str, dkim_domain: str, verdict: DmarcVerdict
) -> None:
    ev = await evaluator.evaluate_domain(
        "reject.example",
        spf(spf_domain) if spf_domain else None,
        dkim(dkim_domain) if dkim_domain else dkim(),
    )
    assert ev.verdict is verdict
    assert ev.spf_aligned == bool(spf_domain) and ev.dkim_aligned == (
        (dkim_domain,) if dkim_domain else ()
    )


@pytest.mark.parametrize(
    ("spf_domain", "dkim_domain", "verdict"),
    [
        ("strict.example", "", DmarcVerdict.PASS),
        ("bounces.strict.example", "", DmarcVerdict.FAIL),  # aspf=s: a subdomain does not align
        ("", "strict.example", DmarcVerdict.PASS),
        ("", "mail.strict.example", DmarcVerdict.FAIL),  # adkim=s
    ],
)
async def test_strict_alignment(
    evaluator: DmarcEvaluator, spf_domain: str, dkim_domain: str, verdict: DmarcVerdict
) -> None:
    ev = await evaluator.evaluate_domain(
        "strict.example",
        spf(spf_domain) if spf_domain else None,
        dkim(dkim_domain) if dkim_domain else dkim(),
    )
    assert ev.verdict is verdict


async def test_spf_fail_and_dkim_without_credit_do_not_align(evaluator: DmarcEvaluator) -> None:
    for check in (
        dkim("reject.example", result=DkimVerdict.POLICY),  # weak key or l= tail
        dkim("reject.example", result=DkimVerdict.FAIL),
    ):
        ev = await evaluator.evaluate_domain(
            "reject.example", spf("reject.example", SpfVerdict.FAIL), check
        )
        assert ev.verdict is DmarcVerdict.FAIL and not ev.unaligned_auth


# -- discovery: subdomain policy and the Organizational Domain fallback ----------------------


async def test_subdomain_policy_applies_through_the_org_domain(
    evaluator: DmarcEvaluator, dns_server: DnsTestServer
) -> None:
    ev = await evaluator.evaluate_domain("news.parent.example", None, dkim())
    assert (ev.record_domain, ev.org_domain) == ("parent.example", "parent.example")
    assert (ev.verdict, ev.policy) == (DmarcVerdict.FAIL, DmarcPolicy.QUARANTINE)
    assert dns_server.count("_dmarc.news.parent.example") == 1
    assert dns_server.count("_dmarc.parent.example") == 1


async def test_org_domain_itself_gets_p_not_sp(evaluator: DmarcEvaluator) -> None:
    ev = await evaluator.evaluate_domain("parent.example", None, dkim())
    assert (ev.record_domain, ev.policy) == ("parent.example", DmarcPolicy.REJECT)


async def test_a_subdomain_record_of_its_own_wins(evaluator: DmarcEvaluator) -> None:
    ev = await evaluator.evaluate_domain("own.parent.example", None, dkim())
    assert (ev.record_domain, ev.policy) == ("own.parent.example", DmarcPolicy.NONE)


async def test_fallback_without_sp_uses_p(evaluator: DmarcEvaluator) -> None:
    ev = await evaluator.evaluate_domain("deep.sub.reject.example", None, dkim())
    assert (ev.record_domain, ev.policy, ev.verdict) == (
        "reject.example",
        DmarcPolicy.REJECT,
        DmarcVerdict.FAIL,
    )


async def test_public_suffix_record_is_never_used(
    evaluator: DmarcEvaluator, dns_server: DnsTestServer
) -> None:
    ev = await evaluator.evaluate_domain("shop.example.co.uk", None, dkim())
    assert ev.verdict is DmarcVerdict.NONE
    assert dns_server.count("_dmarc.co.uk") == 0
    assert dns_server.count("_dmarc.example.co.uk") == 1


@pytest.mark.parametrize(
    ("domain", "verdict", "reason"),
    [
        ("nothing.example", DmarcVerdict.NONE, "no DMARC record"),
        ("other.example", DmarcVerdict.NONE, "no DMARC record"),  # TXT, but not DMARC1
        ("two.example", DmarcVerdict.PERMERROR, "_dmarc.two.example: several DMARC records"),
        ("nop.example", DmarcVerdict.PERMERROR, "_dmarc.nop.example: no valid p= tag"),
        ("slow.example", DmarcVerdict.TEMPERROR, "_dmarc.slow.example: timeout"),
    ],
)
async def test_discovery_outcomes(
    evaluator: DmarcEvaluator, domain: str, verdict: DmarcVerdict, reason: str
) -> None:
    ev = await evaluator.evaluate_domain(domain, None, dkim())
    assert (ev.verdict, ev.reason) == (verdict, reason)


async def test_rua_without_p_acts_as_p_none(evaluator: DmarcEvaluator) -> None:
    ev = await evaluator.evaluate_domain("noprua.example", None, dkim())
    assert (ev.verdict, ev.applied) == (DmarcVerdict.FAIL, DmarcPolicy.NONE)


async def test_servfail_is_a_temperror(
    evaluator: DmarcEvaluator, dns_server: DnsTestServer
) -> None:
    dns_server.servfail("_dmarc.reject.example")
    ev = await evaluator.evaluate_domain("reject.example", None, dkim())
    assert ev.verdict is DmarcVerdict.TEMPERROR


async def test_aligned_temporary_failures_are_temperror_not_fail(evaluator: DmarcEvaluator) -> None:
    ev = await evaluator.evaluate_domain(
        "reject.example", None, dkim("reject.example", result=DkimVerdict.TEMPERROR)
    )
    assert ev.verdict is DmarcVerdict.TEMPERROR and "DKIM key" in ev.reason
    ev = await evaluator.evaluate_domain(
        "reject.example", spf("reject.example", SpfVerdict.TEMPERROR), dkim()
    )
    assert ev.verdict is DmarcVerdict.TEMPERROR
    # An unrelated signature's temporary error changes nothing.
    ev = await evaluator.evaluate_domain(
        "reject.example", None, dkim("attack.example", result=DkimVerdict.TEMPERROR)
    )
    assert ev.verdict is DmarcVerdict.FAIL


# -- pct: deterministic with an injected random source --------------------------------------


@pytest.mark.parametrize(
    ("draw", "applied", "sampled"),
    [
        (0.0, DmarcPolicy.REJECT, False),
        (0.49, DmarcPolicy.REJECT, False),
        (0.5, DmarcPolicy.QUARANTINE, True),
        (0.99, DmarcPolicy.QUARANTINE, True),
    ],
)
async def test_pct_sampling(
    dns_server: DnsTestServer,
    dns_resolver: Resolver,
    draw: float,
    applied: DmarcPolicy,
    sampled: bool,
) -> None:
    dns_server.load(ZONE)
    evaluator = DmarcEvaluator(dns_resolver, random=lambda: draw)
    ev = await evaluator.evaluate_domain("half.example", None, dkim())
    assert (ev.policy, ev.applied, ev.sampled_out) == (DmarcPolicy.REJECT, applied, sampled)


def test_milder_policies() -> None:
    assert DmarcPolicy.REJECT.milder() is DmarcPolicy.QUARANTINE
    assert DmarcPolicy.QUARANTINE.milder() is DmarcPolicy.NONE
    assert DmarcPolicy.NONE.milder() is DmarcPolicy.NONE


# -- the author, and the espoofer From cases ----------------------------------------------------

A = b"To: <victim@victim.example>\r\nSubject: test\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    ("head", "domains", "symbols"),
    [
        (b"From: Alice <alice@reject.example>\r\n", ["reject.example"], []),
        (b"From: alice@reject.example (Alice)\r\n", ["reject.example"], []),
        (b"Subject: x\r\n", [], ["DMARC_BAD_FROM"]),
        (b"From: \r\n", [], ["DMARC_BAD_FROM"]),
        # A8: two From fields
        (
            b"From: <first@attack.example>\r\nFrom: <admin@reject.example>\r\n",
            ["attack.example", "reject.example"],
            ["DMARC_FROM_MULTIPLE"],
        ),
        # A9: a From on a first line that starts with a space
        (
            b" From: <first@attack.example>\r\nFrom: <admin@reject.example>\r\n",
            ["attack.example", "reject.example"],
            ["DMARC_FROM_MULTIPLE", "DMARC_FROM_MALFORMED"],
        ),
        # A10: whitespace before the colon
        (
            b"From: <first@attack.example>\r\nFrom : <admin@reject.example>\r\n",
            ["attack.example", "reject.example"],
            ["DMARC_FROM_MULTIPLE", "DMARC_FROM_MALFORMED"],
        ),
        # A11: the field name folded
        (
            b"From\r\n : <first@attack.example>\r\nFrom: <admin@reject.example>\r\n",
            ["attack.example", "reject.example"],
            ["DMARC_FROM_MULTIPLE", "DMARC_FROM_MALFORMED"],
        ),
        # A14, A18: several addresses
        (
            b"From: <first@attack.example>, <admin@reject.example>\r\n",
            ["attack.example", "reject.example"],
            ["DMARC_FROM_MULTIPLE_ADDRESSES"],
        ),
        (
            b"From: admin@reject.example,<second@attack.example>\r\n",
            ["reject.example", "attack.example"],
            ["DMARC_FROM_MULTIPLE_ADDRESSES"],
        ),
        # A15: an address inside an encoded-word
        (
            b"From:=?utf-8?b?PGFkbWluQHJlamVjdC5leGFtcGxlPg==?=,<second@attack.example>\r\n",
            ["attack.example", "reject.example"],
            ["DMARC_FROM_MALFORMED"],
        ),
        # A16: a route
        (
            b"From: <@attack.example,@any.example:admin@reject.example>\r\n",
            ["reject.example", "attack.example", "any.example"],
            ["DMARC_FROM_MALFORMED"],
        ),
        # A17: a quoted-pair outside a quoted-string
        (
            b"From: <admin@reject.example>\\,<second@attack.example>\r\n",
            ["reject.example", "attack.example"],
            ["DMARC_FROM_MALFORMED"],
        ),
        # A19: an address after the angle-addr
        (
            b"From: <any@attack.example>admin@reject.example\r\n",
            ["attack.example", "reject.example"],
            ["DMARC_FROM_MALFORMED"],
        ),
        # RFC 6854 groups (CERT/CC VU#517845)
        (b"From: Security Team:;\r\n", [], ["DMARC_BAD_FROM", "DMARC_FROM_GROUP"]),
        (b"From: Team: admin@reject.example;\r\n", ["reject.example"], ["DMARC_FROM_GROUP"]),
        # display names that show another organisation's address
        (
            b'From: "admin@reject.example" <x@attack.example>\r\n',
            ["attack.example"],
            ["DMARC_FROM_DISPLAY_ADDRESS"],
        ),
        (
            b"From: =?utf-8?q?admin=40reject.example?= <x@attack.example>\r\n",
            ["attack.example"],
            ["DMARC_FROM_DISPLAY_ADDRESS"],
        ),
        (b'From: "alice@mail.reject.example" <alice@reject.example>\r\n', ["reject.example"], []),
    ],
)
def test_author_cases(head: bytes, domains: list[str], symbols: list[str]) -> None:
    from gateway.auth.dmarc import DmarcResult

    author = author_info(head + A)
    assert list(author.domains) == domains
    found = [f.symbol for f in dmarc_findings(DmarcResult(author))]
    assert found == symbols


@pytest.mark.parametrize(
    "head",
    [
        b"From: <first@attack.example>\r\nFrom: <admin@reject.example>\r\n",
        b"From: <first@attack.example>\r\nFrom : <admin@reject.example>\r\n",
        b"From: <first@attack.example>, <admin@reject.example>\r\n",
        b"From:=?utf-8?b?PGFkbWluQHJlamVjdC5leGFtcGxlPg==?=,<second@attack.example>\r\n",
        b"From: <any@attack.example>admin@reject.example\r\n",
        b"From: <@attack.example:admin@reject.example>\r\n",
    ],
)
async def test_the_strictest_author_domain_decides(evaluator: DmarcEvaluator, head: bytes) -> None:
    """The attacker authenticates attack.example (SPF and DKIM); reject.example must still bite."""
    result = await evaluator.evaluate(
        author_info(head + A), spf("attack.example"), dkim("attack.example")
    )
    worst = result.worst
    assert worst is not None
    assert (worst.domain, worst.verdict, worst.applied) == (
        "reject.example",
        DmarcVerdict.FAIL,
        DmarcPolicy.REJECT,
    )
    assert "DMARC_REJECT" in [f.symbol for f in dmarc_findings(result)]


async def test_invalid_author_domain_is_never_looked_up(
    evaluator: DmarcEvaluator, dns_server: DnsTestServer
) -> None:
    result = await evaluator.evaluate(
        author_info(b"From: <a@legitimate.com'a.attack.example>\r\n" + A), None, dkim()
    )
    assert [e.verdict for e in result.evaluations] == [DmarcVerdict.BAD_DOMAIN]
    assert "DMARC_BAD_FROM" in [f.symbol for f in dmarc_findings(result)]
    assert dns_server.queries == []


async def test_idn_author_domain_is_looked_up_as_a_label(
    evaluator: DmarcEvaluator, dns_server: DnsTestServer
) -> None:
    await evaluator.evaluate(author_info("From: <a@bücher.example>\r\n".encode() + A), None, dkim())
    assert dns_server.count("_dmarc.xn--bcher-kva.example") == 1
