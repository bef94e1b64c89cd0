"""rules/auth.toml [spf] distrust_includes: the forwarder / shared-hosting attack of Shen et al.,
"Weak Links in Authentication Chains" (USENIX Security 2021).

good.example's SPF record includes a shared service (_spf.shared.example) whose IP the attacker
also sends from: SPF passes and aligns for a spoofed good.example From. With the include
distrusted, that pass gives no DMARC credit: only an aligned DKIM signature passes DMARC.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import aiosmtplib
import pytest
from auth_helpers import field_values, key_zone, mail, sign, start_auth_gateway
from dns_server import DnsTestServer
from harness import REPO, GatewayFactory, RecordingSink, RunningGateway

from gateway.auth.policy import AuthPolicy
from gateway.policy import load_rules
from gateway.tomlfile import ConfigErrors

ZONE = {
    "good.example": [("TXT", "v=spf1 include:_spf.shared.example -all")],
    "_spf.shared.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.good.example": [("TXT", "v=DMARC1; p=reject")],
    "client.test.example": [("A", "127.0.0.1")],
}


def rules_with_auth(tmp_path: Path, body: str) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "auth.toml").write_text(body)
    return rules


def test_shipped_policy_distrusts_nothing() -> None:
    shipped = load_rules(REPO / "rules").auth
    assert shipped.distrust_includes == AuthPolicy().distrust_includes


def test_distrust_includes_are_parsed_and_matched(tmp_path: Path) -> None:
    body = '[spf]\ndistrust_includes = ["_spf.Shared.Example.", ".relay.example"]\n'
    policy = load_rules(rules_with_auth(tmp_path, body)).auth
    assert policy.distrust_includes == ("_spf.shared.example", ".relay.example")
    assert policy.distrusted_include("include:_spf.shared.example") == "_spf.shared.example"
    assert policy.distrusted_include("+include:_SPF.shared.example.") == "_spf.shared.example."
    assert policy.distrusted_include("include:eu.relay.example") == "eu.relay.example"
    # ".relay.example" is every name below it, not relay.example itself (gateway.domains)
    assert not policy.distrusted_include("include:relay.example")
    assert not policy.distrusted_include("include:other.shared.example")
    assert not policy.distrusted_include("include:notrelay.example")
    assert not policy.distrusted_include("ip4:127.0.0.1")
    assert not policy.distrusted_include("")
    assert policy.trusted_sealers == ()


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('distrust_includes = ["not a domain"]', "spf.distrust_includes", "is not a domain"),
        ("distrust_includes = [1]", "spf.distrust_includes", "must be a list of domain names"),
        ("distrust = []", "spf.distrust", "unknown setting"),
    ],
)
def test_distrust_includes_errors_name_file_key_and_line(
    tmp_path: Path, line: str, key: str, problem: str
) -> None:
    rules = rules_with_auth(tmp_path, f"# policy\n[spf]\n{line}\n")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    [error] = caught.value.errors
    assert (error.path, error.key, error.line) == (str(rules / "auth.toml"), key, 3)
    assert problem in error.problem


# -- over SMTP ------------------------------------------------------------------------------------


@pytest.fixture
async def shared_gw(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> RunningGateway:
    dns_server.load(key_zone())
    dns_server.load(ZONE)
    return await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)


def distrust_shared(gw: RunningGateway) -> None:
    auth = gw.settings.rules_dir / "auth.toml"
    auth.write_text(
        auth.read_text().replace(
            "distrust_includes = []", 'distrust_includes = [".shared.example"]'
        )
    )
    assert gw.gateway.reload_rules()


async def send(gw: RunningGateway, content: bytes) -> None:
    await aiosmtplib.send(
        content,
        sender="alice@good.example",
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
        local_hostname="client.test.example",
    )


def symbols(content: bytes) -> str:
    [line] = field_values(content, "X-Mailgate-Symbols")
    return line


async def test_without_the_option_a_shared_include_passes_dmarc(
    shared_gw: RunningGateway, sink: RecordingSink
) -> None:
    """The attack itself: an unsigned spoof from the shared service's IP passes DMARC."""
    await send(shared_gw, mail())
    [delivered] = await sink.arrived(1)
    assert "DMARC_PASS" in symbols(delivered.content)
    assert "DMARC_SPF_DISTRUSTED" not in symbols(delivered.content)


async def test_distrusted_include_gives_no_dmarc_credit(
    shared_gw: RunningGateway, sink: RecordingSink
) -> None:
    distrust_shared(shared_gw)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(shared_gw, mail())
    assert refused.value.code == 550
    assert sink.delivered == []


async def test_aligned_dkim_still_passes_with_the_include_distrusted(
    shared_gw: RunningGateway, sink: RecordingSink
) -> None:
    distrust_shared(shared_gw)
    await send(shared_gw, sign(mail()))
    [delivered] = await sink.arrived(1)
    found = symbols(delivered.content)
    assert "DMARC_PASS" in found and "DMARC_SPF_DISTRUSTED" in found and "SPF_PASS" in found
    [ar] = field_values(delivered.content, "Authentication-Results")
    assert "spf=pass" in ar  # SPF did pass; only its DMARC credit is withheld
