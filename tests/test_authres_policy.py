"""rules/auth.toml (trusted ARC sealers) and the shipped policy for the authentication plugins."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from auth_helpers import AUTH_ORDER
from harness import REPO

from gateway.auth.policy import AuthPolicy
from gateway.config import PluginSettings, load_settings
from gateway.plugins import builtin_registry
from gateway.policy import load_rules
from gateway.tomlfile import ConfigErrors
from gateway.verdict import Action


def rules_with_auth(tmp_path: Path, body: str) -> Path:
    rules = tmp_path / "rules"
    if not rules.exists():
        shutil.copytree(REPO / "rules", rules)
    (rules / "auth.toml").write_text(body, encoding="utf-8")
    return rules


def test_shipped_rules_score_every_auth_symbol() -> None:
    assert builtin_registry().check_policy(AUTH_ORDER, load_rules(REPO / "rules")) == []


def test_auth_plugins_are_in_the_default_order_after_what_they_need() -> None:
    """On by default (the resolver is the system's without [dns] nameservers), and in an order
    the registry accepts: DMARC after SPF, DKIM and ARC."""
    for order in (
        PluginSettings().order,
        load_settings(REPO / "config/gateway.toml").plugins.order,
    ):
        assert {"spf", "dkim", "arc", "dmarc"} <= set(order)
        assert order.index("dmarc") > max(order.index(n) for n in ("spf", "dkim", "arc"))
        assert builtin_registry().check_policy(order, load_rules(REPO / "rules")) == []


def test_default_policy_honours_dmarc_and_defers_dns_failures() -> None:
    # DKIM_ERROR's tempfail is the dkim plugin's own on_error, not a line of rules/
    defaults = builtin_registry().policy_defaults(AUTH_ORDER)
    rules = load_rules(REPO / "rules").with_defaults(*defaults)
    reject = rules.forced["DMARC_REJECT"]
    assert reject.action is Action.REJECT and reject.reply is not None
    assert (reject.reply.code, reject.reply.status) == (550, "5.7.1")
    assert rules.forced["DMARC_QUARANTINE"].action is Action.QUARANTINE
    for symbol in ("DMARC_TEMPERROR", "DKIM_TEMPERROR", "ARC_TEMPERROR", "DKIM_ERROR"):
        assert rules.forced[symbol].action is Action.TEMPFAIL
    assert "DMARC_ARC_OVERRIDE" not in rules.forced
    # no trusted sealer, no distrusted include; the shipped well-known senders
    assert dataclasses.replace(rules.auth, known_senders=()) == AuthPolicy()
    assert rules.auth.known_sender("amazon.com") and not rules.auth.known_sender("gmail.com")


def test_rules_without_auth_toml_still_load(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "auth.toml").unlink()
    assert load_rules(rules).auth == AuthPolicy()


def test_trusted_sealers(tmp_path: Path) -> None:
    body = '[arc]\ntrusted_sealers = ["lists.example.org", ".Forward.Example."]\n'
    policy = load_rules(rules_with_auth(tmp_path, body)).auth
    assert policy.trusted_sealers == ("lists.example.org", ".forward.example")
    assert policy.trusts_sealer("LISTS.example.org.")
    assert not policy.trusts_sealer("evil.lists.example.org")
    # ".forward.example" is every domain below it, not forward.example itself (gateway.domains)
    assert not policy.trusts_sealer("forward.example")
    assert policy.trusts_sealer("a.b.forward.example")
    assert not policy.trusts_sealer("notforward.example")


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('trusted_sealers = ["not a domain"]', "arc.trusted_sealers", "is not a domain name"),
        ('trusted_sealers = ["localhost"]', "arc.trusted_sealers", "is not a domain name"),
        ("trusted_sealers = [1]", "arc.trusted_sealers", "must be a list of domain names"),
        ('trusted_sealers = "lists.example.org"', "arc.trusted_sealers", "must be a list"),
        ("trusted = []", "arc.trusted", "unknown setting"),
    ],
)
def test_auth_policy_errors_name_file_key_and_line(
    tmp_path: Path, line: str, key: str, problem: str
) -> None:
    rules = rules_with_auth(tmp_path, f"# policy\n[arc]\n{line}\n")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    [error] = caught.value.errors
    assert (error.path, error.key, error.line) == (str(rules / "auth.toml"), key, 3)
    assert problem in error.problem


def test_unknown_table_in_auth_toml(tmp_path: Path) -> None:
    rules = rules_with_auth(tmp_path, "[arc]\n\n[dmark]\np = 1\n")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    [error] = caught.value.errors
    assert (error.key, error.line) == ("dmark", 3)
