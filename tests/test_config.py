"""Operator settings: config/gateway.toml loads, and every mistake names file, key and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from harness import REPO

from gateway.config import DEFAULT_PLUGIN_ORDER, load_settings
from gateway.tomlfile import ConfigError, ConfigErrors

SHIPPED = REPO / "config" / "gateway.toml"


def test_shipped_config_loads() -> None:
    settings = load_settings(SHIPPED)
    assert settings.source == SHIPPED.resolve()
    assert settings.listen.host == "127.0.0.1"
    assert settings.relay.domains == ("example.com",)
    assert settings.limits.max_line_length >= 1000
    assert settings.tls.cert_file is None and settings.tls.key_file is None
    # every check that needs no server of its own, the same with a file as without one
    assert settings.plugins.order == DEFAULT_PLUGIN_ORDER == load_settings(None).plugins.order
    assert {"spf", "dkim", "arc", "dmarc", "classifier", "tls", "rbl"} <= set(DEFAULT_PLUGIN_ORDER)
    assert "clamav" not in DEFAULT_PLUGIN_ORDER  # needs clamd: opt-in
    # relative paths in the shipped file point at the repository's folders
    assert settings.rules_dir == (REPO / "rules").resolve()
    assert settings.quarantine_dir == (REPO / "var" / "quarantine").resolve()
    assert settings.dev_maildir == (REPO / "var" / "maildir").resolve()


# A small config written here so that the line numbers below are known exactly.
BASE = """\
# test config
[listen]
address = "127.0.0.1"
port = 2525

[relay]
domains = ["example.com"]

[limits]
max_recipients = 100
max_line_length = 4096

[tls]

[paths]
rules = "rules"
"""


def write_config(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "etc" / "mailgate"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(path: Path) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as caught:
        load_settings(path)
    return caught.value.errors


def assert_one(path: Path, key: str, line: int) -> ConfigError:
    errors = errors_of(path)
    # (a bad relay.domains also leaves "no domains served": a second error at the same place)
    assert {(e.key, e.line) for e in errors} == {(key, line)}, [str(e) for e in errors]
    err = errors[0]
    assert err.path == str(path.resolve())
    text = str(err)
    assert text.startswith(f"{path.resolve()}:{line}: key '{key}':"), text
    return err


def test_base_config_is_valid(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, BASE))
    assert settings.limits.max_recipients == 100


def test_unknown_key_names_file_key_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE.replace("max_recipients = 100", "max_recipents = 100"))
    err = assert_one(path, "limits.max_recipents", 10)
    assert "max_recipients" in err.problem  # the known keys are listed


def test_unknown_table(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE + "\n[limit]\nmax_recipients = 3\n")
    err = assert_one(path, "limit", 18)
    assert "unknown table" in err.problem


@pytest.mark.parametrize(
    ("old", "new", "key", "line"),
    [
        ("port = 2525", 'port = "2525"', "listen.port", 4),
        ("port = 2525", "port = 70000", "listen.port", 4),
        ("port = 2525", "port = true", "listen.port", 4),
        ('domains = ["example.com"]', 'domains = "example.com"', "relay.domains", 7),
        ('domains = ["example.com"]', 'domains = ["bob@example.com"]', "relay.domains", 7),
        ("max_recipients = 100", "max_recipients = 0", "limits.max_recipients", 10),
        ("max_recipients = 100", "max_recipients = 1.5", "limits.max_recipients", 10),
        ('rules = "rules"', "rules = 3", "paths.rules", 16),
    ],
)
def test_wrong_types_name_file_key_and_line(
    tmp_path: Path, old: str, new: str, key: str, line: int
) -> None:
    assert old in BASE
    assert_one(write_config(tmp_path, BASE.replace(old, new)), key, line)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", '"10"'])
def test_timeouts_must_be_positive_finite_numbers(tmp_path: Path, value: str) -> None:
    # nan passed `value <= 0`, and asyncio.wait_for(..., nan) never times out.
    text = BASE + f"\n[plugins]\ntimeout = {value}\n"
    assert_one(write_config(tmp_path, text), "plugins.timeout", 19)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace("port = 2525", "port = 0").replace("max_recipients = 100", "bogus = 1")
    errors = errors_of(write_config(tmp_path, text))
    assert sorted((e.key, e.line) for e in errors) == [("limits.bogus", 10), ("listen.port", 4)]


def test_bad_toml_syntax_names_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE.replace("max_recipients = 100", "max_recipients = = 100"))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.line == 10
    assert caught.value.key == "limits.max_recipients"
    assert str(caught.value).startswith(f"{path.resolve()}:10:")


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the current directory must not matter
    text = BASE.replace(
        'rules = "rules"',
        'rules = "../policy"\nquarantine = "spool/q"\ndev_maildir = "/srv/maildir"',
    ).replace("[tls]", '[tls]\ncert_file = "tls/cert.pem"\nkey_file = "../keys/key.pem"')
    path = write_config(tmp_path, text)
    folder = path.parent.resolve()
    settings = load_settings(path)
    assert settings.rules_dir == folder.parent / "policy"
    assert settings.quarantine_dir == folder / "spool" / "q"
    assert settings.dev_maildir == Path("/srv/maildir")
    assert settings.tls.cert_file == folder / "tls" / "cert.pem"
    assert settings.tls.key_file == folder.parent / "keys" / "key.pem"


def test_relative_config_path_given_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, BASE)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("etc/mailgate/gateway.toml"))
    assert settings.rules_dir == path.parent.resolve() / "rules"


@pytest.mark.parametrize(("length", "ok"), [(999, False), (1000, True), (998, False)])
def test_max_line_length_below_1000_refused(tmp_path: Path, length: int, ok: bool) -> None:
    path = write_config(
        tmp_path, BASE.replace("max_line_length = 4096", f"max_line_length = {length}")
    )
    if ok:
        assert load_settings(path).limits.max_line_length == length
    else:
        err = assert_one(path, "limits.max_line_length", 11)
        assert "1000" in err.problem


@pytest.mark.parametrize("present", ["cert_file", "key_file"])
def test_cert_without_key_refused(tmp_path: Path, present: str) -> None:
    path = write_config(tmp_path, BASE.replace("[tls]", f'[tls]\n{present} = "x.pem"'))
    err = assert_one(path, "tls", 13)
    assert "cert_file and key_file go together" in err.problem


def test_proxy_protocol_needs_trusted_networks(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE.replace("port = 2525", "port = 2525\nproxy_protocol = true"))
    err = assert_one(path, "listen.proxy_trusted", 2)  # not written: its table's line
    assert "load balancers" in err.problem


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.toml")


def test_workers_and_metrics_address(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, BASE))
    assert settings.listen.workers == 1 and not settings.metrics.enabled
    text = BASE.replace("port = 2525", "port = 2525\nworkers = 3")
    text += '\n[metrics]\naddress = "127.0.0.1:9400"\n'
    settings = load_settings(write_config(tmp_path, text))
    assert settings.listen.workers == 3
    assert (settings.metrics.host, settings.metrics.port) == ("127.0.0.1", 9400)


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("listen.workers", "workers = 0"),
        ("metrics.address", '[metrics]\naddress = "localhost"\n'),
        ("metrics.address", '[metrics]\naddress = "127.0.0.1:99999"\n'),
    ],
)
def test_bad_workers_or_metrics_refused(tmp_path: Path, key: str, text: str) -> None:
    if key.startswith("listen."):
        text = BASE.replace("port = 2525", f"port = 2525\n{text}")
    else:
        text = BASE + "\n" + text
    errors = errors_of(write_config(tmp_path, text))
    assert [e.key for e in errors] == [key], [str(e) for e in errors]


def test_plugin_tables_are_kept_raw_for_their_plugins(tmp_path: Path) -> None:
    text = BASE + '\n[plugins]\ntimeout = 5\n\n[plugins.dnsbl]\nzones = ["zen.example"]\nx = 1\n'
    settings = load_settings(write_config(tmp_path, text))
    # not validated here: each plugin checks its own table
    assert settings.plugins.tables == {"dnsbl": {"zones": ["zen.example"], "x": 1}}
    assert settings.plugins.timeout_for("dnsbl") == 5.0
    assert load_settings(write_config(tmp_path, BASE)).plugins.tables == {}
    # a misspelt scalar in [plugins] is still an unknown setting
    err = assert_one(
        write_config(tmp_path, BASE + "\n[plugins]\ntimeot = 5\n"), "plugins.timeot", 19
    )
    assert "timeout" in err.problem


def _scalar_keys() -> list[tuple[str, str]]:
    """(table, key) of every number and flag a gateway.toml table may hold."""
    import dataclasses
    import typing

    from gateway.config import GatewayFile

    found = []
    for table in dataclasses.fields(GatewayFile):
        kind = typing.get_type_hints(GatewayFile)[table.name]
        kind = next(a for a in typing.get_args(kind) or (kind,) if a is not type(None))
        plain = typing.get_type_hints(kind)
        annotated = typing.get_type_hints(kind, include_extras=True)
        for item in dataclasses.fields(kind):
            metadata = getattr(annotated[item.name], "__metadata__", ())
            alias = next((m.alias for m in metadata if getattr(m, "alias", None)), item.name)
            if plain[item.name] in (int, float, bool):
                found.append((table.name, alias))
    return found


@pytest.mark.parametrize(("table", "key"), _scalar_keys())
def test_every_number_and_flag_refuses_a_string(tmp_path: Path, table: str, key: str) -> None:
    """Dataclass tables are validated in pydantic's lax mode: each scalar must carry its
    strictness (gateway.schema's types), or "5" would pass for 5."""
    text = f'[relay]\ndomains = ["example.com"]\n\n[{table}]\n{key} = "1"\n'
    errors = errors_of(write_config(tmp_path, text))
    assert [(e.key, e.line) for e in errors] == [(f"{table}.{key}", 5)], [str(e) for e in errors]


def test_every_plugin_is_documented_in_the_shipped_config_and_the_readme() -> None:
    """README and config/gateway.toml disagreed (issue 14 item 12): every plugin the registry
    knows is named in the config's [plugins] text, every plugin with settings has its commented
    [plugins.NAME] table there, and the README names each and each table."""
    from gateway.plugins import builtin_registry

    registry = builtin_registry()
    config = SHIPPED.read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in registry.names():
        assert f'"{name}"' in config, f"config/gateway.toml never names plugin {name!r}"
        assert f"`{name}`" in readme, f"README never names plugin `{name}`"
        if registry.declaration(name).config is not None:
            assert f"# [plugins.{name}]\n" in config, f"no commented [plugins.{name}] table"
            assert f"`[plugins.{name}]`" in readme, f"README never names [plugins.{name}]"
