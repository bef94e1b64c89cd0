"""Evaluation figures for a spam filter, in numpy only.

Label 1 is spam, 0 is ham; a higher score means more spammy. "Spam recall at ham FPR f" is the
share of spam scored strictly above a threshold that at most floor(f x hams) hams exceed: the
question an admin asks ("how much spam do I catch if I accept losing 1 good mail in 1000?").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int64]


def _ranks(values: Scores) -> Scores:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    n = len(values)
    while i < n:
        j = i
        while j + 1 < n and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def roc_auc(scores: Scores, labels: Labels) -> float:
    """Area under the ROC curve (Mann-Whitney U); nan when a class is missing."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return math.nan
    ranks = _ranks(scores)
    u = float(ranks[labels == 1].sum()) - pos * (pos + 1) / 2.0
    return u / (pos * neg)


def threshold_at_fpr(scores: Scores, labels: Labels, fpr: float) -> float:
    """The lowest threshold that at most floor(fpr x hams) hams score strictly above."""
    ham = np.sort(scores[labels == 0])[::-1]
    if len(ham) == 0:
        return -math.inf
    allowed = math.floor(fpr * len(ham) + 1e-9)
    if allowed >= len(ham):
        return -math.inf
    return float(ham[allowed])


def recall_at_fpr(scores: Scores, labels: Labels, fpr: float) -> float:
    threshold = threshold_at_fpr(scores, labels, fpr)
    spam = scores[labels == 1]
    if len(spam) == 0:
        return math.nan
    return float((spam > threshold).mean())


@dataclass(frozen=True)
class Confusion:
    threshold: float
    spam_caught: int  # true positives
    spam_missed: int  # false negatives
    ham_flagged: int  # false positives
    ham_passed: int  # true negatives

    @property
    def ham_fpr(self) -> float:
        n = self.ham_flagged + self.ham_passed
        return self.ham_flagged / n if n else math.nan

    @property
    def spam_recall(self) -> float:
        n = self.spam_caught + self.spam_missed
        return self.spam_caught / n if n else math.nan


def confusion(scores: Scores, labels: Labels, threshold: float) -> Confusion:
    flagged = scores >= threshold
    spam = labels == 1
    return Confusion(
        threshold=threshold,
        spam_caught=int((flagged & spam).sum()),
        spam_missed=int((~flagged & spam).sum()),
        ham_flagged=int((flagged & ~spam).sum()),
        ham_passed=int((~flagged & ~spam).sum()),
    )


@dataclass(frozen=True)
class Report:
    """The figures `mailgate model eval` prints and the model card stores."""

    messages: int
    spam: int
    ham: int
    roc_auc: float
    one_minus_roca_pct: float
    recall_at_fpr_0_1pct: float
    recall_at_fpr_1pct: float
    confusion: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 6) if math.isfinite(value) else None
        return out


def report(scores: Scores, labels: Labels, threshold: float) -> Report:
    auc = roc_auc(scores, labels)
    c = confusion(scores, labels, threshold)
    return Report(
        messages=len(labels),
        spam=int(labels.sum()),
        ham=int(len(labels) - labels.sum()),
        roc_auc=auc,
        one_minus_roca_pct=(1.0 - auc) * 100.0,
        recall_at_fpr_0_1pct=recall_at_fpr(scores, labels, 0.001),
        recall_at_fpr_1pct=recall_at_fpr(scores, labels, 0.01),
        confusion={
            "threshold": round(threshold, 6),
            "spam_caught": c.spam_caught,
            "spam_missed": c.spam_missed,
            "ham_flagged": c.ham_flagged,
            "ham_passed": c.ham_passed,
            "ham_fpr": round(c.ham_fpr, 6) if math.isfinite(c.ham_fpr) else None,
            "spam_recall": round(c.spam_recall, 6) if math.isfinite(c.spam_recall) else None,
        },
    )
