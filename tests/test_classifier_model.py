"""The model: metrics, time-ordered splits, training a tiny model, and loading only what is safe.

A model file can come from anywhere (a download, a colleague): loading it never unpickles, and
anything wrong with it is a ModelError that names the file, raised at start-up.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from classifier_data import SHIPPED, corpus_files, train_tiny

from gateway.classifier import corpus, metrics
from gateway.classifier.model import ModelError, card_path_for, load, sha256_of
from gateway.classifier.train import expanding_folds, time_split
from gateway.tomlfile import ConfigError

# -- metrics -------------------------------------------------------------------------------------


def test_roc_auc_matches_scikit_learn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 500).astype(np.int64)
    scores = np.round(rng.normal(labels * 1.5, 1.0), 1)  # rounding makes ties
    assert metrics.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert math.isnan(metrics.roc_auc(scores, np.zeros(500, dtype=np.int64)))


def test_recall_at_fpr_and_confusion() -> None:
    ham = np.arange(1000, dtype=np.float64)  # ham scores 0..999
    spam = np.array([998.5, 999.5, 2000.0, 500.0])
    scores = np.concatenate([ham, spam])
    labels = np.array([0] * 1000 + [1] * 4, dtype=np.int64)
    # 0.1% of 1000 ham: one ham (999) may lie above the threshold, which is the next (998)
    assert metrics.threshold_at_fpr(scores, labels, 0.001) == 998.0
    assert metrics.recall_at_fpr(scores, labels, 0.001) == 0.75
    assert metrics.recall_at_fpr(scores, labels, 0.0) == 0.5
    c = metrics.confusion(scores, labels, 999.0)
    assert (c.spam_caught, c.spam_missed, c.ham_flagged, c.ham_passed) == (2, 2, 1, 999)
    report = metrics.report(scores, labels, 999.0).to_json()
    assert report["confusion"]["ham_flagged"] == 1 and report["spam"] == 4


def test_time_splits_never_train_on_the_future() -> None:
    train, test = time_split(100)
    assert len(train) == 70 and len(test) == 30 and train.max() < test.min()
    folds = expanding_folds(100, 4)
    assert len(folds) == 4
    for k, (tr, te) in enumerate(folds):
        assert tr.min() == 0 and tr.max() + 1 == te.min()
        if k:
            assert len(tr) > len(folds[k - 1][0])  # the window expands


# -- a tiny model, trained with the real recipe --------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    return train_tiny(root, root / "model" / "spam.npz")


def test_tiny_model_card_and_scores(tiny: Path) -> None:
    card = json.loads(card_path_for(tiny).read_text())
    assert card["format"] == "mailgate-spam-model/1"
    assert card["sha256"] == sha256_of(tiny)
    assert card["training"]["messages"] == 100 and card["training"]["admin_labels"] == 0
    assert card["features"]["vector"]["bits"] == 20
    t = card["thresholds"]
    assert 0 < t["ham"] < t["suspect"] <= t["spam"] <= 1
    model = load(tiny)
    # messages the tiny model never saw
    spam = [model.score(p.read_bytes()).probability for p in corpus_files("spam", 100, 5)]
    ham = [model.score(p.read_bytes()).probability for p in corpus_files("easy_ham", 100, 5)]
    assert min(spam) > max(ham)


def test_feedback_counts_as_admin_labels(tmp_path: Path) -> None:
    feedback = tmp_path / "labels.jsonl"
    copies = tmp_path / "msgs"
    copies.mkdir()
    lines = []
    for i, path in enumerate(corpus_files("spam_2", 200, 3)):
        (copies / f"{i}.eml").write_bytes(path.read_bytes())
        lines.append(json.dumps({"label": "spam", "path": f"msgs/{i}.eml"}))
    lines.append(json.dumps({"label": "ham", "path": str(corpus_files("easy_ham_2", 0, 1)[0])}))
    feedback.write_text("\n".join(lines) + "\n\n")
    pairs = corpus.feedback_sources(feedback)
    assert [label for label, _ in pairs] == ["spam", "spam", "spam", "ham"]
    labelled = corpus.load(pairs, feedback=True)
    out = train_tiny(tmp_path / "data", tmp_path / "fb" / "spam.npz", feedback=labelled)
    card = json.loads(card_path_for(out).read_text())
    assert card["training"]["admin_labels"] == 4 and card["training"]["messages"] == 104


def test_feedback_folder_and_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "fb" / "ham").mkdir(parents=True)
    assert corpus.feedback_sources(tmp_path / "fb") == [("ham", tmp_path / "fb" / "ham")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": "spam", "path": "a.eml"}\n{"label": "maybe", "path": "b.eml"}\n')
    with pytest.raises(corpus.CorpusError, match=r"bad.jsonl:2"):
        corpus.feedback_sources(bad)
    with pytest.raises(corpus.CorpusError, match="ham/ or spam/"):
        corpus.feedback_sources(tmp_path)


# -- loading only what is safe -------------------------------------------------------------------


def _copy(model: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    npz = target / "spam.npz"
    npz.write_bytes(model.read_bytes())
    card_path_for(npz).write_bytes(card_path_for(model).read_bytes())
    return npz


def _rewrite(npz: Path, arrays: dict[str, object], fix_sha: bool = True) -> None:
    """Replace the arrays of a model file, and (by default) make the card's sha256 agree, as a
    forger would: only the content checks are left to catch it."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    npz.write_bytes(buf.getvalue())
    if fix_sha:
        card = json.loads(card_path_for(npz).read_text())
        card["sha256"] = sha256_of(npz)
        card_path_for(npz).write_text(json.dumps(card))


class _Boom:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "code ran"))  # type: ignore[return-value]


def test_a_pickled_object_array_is_refused_and_never_runs(tiny: Path, tmp_path: Path) -> None:
    npz = _copy(tiny, tmp_path)
    marker = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _Boom(str(marker))
    with np.load(tiny) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["coef"] = payload
    _rewrite(npz, arrays)
    assert b"pickle" in zipfile.ZipFile(npz).read("coef.npy") or pickle.dumps(payload)
    with pytest.raises(ModelError, match=r"spam.npz.*(refused|must be 1-d float32)"):
        load(npz)
    assert not marker.exists()


def test_a_model_and_card_that_do_not_match_are_refused(tiny: Path, tmp_path: Path) -> None:
    npz = _copy(tiny, tmp_path)
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    npz.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"sha256 .* does not match") as raised:
        load(npz)
    assert str(npz) in str(raised.value)
    assert isinstance(raised.value, ConfigError)  # reported like any configuration error


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("missing_card", "model card not found"),
        ("bad_json", "not valid JSON"),
        ("format", "unknown model format"),
        ("truncated", "not a readable .npz|sha256"),
        ("extra_array", "must hold exactly"),
        ("index_range", "index must be sorted"),
        ("nan", "not a finite number"),
        ("bits", "bits must be"),
        ("thresholds", "ham < suspect <= spam"),
    ],
)
def test_damaged_models_give_clear_errors(
    tiny: Path, tmp_path: Path, damage: str, expected: str
) -> None:
    npz = _copy(tiny, tmp_path)
    card_file = card_path_for(npz)
    card = json.loads(card_file.read_text())
    with np.load(tiny) as data:
        arrays: dict[str, object] = {name: data[name] for name in data.files}
    if damage == "missing_card":
        card_file.unlink()
    elif damage == "bad_json":
        card_file.write_text("{not json")
    elif damage == "format":
        card["format"] = "pickle/1"
        card_file.write_text(json.dumps(card))
    elif damage == "truncated":
        npz.write_bytes(npz.read_bytes()[:100])
        card["sha256"] = sha256_of(npz)
        card_file.write_text(json.dumps(card))
    elif damage == "extra_array":
        _rewrite(npz, {**arrays, "more": np.zeros(3)})
    elif damage == "index_range":
        index = np.array(arrays["index"])
        index[-1] = 1 << 24
        _rewrite(npz, {**arrays, "index": index})
    elif damage == "nan":
        coef = np.array(arrays["coef"])
        coef[0] = np.nan
        _rewrite(npz, {**arrays, "coef": coef})
    elif damage == "bits":
        card["features"]["vector"]["bits"] = 40
        card_file.write_text(json.dumps(card))
    elif damage == "thresholds":
        card["thresholds"]["ham"] = 0.99
        card_file.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=expected):
        load(npz)


# -- the shipped model ---------------------------------------------------------------------------


def test_the_shipped_model_loads_and_separates_corpus_messages() -> None:
    model = load(SHIPPED)
    card = model.card
    assert card["training"]["messages"] > 5000
    holdout = card["metrics"]["time_holdout"]
    assert holdout["one_minus_roca_pct"] is not None
    assert SHIPPED.stat().st_size < 8 * 1024 * 1024
    spam = [p.read_bytes() for p in corpus_files("spam_2", 1000, 5)]
    ham = [p.read_bytes() for p in corpus_files("easy_ham_2", 1000, 5)]
    started = time.perf_counter()
    spam_p = [model.score(raw).probability for raw in spam]
    ham_p = [model.score(raw).probability for raw in ham]
    per_message = (time.perf_counter() - started) / 10
    assert min(spam_p) > 0.5 > max(ham_p)
    assert per_message < 0.05  # a loose bound for a shared CI machine; bench/ measures it
