"""Which gateway.toml each command reads: --config, $MAILGATE_CONFIG, /etc/mailgate (moved here by
$MAILGATE_SYSTEM_CONFIG), a checkout's config/ for serve --dev only, else the embedded defaults;
and a command that reads the quarantine with no file says which folder it read."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import REPO
from quarantine_fixtures import mailgate_command
from test_signals import write_served_config

from gateway.config import SYSTEM_QUARANTINE, load_settings
from gateway.config_search import SYSTEM_CONFIG, SYSTEM_CONFIG_ENV, find_config, system_config
from gateway.shipped import is_checkout, shipped


def config_at(folder: Path, domain: str) -> Path:
    """A minimal config whose served domain tells which file was read."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(
        f'[relay]\ndomains = ["{domain}"]\n[paths]\nrules = "{REPO / "rules"}"\n'
        f'quarantine = "{folder / "quarantine"}"\n',
        encoding="utf-8",
    )
    return path


def checkout_at(folder: Path) -> Path:
    """The shape of a source checkout: pyproject.toml, gateway/, rules/, config/gateway.toml."""
    (folder / "gateway").mkdir(parents=True)
    (folder / "pyproject.toml").write_text('[project]\nname = "mailgate"\n', encoding="utf-8")
    shutil.copytree(REPO / "rules", folder / "rules")
    config_at(folder / "config", "checkout.example")
    return folder


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Every place a config can come from, each one present, and the cwd a checkout."""
    monkeypatch.delenv("MAILGATE_CONFIG", raising=False)
    found = {
        "arg": config_at(tmp_path / "arg", "arg.example"),
        "env": config_at(tmp_path / "env", "env.example"),
        "system": config_at(tmp_path / "etc" / "mailgate", "system.example"),
        "checkout": checkout_at(tmp_path / "checkout"),
    }
    monkeypatch.setenv(SYSTEM_CONFIG_ENV, str(found["system"]))
    monkeypatch.chdir(found["checkout"])
    return found


def domain_read(arg: str | None, dev: bool = False) -> str:
    return load_settings(find_config(arg, dev).path).relay.domains[0]


def test_each_step_of_the_search_in_order(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILGATE_CONFIG", str(places["env"]))
    assert domain_read(str(places["arg"]), dev=True) == "arg.example"  # --config first
    assert find_config(str(places["arg"])).found_by == "--config"
    assert domain_read(None, dev=True) == "env.example"  # then $MAILGATE_CONFIG
    monkeypatch.delenv("MAILGATE_CONFIG")
    assert domain_read(None, dev=True) == "system.example"  # then /etc/mailgate/gateway.toml
    assert find_config(None).describe().startswith(f"{places['system']} (the system")
    places["system"].unlink()
    assert domain_read(None, dev=True) == "checkout.example"  # a checkout's, for --dev only
    assert find_config(None, dev=True).found_by == "the checkout's, for --dev"
    choice = find_config(None, dev=False)  # never for anything else
    assert choice.path is None
    assert choice.describe() == (
        "embedded defaults (no config file: looked for $MAILGATE_CONFIG (unset), "
        f"{places['system']}, config/gateway.toml of a source checkout here (read only by "
        "serve --dev and --demo))"
    )


def test_a_folder_with_only_config_gateway_toml_is_no_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILGATE_CONFIG", raising=False)
    config_at(tmp_path / "config", "stray.example")
    assert not is_checkout(tmp_path)
    assert find_config(None, dev=True, cwd=tmp_path).path is None
    assert is_checkout(REPO)


def test_the_system_path_is_etc_mailgate_unless_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SYSTEM_CONFIG_ENV)
    assert system_config() == SYSTEM_CONFIG == Path("/etc/mailgate/gateway.toml")


def test_embedded_defaults_outside_a_checkout_use_the_shipped_rules_and_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    settings = load_settings(None)
    assert settings.rules_dir == shipped("rules") == (REPO / "rules").resolve()
    assert settings.classifier.model == shipped("models") / "spam.npz"
    assert settings.quarantine_dir == SYSTEM_QUARANTINE
    assert settings.dev_maildir == tmp_path / "state" / "mailgate" / "maildir"
    monkeypatch.chdir(REPO)  # in a checkout: its own folders, as config/gateway.toml has them
    settings = load_settings(None)
    assert settings.rules_dir == REPO / "rules"
    assert settings.quarantine_dir == REPO / "var" / "quarantine"


# -- real processes ------------------------------------------------------------------------------


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*mailgate_command(), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    env[SYSTEM_CONFIG_ENV] = str(tmp_path / "etc" / "mailgate" / "gateway.toml")  # absent
    return env


def test_check_prints_the_file_it_used_and_why(tmp_path: Path, clean_env: dict[str, str]) -> None:
    system = config_at(tmp_path / "etc" / "mailgate", "system.example")
    done = run("check", "--no-dns-probe", cwd=tmp_path, env=clean_env)
    assert done.returncode == 0, done.stderr
    assert f"config OK: {system} (the system configuration)" in done.stdout
    system.unlink()
    done = run("check", "--no-dns-probe", cwd=REPO, env=clean_env)  # a checkout: not its file
    assert done.returncode == 0, done.stderr
    embedded = "config OK: embedded defaults (no config file: looked for $MAILGATE_CONFIG"
    assert embedded in done.stdout
    assert f"{system}, config/gateway.toml of a source checkout here" in done.stdout


def test_quarantine_commands_without_a_file_say_which_folder_they_read(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """Issue item 3: `cd / && mailgate quarantine list` said "no entries", rc 0, while the
    service's quarantine held five: now it says it found no file and read another folder."""
    for command in (["list"], ["show", "ABCDEFGHJKMN"], ["stats"]):
        done = run("quarantine", *command, cwd=tmp_path, env=clean_env)
        assert (
            "mailgate quarantine: embedded defaults (no config file: looked for "
            "$MAILGATE_CONFIG (unset), "
        ) in done.stderr, command
        assert f"; reading the quarantine in {SYSTEM_QUARANTINE}\n" in done.stderr
    system = config_at(tmp_path / "etc" / "mailgate", "system.example")
    done = run("quarantine", "list", cwd=Path("/"), env=clean_env)
    assert done.returncode == 0 and done.stderr == ""  # the service's file: nothing to say
    assert done.stdout == "no entries\n"
    assert load_settings(system).quarantine_dir == system.parent / "quarantine"


def test_serve_logs_the_file_it_serves_with(tmp_path: Path, clean_env: dict[str, str]) -> None:
    config, _ = write_served_config(tmp_path)
    clean_env["MAILGATE_CONFIG"] = str(config)
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*mailgate_command(), "serve", "--dev"],
            cwd=tmp_path,
            env=clean_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        from test_signals import wait_for_log

        text = wait_for_log(proc, log, str.count, "listening on", timeout=60)
        assert f"config: {config} ($MAILGATE_CONFIG)" in text
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_init_lays_out_a_system_folder_that_check_accepts(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    etc = tmp_path / "etc" / "mailgate"
    done = run("init", etc, cwd=tmp_path, env=clean_env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (etc / "rules").iterdir()) == sorted(
        p.name for p in (REPO / "rules").iterdir()
    )
    settings = load_settings(etc / "gateway.toml")
    assert settings.rules_dir == etc / "rules"
    assert settings.quarantine_dir == SYSTEM_QUARANTINE
    assert settings.classifier.model == shipped("models") / "spam.npz"
    check = run("check", "--no-dns-probe", cwd=Path("/"), env=clean_env)  # found as /etc's
    assert check.returncode == 0, check.stderr
    assert f"config OK: {etc / 'gateway.toml'} (the system configuration)" in check.stdout
    assert f"rules OK: {etc / 'rules'} (policy " in check.stdout
    edited = (etc / "gateway.toml").read_text() + "\n# mine\n"
    (etc / "gateway.toml").write_text(edited)
    again = run("init", etc, cwd=tmp_path, env=clean_env)
    assert again.returncode == 1 and "use --force to replace it" in again.stderr
    assert (etc / "gateway.toml").read_text() == edited
