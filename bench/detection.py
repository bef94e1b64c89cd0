"""Held-out detection figures of the whole chain, next to the plain baseline, on two source folds.

    python3 -m bench.detection --fold A=DIR_A:VECTORS_A --fold B=DIR_B:VECTORS_B [--rules rules]
        [--min-count 20 --keep-bands]   # the shipped recipe (rules/fitted.toml's header)

Each fold is a corpora folder laid out like ../shared/corpora (spamassassin/, modern/ham/...,
holding only that fold's sources) and the symbol vectors of its messages as `mailgate rules fit
--save-vectors` wrote them, with the classifier of the gateway trained on the OTHER fold (a
config whose `[plugins.classifier] model` is that fold's model). For each fold in turn, as test:

- chain: the scores of rules/ are refitted (gateway.scorefit.fit, as `rules fit` does) on the
  other fold's vectors, then the test fold's messages are judged at the thresholds of rules/:
  ham lost (tag or worse), spam and phishing caught, recall at 0.1% and 1% ham FPR of the total;
- baseline: hashed word 1-2-gram tf-idf + logistic regression (gateway.classifier.crosssource)
  trained on the other fold's messages, recall at the same FPRs on the test fold.

So neither the classifier nor the scores have seen a source they are judged on. (The vectors a
fold's scores are fitted on come from a model trained on the test fold: the ~100 score weights
learn from its labels only through that model's outputs on other mail.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from gateway.classifier import corpora, crosssource
from gateway.policy import load_rules
from gateway.scorefit import (
    PHISH,
    SPAM,
    FitSettings,
    Policy,
    evaluate,
    fit,
    load_samples,
    policy_of_rules,
    recall_at,
)


def _policy(rules_dir: Path) -> Policy:
    # without fitted.toml: its scores were fitted on both folds, the held-out one too
    return policy_of_rules(load_rules(rules_dir, fitted=False))


def _baseline(train_dir: Path, test_dir: Path) -> dict[str, float]:
    train = corpora.load(train_dir)
    test = corpora.load(test_dir)
    messages = [*train, *test]
    x = crosssource.baseline_matrix(messages)
    labels = np.array([m.label for m in messages], dtype=np.int64)
    train_idx = np.arange(len(train))
    test_idx = np.arange(len(train), len(messages))
    scores = crosssource.baseline_scores(x, labels, train_idx, test_idx)
    test_labels = labels[test_idx]
    ham = [float(s) for s, y in zip(scores, test_labels, strict=True) if y == 0]
    bad = [float(s) for s, y in zip(scores, test_labels, strict=True) if y == 1]
    phish = np.array([m.phish for m in test])
    out = {"recall_at_01": recall_at(ham, bad, 0.001), "recall_at_1": recall_at(ham, bad, 0.01)}
    if phish.any():
        cut = sorted(ham, reverse=True)[int(0.01 * len(ham))]
        out["phish_at_1"] = float((scores[phish] > cut).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.detection", description=__doc__)
    parser.add_argument("--fold", action="append", required=True, help="NAME=CORPORA:VECTORS")
    parser.add_argument("--rules", default="rules", help="rules/ folder (thresholds, scores)")
    parser.add_argument("--min-count", type=int, default=5, help="as rules fit --min-count")
    parser.add_argument("--keep", action="append", default=[], help="as rules fit --keep")
    parser.add_argument(
        "--keep-bands",
        action="store_true",
        help="keep every ML_* symbol, bands and ML_CERTAINTY (the shipped recipe)",
    )
    args = parser.parse_args(argv)
    folds: dict[str, tuple[Path, Path]] = {}
    for spec in args.fold:
        name, _, paths = spec.partition("=")
        root, _, vectors = paths.partition(":")
        folds[name] = (Path(root), Path(vectors))
    if len(folds) != 2:
        parser.error("give exactly two --fold")
    policy = _policy(Path(args.rules))
    keep = set(args.keep)
    if args.keep_bands:
        keep |= {symbol for symbol in policy.scores if symbol.startswith("ML_")}
    settings = FitSettings(min_count=args.min_count, keep=frozenset(keep))
    samples = {name: load_samples(vectors) for name, (_, vectors) in folds.items()}
    print(f"thresholds: tag {policy.tag}, quarantine {policy.quarantine}, reject {policy.reject}")
    for test_name, (test_root, _) in folds.items():
        train_name = next(n for n in folds if n != test_name)
        scores, _ = fit(samples[train_name], policy, settings)
        figures = evaluate(samples[test_name], {**policy.scores, **scores}, policy)
        base = _baseline(folds[train_name][0], test_root)
        spam = sum(s.label == SPAM for s in samples[test_name])
        phish = sum(s.label == PHISH for s in samples[test_name])
        head = f"{figures.ham} ham, {spam} spam, {phish} phish"
        print(f"\ntest fold {test_name} ({test_root}): {head}")
        print(f"  chain    {figures.line()}")
        line = (
            f"  baseline recall at 0.1% FPR {100 * base['recall_at_01']:.1f}%, "
            f"at 1% FPR {100 * base['recall_at_1']:.1f}%"
        )
        if "phish_at_1" in base:
            line += f"; phishing recall at 1% FPR {100 * base['phish_at_1']:.1f}%"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
