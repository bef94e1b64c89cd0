"""The RFC 7208 (and RFC 4408) SPF test suites through our SPF plugin, our resolver and DNS.

Each suite case becomes one test: its zone data is loaded into the loopback DNS server, and the
spf plugin (gateway.plugins.spf) checks the case's client IP, MAIL FROM and HELO as it would at
the MAIL phase, with the gateway's resolver asking that server over UDP/TCP. The case passes
when the "MAIL FROM" identity's result is one the suite accepts, the matching SPF_* finding is
emitted, and the explanation matches where the suite gives one. As in the suite's own driver
(pyspf's test/testspf.py), the default explanation is set to "DEFAULT".

Cases that cannot pass go in XFAIL with the reason (strict: a fix makes them fail loudly). There
are none: all 203 RFC 7208 cases and all 191 RFC 4408 cases pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dns_server import SPF_SUITE_RESULTS, DnsTestServer

from gateway.auth.spf import SpfResult
from gateway.config import DnsSettings, load_settings
from gateway.dns import Resolver
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins.spf import SpfCheck
from gateway.policy import load_rules

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO.parent / "shared" / "vectors" / "pyspf" / "test"
SUITES = {"rfc7208": VECTORS / "rfc7208-tests.yml", "rfc4408": VECTORS / "rfc4408-tests.yml"}
SUITE_DNS_TIMEOUT = 0.3  # the suite's TIMEOUT records must time out quickly

# (suite, case) -> why it cannot pass. Empty: every case passes.
XFAIL: dict[tuple[str, str], str] = {}


@dataclasses.dataclass(frozen=True)
class Case:
    suite: str
    name: str
    spec: str
    data: dict[str, Any]
    zonedata: dict[str, Any]


def load_cases() -> list[Any]:
    params: list[Any] = []
    for suite, path in SUITES.items():
        if not path.exists():
            params.append(
                pytest.param(
                    None,
                    id=f"{suite}-missing",
                    marks=pytest.mark.skip(
                        reason=f"{path} not found (the shared test vectors are not checked out)"
                    ),
                )
            )
            continue
        with path.open("rb") as stream:
            for scenario in yaml.safe_load_all(stream):
                for name, data in scenario["tests"].items():
                    case = Case(suite, name, str(data.get("spec", "")), data, scenario["zonedata"])
                    marks = []
                    if (suite, name) in XFAIL:
                        marks.append(pytest.mark.xfail(reason=XFAIL[suite, name], strict=True))
                    params.append(pytest.param(case, id=f"{suite}:{name}", marks=marks))
    return params


CASES = load_cases()


@pytest.fixture(scope="module")
def suite_dns() -> Iterator[DnsTestServer]:
    """One loopback DNS server for the module; each case loads its own zone data."""
    server = DnsTestServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rules_and_settings() -> tuple[Any, Any]:
    return load_rules(REPO / "rules"), load_settings(None)


@pytest.mark.parametrize("case", CASES)
async def test_spf_suite_case(
    case: Case, suite_dns: DnsTestServer, rules_and_settings: tuple[Any, Any]
) -> None:
    rules, settings = rules_and_settings
    suite_dns.clear()
    suite_dns.load_spf_suite(case.zonedata)
    dns = DnsSettings(nameservers=(suite_dns.host,), port=suite_dns.port, timeout=SUITE_DNS_TIMEOUT)
    settings = dataclasses.replace(settings, dns=dns)
    resolver = Resolver.from_settings(settings.dns)  # fresh cache: every case has its own zone
    plugin = SpfCheck(Services(settings, resolver))
    plugin.evaluator.default_explanation = "DEFAULT"  # the suite driver's convention
    data = case.data
    ctx = MessageContext(
        client=ClientInfo(ip=str(data["host"]), port=25, helo=str(data["helo"])),
        rules=rules,
        settings=settings,
        mail_from=str(data["mailfrom"]),
    )
    try:
        findings = await plugin.check(Phase.MAIL, ctx)
    finally:
        await resolver.aclose()
    expected = data["result"] if isinstance(data["result"], list) else [data["result"]]
    spf = ctx.results.get(SpfResult)
    assert spf is not None
    got = spf.mailfrom
    symbols = {f.symbol for f in findings}
    problems = []
    if got.result.value not in expected:
        problems.append(f"result {got.result.value}, expected one of {expected}")
    if f"SPF_{got.result.name}" not in symbols:
        problems.append(f"no SPF_{got.result.name} finding in {sorted(symbols)}")
    if "explanation" in data and got.explanation != data["explanation"]:
        problems.append(f"explanation {got.explanation!r}, expected {data['explanation']!r}")
    counts = SPF_SUITE_RESULTS.setdefault(case.suite, [0, 0])
    counts[0 if not problems else 1] += 1
    assert not problems, f"{case.suite} {case.name} (RFC section {case.spec}): {problems}; {got}"
