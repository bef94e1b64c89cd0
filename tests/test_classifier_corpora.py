"""Named corpus sources, their artefacts, cross-source splits, and `--corpora` / `--cross-source`
on a small built corpora folder (tests/classifier_data.build_corpora), never ../shared's modern."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from classifier_data import build_corpora

from gateway.classifier import corpora, crosssource
from gateway.classifier.corpus import CorpusError, Message
from gateway.classifier.features import FeatureSettings, extract
from gateway.classifier.model import card_path_for, load
from gateway.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_corpora(tmp_path_factory.mktemp("corpora"))


def test_a_spam_filters_fields_and_subject_tags_are_taken_out() -> None:
    raw = (
        b"X-Spam-Status: Yes, score=9\nX-Spam-Flag: YES\nX-Virus-Scanned: by x\n"
        b"Delivered-To: lists+x@archive.example\nSubject: [List] [SPAM] ***SPAM*** cheap\n"
        b"From: a@b.example\n\nbody X-Spam-Flag: stays in the body\n"
    )
    clean, blind = corpora.neutralise(raw, corpora.Artefacts(spam_tags=True))
    assert (
        b"X-Spam-Status" not in clean and b"X-Virus" not in clean and b"Delivered-To" not in clean
    )
    assert b"Subject: [List] cheap\n" in clean and b"SPAM*" not in clean
    assert b"body X-Spam-Flag: stays in the body" in clean  # only header fields are dropped
    assert blind == frozenset()


def test_a_redaction_token_is_removed_and_its_fields_are_blind() -> None:
    raw = b"From:[removed]\nReturn-Path: <[removed]>\nSubject: hi\n\nDear [removed], money.\n"
    clean, blind = corpora.neutralise(raw, corpora.Artefacts(redaction_token=corpora.REMOVED))
    assert b"[removed]" not in clean and b"Dear , money." in clean
    assert blind == {"from", "return-path"}
    fields = extract(clean, FeatureSettings(), blind=blind)
    assert "removed" not in fields["body"]
    assert not any(t.startswith(("from:", "env:")) for t in fields["header"])


def test_every_source_is_named_and_the_phishing_folder_is_marked(built: Path) -> None:
    messages = corpora.load(built)
    names = {m.source for m in messages}
    assert "modern/ham/nbd.other.debian.org" in names and "spamassassin/easy_ham" in names
    assert "modern/spam/glitchyzorua-spam-archive" in names
    phish = [m for m in messages if m.phish]
    assert phish and all(m.source.startswith("modern/phish/") and m.label == 1 for m in phish)
    assert not any(b"X-Spam-" in m.raw or b"[SPAM]" in m.raw for m in messages)
    described = {d["source"]: d for d in corpora.describe(messages)}
    assert described["modern/phish/sf-lists-heuristic"]["phishing"] == 8
    assert described["spamassassin/easy_ham"]["corpus"] == "spamassassin"
    with pytest.raises(CorpusError, match="no known corpus source"):
        corpora.discover(built / "modern" / "ham")


def test_spam_found_in_a_ham_list_is_labelled_spam_and_the_list_stays_ham(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ham list's RELABELLED_SPAM messages are trained and judged as spam, counted in their
    list, and the list is still held out as a ham list."""
    nbd = "modern/ham/nbd.other.debian.org"
    monkeypatch.setitem(corpora.RELABELLED_SPAM, nbd, frozenset({"000.eml", "003.eml"}))
    messages = corpora.load(built)
    of_list = {m.name: m.label for m in messages if m.source == nbd}
    assert of_list["000.eml"] == 1 and of_list["003.eml"] == 1
    assert sum(of_list.values()) == 2 and len(of_list) == 8
    described = {d["source"]: d for d in corpora.describe(messages)}
    assert described[nbd]["label"] == "ham" and described[nbd]["relabelled_spam"] == 2
    found = {s.name: s for s in crosssource.splits(messages)}
    held = found[f"ham list out: {nbd.rpartition('/')[2]}"]
    assert {messages[i].name for i in held.test if messages[i].source == nbd} == set(of_list)


def test_the_shipped_relabelling_names_files_of_the_list() -> None:
    """Every relabelled name is a file of the shared corpus (when it is here)."""
    root = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
    for source, names in corpora.RELABELLED_SPAM.items():
        folder = root / source
        if folder.is_dir():
            assert names <= {p.name for p in folder.iterdir()}, source


def _assert_sender_halves(
    messages: list[Message], found: dict[str, crosssource.Split], source: str
) -> None:
    """Each commercial half is tested on sender domains the training never saw."""
    for half in (1, 2):
        split = found[f"commercial ham out: {source.rpartition('/')[2]} senders, half {half}"]

        def senders(idx: np.ndarray) -> set[str]:
            return {
                crosssource.sender_domain(messages[i].raw)
                for i in idx.tolist()
                if messages[i].source == source
            }

        assert senders(split.test) and not senders(split.test) & senders(split.train)
        assert {messages[i].label for i in split.test} == {0, 1}


def test_splits_keep_whole_sources_out_of_training(built: Path) -> None:
    messages = corpora.load(built)
    found = {s.name: s for s in crosssource.splits(messages)}
    assert {
        "ham list out: nbd.other.debian.org",
        "spam source out: glitchyzorua-spam-archive",
        "spam source out: sf-lists-heuristic",
        "SpamAssassin -> modern",
        "modern -> SpamAssassin",
        "time: older 70% -> newer 30%",
    } <= set(found)
    for split in found.values():
        assert not set(split.train.tolist()) & set(split.test.tolist())
    held = found["ham list out: nbd.other.debian.org"]
    assert not any(messages[i].source.endswith("nbd.other.debian.org") for i in held.train)
    assert any(messages[i].source.endswith("nbd.other.debian.org") for i in held.test)
    sa = found["SpamAssassin -> modern"]
    assert {messages[i].corpus for i in sa.train} == {"spamassassin"}
    assert {messages[i].corpus for i in sa.test} == {"modern"}
    _assert_sender_halves(messages, found, "spamassassin/hard_ham")
    times = np.array([m.time for m in messages])
    later = found["time: older 70% -> newer 30%"]
    assert times[later.train].max() <= times[later.test].min()


def test_train_on_corpora_and_eval_cross_source(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m" / "spam.npz"
    argv = ["model", "train", "--corpora", str(built), "--out", str(out), "--folds", "2"]
    assert main([*argv, "--no-eval", "--cross-source"]) == 0
    printed = capsys.readouterr().out
    assert "trained on" in printed and "cross-source" in printed
    card = json.loads(card_path_for(out).read_text())
    assert "modern" in card["trained_on"] and "spamassassin" in card["trained_on"]
    table = card["cross_source"]
    rows = {r["split"]: r for r in table["rows"]}
    assert "SpamAssassin -> modern" in rows and "baseline" in table
    for row in rows.values():
        assert set(row["model"]) == set(row["baseline"]) >= {"roc_auc", "recall_at_fpr_1pct"}
    assert (
        rows["spam source out: sf-lists-heuristic"]["model"]["phish_recall_at_fpr_1pct"] is not None
    )
    assert r"lfdr\.de" in card["features"]["settings"]["redact"]
    assert card["features"]["settings"]["layout_traits"] is False  # list ham has no layout
    assert set(card["held_out_bands"]["ham"]) == {
        f"ML_BAND_{b}" for b in ("00", "05", "20", "40", "50", "60", "80", "95", "99", "999")
    }
    load(out)  # a valid model

    assert main(["model", "info", "--model", str(out)]) == 0
    assert "SpamAssassin -> modern" in capsys.readouterr().out

    ev = ["model", "eval", "--model", str(out), "--cross-source", "--corpora", str(built)]
    assert main([*ev, "--only", "SpamAssassin ->", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["split"] for r in result["rows"]] == ["SpamAssassin -> modern"]
    assert main(["model", "eval", "--model", str(out), "--cross-source"]) == 2
    assert "needs --corpora" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["hard_ham", "=4", "x=0", "x=-1", "x=nan", "x=four"])
def test_a_bad_source_weight_is_one_clear_error(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["model", "train", "--ham", str(tmp_path), "--spam", str(tmp_path)]
    assert main([*argv, "--source-weight", bad, "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert "--source-weight" in err and "SOURCE=W" in err and "Traceback" not in err


def test_source_weights_reach_the_fit_and_the_card(built: Path, tmp_path: Path) -> None:
    """--corpora weighs hard_ham and the rendered templates by default; --source-weight adds
    to or overrides them."""
    out = tmp_path / "m" / "spam.npz"
    argv = ["model", "train", "--corpora", str(built), "--out", str(out), "--folds", "2"]
    extra = ["--no-eval", "--source-weight", "modern/ham/cake.lists.bufferbloat.net=2"]
    assert main([*argv, *extra]) == 0
    card = json.loads(card_path_for(out).read_text())
    assert card["fit"]["source_weights"] == {
        "spamassassin/hard_ham": 4.0,
        "commercial/ham/templates": 4.0,
        "modern/ham/cake.lists.bufferbloat.net": 2.0,
    }


def test_sample_weights_follow_the_message_source() -> None:
    from gateway.classifier.corpus import Message
    from gateway.classifier.train import FitParams, sample_weights

    messages = [Message(b"", 0, s, "n", 0.0) for s in ("a", "b", "a")]
    assert sample_weights(messages, FitParams()) is None
    weights = sample_weights(messages, FitParams(source_weights=(("a", 4.0),)))
    assert weights is not None and weights.tolist() == [4.0, 1.0, 4.0]


def _with_commercial(built: Path, tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A copy of the built corpora with an empty commercial/ham/KIND folder to fill."""
    import shutil

    root = tmp_path / "corpora"
    shutil.copytree(built, root)
    folder = root / "commercial" / "ham" / kind
    folder.mkdir(parents=True)
    return root, folder


def test_published_commercial_ham_is_an_optional_source_split_by_sender(
    built: Path, tmp_path: Path
) -> None:
    root, folder = _with_commercial(built, tmp_path, "published")
    for i in range(8):
        (folder / f"shop{i}__receipt.eml").write_bytes(
            f"From: Shop {i} <orders@shop{i % 4}.example>\nTo: ann@example.org\n"
            f"Subject: Your receipt #{1000 + i}\nDate: Mon, {1 + i:02d} Sep 2025 10:00:00 +0000\n"
            f"Message-ID: <r{i}@shop{i % 4}.example>\n\nThank you for your order {i}.\n".encode()
        )
    messages = corpora.load(root)
    published = [m for m in messages if m.source == "commercial/ham/published"]
    assert len(published) == 8 and {m.corpus for m in published} == {"commercial"}
    assert {m.label for m in published} == {0}
    found = {s.name: s for s in crosssource.splits(messages)}
    _assert_sender_halves(messages, found, "commercial/ham/published")
    # the corpus-to-corpus splits stay between the two shared corpora
    sa = found["SpamAssassin -> modern"]
    assert {messages[i].corpus for i in (*sa.train, *sa.test)} == {"spamassassin", "modern"}
    # in every other split it trains: no ham list is judged with commercial ham held out
    held = found["ham list out: nbd.other.debian.org"]
    assert {messages[i].source for i in held.train} >= {"commercial/ham/published"}


def test_rendered_templates_teach_their_text_and_not_the_renderers_header(
    built: Path, tmp_path: Path
) -> None:
    root, folder = _with_commercial(built, tmp_path, "templates")
    raw = (
        b"From: Zerops <noreply@zerops.io>\r\nTo: Ann <ann@made-up.test>\r\n"
        b"Subject: Verify your email\r\nDate: Mon, 01 Sep 2025 10:00:00 +0000\r\n"
        b"Message-ID: <1@zerops.io>\r\n\r\nPlease verify your email address.\r\n"
    )
    (folder / "zerops__verify.eml").write_bytes(raw)
    (m,) = [m for m in corpora.load(root) if m.source == "commercial/ham/templates"]
    assert m.label == 0 and m.corpus == "commercial"
    assert {"from", "to", "message-id"} <= m.blind
    assert math.isnan(m.time)  # the renderer's Date: undated, never the newer mail of a split
    traits = extract(m.raw, FeatureSettings(), blind=m.blind)["header"]
    assert not [t for t in traits if t.startswith(("from:", "msgid:", "rcpt:", "to:"))]
    assert "verify" in extract(m.raw, FeatureSettings(), blind=m.blind)["subject"]
