"""Fitting and evaluating the linear spam model (scikit-learn is imported here only).

The model is one weight per hashed feature plus an intercept: logistic regression on the tf-idf
vectors of `vectorize`. Scores are calibrated into probabilities by Platt scaling fitted on
out-of-time predictions, and the spam threshold is set where, on those predictions, at most the
requested share of ham would be flagged.

Evaluation is in time order only: the older part trains, the newer part tests (a random split lets
the model see next month's spam campaign while training and overstates accuracy), and
cross-validation uses expanding windows (train on folds 1..k, test on fold k+1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from gateway.classifier import metrics
from gateway.classifier.corpus import Message, labels_of, time_order
from gateway.classifier.features import READING, FeatureSettings, extract
from gateway.classifier.model import Thresholds, save
from gateway.classifier.vectorize import (
    FieldCounts,
    FloatArray,
    VectorSpec,
    hashed_counts,
    weighted,
)

Labels = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FitParams:
    """What is fitted on the vectors; stored in the card."""

    # Inverse regularisation of logistic regression. Large: the data are close to separable;
    # sources held out (crosssource, and SpamAssassin's hard_ham split by sender) scored C = 1000
    # level with 10000 and ahead of 100 at ham FPR 0.1%.
    c: float = 1000.0
    class_weight: str | None = None  # or "balanced"
    max_iter: int = 5000
    # Sample weight of every message of a source (Message.source); the others weigh 1.
    source_weights: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "algorithm": "logistic regression (liblinear, l2), Platt-calibrated",
            "c": self.c,
            "class_weight": self.class_weight,
        }
        if self.source_weights:
            out["source_weights"] = dict(self.source_weights)
        return out


def sample_weights(messages: Sequence[Message], params: FitParams) -> Scores | None:
    """Per-message weights of `params.source_weights` (None when no source is weighted)."""
    if not params.source_weights:
        return None
    by_source = dict(params.source_weights)
    return np.fromiter(
        (by_source.get(m.source, 1.0) for m in messages), dtype=np.float64, count=len(messages)
    )


# Field weights chosen on time-ordered validation: the subject is short and its words are
# strongly weighted once normalised, which over-fitted; character n-grams of body words carry the
# most robust signal (misspellings, obfuscation, languages without spaces).
DEFAULT_VECTOR = VectorSpec(
    bits=20,
    weights=(("subject", 0.3), ("body", 1.0), ("url", 1.0), ("header", 1.0), ("chars", 2.0)),
    char_ngrams=(3, 5),
)


@dataclass(frozen=True)
class TrainSettings:
    features: FeatureSettings = field(default_factory=FeatureSettings)
    vector: VectorSpec = field(default_factory=lambda: DEFAULT_VECTOR)
    fit: FitParams = field(default_factory=FitParams)


@dataclass
class Linear:
    """A fitted model: raw score z = w . x + b (calibrated into a probability later)."""

    coef: FloatArray
    intercept: float
    idf: FloatArray

    def decision(self, counts: Sequence[Sequence[FieldCounts]], spec: VectorSpec) -> Scores:
        x = matrix(counts, spec, self.idf)
        return np.asarray(x @ self.coef.astype(np.float64), dtype=np.float64) + self.intercept


def featurize(messages: Sequence[Message], settings: TrainSettings) -> list[list[FieldCounts]]:
    """Hashed counts of every message (the slow part; done once per corpus)."""
    return [
        hashed_counts(extract(m.raw, settings.features, blind=m.blind), settings.vector)
        for m in messages
    ]


def idf_of(counts: Sequence[Sequence[FieldCounts]], spec: VectorSpec) -> FloatArray:
    """Smoothed inverse document frequency per hashed feature: ln((1 + n) / (1 + df)) + 1."""
    df = np.zeros(spec.size, dtype=np.float64)
    for message in counts:
        for fc in message:
            df[fc.index] += 1.0
    n = len(counts)
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


def matrix(
    counts: Sequence[Sequence[FieldCounts]], spec: VectorSpec, idf: FloatArray
) -> sp.csr_matrix:
    indptr = [0]
    indices: list[npt.NDArray[np.int64]] = []
    values: list[FloatArray] = []
    for message in counts:
        index, value = weighted(message, spec, idf)
        indices.append(index)
        values.append(value)
        indptr.append(indptr[-1] + len(index))
    data = np.concatenate(values) if values else np.zeros(0, dtype=np.float32)
    cols = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    x = sp.csr_matrix(
        (data, cols, np.asarray(indptr, dtype=np.int64)), shape=(len(counts), spec.size)
    )
    x.sum_duplicates()
    return x


def fit(
    counts: Sequence[Sequence[FieldCounts]],
    labels: Labels,
    settings: TrainSettings,
    weights: Scores | None = None,
) -> Linear:
    """Fit the linear model on the columns the messages use (the others keep weight 0, as
    l2 regularisation would give them anyway; liblinear's time grows with the column count).
    `weights`: one sample weight per message (sample_weights), or None for all 1."""
    from sklearn.linear_model import LogisticRegression

    if len(set(labels.tolist())) < 2:
        raise ValueError("training needs both ham and spam")
    spec = settings.vector
    params = settings.fit
    idf = idf_of(counts, spec)
    x = matrix(counts, spec, idf)
    used = np.unique(x.indices)
    lr = LogisticRegression(
        C=params.c,
        solver="liblinear",
        class_weight=params.class_weight,
        max_iter=params.max_iter,
    )
    with warnings.catch_warnings():
        # liblinear may warn about convergence on a tiny set; the figures tell the truth anyway.
        warnings.simplefilter("ignore")
        lr.fit(x[:, used], labels, sample_weight=weights)
    coef = np.zeros(spec.size, dtype=np.float32)
    coef[used] = lr.coef_[0]
    return Linear(coef=coef, intercept=float(lr.intercept_[0]), idf=idf)


def platt(z: Scores, labels: Labels) -> tuple[float, float]:
    """Platt scaling: a, b with P(spam) = sigmoid(a z + b), fitted on out-of-sample scores."""
    from sklearn.linear_model import LogisticRegression

    if len(set(labels.tolist())) < 2:
        return 1.0, 0.0
    lr = LogisticRegression(C=1e4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr.fit(z.reshape(-1, 1), labels)
    return float(lr.coef_[0][0]), float(lr.intercept_[0])


# -- time-ordered evaluation ---------------------------------------------------------------------

Index = npt.NDArray[np.int64]


def time_split(n: int, test_share: float = 0.3) -> tuple[Index, Index]:
    """Older (1 - test_share) trains, newer test_share tests; indices of a time-sorted corpus."""
    cut = round(n * (1.0 - test_share))
    return np.arange(cut, dtype=np.int64), np.arange(cut, n, dtype=np.int64)


def expanding_folds(n: int, folds: int) -> list[tuple[Index, Index]]:
    """Cut a time-sorted corpus in folds + 1 chunks; fold k trains on chunks 1..k and tests on
    chunk k + 1 (an expanding window: the model never sees the future)."""
    edges = np.linspace(0, n, folds + 2).astype(np.int64)
    return [
        (np.arange(0, edges[k], dtype=np.int64), np.arange(edges[k], edges[k + 1], dtype=np.int64))
        for k in range(1, folds + 1)
    ]


def scores_on(
    counts: Sequence[Sequence[FieldCounts]],
    labels: Labels,
    train: Index,
    test: Index,
    settings: TrainSettings,
    weights: Scores | None = None,
) -> Scores:
    """Raw scores on `test` of a model fitted on `train` (`weights`: of every message)."""
    chosen = None if weights is None else weights[train]
    model = fit([counts[i] for i in train], labels[train], settings, chosen)
    return model.decision([counts[i] for i in test], settings.vector)


def out_of_time(
    counts: Sequence[Sequence[FieldCounts]],
    labels: Labels,
    within: Index,
    settings: TrainSettings,
    folds: int,
    progress: Callable[[str], None] | None = None,
    weights: Scores | None = None,
) -> tuple[Scores, Labels, list[metrics.Report]]:
    """Expanding-window cross-validation inside `within` (time-sorted indices).

    Returns the scores and labels of the later half of the folds (their models were trained on
    most of the data, like the final model: they set its calibration and thresholds) and one
    report per fold (at threshold 0.5, z = 0).
    """
    scores: list[Scores] = []
    ys: list[Labels] = []
    reports: list[metrics.Report] = []
    later = folds // 2 + 1
    for k, (tr, te) in enumerate(expanding_folds(len(within), folds), 1):
        train_idx, test_idx = within[tr], within[te]
        y_train = labels[train_idx]
        if len(set(y_train.tolist())) < 2:
            continue  # an early window with one class only: nothing to learn yet
        if progress:
            progress(f"  fold {k}/{folds}: train {len(train_idx)}, test {len(test_idx)}")
        s = scores_on(counts, labels, train_idx, test_idx, settings, weights)
        if k >= later:
            scores.append(s)
            ys.append(labels[test_idx])
        reports.append(metrics.report(s, labels[test_idx], 0.0))
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=np.int64), []
    return np.concatenate(scores), np.concatenate(ys), reports


# Spam threshold: where at most this share of out-of-time ham scores higher.
TARGET_HAM_FPR = 0.001
# Ham threshold: where at most this share of out-of-time spam scores lower.
TARGET_SPAM_FNR = 0.005
SUSPECT = 0.5
DEFAULT_THRESHOLDS = Thresholds(spam=0.99, suspect=SUSPECT, ham=0.05)


@dataclass
class Calibration:
    platt: tuple[float, float]
    thresholds: Thresholds
    threshold_z: float
    note: str


def calibrate(scores: Scores, labels: Labels) -> Calibration:
    """Platt scaling and thresholds from out-of-time scores (defaults when there are too few)."""
    n_ham = int((labels == 0).sum())
    n_spam = int((labels == 1).sum())
    if n_ham < 20 or n_spam < 20:
        return Calibration(
            (1.0, 0.0),
            DEFAULT_THRESHOLDS,
            _logit(DEFAULT_THRESHOLDS.spam),
            f"defaults: too few out-of-time scores ({n_ham} ham, {n_spam} spam) to set them",
        )
    a, b = platt(scores, labels)
    if not a > 0.0:
        a, b = 1.0, 0.0
    z_spam = metrics.threshold_at_fpr(scores, labels, TARGET_HAM_FPR)
    if not math.isfinite(z_spam):
        z_spam = float(np.max(scores))
    z_spam = float(np.nextafter(z_spam, math.inf))

    def prob(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-min(max(a * z + b, -700.0), 700.0)))

    spam_p = max(prob(z_spam), SUSPECT)
    spam_z = sorted(scores[labels == 1].tolist())
    low = spam_z[math.floor(TARGET_SPAM_FNR * len(spam_z))]
    ham_p = min(prob(low), 0.2, SUSPECT / 2)
    return Calibration(
        (a, b),
        Thresholds(spam=round(spam_p, 6), suspect=SUSPECT, ham=round(ham_p, 6)),
        z_spam,
        f"spam: at most {TARGET_HAM_FPR:.1%} of {n_ham} out-of-time ham above it; "
        f"ham: at most {TARGET_SPAM_FNR:.1%} of {n_spam} out-of-time spam below it "
        f"(the later folds of expanding-window cross-validation in time order)",
    )


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass
class Evaluation:
    """How a training recipe performs on a corpus, in time order."""

    holdout: metrics.Report
    holdout_train: int
    holdout_test: int
    cv: list[metrics.Report]
    oof_scores: Scores
    oof_labels: Labels

    def to_json(self) -> dict[str, Any]:
        cv = [r.to_json() for r in self.cv]
        keys = ("one_minus_roca_pct", "recall_at_fpr_0_1pct", "recall_at_fpr_1pct")
        mean = {
            k: round(float(np.mean([c[k] for c in cv if c[k] is not None])), 6)
            for k in keys
            if any(c[k] is not None for c in cv)
        }
        return {
            "time_holdout": {
                "what": "train on the older 70%, test on the newer 30% (by Date, else arrival); "
                "confusion at the spam threshold the training period alone gave",
                "train_messages": self.holdout_train,
                "test_messages": self.holdout_test,
                **self.holdout.to_json(),
            },
            "time_cv": {
                "what": f"expanding window, {len(cv)} folds: train on chunks 1..k, test on k+1; "
                "confusion at p = 0.5",
                "mean": mean,
                "folds": cv,
            },
        }


def evaluate(
    counts: Sequence[Sequence[FieldCounts]],
    labels: Labels,
    settings: TrainSettings,
    folds: int = 4,
    test_share: float = 0.3,
    progress: Callable[[str], None] | None = None,
    weights: Scores | None = None,
) -> Evaluation:
    """Time-ordered hold-out and cross-validation; `counts` must be in time order."""
    say = progress or (lambda _: None)
    train, test = time_split(len(labels), test_share)
    say(f"time hold-out: train on the older {len(train)}, test on the newer {len(test)}")
    held = scores_on(counts, labels, train, test, settings, weights)
    # The threshold an admin would have had: calibrated inside the training period only.
    say("  thresholds from the training period (inner cross-validation)")
    inner_scores, inner_labels, _ = out_of_time(
        counts, labels, train, settings, folds, weights=weights
    )
    threshold_z = calibrate(inner_scores, inner_labels).threshold_z
    holdout = metrics.report(held, labels[test], threshold_z)
    say(f"time cross-validation, {folds} expanding folds")
    everything = np.arange(len(labels), dtype=np.int64)
    oof_scores, oof_labels, cv = out_of_time(
        counts, labels, everything, settings, folds, say, weights
    )
    return Evaluation(holdout, len(train), len(test), cv, oof_scores, oof_labels)


def held_out_bands(scores: Scores, labels: Labels, platt_ab: tuple[float, float]) -> dict[str, Any]:
    """How held-out mail spreads over the plugin's bands (ML_BAND_*): the out-of-time scores of
    the later time folds, calibrated as the model calibrates."""
    from gateway.plugins.classifier import BANDS, band_of

    a, b = platt_ab
    out: dict[str, Any] = {
        "what": "messages of the later folds of time-ordered cross-validation (models that "
        "never saw them), per band of the calibrated probability"
    }
    for name, label in (("ham", 0), ("spam", 1)):
        counts = dict.fromkeys((band for band, _ in BANDS), 0)
        for z in scores[labels == label].tolist():
            t = min(max(a * z + b, -700.0), 700.0)
            counts[band_of(1.0 / (1.0 + math.exp(-t)))] += 1
        out[name] = counts
    return out


def trained_on(messages: Sequence[Message]) -> str:
    """One line for the card: which corpora, how many messages of each label."""
    parts: dict[str, list[int]] = {}
    for m in messages:
        key = m.corpus or ("admin labels" if m.feedback else "own folders")
        tally = parts.setdefault(key, [0, 0])
        tally[m.label] += 1
    return "; ".join(f"{key}: {ham} ham, {spam} spam" for key, (ham, spam) in parts.items())


# -- building a model file -----------------------------------------------------------------------


@dataclass
class Built:
    card: dict[str, Any]
    evaluation: Evaluation | None


def build(
    messages: Sequence[Message],
    settings: TrainSettings,
    out: Path,
    sources: Sequence[dict[str, Any]],
    folds: int = 4,
    evaluate_first: bool = True,
    progress: Callable[[str], None] | None = None,
    cross_source: bool = False,
) -> Built:
    """Fit on every message, calibrate on out-of-time scores, write the model file and card.

    `cross_source`: also judge the recipe on named sources kept out of training (messages of
    gateway.classifier.corpora), next to the baseline; the card keeps the table."""
    say = progress or (lambda _: None)
    ordered = time_order(list(messages))
    labels = labels_of(ordered)
    if len(set(labels.tolist())) < 2:
        raise ValueError("training needs both ham and spam")
    say(f"features of {len(ordered)} messages")
    counts = featurize(ordered, settings)
    weights = sample_weights(ordered, settings.fit)
    evaluation: Evaluation | None = None
    if evaluate_first:
        evaluation = evaluate(counts, labels, settings, folds, progress=say, weights=weights)
        oof_scores, oof_labels = evaluation.oof_scores, evaluation.oof_labels
    else:
        say(f"time cross-validation for calibration, {folds} expanding folds")
        everything = np.arange(len(labels), dtype=np.int64)
        oof_scores, oof_labels, _ = out_of_time(
            counts, labels, everything, settings, folds, say, weights
        )
    calibration = calibrate(oof_scores, oof_labels)
    table: dict[str, Any] | None = None
    if cross_source:
        from gateway.classifier import crosssource

        say("cross-source splits (the recipe and the baseline on each)")
        table = crosssource.table(crosssource.run(ordered, settings, counts, progress=say))
    say("fitting the model on every message")
    linear = fit(counts, labels, settings, weights)
    times = [m.time for m in ordered if not math.isnan(m.time)]
    created = datetime.now(UTC)
    card: dict[str, Any] = {
        "version": created.strftime("%Y%m%d.%H%M%S"),
        "created": created.isoformat(timespec="seconds"),
        "description": "mailgate spam classifier: hashed tf-idf features, logistic regression",
        "features": {
            "reading": READING,
            "settings": settings.features.to_json(),
            "vector": settings.vector.to_json(),
        },
        "fit": settings.fit.to_json(),
        "thresholds": calibration.thresholds.to_json(),
        "thresholds_how": calibration.note,
        "training": {
            "messages": len(ordered),
            "ham": int((labels == 0).sum()),
            "spam": int((labels == 1).sum()),
            "admin_labels": sum(1 for m in ordered if m.feedback),
            "sources": list(sources),
            "time_range": [
                datetime.fromtimestamp(min(times), UTC).date().isoformat() if times else None,
                datetime.fromtimestamp(max(times), UTC).date().isoformat() if times else None,
            ],
            "undated": len(ordered) - len(times),
        },
        "metrics": evaluation.to_json() if evaluation else None,
        "held_out_bands": held_out_bands(oof_scores, oof_labels, calibration.platt),
    }
    if table is not None:
        card["cross_source"] = table
    corpora_used = sorted({m.corpus for m in ordered if m.corpus})
    card["trained_on"] = trained_on(ordered)
    if corpora_used:
        names = ", ".join(corpora_used[:-1]) + " and " if len(corpora_used) > 1 else ""
        card["description"] += f"; trained on the {names}{corpora_used[-1]} corpora"
    written = save(out, linear.coef, linear.idf, linear.intercept, calibration.platt, card)
    return Built(written, evaluation)
