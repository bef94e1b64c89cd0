"""The plugin seam: a plugin is one module + its scores + its corpus file, and nothing else.

The headline test installs a third-party plugin the way pip would (a module and a `.dist-info`
with `entry_points.txt`, on sys.path), adds only `rules/scores.d/NAME.toml`, and sends its corpus
message through the real gateway over SMTP. The others show what the registry refuses (duplicate
names and symbols, unscored symbols, an order that runs a plugin before what it requires, bad
`[plugins.NAME]` tables, with file:line) and what it supplies (the on_error default).
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import sys
import textwrap
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import aiosmtplib
import pytest
from harness import HARNESS_ORDER, REPO, GatewayFactory, RecordingSink, make_settings, message

from gateway.app import Gateway, PolicyError
from gateway.auth.dkim import DkimResult
from gateway.chain import Chain
from gateway.config import PluginSettings, load_settings
from gateway.plugin import (
    ClientInfo,
    MessageContext,
    Phase,
    PluginBase,
    Registry,
    RegistryError,
    Results,
    Services,
)
from gateway.plugins import builtin_plugins, builtin_registry, plugin_registry
from gateway.plugins.clamav import ClamavScan
from gateway.plugins.classifier import ClassifierConfig
from gateway.policy import load_rules
from gateway.tomlfile import ConfigErrors
from gateway.verdict import Action, Finding

# -- a third-party plugin, installed for real ------------------------------------------------------

SHOUT = '''\
"""A third-party plugin: a Subject written in capitals."""

from gateway.plugin import Phase, PluginBase
from gateway.schema import Table
from gateway.verdict import Finding


class ShoutConfig(Table):
    min_letters: int = 8


class ShoutCheck(PluginBase):
    name = "shout"
    phases = frozenset({Phase.DATA})
    symbols = {"SHOUT_SUBJECT": "the Subject is written in capitals"}
    config = ShoutConfig
    on_error = None  # advisory

    def __init__(self, services):
        super().__init__(services)
        self.settings = services.config_for(self.name, ShoutConfig) or ShoutConfig()

    async def check(self, phase, ctx):
        subject = ctx.message.decoded("subject") or ""  # the one parse every plugin reads
        letters = [c for c in subject if c.isalpha()]
        if len(letters) >= self.settings.min_letters and all(c.isupper() for c in letters):
            return [Finding("SHOUT_SUBJECT", detail=subject[:40])]
        return []
'''

SHOUT_SCORES = "[scores]\nSHOUT_SUBJECT = 1.5\n"

LOUD_EML = message(subject="BUY NOW CHEAP")
LOUD_TOML = 'expected = ["SHOUT_SUBJECT"]\nunexpected = []\n'


def install_plugin(
    site: Path, monkeypatch: pytest.MonkeyPatch, entry: str, module: str, source: str, cls: str
) -> None:
    """A distribution as pip leaves it: the module and NAME.dist-info (METADATA, entry points)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[mailgate.plugins]\n{entry} = {module}:{cls}\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, module, raising=False)


async def send(host: str, port: int, raw: bytes) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
    await client.connect()
    try:
        await client.sendmail("alice@example.net", ["bob@example.com"], raw)
        return 250, ""
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        await client.quit()


def symbols_header(content: bytes) -> set[str]:
    head = content.split(b"\r\n\r\n", 1)[0].decode()
    found = re.search(r"^X-Mailgate-Symbols: (.*(?:\r\n[ \t].*)*)", head, re.M)
    assert found, head
    return {item.split("(")[0] for item in re.split(r"[,\s]+", found.group(1)) if item}


async def test_a_third_party_plugin_is_one_module_its_scores_and_its_corpus_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sink: RecordingSink,
    start_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin_tree = tmp_path / "shout-plugin"
    install_plugin(
        plugin_tree / "site", monkeypatch, "shout", "mailgate_shout", SHOUT, "ShoutCheck"
    )
    corpus = plugin_tree / "corpus" / "shout"
    corpus.mkdir(parents=True)
    (corpus / "loud.eml").write_bytes(LOUD_EML)
    (corpus / "loud.toml").write_text(LOUD_TOML, encoding="utf-8")
    # the one policy edit: a score file beside scores.toml, which is left as shipped
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    (tmp_path / "rules" / "scores.d").mkdir(exist_ok=True)
    (tmp_path / "rules" / "scores.d" / "shout.toml").write_text(SHOUT_SCORES, encoding="utf-8")
    assert (tmp_path / "rules" / "scores.toml").read_bytes() == (
        REPO / "rules" / "scores.toml"
    ).read_bytes()

    order = (*HARNESS_ORDER, "shout")
    plugins = PluginSettings(order=order, tables={"shout": {"min_letters": 6}})
    caplog.set_level(logging.INFO, logger="mailgate.message")
    gw = await start_gateway(settings=make_settings(tmp_path, sink.port, plugins=plugins))
    assert [p.name for p in gw.gateway.chain.plugins][-1] == "shout"
    assert gw.gateway.chain.plugins[-1].settings.min_letters == 6  # type: ignore[attr-defined]

    expectation = tomllib.loads((corpus / "loud.toml").read_text(encoding="utf-8"))
    code, text = await send(gw.host, gw.port, (corpus / "loud.eml").read_bytes())
    assert code == 250, text
    assert (await send(gw.host, gw.port, message(subject="hello there")))[0] == 250
    delivered = await asyncio.to_thread(sink.wait_for, 2)
    loud, quiet = (symbols_header(d.content) for d in delivered)
    assert set(expectation["expected"]) <= loud
    assert not set(expectation["unexpected"]) & loud
    assert "SHOUT_SUBJECT" not in quiet
    lines = [r.getMessage() for r in caplog.records if r.name == "mailgate.message"]
    assert any("symbols=SHOUT_SUBJECT(1.5)" in line for line in lines), lines
    assert any("shout:" in line for line in lines)  # its time is in the plugins= timings


RAISES = """\
from gateway.plugin import Phase, PluginBase


class Broken(PluginBase):
    name = "broken"
    phases = frozenset({Phase.DATA})
    symbols = {"BROKEN_HIT": "never emitted"}

    async def check(self, phase, ctx):
        raise RuntimeError("bug in a third-party plugin")
"""


async def test_a_plugin_that_raises_defers_the_message_with_no_rules_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sink: RecordingSink,
    start_gateway: GatewayFactory,
) -> None:
    install_plugin(tmp_path / "site", monkeypatch, "broken", "mailgate_broken", RAISES, "Broken")
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    (tmp_path / "rules" / "scores.d").mkdir(exist_ok=True)
    (tmp_path / "rules" / "scores.d" / "broken.toml").write_text("[scores]\nBROKEN_HIT = 1.0\n")
    rules_text = "".join(p.read_text() for p in (tmp_path / "rules").rglob("*.toml"))
    assert "BROKEN_ERROR" not in rules_text
    plugins = PluginSettings(order=("headers", "broken"))
    gw = await start_gateway(settings=make_settings(tmp_path, sink.port, plugins=plugins))
    code, text = await send(gw.host, gw.port, message())
    assert code == 451, text  # PluginBase.on_error: tempfail, the sender retries
    assert sink.delivered == []
    assert gw.gateway.rules.forced["BROKEN_ERROR"].action is Action.TEMPFAIL
    assert gw.gateway.rules.scores["BROKEN_TIMEOUT"] == 0.0


def test_rules_still_override_the_on_error_default(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    actions = (rules / "actions.toml").read_text() + 'HEADERS_ERROR = "quarantine"\n'
    (rules / "actions.toml").write_text(actions)
    settings = make_settings(tmp_path, 1)
    gateway = Gateway.create(settings, builtin_registry())
    assert gateway.rules.forced["HEADERS_ERROR"].action is Action.QUARANTINE
    assert gateway.rules.forced["HEADERS_TIMEOUT"].action is Action.TEMPFAIL
    assert "CLASSIFIER_ERROR" not in gateway.rules.forced  # not in the order: no default


def test_an_entry_point_may_not_reuse_a_builtin_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = RAISES.replace('"broken"', '"spf"').replace("BROKEN_HIT", "FAKE_SPF_HIT")
    install_plugin(tmp_path / "site", monkeypatch, "spf", "mailgate_fake_spf", source, "Broken")
    with pytest.raises(RegistryError) as caught:
        plugin_registry()
    text = str(caught.value)
    assert "'spf' registered twice" in text
    assert "gateway.plugins.spf.SpfCheck" in text and "mailgate_fake_spf" in text


def test_an_entry_point_may_not_reuse_a_symbol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = RAISES.replace("BROKEN_HIT", "SPF_PASS")
    install_plugin(tmp_path / "site", monkeypatch, "broken", "mailgate_steals", source, "Broken")
    with pytest.raises(RegistryError, match="symbol SPF_PASS of plugin 'broken' is already"):
        plugin_registry()


def test_an_entry_point_name_must_be_the_plugins_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path / "site", monkeypatch, "other", "mailgate_misnamed", RAISES, "Broken")
    with pytest.raises(RegistryError, match="names a plugin called 'broken'"):
        plugin_registry()


def test_a_broken_entry_point_is_named_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path / "site", monkeypatch, "bad", "mailgate_bad", "import nope\n", "X")
    with pytest.raises(RegistryError, match=r"entry point 'bad' .* cannot be loaded"):
        plugin_registry()
    settings = make_settings(tmp_path, 1)
    with pytest.raises(PolicyError, match="mailgate_bad"):
        Gateway.create(settings)


def test_an_unscored_plugin_symbol_stops_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path / "site", monkeypatch, "broken", "mailgate_unscored", RAISES, "Broken")
    settings = make_settings(tmp_path, 1, plugins=PluginSettings(order=("headers", "broken")))
    with pytest.raises(PolicyError) as caught:
        Gateway.create(settings)
    text = str(caught.value)
    assert "symbol BROKEN_HIT (plugin 'broken') has no score" in text
    assert "scores.d/broken.toml" in text
    assert "BROKEN_ERROR" not in text and "BROKEN_TIMEOUT" not in text


# -- discovery -------------------------------------------------------------------------------------


def test_builtins_are_found_by_scanning_the_package() -> None:
    names = sorted(p.name for p in builtin_plugins())
    auth = ["arc", "dkim", "dmarc", "spf"]
    others = ["attachments", "clamav", "classifier", "content", "headers", "limits", "links"]
    others += ["lists", "mime", "qr", "rbl", "tls", "identity"]
    assert names == sorted([*auth, *others])
    # every built-in declares its failure policy and every symbol has a score in rules/
    registry = builtin_registry()
    order = sorted(registry.names(), key=lambda name: name != "qr")  # qr provides for links
    assert registry.check_policy(order, load_rules(REPO / "rules")) == []


# -- requires / provides ---------------------------------------------------------------------------


def test_an_order_that_runs_dmarc_before_dkim_is_refused_naming_both() -> None:
    registry = builtin_registry()
    problems = registry.order_problems(["lists", "dmarc", "dkim"])
    assert problems == [
        "plugins.order: plugin 'dmarc' requires DkimResult at DATA, but its provider 'dkim' "
        "runs after it: put 'dkim' before 'dmarc'"
    ]
    missing = registry.order_problems(["spf", "dmarc"])
    assert missing == [
        "plugins.order: plugin 'dmarc' requires DkimResult, which no plugin in the order "
        "provides (add 'dkim')"
    ]
    # an optional requirement (ArcResult) provided later is refused too: it would be missed
    assert registry.order_problems(["dkim", "dmarc", "arc"]) == [
        "plugins.order: plugin 'dmarc' reads ArcResult at DATA, but its provider 'arc' runs "
        "after it: put 'arc' before 'dmarc'"
    ]
    # ... but spf listed after dmarc is fine: it runs at MAIL, before any DATA plugin
    assert registry.order_problems(["dkim", "dmarc", "spf"]) == []
    assert registry.order_problems(["spf", "dkim", "arc", "dmarc"]) == []


def test_mailgate_check_refuses_the_wrong_order(tmp_path: Path) -> None:
    order = ("lists", "dmarc", "dkim")
    settings = make_settings(tmp_path, 1, plugins=PluginSettings(order=order))
    with pytest.raises(PolicyError, match="put 'dkim' before 'dmarc'"):
        Gateway.create(settings)


class _Fake(PluginBase):
    name: ClassVar[str] = "fake"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {}


class FailingProvider(_Fake):
    name: ClassVar[str] = "provider"
    symbols: ClassVar[Mapping[str, str]] = {"PROVIDER_OK": "provided"}
    provides: ClassVar[frozenset[type[Any]]] = frozenset({DkimResult})

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        raise RuntimeError("no key")


class Consumer(_Fake):
    name: ClassVar[str] = "consumer"
    symbols: ClassVar[Mapping[str, str]] = {"CONSUMER_SAW": "read the result"}
    requires: ClassVar[frozenset[type[Any]]] = frozenset({DkimResult})
    ran: ClassVar[list[bool]] = []

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        Consumer.ran.append(True)
        return [Finding("CONSUMER_SAW")]


async def test_a_consumer_whose_provider_failed_is_not_run_on_half_the_evidence(
    tmp_path: Path,
) -> None:
    """Before: dmarc re-verified DKIM itself when ctx.dkim was missing. Now the chain refuses
    to run a plugin without its required result, and fails it closed (its _ERROR symbol)."""
    settings = make_settings(tmp_path, 1)
    registry = Registry()
    registry.register(FailingProvider)
    registry.register(Consumer)
    order = ("provider", "consumer")
    settings = make_settings(tmp_path, 1, plugins=PluginSettings(order=order))
    chain = Chain.build(registry, Services(settings))
    rules = load_rules(settings.rules_dir)
    ctx = MessageContext(client=ClientInfo(ip="192.0.2.1", port=25), rules=rules, settings=settings)
    found = await chain.run(Phase.DATA, ctx)
    assert [(f.symbol, f.detail) for f in found] == [
        ("PROVIDER_ERROR", "RuntimeError"),
        ("CONSUMER_ERROR", "no DkimResult"),
    ]
    assert Consumer.ran == []
    verdict = rules.with_defaults(*registry.policy_defaults(order)).decide(found)
    assert verdict.action is Action.TEMPFAIL


def test_results_are_kept_by_type() -> None:
    results = Results()
    assert results.get(DkimResult) is None and DkimResult not in results
    dkim = DkimResult(signatures=())
    results.put(dkim)
    assert results.get(DkimResult) is dkim and DkimResult in results
    assert results.types() == frozenset({DkimResult})


def test_declarations_the_registry_cannot_honour_are_refused() -> None:
    class RelaysOnError(_Fake):
        name: ClassVar[str] = "relayer"
        on_error: ClassVar[Action | None] = Action.RELAY

    class BadName(_Fake):
        name: ClassVar[str] = "Bad-Name"

    with pytest.raises(RegistryError, match="on_error 'relay'"):
        Registry().register(RelaysOnError)
    with pytest.raises(RegistryError, match="lower-case letters"):
        Registry().register(BadName)


# -- [plugins.NAME] tables -------------------------------------------------------------------------


def config_with(tmp_path: Path, order: str, extra: str) -> Path:
    """A copy of config/gateway.toml with another order and tables appended; rules beside it."""
    shutil.copytree(REPO / "rules", tmp_path / "rules", dirs_exist_ok=True)
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    text = (REPO / "config" / "gateway.toml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^order = \[.*\]$", f"order = {order}", text)
    path = folder / "gateway.toml"
    path.write_text(text + textwrap.dedent(extra), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """The last line that starts with `needle` (the appended tables come last)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [n for n, line in enumerate(lines, start=1) if line.strip().startswith(needle)][-1]


def test_a_bad_plugin_table_value_is_named_with_file_and_line(tmp_path: Path) -> None:
    path = config_with(
        tmp_path,
        '["lists", "clamav"]',
        """
        [plugins.clamav]
        address = "127.0.0.1:3310"
        timeout = "soon"
        max_stream = -1
        """,
    )
    settings = load_settings(path)
    with pytest.raises(ConfigErrors) as caught:
        Gateway.create(settings)
    got = sorted((e.key, e.line) for e in caught.value.errors)
    assert got == [
        ("plugins.clamav.max_stream", line_of(path, "max_stream = -1")),
        ("plugins.clamav.timeout", line_of(path, 'timeout = "soon"')),
    ]
    assert f"{path}:{line_of(path, 'timeout = ')}:" in str(caught.value)


def test_unknown_plugin_tables_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = config_with(
        tmp_path,
        '["lists", "headers"]',
        """
        [plugins.nosuch]
        x = 1

        [plugins.headers]
        strict = true
        """,
    )
    with pytest.raises(ConfigErrors) as caught:
        Gateway.create(load_settings(path))
    text = str(caught.value)
    assert f"{path}:{line_of(path, '[plugins.nosuch]')}: key 'plugins.nosuch': no plugin" in text
    assert "the headers plugin takes no settings" in text


def test_a_table_of_a_plugin_not_in_the_order_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = config_with(tmp_path, '["lists"]', '\n[plugins.clamav]\naddress = "/run/clamd.ctl"\n')
    Gateway.create(load_settings(path))
    line = line_of(path, "[plugins.clamav]")
    assert f"{path}:{line}: [plugins.clamav] is set, but 'clamav' is not in plugins.order" in (
        caplog.text
    )


def test_clamav_reads_its_own_table_and_still_the_old_one_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = config_with(
        tmp_path, '["lists", "clamav"]', '\n[plugins.clamav]\naddress = "127.0.0.1:3310"\n'
    )
    gateway = Gateway.create(load_settings(path))
    [plugin] = [p for p in gateway.chain.plugins if isinstance(p, ClamavScan)]
    assert plugin.settings.address == "127.0.0.1:3310" and plugin.settings.timeout == 8.0
    assert "deprecated" not in caplog.text

    old = tmp_path / "old"
    old.mkdir()
    path = config_with(old, '["lists", "clamav"]', '\n[clamav]\naddress = "/run/clamd.ctl"\n')
    gateway = Gateway.create(load_settings(path))
    [plugin] = [p for p in gateway.chain.plugins if isinstance(p, ClamavScan)]
    assert plugin.settings.address == "/run/clamd.ctl"
    line = line_of(path, "[clamav]")
    assert f"{path}:{line}: [clamav] is deprecated, move its settings to [plugins.clamav]" in (
        caplog.text
    )


def test_classifier_model_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = config_with(
        tmp_path, '["lists"]', '\n[plugins.classifier]\nmodel = "../models/other.npz"\n'
    )
    settings = load_settings(path)
    registry = builtin_registry()
    tables = registry.validate_tables(settings)
    table = tables["classifier"]
    assert isinstance(table, ClassifierConfig)
    assert table.model == (tmp_path / "models" / "other.npz").resolve()


# -- scores.d ------------------------------------------------------------------------------------


def test_a_symbol_scored_twice_is_an_error_naming_both_places(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "scores.d").mkdir(exist_ok=True)
    (rules / "scores.d" / "extra.toml").write_text("[scores]\n\nHDR_FROM_MISSING = 9.0\n")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    [error] = caught.value.errors
    first = line_of(rules / "scores.toml", "HDR_FROM_MISSING =")
    assert str(error) == (
        f"{rules / 'scores.d' / 'extra.toml'}:3: key 'scores.HDR_FROM_MISSING': "
        f"HDR_FROM_MISSING is already scored at {rules / 'scores.toml'}:{first}"
    )


def test_scores_d_files_are_part_of_the_policy_version(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    before = load_rules(rules).version
    (rules / "scores.d").mkdir(exist_ok=True)
    (rules / "scores.d" / "x.toml").write_text("[scores]\nX_HIT = 1.0\n")
    after = load_rules(rules)
    assert after.version != before and after.scores["X_HIT"] == 1.0
    assert after.where("X_HIT") == f"{rules / 'scores.d' / 'x.toml'}:2"
