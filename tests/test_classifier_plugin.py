"""The `classifier` plugin in the chain, and the `mailgate model` commands.

The plugin loads its model once when the gateway is built: a broken model file stops start-up
(and `mailgate check`) with an error naming the file, instead of failing mail later.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from classifier_data import CORPUS, REPO, SHIPPED, corpus_files, slice_dir
from harness import make_settings

from gateway.app import Gateway
from gateway.classifier.model import ModelError, card_path_for, load
from gateway.cli import main
from gateway.config import ClassifierSettings, PluginSettings, Settings
from gateway.line_endings import normalize_line_endings
from gateway.plugin import ClientInfo, MessageContext
from gateway.plugins.classifier import BANDS, CERTAIN_AT, band_of, certainty
from gateway.transaction import inspect
from gateway.verdict import Action, Verdict


def settings_with(
    tmp_path: Path, model: Path, order: tuple[str, ...] = ("classifier",)
) -> Settings:
    base = make_settings(tmp_path, 1, plugins=PluginSettings(order=order))
    return dataclasses.replace(base, classifier=ClassifierSettings(model=model))


async def run(
    gateway: Gateway, raw: bytes, mail_from: str = "sender@example.net"
) -> tuple[MessageContext, Verdict]:
    ctx = MessageContext(
        client=ClientInfo(ip="192.0.2.1", port=0), rules=gateway.rules, settings=gateway.settings
    )
    ctx.mail_from = mail_from
    ctx.rcpt_tos.append("bob@example.com")
    ctx.raw = normalize_line_endings(raw)
    return ctx, await inspect(gateway, ctx)


async def test_large_messages_are_scored_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from gateway.plugins.classifier import OFF_LOOP_BYTES

    gateway = Gateway.create(settings_with(tmp_path, SHIPPED))
    model = gateway.chain.plugins[0].model  # type: ignore[attr-defined]
    threads: list[threading.Thread] = []
    original = model.score

    def recording(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "score", recording)
    small = b"Subject: hi\r\n\r\nshort\r\n"
    big = b"Subject: hi\r\n\r\n" + b"word " * (OFF_LOOP_BYTES // 5 + 10) + b"\r\n"
    await run(gateway, small)
    await run(gateway, big)
    assert threads[0] is threading.main_thread()
    assert threads[1] is not threading.main_thread()


def test_bands_cover_the_whole_probability_range_once() -> None:
    assert band_of(0.0) == "ML_BAND_00" and band_of(0.00999) == "ML_BAND_00"
    assert band_of(0.01) == "ML_BAND_05" and band_of(0.5) == "ML_BAND_50"
    assert band_of(0.9989) == "ML_BAND_99" and band_of(0.999) == "ML_BAND_999"
    assert band_of(1.0) == "ML_BAND_999"
    assert band_of(float("nan")) == "ML_BAND_50"  # a broken model is not confident
    floors = [floor for _, floor in BANDS]
    assert floors == sorted(floors) and floors[0] == 0.0


def test_certainty_rises_with_log_odds_from_the_top_band_to_one() -> None:
    assert certainty(0.5) == certainty(0.999) == certainty(float("nan")) == 0.0
    assert certainty(CERTAIN_AT) == certainty(1.0) == 1.0
    # halfway in log-odds between 0.999 (odds 999) and 1 - 1e-6 (odds 999999): odds 31607
    halfway = 31607.0 / 31608.0
    assert abs(certainty(halfway) - 0.5) < 1e-3
    samples = [0.9991, 0.9999, 0.99999, 0.999999]
    assert [certainty(p) for p in samples] == sorted(certainty(p) for p in samples)


def test_the_model_alone_ranks_by_certainty_but_never_quarantines() -> None:
    from gateway.policy import load_rules

    rules = load_rules(REPO / "rules")
    scores = rules.scores
    # continuous where the top band starts, and below quarantine however sure the model is
    assert scores["ML_BAND_999"] >= scores["ML_BAND_99"]
    assert scores["ML_CERTAINTY"] > 0
    assert scores["ML_BAND_999"] + scores["ML_CERTAINTY"] < rules.quarantine_at


def test_every_band_is_scored_hammy_negative_spammy_positive() -> None:
    from gateway.policy import load_rules

    scores = load_rules(REPO / "rules").scores
    values = [scores[name] for name, _ in BANDS]
    assert values == sorted(values)  # more spammy, never less score
    assert scores["ML_BAND_00"] < 0 < scores["ML_BAND_999"]


async def test_shipped_model_in_the_chain(tmp_path: Path) -> None:
    gateway = Gateway.create(settings_with(tmp_path, SHIPPED))
    thresholds = gateway.chain.plugins[0].model.thresholds  # type: ignore[attr-defined]
    spam_symbols = []
    for path in corpus_files("spam_2", 1200, 6):
        ctx, _ = await run(gateway, path.read_bytes())
        spam_symbols += [f.symbol for f in ctx.findings]
        band, *rest = ctx.findings  # exactly one band per message, then its certainty
        assert band.symbol.startswith("ML_BAND_") and "p=" in band.detail and band.weight == 1
        if band.symbol == "ML_BAND_999":
            [sure] = rest
            assert sure.symbol == "ML_CERTAINTY" and 0 < sure.weight <= 1
        else:
            assert rest == []
    assert sum(s in ("ML_BAND_95", "ML_BAND_99", "ML_BAND_999") for s in spam_symbols) >= 5
    ham_symbols = []
    for path in corpus_files("easy_ham_2", 1200, 6):
        ctx, verdict = await run(gateway, path.read_bytes())
        ham_symbols += [f.symbol for f in ctx.findings]
        assert verdict.action is Action.RELAY
    assert sum(s in ("ML_BAND_00", "ML_BAND_05") for s in ham_symbols) >= 5
    assert 0.5 <= thresholds.spam <= 1.0


async def test_the_classifier_alone_quarantines_only_where_its_band_scores_that_much(
    tmp_path: Path,
) -> None:
    gateway = Gateway.create(settings_with(tmp_path, SHIPPED))
    model = gateway.chain.plugins[0].model  # type: ignore[attr-defined]
    for path in corpus_files("spam", 0, 10):
        raw = path.read_bytes()
        _, verdict = await run(gateway, raw)
        # as the plugin scores it: the envelope sender, and arrival now (2002 mail is old)
        p = model.score(
            normalize_line_endings(raw),
            envelope_from="sender@example.net",
            arrival=datetime.now(UTC),
        ).probability
        quarantined = verdict.action is Action.QUARANTINE
        rules = gateway.rules
        alone = rules.scores[band_of(p)] + rules.scores["ML_CERTAINTY"] * certainty(p)
        assert quarantined == (alone >= rules.quarantine_at)


def test_classifier_failure_is_advisory() -> None:
    from gateway.plugins import builtin_registry
    from gateway.policy import load_rules

    # the classifier declares on_error = None: no rules line, and no effect on the verdict
    defaults = builtin_registry().policy_defaults(["classifier"])
    rules = load_rules(REPO / "rules").with_defaults(*defaults)
    assert rules.scores["CLASSIFIER_ERROR"] == 0.0 and rules.scores["CLASSIFIER_TIMEOUT"] == 0.0
    assert "CLASSIFIER_ERROR" not in rules.forced and "CLASSIFIER_TIMEOUT" not in rules.forced
    assert rules.scores["ML_BAND_999"] > 0 > rules.scores["ML_BAND_00"]


def _broken_model(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    npz = folder / "spam.npz"
    data = bytearray(SHIPPED.read_bytes())
    data[1000] ^= 0x01
    npz.write_bytes(bytes(data))
    card_path_for(npz).write_bytes(card_path_for(SHIPPED).read_bytes())
    return npz


def test_a_corrupt_model_stops_start_up(tmp_path: Path) -> None:
    npz = _broken_model(tmp_path)
    with pytest.raises(ModelError, match="sha256"):
        Gateway.create(settings_with(tmp_path, npz))
    with pytest.raises(ModelError, match="model card not found"):
        Gateway.create(settings_with(tmp_path, tmp_path / "nowhere" / "spam.npz"))
    # Not in plugins.order: the model is not loaded at all.
    Gateway.create(settings_with(tmp_path, npz, order=("headers",)))


def test_mailgate_check_reports_a_corrupt_model(tmp_path: Path) -> None:
    npz = _broken_model(tmp_path)
    config = tmp_path / "config" / "gateway.toml"
    config.parent.mkdir()
    text = (REPO / "config" / "gateway.toml").read_text()
    text, changed = re.subn(r"(?m)^order = \[.*\]$", 'order = ["classifier"]', text)
    assert changed == 1
    text += f'\n[classifier]\nmodel = "{npz}"\n'
    config.write_text(text)
    (tmp_path / "rules").symlink_to(REPO / "rules")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "check"],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "configuration error" in err and str(npz) in err and "sha256" in err
    assert "Traceback" not in err


def test_a_model_of_an_older_reading_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    assert load(SHIPPED).stale_reading() is None  # the shipped model reads as the gateway does
    folder = tmp_path / "models"
    folder.mkdir()
    npz = folder / "spam.npz"
    npz.write_bytes(SHIPPED.read_bytes())
    card = json.loads(card_path_for(SHIPPED).read_text())
    del card["features"]["reading"]  # as a card written before READING 2
    card_path_for(npz).write_text(json.dumps(card))
    with caplog.at_level("WARNING", logger="mailgate.classifier"):
        Gateway.create(settings_with(tmp_path, npz))
    assert "trained on reading 1" in caplog.text and "retrain it" in caplog.text
    config = tmp_path / "config" / "gateway.toml"
    config.parent.mkdir()
    text = (REPO / "config" / "gateway.toml").read_text()
    text = re.sub(r"(?m)^order = \[.*\]$", 'order = ["classifier"]', text)
    config.write_text(text + f'\n[plugins.classifier]\nmodel = "{npz}"\n')
    if not (tmp_path / "rules").exists():  # settings_with may have made it
        (tmp_path / "rules").symlink_to(REPO / "rules")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "check", "--no-dns-probe"],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "mailgate: warning: model" in result.stderr.decode()


# -- mailgate model train | eval | info ----------------------------------------------------------


def test_model_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ham = slice_dir(tmp_path, "easy_ham", 0, 40)
    spam = slice_dir(tmp_path, "spam", 0, 30)
    out = tmp_path / "m" / "spam.npz"
    argv = ["model", "train", "--ham", str(ham), "--spam", str(spam), "--out", str(out)]
    assert main([*argv, "--preset", "spamassassin", "--folds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and "time hold-out" in printed
    card = json.loads(card_path_for(out).read_text())
    assert card["features"]["settings"]["redact"]  # the preset left collector names out
    assert card["features"]["settings"]["layout_traits"] is True  # an admin's ham has layout
    assert card["metrics"]["time_holdout"]["test_messages"] == 21

    assert main(["model", "info", "--model", str(out)]) == 0
    assert "70 messages (40 ham, 30 spam, 0 admin labels)" in capsys.readouterr().out

    eval_ham = slice_dir(tmp_path, "easy_ham_2", 0, 20)
    eval_spam = slice_dir(tmp_path, "spam_2", 0, 20)
    sources = ["--ham", str(eval_ham), "--spam", str(eval_spam)]
    assert main(["model", "eval", "--model", str(out), *sources, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["messages"] == 40 and 0.5 <= report["roc_auc"] <= 1.0
    assert set(report["confusion"]) >= {"spam_caught", "ham_flagged", "threshold"}

    recipe = ["--ham", str(ham), "--spam", str(spam), "--recipe", "--folds", "2"]
    assert main(["model", "eval", "--model", str(out), *recipe]) == 0
    text = capsys.readouterr().out
    assert "time-ordered hold-out" in text and "fold 2" in text


def test_model_commands_refuse_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "train", "--ham", str(CORPUS / "hard_ham")]) == 1  # no spam at all
    assert "both ham and spam" in capsys.readouterr().err
    assert main(["model", "info", "--model", str(tmp_path / "none.npz")]) == 1
    assert "model card not found" in capsys.readouterr().err


def test_model_info_escapes_a_hostile_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npz = tmp_path / "spam.npz"
    npz.write_bytes(SHIPPED.read_bytes())
    card = json.loads(card_path_for(SHIPPED).read_text())
    card["version"] = "\x1b[2J\x1b[31mowned"
    card["training"]["sources"] = ["junk", {"label": "\x1b]0;title\x07", "path": 3}]
    card["extra_metrics"] = {"how": "text", "odd": {"one_minus_roca_pct": "NaN"}}
    card_path_for(npz).write_text(json.dumps(card))
    assert main(["model", "info", "--model", str(npz)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J" in out and "odd: (1-ROCA)% n/a" in out


def test_model_info_reads_the_model_plugins_classifier_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mailgate model info` without --model reads the model the plugin would load: the
    `[plugins.classifier] model` of the file, relative to its folder (not only `[classifier]`)."""
    npz = tmp_path / "models" / "mine.npz"
    npz.parent.mkdir()
    npz.write_bytes(SHIPPED.read_bytes())
    card = json.loads(card_path_for(SHIPPED).read_text())
    card["version"] = "site-retrained-1"
    card_path_for(npz).write_text(json.dumps(card))
    config = tmp_path / "etc" / "gateway.toml"
    config.parent.mkdir()
    config.write_text('[plugins.classifier]\nmodel = "../models/mine.npz"\n')
    assert main(["--config", str(config), "model", "info"]) == 1  # a file that serves nothing
    err = capsys.readouterr().err
    assert "relay.domains" in err and "nothing to do" in err and "Traceback" not in err
    config.write_text(
        '[relay]\ndomains = ["example.com"]\n[plugins.classifier]\nmodel = "../models/mine.npz"\n'
    )
    assert main(["--config", str(config), "model", "info"]) == 0
    assert "site-retrained-1" in capsys.readouterr().out
