"""The ARC validation suite (../shared/vectors/arc_test_suite) through our ARC stage.

Each scenario's keys are served by the loopback DNS server (tests/dns_server.py), and each message
goes through gateway.auth.arc.ArcVerifier exactly as at DATA: key names fetched by the gateway's
resolver, then dkimpy with a dnsfunc that only answers from what was fetched.

168 of the 171 cases give the suite's expected chain status. The other 3 are strict xfails: the
suite (written against draft-ietf-dmarc-arc-protocol-18) expects an *empty* result when a seal
says cv=fail ("the chain is terminated"), while RFC 8617 5.2 step 2 says a seal with cv=fail makes
the chain state "fail"; we report fail, which also keeps the message from any ARC override.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from auth_helpers import ARC_SUITE, crlf
from dns_server import DnsTestServer
from harness import REPO

from gateway.app import Gateway
from gateway.auth.arc import ArcVerdict, ArcVerifier
from gateway.config import load_settings
from gateway.dns import OfflineResolver, Resolver
from gateway.scan import Envelope, scan_message

TERMINATED = (
    "the suite expects no result for a chain an earlier sealer marked cv=fail (draft-18); "
    "RFC 8617 5.2 step 2 makes it fail, which is what we report"
)


def _cases() -> list[Any]:
    with (ARC_SUITE / "arc-draft-validation-tests.yml").open(encoding="utf-8") as f:
        scenarios = list(yaml.safe_load_all(f))
    cases = []
    for scenario in scenarios:
        records = scenario.get("txt-records") or {}
        for name, test in scenario["tests"].items():
            expected = str(test["cv"]).strip().lower()
            marks = []
            if expected == "":
                marks.append(pytest.mark.xfail(reason=TERMINATED, strict=True))
            cases.append(pytest.param(test["message"], expected, records, id=name, marks=marks))
    return cases


CASES = _cases()


def test_the_whole_suite_is_collected() -> None:
    assert len(CASES) == 171


@pytest.mark.parametrize(("message", "expected", "records"), CASES)
async def test_arc_validation_suite(
    dns_server: DnsTestServer,
    dns_resolver: Resolver,
    message: str,
    expected: str,
    records: dict[str, str],
) -> None:
    for name, text in records.items():
        dns_server.add(name, "TXT", text)
    result = await ArcVerifier(dns_resolver, lifetime=3).verify(crlf(message.encode()))
    assert result.verdict in (ArcVerdict.PASS, ArcVerdict.FAIL, ArcVerdict.NONE)
    assert result.verdict.value == expected, result.reason


def _passing_case() -> tuple[bytes, dict[str, str]]:
    """The first suite case whose chain passes and whose keys are served from its records."""
    for case in CASES:
        message, expected, records = case.values
        if expected == "pass" and records and b"ARC-Seal" in crlf(message.encode()):
            return crlf(message.encode()), records
    raise AssertionError("the suite has no passing chain")


async def test_a_key_that_does_not_exist_is_no_key_not_a_broken_chain(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    """Offline (DNS answering NXDOMAIN, as `scan --dns-off` and a held-out evaluation read mail)
    every sealed message read ARC_FAIL, scored as evidence of spam; a missing key is none."""
    message, records = _passing_case()
    missing = await ArcVerifier(dns_resolver, lifetime=3).verify(message)
    assert missing.verdict is ArcVerdict.FAIL and missing.missing_keys
    for name, text in records.items():
        dns_server.add(name, "TXT", text)
    served = await ArcVerifier(dns_resolver, lifetime=3).verify(message)
    assert served.verdict is ArcVerdict.PASS and served.missing_keys == ()
    tampered = message.replace(b"\r\n\r\n", b"\r\n\r\nadded after sealing\r\n", 1)
    broken = await ArcVerifier(dns_resolver, lifetime=3).verify(tampered)
    assert broken.verdict is ArcVerdict.FAIL and broken.missing_keys == ()


async def test_the_chain_reads_arc_no_key_offline_scored_zero() -> None:
    message, _records = _passing_case()
    settings = load_settings(REPO / "config" / "gateway.toml")
    gateway = Gateway.create(settings, resolver=OfflineResolver())
    envelope = Envelope("a@example.org", ("b@example.com",), "192.0.2.1", "mx.example.org")
    scanned = await scan_message(gateway, "m", message, envelope)
    symbols = {f.symbol for f in scanned.verdict.findings}
    assert "ARC_NO_KEY" in symbols and "ARC_FAIL" not in symbols
    assert gateway.rules.scores["ARC_NO_KEY"] == 0.0
    await gateway.aclose()
