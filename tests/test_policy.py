"""Policy: combine(), rules/ loading and its error reports, the plugin registry, the chain's
fail-closed handling, and the built-in plugins on small crafted messages."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from harness import HARNESS_ORDER, REPO

from gateway.chain import Chain
from gateway.config import PluginSettings, Settings, load_settings
from gateway.front_symbols import FRONT_SYMBOLS
from gateway.plugin import (
    ClientInfo,
    MessageContext,
    Phase,
    Registry,
    RegistryError,
    Services,
)
from gateway.plugins import builtin_registry
from gateway.policy import RuleSet, load_rules
from gateway.tomlfile import ConfigError, ConfigErrors
from gateway.verdict import Action, Finding, ForcedAction, Replies, SmtpReply, combine

# -- combine() -----------------------------------------------------------------------------------

SCORES = {"A": 2.0, "B": 4.0, "ALLOWED": -50.0, "BLOCKED": 1.0, "DEFER": 0.0, "HOLD": 0.0}


def test_combine_below_quarantine_threshold_relays() -> None:
    verdict = combine([Finding("A"), Finding("B")], SCORES, {}, 6.5, 15.0)
    assert verdict.action is Action.RELAY
    assert verdict.score == 6.0
    assert verdict.reply == Replies.OK
    assert verdict.forced_by is None
    assert [f.score for f in verdict.findings] == [2.0, 4.0]


def test_combine_thresholds_are_inclusive_and_weights_multiply() -> None:
    at_quarantine = combine([Finding("A"), Finding("B")], SCORES, {}, 6.0, 15.0)
    assert at_quarantine.action is Action.QUARANTINE
    assert at_quarantine.reply == Replies.QUARANTINED
    # weight 3.75 x score 4 = 15: exactly the reject threshold
    at_reject = combine([Finding("B", weight=3.75)], SCORES, {}, 6.0, 15.0)
    assert at_reject.action is Action.REJECT
    assert at_reject.score == 15.0
    assert at_reject.reply == Replies.POLICY_REJECT
    assert "reject threshold" in at_reject.reason


def test_combine_unscored_symbol_counts_zero() -> None:
    verdict = combine([Finding("UNKNOWN")], SCORES, {}, 6.0, 15.0)
    assert verdict.action is Action.RELAY
    assert verdict.score == 0.0


def test_forced_action_beats_a_low_score_and_uses_its_reply() -> None:
    reply = SmtpReply(550, "5.7.1", "Sender address blocked by policy")
    forced = {"BLOCKED": ForcedAction(Action.REJECT, reply)}
    verdict = combine([Finding("BLOCKED")], SCORES, forced, 6.0, 15.0)
    assert verdict.action is Action.REJECT
    assert verdict.reply == reply
    assert verdict.forced_by == "BLOCKED"
    assert verdict.score == 1.0


def test_forced_action_without_reply_gets_the_default_reply() -> None:
    forced = {"DEFER": ForcedAction(Action.TEMPFAIL)}
    verdict = combine([Finding("DEFER")], SCORES, forced, 6.0, 15.0)
    assert verdict.action is Action.TEMPFAIL
    assert verdict.reply == Replies.TEMPFAIL


def test_forced_action_beats_a_high_score_too() -> None:
    # A forced quarantine keeps a message out of reject even when the score says reject.
    forced = {"HOLD": ForcedAction(Action.QUARANTINE)}
    verdict = combine([Finding("B", weight=10), Finding("HOLD")], SCORES, forced, 6.0, 15.0)
    assert verdict.action is Action.QUARANTINE
    assert verdict.forced_by == "HOLD"


@pytest.mark.parametrize("order", [("HOLD", "DEFER", "BLOCKED"), ("BLOCKED", "DEFER", "HOLD")])
def test_most_severe_forced_action_wins_in_any_order(order: tuple[str, ...]) -> None:
    forced = {
        "HOLD": ForcedAction(Action.QUARANTINE),
        "DEFER": ForcedAction(Action.TEMPFAIL),
        "BLOCKED": ForcedAction(Action.REJECT),
    }
    verdict = combine([Finding(s) for s in order], SCORES, forced, 6.0, 15.0)
    assert verdict.action is Action.REJECT
    assert verdict.forced_by == "BLOCKED"
    without_reject = combine(
        [Finding(s) for s in order if s != "BLOCKED"], SCORES, forced, 6.0, 15.0
    )
    assert without_reject.action is Action.TEMPFAIL
    assert without_reject.forced_by == "DEFER"


def test_allow_list_negative_score_cannot_hide_a_forced_reject() -> None:
    forced = {"BLOCKED": ForcedAction(Action.REJECT), "ALLOWED": ForcedAction(Action.RELAY)}
    verdict = combine([Finding("ALLOWED"), Finding("BLOCKED")], SCORES, forced, 6.0, 15.0)
    assert verdict.score == -49.0
    assert verdict.action is Action.REJECT
    assert verdict.forced_by == "BLOCKED"
    # ...and with the allow entry only scored (the shipped style), still a reject
    verdict = combine(
        [Finding("ALLOWED"), Finding("BLOCKED")],
        SCORES,
        {"BLOCKED": ForcedAction(Action.REJECT)},
        6.0,
        15.0,
    )
    assert verdict.action is Action.REJECT


# -- load_rules ----------------------------------------------------------------------------------


def test_shipped_rules_load_and_fit_the_builtin_plugins() -> None:
    rules = load_rules(REPO / "rules")
    assert rules.quarantine_at < rules.reject_at
    assert rules.scores["LIST_CLIENT_BLOCKED"] > 0
    assert rules.forced["LIST_SENDER_BLOCKED"].action is Action.REJECT
    assert len(rules.version) == 12
    settings = load_settings(REPO / "config" / "gateway.toml")
    assert builtin_registry().check_policy(settings.plugins.order, rules) == []


# A small, valid rules/ written here so the line numbers below are known exactly.
GOOD = {
    "scores.toml": """\
        # scores
        [scores]
        LIST_CLIENT_BLOCKED = 20.0
        LIST_CLIENT_ALLOWED = -10.0
        LIST_SENDER_BLOCKED = 20.0
        LIST_SENDER_ALLOWED = -5.0
        LISTS_ERROR = 0.0
        LISTS_TIMEOUT = 0.0
        """,
    "actions.toml": """\
        # actions
        [thresholds]
        quarantine = 6.0
        reject = 15.0

        [forced]
        LIST_SENDER_BLOCKED = { action = "reject", reply = "550 5.7.1 Sender blocked" }
        LISTS_ERROR = "tempfail"
        """,
    "lists.toml": """\
        [client_ip]
        allow = []
        block = []

        [sender]
        allow = []
        block = []
        """,
}


def write_rules(directory: Path, **override: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in GOOD.items():
        body = override.get(name.removesuffix(".toml"), text)
        (directory / name).write_text(textwrap.dedent(body), encoding="utf-8")
    return directory


def only_error(directory: Path) -> ConfigError:
    with pytest.raises(ConfigErrors) as caught:
        load_rules(directory)
    assert len(caught.value.errors) == 1, str(caught.value)
    return caught.value.errors[0]


def assert_names(err: ConfigError, path: Path, key: str | None, line: int) -> None:
    assert err.path == str(path)
    assert err.key == key
    assert err.line == line
    text = str(err)
    assert text.startswith(f"{path}:{line}:"), text
    if key:
        assert f"'{key}'" in text


def test_minimal_rules_are_valid(tmp_path: Path) -> None:
    rules = load_rules(write_rules(tmp_path / "rules"))
    assert rules.forced["LIST_SENDER_BLOCKED"].reply == SmtpReply(550, "5.7.1", "Sender blocked")
    assert rules.where("LISTS_ERROR").endswith("scores.toml:7")


def test_bad_toml_syntax_names_file_key_and_line(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "rules",
        scores="""\
        [scores]
        LIST_CLIENT_BLOCKED = 20.0
        LIST_CLIENT_ALLOWED = = -10.0
        """,
    )
    err = only_error(rules)
    assert_names(err, rules / "scores.toml", "scores.LIST_CLIENT_ALLOWED", 3)
    assert "not valid TOML" in err.problem


def test_duplicate_toml_key_names_the_second_line(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "rules",
        lists="""\
        [client_ip]
        allow = []
        block = []
        # again
        block = ["192.0.2.1"]
        """,
    )
    err = only_error(rules)
    assert_names(err, rules / "lists.toml", "client_ip.block", 5)


def test_score_that_is_a_string(tmp_path: Path) -> None:
    text = GOOD["scores.toml"].replace("LIST_SENDER_ALLOWED = -5.0", 'LIST_SENDER_ALLOWED = "-5"')
    rules = write_rules(tmp_path / "rules", scores=text)
    err = only_error(rules)
    assert_names(err, rules / "scores.toml", "scores.LIST_SENDER_ALLOWED", 6)
    assert "'-5'" in err.problem


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "true"])
def test_score_that_is_not_a_finite_number(tmp_path: Path, value: str) -> None:
    # nan in a threshold or total compares false with everything: every message would relay.
    text = GOOD["scores.toml"].replace("LISTS_TIMEOUT = 0.0", f"LISTS_TIMEOUT = {value}")
    rules = write_rules(tmp_path / "rules", scores=text)
    assert_names(only_error(rules), rules / "scores.toml", "scores.LISTS_TIMEOUT", 8)


def test_nan_threshold_is_refused(tmp_path: Path) -> None:
    text = GOOD["actions.toml"].replace("reject = 15.0", "reject = nan")
    rules = write_rules(tmp_path / "rules", actions=text)
    assert_names(only_error(rules), rules / "actions.toml", "thresholds.reject", 4)


def test_unknown_table(tmp_path: Path) -> None:
    text = GOOD["scores.toml"] + "\n[score]\nMSG_EMPTY = 1.0\n"
    rules = write_rules(tmp_path / "rules", scores=text)
    err = only_error(rules)
    assert_names(err, rules / "scores.toml", "score", 10)
    assert "unknown table" in err.problem


def test_forced_action_bounce(tmp_path: Path) -> None:
    text = GOOD["actions.toml"].replace('LISTS_ERROR = "tempfail"', 'LISTS_ERROR = "bounce"')
    rules = write_rules(tmp_path / "rules", actions=text)
    err = only_error(rules)
    assert_names(err, rules / "actions.toml", "forced.LISTS_ERROR", 8)
    assert "'bounce'" in err.problem


@pytest.mark.parametrize("reply", ["250 ok", "250 2.0.0 ok", "451 4.7.1 later"])
def test_forced_reject_with_a_non_5xx_reply(tmp_path: Path, reply: str) -> None:
    text = GOOD["actions.toml"].replace("550 5.7.1 Sender blocked", reply)
    rules = write_rules(tmp_path / "rules", actions=text)
    err = only_error(rules)
    assert_names(err, rules / "actions.toml", "forced.LIST_SENDER_BLOCKED", 7)


def test_quarantine_threshold_above_reject(tmp_path: Path) -> None:
    text = GOOD["actions.toml"].replace("quarantine = 6.0", "quarantine = 16.0")
    rules = write_rules(tmp_path / "rules", actions=text)
    err = only_error(rules)
    assert_names(err, rules / "actions.toml", "thresholds.quarantine", 3)
    assert "thresholds.reject" in err.problem


def test_bad_cidr_in_lists(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "rules",
        lists="""\
        [client_ip]
        allow = ["2001:db8::/32"]
        block = [
          "192.0.2.0/24",
          "10.0.0.0/33",
        ]

        [sender]
        allow = []
        block = []
        """,
    )
    err = only_error(rules)
    assert_names(err, rules / "lists.toml", "client_ip.block", 3)
    assert "'10.0.0.0/33'" in err.problem


def test_every_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    actions = (
        GOOD["actions.toml"]
        .replace("quarantine = 6.0", "quarantine = 16.0")
        .replace('LISTS_ERROR = "tempfail"', 'LISTS_ERROR = "bounce"')
    )
    rules = write_rules(tmp_path / "rules", actions=actions)
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    lines = sorted((e.key, e.line) for e in caught.value.errors)
    assert lines == [("forced.LISTS_ERROR", 8), ("thresholds.quarantine", 3)]
    assert f"{rules / 'actions.toml'}:3:" in str(caught.value)
    assert f"{rules / 'actions.toml'}:8:" in str(caught.value)


def test_missing_rules_file(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules")
    (rules / "lists.toml").unlink()
    err = only_error(rules)
    assert err.path == str(rules / "lists.toml")
    assert "not found" in err.problem


# -- Registry ------------------------------------------------------------------------------------


class _Base:
    name: ClassVar[str] = "base"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {}

    def __init__(self, services: Services) -> None:
        self.services = services

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        return []


class Alpha(_Base):
    name: ClassVar[str] = "alpha"
    symbols: ClassVar[Mapping[str, str]] = {"ALPHA_HIT": "alpha found it"}


class AlphaAgain(_Base):
    name: ClassVar[str] = "alpha"
    symbols: ClassVar[Mapping[str, str]] = {"OTHER_HIT": "other"}


class StealsSymbol(_Base):
    name: ClassVar[str] = "beta"
    symbols: ClassVar[Mapping[str, str]] = {"ALPHA_HIT": "same symbol as alpha"}


class StealsErrorSymbol(_Base):
    name: ClassVar[str] = "gamma"
    symbols: ClassVar[Mapping[str, str]] = {"ALPHA_ERROR": "alpha's chain symbol"}


def test_registry_refuses_a_duplicate_plugin_name() -> None:
    registry = Registry()
    registry.register(Alpha)
    with pytest.raises(RegistryError, match="'alpha' registered twice"):
        registry.register(AlphaAgain)
    assert registry.names() == ["alpha"]


@pytest.mark.parametrize("plugin", [StealsSymbol, StealsErrorSymbol])
def test_registry_refuses_a_duplicate_symbol(plugin: type[_Base]) -> None:
    registry = Registry()
    registry.register(Alpha)
    with pytest.raises(RegistryError, match="already declared by 'alpha'"):
        registry.register(plugin)
    assert registry.names() == ["alpha"]  # nothing half-registered
    assert "OTHER_HIT" not in registry.all_symbols()


def test_registry_knows_the_chain_symbols_of_each_plugin() -> None:
    registry = Registry()
    registry.register(Alpha)
    assert set(registry.all_symbols()) == {"ALPHA_HIT", "ALPHA_ERROR", "ALPHA_TIMEOUT"}
    with pytest.raises(RegistryError, match="unknown plugin 'nope'"):
        registry.get("nope")


def test_check_policy_reports_unscored_and_undeclared_symbols(tmp_path: Path) -> None:
    scores = GOOD["scores.toml"] + "HDR_FROM_MISSING = 3.0\nNOT_DECLARED = 1.0\n"
    rules = load_rules(write_rules(tmp_path / "rules", scores=scores))
    problems = builtin_registry().check_policy(["lists", "headers"], rules)
    scores_path = tmp_path / "rules" / "scores.toml"
    # every headers symbol but HDR_FROM_MISSING lacks a score
    unscored = [p for p in problems if "has no score" in p]
    assert any("symbol HDR_DATE_MISSING (plugin 'headers')" in p for p in unscored)
    # the chain's own HEADERS_ERROR / HEADERS_TIMEOUT are scored by the registry (default 0)
    assert not any("HEADERS_TIMEOUT" in p or "HEADERS_ERROR" in p for p in unscored)
    assert not any("HDR_FROM_MISSING" in p or "LIST_" in p for p in unscored)
    assert all(str(scores_path) in p for p in unscored)
    undeclared = [p for p in problems if "not declared by any plugin" in p]
    assert undeclared == [f"{scores_path}:10: symbol NOT_DECLARED is not declared by any plugin"]
    # the limits plugin is not enabled: its symbols need no score
    assert not any("MSG_" in p for p in problems)


def test_check_policy_reports_unknown_and_repeated_plugins(tmp_path: Path) -> None:
    # the SMTP front's own symbols are always active, so always scored
    front = "".join(f"{symbol} = 0.0\n" for symbol in FRONT_SYMBOLS)
    rules = load_rules(write_rules(tmp_path / "rules", scores=GOOD["scores.toml"] + front))
    problems = builtin_registry().check_policy(["lists", "nope", "lists"], rules)
    assert "plugin 'lists' appears twice in plugins.order" in problems
    assert any("unknown plugin 'nope'" in p for p in problems)
    assert builtin_registry().check_policy(["lists"], rules) == []


# -- Chain ---------------------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """The shipped config with the checks these tests are about (lists, headers, limits...):
    the shipped order also has SPF, DKIM and DMARC, which would need a DNS server."""
    shipped = load_settings(REPO / "config" / "gateway.toml")
    plugins = dataclasses.replace(shipped.plugins, order=HARNESS_ORDER)
    return dataclasses.replace(shipped, plugins=plugins)


@pytest.fixture
def shipped_rules() -> RuleSet:
    return load_rules(REPO / "rules")


def new_ctx(rules: RuleSet, settings: Settings, ip: str = "203.0.113.5") -> MessageContext:
    return MessageContext(client=ClientInfo(ip=ip, port=25), rules=rules, settings=settings)


class Good(_Base):
    name: ClassVar[str] = "good"
    symbols: ClassVar[Mapping[str, str]] = {"GOOD_HIT": "found"}

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        return [Finding("GOOD_HIT", detail="yes")]


class Raises(_Base):
    name: ClassVar[str] = "raiser"

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        raise RuntimeError("boom\x1b[2J")


class Slow(_Base):
    name: ClassVar[str] = "slow"
    cancelled: ClassVar[list[bool]] = []

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            Slow.cancelled.append(True)
            raise
        return []


class Undeclared(_Base):
    name: ClassVar[str] = "liar"
    symbols: ClassVar[Mapping[str, str]] = {"LIAR_OK": "declared"}

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        return [Finding("LIAR_OK"), Finding("SPF_PASS")]


class ReturnsNone(_Base):
    name: ClassVar[str] = "none"

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        return None  # type: ignore[return-value]


class ReturnsStrings(_Base):
    name: ClassVar[str] = "strings"
    symbols: ClassVar[Mapping[str, str]] = {"STRINGS_HIT": "declared"}

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        return ["STRINGS_HIT"]  # type: ignore[list-item]


class ConnectOnly(Good):
    name: ClassVar[str] = "early"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.CONNECT})
    symbols: ClassVar[Mapping[str, str]] = {"GOOD_HIT": "found"}


async def test_chain_turns_failures_into_symbols_and_records_timings(
    shipped_rules: RuleSet, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    services = Services(settings)
    plugins = [Good(services), Raises(services), Slow(services), Undeclared(services)]
    chain = Chain(plugins, PluginSettings(timeout=5.0, timeouts={"slow": 0.05}))
    ctx = new_ctx(shipped_rules, settings)
    found = await chain.run(Phase.DATA, ctx)
    assert [(f.symbol, f.detail) for f in found] == [
        ("GOOD_HIT", "yes"),
        ("RAISER_ERROR", "RuntimeError"),
        ("SLOW_TIMEOUT", "no answer in 0.05s"),
        ("LIAR_OK", ""),
        ("LIAR_ERROR", "undeclared symbol"),
    ]
    assert ctx.findings == found
    assert Slow.cancelled, "the overrunning plugin was not cancelled"
    assert set(ctx.timings) == {"good", "raiser", "slow", "liar"}
    assert 0.05 <= ctx.timings["slow"] < 2.0
    assert all(t >= 0 for t in ctx.timings.values())
    assert "plugin=raiser phase=data raised" in caplog.text
    assert "plugin=liar emitted undeclared symbol SPF_PASS" in caplog.text


async def test_chain_turns_malformed_results_into_error(
    shipped_rules: RuleSet, settings: Settings
) -> None:
    services = Services(settings)
    chain = Chain([ReturnsNone(services), ReturnsStrings(services)], PluginSettings())
    ctx = new_ctx(shipped_rules, settings)
    found = await chain.run(Phase.DATA, ctx)
    assert [f.symbol for f in found] == ["NONE_ERROR", "STRINGS_ERROR"]


async def test_chain_runs_plugins_only_in_their_phases_and_accumulates_timings(
    shipped_rules: RuleSet, settings: Settings
) -> None:
    services = Services(settings)
    chain = Chain([ConnectOnly(services), Good(services)], PluginSettings())
    ctx = new_ctx(shipped_rules, settings)
    assert [f.symbol for f in await chain.run(Phase.CONNECT, ctx)] == ["GOOD_HIT"]
    assert await chain.run(Phase.MAIL, ctx) == []
    assert set(ctx.timings) == {"early"}
    await chain.run(Phase.DATA, ctx)
    first = ctx.timings["good"]
    await chain.run(Phase.DATA, ctx)
    assert ctx.timings["good"] >= first
    assert [f.symbol for f in ctx.findings] == ["GOOD_HIT"] * 3


# -- built-in plugins ----------------------------------------------------------------------------

HEAD = (
    b"From: Alice <alice@example.net>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: hello\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <m1@example.net>\r\n"
)
BODY = b"\r\nHello Bob.\r\n"
DATE = b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
RECEIVED = b"Received: from a.example by b.example; Fri, 27 Nov 2026 10:00:00 +0000\r\n"


async def symbols_of(
    rules: RuleSet,
    settings: Settings,
    raw: bytes = HEAD + BODY,
    ip: str = "203.0.113.5",
    mail_from: str = "alice@example.net",
    rcpts: int = 1,
) -> list[str]:
    """Run every phase of the built-in chain like a transaction would; the symbols found."""
    chain = Chain.build(builtin_registry(), Services(settings))
    ctx = new_ctx(rules, settings, ip)
    await chain.run(Phase.CONNECT, ctx)
    await chain.run(Phase.HELO, ctx)
    ctx.mail_from = mail_from
    await chain.run(Phase.MAIL, ctx)
    for n in range(rcpts):
        ctx.rcpt_tos.append(f"user{n}@example.com")
        await chain.run(Phase.RCPT, ctx)
    ctx.raw = raw
    await chain.run(Phase.DATA, ctx)
    return sorted(f.symbol for f in ctx.findings)


async def test_clean_message_has_no_findings(shipped_rules: RuleSet, settings: Settings) -> None:
    assert await symbols_of(shipped_rules, settings) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (HEAD + b"From: Mallory <mallory@example.org>\r\n" + BODY, ["HDR_FROM_MULTIPLE"]),
        (HEAD.replace(DATE, b"") + BODY, ["HDR_DATE_MISSING"]),
        (HEAD + b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n" + BODY, ["HDR_DATE_MULTIPLE"]),
        (HEAD.replace(b"Message-ID: <m1@example.net>\r\n", b"") + BODY, ["HDR_MESSAGE_ID_MISSING"]),
        (HEAD.replace(b"From: Alice <alice@example.net>\r\n", b"") + BODY, ["HDR_FROM_MISSING"]),
        (HEAD + b"subject: again\r\n" + BODY, ["HDR_DUPLICATE_FIELD"]),
        (BODY, ["HDR_NO_HEADERS"]),
        (b"", ["HDR_NO_HEADERS", "MSG_EMPTY"]),
        (b"\r\n\r\n  \r\n", ["HDR_NO_HEADERS", "MSG_EMPTY"]),
        (RECEIVED * 50 + HEAD + BODY, ["MSG_MAIL_LOOP"]),
        (RECEIVED * 49 + HEAD + BODY, []),
    ],
    ids=[
        "two-from",
        "no-date",
        "two-date",
        "no-message-id",
        "no-from",
        "duplicate-subject",
        "no-headers",
        "empty",
        "blank-lines-only",
        "50-received",
        "49-received",
    ],
)  # fmt: skip
async def test_header_and_limit_symbols(
    shipped_rules: RuleSet, settings: Settings, raw: bytes, expected: list[str]
) -> None:
    assert await symbols_of(shipped_rules, settings, raw=raw) == expected


async def test_duplicate_field_detail_names_the_fields(
    shipped_rules: RuleSet, settings: Settings
) -> None:
    chain = Chain.build(builtin_registry(), Services(settings))
    ctx = new_ctx(shipped_rules, settings)
    ctx.raw = HEAD + b"Subject: again\r\nTO: carol@example.com\r\n" + BODY
    found = await chain.run(Phase.DATA, ctx)
    assert [(f.symbol, f.detail) for f in found] == [("HDR_DUPLICATE_FIELD", "subject,to")]


async def test_many_recipients(shipped_rules: RuleSet, settings: Settings) -> None:
    assert await symbols_of(shipped_rules, settings, rcpts=49) == []
    assert await symbols_of(shipped_rules, settings, rcpts=50) == ["MSG_MANY_RECIPIENTS"]


LISTS = """\
[client_ip]
allow = ["198.51.100.7"]
block = ["192.0.2.0/24", "2001:db8:bad::/48"]

[sender]
allow = ["friend@example.org"]
block = ["Mallory@Example.NET", "spam.example", "@bulk.example", ".evil.example"]
"""


@pytest.fixture
def list_rules(tmp_path: Path) -> RuleSet:
    rules = tmp_path / "rules"
    rules.mkdir()
    for name in ("scores.toml", "actions.toml"):
        (rules / name).write_bytes((REPO / "rules" / name).read_bytes())
    shutil.copytree(REPO / "rules" / "scores.d", rules / "scores.d")  # GTUBE's score is there
    (rules / "lists.toml").write_text(LISTS, encoding="utf-8")
    return load_rules(rules)


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("192.0.2.99", ["LIST_CLIENT_BLOCKED"]),
        ("::ffff:192.0.2.99", ["LIST_CLIENT_BLOCKED"]),
        ("2001:db8:bad::25", ["LIST_CLIENT_BLOCKED"]),
        ("2001:db8:900d::25", []),
        ("192.0.3.1", []),
        ("::ffff:192.0.3.1", []),
        ("198.51.100.7", ["LIST_CLIENT_ALLOWED"]),
        ("::ffff:198.51.100.7", ["LIST_CLIENT_ALLOWED"]),
        ("not-an-ip", []),
    ],
)
async def test_client_ip_lists(
    list_rules: RuleSet, settings: Settings, ip: str, expected: list[str]
) -> None:
    assert await symbols_of(list_rules, settings, ip=ip) == expected


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("mallory@example.net", ["LIST_SENDER_BLOCKED"]),  # exact address, any case
        ("MALLORY@example.NET", ["LIST_SENDER_BLOCKED"]),
        ("alice@example.net", []),  # same domain, other user
        ("anyone@spam.example", ["LIST_SENDER_BLOCKED"]),  # bare domain
        ("anyone@sub.spam.example", []),  # ...not its subdomains
        ("anyone@bulk.example", ["LIST_SENDER_BLOCKED"]),  # @domain
        ("anyone@a.evil.example", ["LIST_SENDER_BLOCKED"]),  # .domain: below it
        ("anyone@x.y.evil.example", ["LIST_SENDER_BLOCKED"]),
        ("anyone@evil.example", []),  # ...not the domain itself
        ("anyone@notevil.example", []),  # ...nor a name that merely ends the same
        ("anyone@spam.example.", ["LIST_SENDER_BLOCKED"]),  # a trailing dot is the same domain
        ("MALLORY@example.net.", ["LIST_SENDER_BLOCKED"]),
        ("friend@example.org", ["LIST_SENDER_ALLOWED"]),
        ("", []),  # null sender <>
    ],
)
async def test_sender_lists(
    list_rules: RuleSet, settings: Settings, sender: str, expected: list[str]
) -> None:
    assert await symbols_of(list_rules, settings, mail_from=sender) == expected


async def test_blocked_sender_is_forced_reject_at_mail_despite_allowed_client(
    list_rules: RuleSet, settings: Settings
) -> None:
    chain = Chain.build(builtin_registry(), Services(settings))
    ctx = new_ctx(list_rules, settings, ip="198.51.100.7")
    await chain.run(Phase.CONNECT, ctx)
    assert list_rules.forced_now(ctx.findings) is None
    ctx.mail_from = "someone@bulk.example"
    await chain.run(Phase.MAIL, ctx)
    verdict = list_rules.forced_now(ctx.findings)
    assert verdict is not None
    assert verdict.action is Action.REJECT
    assert verdict.score == 10.0  # -10 allowed client + 20 blocked sender
    assert str(verdict.reply) == "550 5.7.1 Sender address blocked by policy"


def test_plugin_timeout_for_a_plugin_not_in_the_order_is_refused(tmp_path: Path) -> None:
    """A misspelt name in plugins.timeouts would silently keep the default time limit."""
    import dataclasses

    from gateway.app import PolicyError, load_checked_rules

    base = load_settings(REPO / "config" / "gateway.toml")
    plugins = dataclasses.replace(base.plugins, timeouts={"header": 2.0})
    settings = dataclasses.replace(base, plugins=plugins)
    with pytest.raises(PolicyError, match=r"plugins\.timeouts names 'header'"):
        load_checked_rules(settings, builtin_registry())


def test_forced_symbol_must_be_upper_case(tmp_path: Path) -> None:
    """A forced action for `lists_error` never matched a finding and loaded silently: now the
    same rule as for scores applies (the reading was wrong)."""
    text = GOOD["actions.toml"] + 'lists_error = "tempfail"\n'
    rules = write_rules(tmp_path / "rules", actions=text)
    err = only_error(rules)
    assert_names(err, rules / "actions.toml", "forced.lists_error", 9)
    assert "UPPER_CASE" in err.problem


def test_forced_action_alone_or_as_a_table_name_the_symbol(tmp_path: Path) -> None:
    text = GOOD["actions.toml"].replace(
        'LISTS_ERROR = "tempfail"', 'LISTS_ERROR = { action = "tempfail", why = 1 }'
    )
    rules = write_rules(tmp_path / "rules", actions=text)
    err = only_error(rules)
    assert_names(err, rules / "actions.toml", "forced.LISTS_ERROR.why", 8)
    assert "known: action, reply" in err.problem


def test_fitted_scores_override_a_content_rule_and_a_typo_is_named(tmp_path: Path) -> None:
    """rules fit fits content-rule symbols too: fitted.toml may override their own score, and
    still names a symbol nothing scores."""
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "fitted.toml").write_text("[scores]\nCONTENT_PHISH_LURE = 1.25\n", encoding="utf-8")
    assert load_rules(rules).scores["CONTENT_PHISH_LURE"] == 1.25
    (rules / "fitted.toml").write_text("[scores]\nNO_SUCH_SYMBOL = 1.0\n", encoding="utf-8")
    with pytest.raises(ConfigErrors, match=r"fitted\.toml:2.*no score file scores"):
        load_rules(rules)
