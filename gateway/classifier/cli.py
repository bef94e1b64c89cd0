"""`mailgate model train | eval | info`: build, measure and describe the spam model.

    mailgate model train --ham DIR --spam DIR [--feedback PATH] [--out models/spam.npz]
    mailgate model train --corpora DIR [--cross-source] [--out models/spam.npz]
    mailgate model eval  --ham DIR --spam DIR [--model PATH] [--recipe]
    mailgate model eval  --cross-source --corpora DIR [--model PATH] [--only NAME]
    mailgate model info  [--model PATH]

Sources are folders of .eml files, Maildirs (cur/ and new/) or mbox files; repeat --ham and
--spam as needed. `--feedback` adds the labels admins gave with `mailgate quarantine learn`.
`--corpora` reads the named sources of the public corpora (gateway.classifier.corpora: the
SpamAssassin corpus and the modern one, each source's artefacts taken out); with
`--cross-source` it also judges the recipe on sources kept out of training (gateway.classifier
.crosssource) next to a word n-gram baseline, and the card keeps that table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.text import printable
from gateway.tomlfile import ConfigError, ConfigErrors

# Names of the SpamAssassin public corpus' collector (its hosts, the redacted recipient) and its
# own relays: without them out of the features, a model learns "this came through jmason.org's
# fetchmail" rather than spam. `--preset spamassassin` fills --redact and --collector with them.
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "spamassassin": {
        "redact": (
            r"spamassassin\.taint\.org",
            r"taint\.org",
            r"jmason\.org",
            r"\bjm@",
            r"zzzz\w*",
            r"yyyy\w*",
            r"netnoteinc\.com",
            r"slashnull\.org",
            r"webnote\.net",
        ),
        "collector": (
            r"fetchmail",
            r"phobos",
            r"slashnull\.org",
            r"webnote\.net",
            r"jmason\.org",
            r"netnoteinc\.com",
            r"taint\.org",
        ),
    },
    # The modern corpus (../shared/corpora/modern): the archive that received all of it.
    "modern": {"redact": (r"lfdr\.de",), "collector": (r"lfdr\.de",)},
    "none": {"redact": (), "collector": ()},
}
# With --corpora, SpamAssassin's hard_ham (2002 newsletters and commercial mail, the only such ham
# either corpus has) weighs 4: among mailing-list ham it is too rare to stop the model reading
# "commercial" as "spam". The commercial-ham splits (crosssource: half of hard_ham's sender
# domains held out, the other half trained) chose it: spam recall above the highest held-out
# newsletter rose by 2-4 points on each half with weight 4 instead of 1 (the card has the
# shipped model's figures next to the baseline's). The rendered templates of organisations
# (corpora.py, commercial/ham/templates, when the corpora root has them) weigh the same: 2, 4
# and 8 moved no cross-source figure by more than 2 points (2026-12-04).
CORPORA_SOURCE_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("spamassassin/hard_ham", 4.0),
    ("commercial/ham/templates", 4.0),
)
# `--corpora` trains on both corpora: both presets at once.
CORPORA_PRESET = {
    key: PRESETS["spamassassin"][key] + PRESETS["modern"][key] for key in ("redact", "collector")
}


def add_commands(sub: Any) -> None:
    """Add `model` and its subcommands to the `mailgate` parser's subparsers."""
    model = sub.add_parser("model", help="train, evaluate and describe the spam classifier")
    msub = model.add_subparsers(dest="model_command", required=True)

    train = msub.add_parser("train", help="train a model from labelled mail and write it")
    _add_sources(train)
    train.add_argument(
        "--feedback",
        action="append",
        default=[],
        metavar="PATH",
        help="admin labels: the quarantine folder (labels from `quarantine learn`), a folder "
        'with ham/ and spam/ inside, or a JSONL file of {"label": "ham"|"spam", "path": '
        '"msg.eml"} lines as `quarantine feedback --jsonl` writes (repeatable)',
    )
    train.add_argument("--out", default="models/spam.npz", help="model file (card beside it)")
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="none",
        help="collector names to leave out of the features (spamassassin: the public corpus)",
    )
    train.add_argument(
        "--redact", action="append", default=[], metavar="REGEX", help="text to drop first"
    )
    train.add_argument(
        "--collector",
        action="append",
        default=[],
        metavar="REGEX",
        help="Received lines added by the collecting side (not counted as hops)",
    )
    train.add_argument("--folds", type=int, default=4, help="time-ordered folds (default 4)")
    train.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the time-ordered hold-out (calibration still uses time-ordered folds)",
    )
    train.add_argument(
        "--corpora",
        metavar="DIR",
        help="train on every named source of the public corpora under DIR (spamassassin/, "
        "modern/), their artefacts taken out and both collectors' names redacted",
    )
    train.add_argument(
        "--cross-source",
        action="store_true",
        help="with --corpora: also judge the recipe on sources kept out of training, next to "
        "the baseline (about two fits per split: minutes), and keep the table in the card",
    )
    train.add_argument(
        "--source-weight",
        action="append",
        default=[],
        metavar="SOURCE=W",
        help="weigh every message of a source W times (SOURCE as the card names it: the folder "
        "given, or e.g. spamassassin/hard_ham); with --corpora the default is "
        + ", ".join(f"{k}={v:g}" for k, v in CORPORA_SOURCE_WEIGHTS),
    )
    train.add_argument(
        "--layout-traits",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="features of how a message is laid out (HTML tag counts, HTML without a plain part, "
        "transfer encodings, charsets, part counts, display:none); default: on for your own "
        "mail, off with --corpora, whose ham is plain-text list mail: its layout would teach "
        "the model that every laid-out message is spam",
    )
    train.add_argument("--json", action="store_true", help="print the card as JSON")
    train.set_defaults(func=cmd_train)

    ev = msub.add_parser("eval", help="measure a model on labelled mail")
    _add_sources(ev)
    ev.add_argument("--model", help="model file (default: [classifier] model of the config)")
    ev.add_argument(
        "--recipe",
        action="store_true",
        help="instead: retrain the model's recipe on this mail in time order (older 70%% "
        "train, newer 30%% test, plus expanding-window cross-validation)",
    )
    ev.add_argument("--folds", type=int, default=4, help="time-ordered folds for --recipe")
    ev.add_argument(
        "--cross-source",
        action="store_true",
        help="instead: retrain the model's recipe on --corpora with whole sources kept out "
        "(each ham list, each spam source, corpus to corpus, older to newer), next to the "
        "baseline",
    )
    ev.add_argument("--corpora", metavar="DIR", help="the public corpora (for --cross-source)")
    ev.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="with --cross-source: only the splits whose name contains NAME (repeatable)",
    )
    ev.add_argument("--json", action="store_true", help="machine-readable output")
    ev.set_defaults(func=cmd_eval)

    info = msub.add_parser("info", help="describe a model and verify its file")
    info.add_argument("--model", help="model file (default: [classifier] model of the config)")
    info.add_argument("--json", action="store_true", help="print the whole card")
    info.set_defaults(func=cmd_info)


def _add_sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ham", action="append", default=[], metavar="PATH", help="good mail (repeatable)"
    )
    parser.add_argument(
        "--spam", action="append", default=[], metavar="PATH", help="spam (repeatable)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many messages per source"
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _sources(args: argparse.Namespace) -> list[tuple[str, Path]]:
    return [("ham", Path(p)) for p in args.ham] + [("spam", Path(p)) for p in args.spam]


def _model_path(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    """--model, else the model the configuration's classifier loads (a broken configuration
    raises ConfigError/ConfigErrors, which the commands print like every other command)."""
    from gateway.cli import _config_path
    from gateway.config import classifier_model_path, load_settings

    return classifier_model_path(load_settings(_config_path(args.config)))


# -- train ---------------------------------------------------------------------------------------


TRAIN_EXTRA_MISSING = (
    "mailgate: training needs scikit-learn, which serving does not: "
    "pip install 'mailgate[train]' (in the same environment as mailgate)"
)


def _training_available() -> bool:
    """scikit-learn (and scipy) are the optional `train` extra: serve never needs them."""
    try:
        import scipy.sparse  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        print(TRAIN_EXTRA_MISSING, file=sys.stderr)
        return False
    return True


def cmd_train(args: argparse.Namespace) -> int:
    if not _training_available():
        return 2
    from gateway.classifier import corpus
    from gateway.classifier.features import FeatureSettings
    from gateway.classifier.train import FitParams, TrainSettings, build

    sources = _sources(args)
    if not sources and not args.feedback and not args.corpora:
        print(
            "mailgate: model train needs --ham and --spam (or --corpora, or --feedback)",
            file=sys.stderr,
        )
        return 2
    preset = PRESETS[args.preset]
    if args.corpora:
        preset = {
            key: tuple(dict.fromkeys(CORPORA_PRESET[key] + preset[key]))
            for key in ("redact", "collector")
        }
    try:
        weights = _source_weights(args.source_weight, bool(args.corpora))
    except ValueError as exc:
        print(f"mailgate: {printable(str(exc), 500)}", file=sys.stderr)
        return 2
    settings = TrainSettings(
        features=FeatureSettings(
            redact=tuple(preset["redact"]) + tuple(args.redact),
            collector_received=tuple(preset["collector"]) + tuple(args.collector),
            layout_traits=(
                args.layout_traits if args.layout_traits is not None else not args.corpora
            ),
        ),
        fit=FitParams(source_weights=weights),
    )
    try:
        settings.features.from_json(settings.features.to_json())  # validates the patterns
        messages = corpus.load(sources, limit=args.limit)
        described = _describe_sources(sources, messages)
        if args.corpora:
            from gateway.classifier import corpora

            named = corpora.load(Path(args.corpora), limit=args.limit)
            messages += named
            described += corpora.describe(named)
        for path in args.feedback:
            pairs = corpus.feedback_sources(Path(path))
            labelled = corpus.load(pairs, feedback=True)
            messages += labelled
            described.append({"feedback": str(path), "messages": len(labelled)})
    except (corpus.CorpusError, OSError, ValueError) as exc:
        print(f"mailgate: {printable(str(exc), 500)}", file=sys.stderr)
        return 1
    _say(f"read {len(messages)} messages")
    started = time.perf_counter()
    from threadpoolctl import threadpool_limits

    try:
        # one core: the gateway (or other work) shares the machine; the fit is single-threaded
        # anyway, only numpy's BLAS would spread out
        with threadpool_limits(limits=1):
            built = build(
                messages,
                settings,
                Path(args.out),
                described,
                folds=args.folds,
                evaluate_first=not args.no_eval,
                progress=_say,
                cross_source=bool(args.corpora) and args.cross_source,
            )
    except ValueError as exc:
        print(f"mailgate: cannot train: {exc}", file=sys.stderr)
        return 1
    _say(f"trained in {time.perf_counter() - started:.1f}s")
    if args.json:
        print(json.dumps(built.card, indent=2))
    else:
        _print_card(built.card, Path(args.out))
    return 0


def _describe_sources(
    sources: Sequence[tuple[str, Path]], messages: Sequence[Any]
) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for m in messages:
        counts[m.source] = counts.get(m.source, 0) + 1
    return [
        {"label": label, "path": str(path), "messages": counts.get(str(path), 0)}
        for label, path in sources
    ]


# -- eval ----------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from gateway.classifier import corpus, metrics
    from gateway.classifier.model import ModelError, load

    sources = _sources(args)
    if args.cross_source:
        return _eval_cross_source(args)
    if not args.ham or not args.spam:
        print("mailgate: model eval needs --ham and --spam", file=sys.stderr)
        return 2
    try:
        path = _model_path(args)
        model = load(path)
        messages = corpus.load(sources, limit=args.limit)
    except (ModelError, ConfigError, ConfigErrors, corpus.CorpusError, OSError) as exc:
        print(f"mailgate: {printable(str(exc), 500)}", file=sys.stderr)
        return 1
    if args.recipe:
        return _eval_recipe(args, model, messages)
    import numpy as np  # here, not at the top: `mailgate serve` builds this parser too

    labels = corpus.labels_of(messages)
    started = time.perf_counter()
    z = np.array([model.score(m.raw).z for m in messages], dtype=np.float64)
    elapsed = time.perf_counter() - started
    p = np.array([model.probability_of_z(v) for v in z])
    report = metrics.report(p, labels, model.thresholds.spam)
    out = {
        "model": str(path),
        "version": model.version,
        "spam_threshold": model.thresholds.spam,
        "ms_per_message": round(1000 * elapsed / max(1, len(messages)), 3),
        **report.to_json(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"model     {printable(str(path))} (version {model.version})")
        _print_report(out)
        print(f"speed     {out['ms_per_message']} ms per message (features + prediction)")
    return 0


def _eval_recipe(args: argparse.Namespace, model: Any, messages: list[Any]) -> int:
    if not _training_available():
        return 2
    from gateway.classifier import corpus
    from gateway.classifier.train import evaluate, featurize, sample_weights

    settings = _recipe_of(model)
    ordered = corpus.time_order(messages)
    labels = corpus.labels_of(ordered)
    counts = featurize(ordered, settings)
    weights = sample_weights(ordered, settings.fit)
    evaluation = evaluate(counts, labels, settings, args.folds, progress=_say, weights=weights)
    result = evaluation.to_json()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("time-ordered hold-out (older 70% train, newer 30% test):")
        _print_report(result["time_holdout"])
        print("time-ordered cross-validation (expanding window):")
        for k, fold in enumerate(result["time_cv"]["folds"], 1):
            print(
                f"  fold {k}: {fold['messages']} messages, (1-ROCA)% "
                f"{_f(fold['one_minus_roca_pct'])}, recall@0.1% "
                f"{_pct(fold['recall_at_fpr_0_1pct'])}, recall@1% "
                f"{_pct(fold['recall_at_fpr_1pct'])}"
            )
        mean = result["time_cv"]["mean"]
        print(
            f"  mean: (1-ROCA)% {_f(mean.get('one_minus_roca_pct'))}, recall@0.1% "
            f"{_pct(mean.get('recall_at_fpr_0_1pct'))}, recall@1% "
            f"{_pct(mean.get('recall_at_fpr_1pct'))}"
        )
    return 0


def _eval_cross_source(args: argparse.Namespace) -> int:
    if not args.corpora:
        print("mailgate: model eval --cross-source needs --corpora DIR", file=sys.stderr)
        return 2
    if not _training_available():
        return 2
    from gateway.classifier import corpora, crosssource
    from gateway.classifier.corpus import CorpusError
    from gateway.classifier.model import ModelError, load

    try:
        model = load(_model_path(args))
        messages = corpora.load(Path(args.corpora), limit=args.limit)
    except (ModelError, ConfigError, ConfigErrors, CorpusError, OSError) as exc:
        print(f"mailgate: {printable(str(exc), 500)}", file=sys.stderr)
        return 1
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        rows = crosssource.run(messages, _recipe_of(model), only=args.only, progress=_say)
    table = crosssource.table(rows)
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print_cross_source(table)
    return 0


def _source_weights(given: list[str], corpora: bool) -> tuple[tuple[str, float], ...]:
    """--source-weight SOURCE=W values over the --corpora defaults; ValueError names a bad one."""
    weights = dict(CORPORA_SOURCE_WEIGHTS) if corpora else {}
    for item in given:
        source, eq, value = item.rpartition("=")
        try:
            weight = float(value) if eq and source else math.nan
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"--source-weight {item!r}: expected SOURCE=W with W > 0")
        weights[source] = weight
    return tuple(weights.items())


def _recipe_of(model: Any) -> Any:
    """The training settings a model was made with (its card)."""
    from gateway.classifier.train import FitParams, TrainSettings

    fit = model.card.get("fit", {})
    return TrainSettings(
        features=model.features,
        vector=model.vector,
        fit=FitParams(
            c=float(fit.get("c", FitParams.c)),
            class_weight=fit.get("class_weight"),
            source_weights=tuple(
                (str(k), float(v)) for k, v in (fit.get("source_weights") or {}).items()
            ),
        ),
    )


def print_cross_source(table: dict[str, Any]) -> None:
    """The cross-source table, model against baseline; every value through `printable`."""
    p = printable
    print("cross-source: model / baseline (AUC, spam recall at ham FPR 0.1% and 1%, phishing")
    print("recall at 1%); * marks where the baseline is better, = a tie")
    for row in map(_obj, _list(table.get("rows"))):
        m, b = _obj(row.get("model")), _obj(row.get("baseline"))
        cells = []
        for key, fmt in (
            ("roc_auc", _f),
            ("recall_at_fpr_0_1pct", _pct),
            ("recall_at_fpr_1pct", _pct),
            ("phish_recall_at_fpr_1pct", _pct),
        ):
            mv, bv = m.get(key), b.get(key)
            if mv is None and bv is None:
                cells.append("-")
                continue
            mark = ""
            if isinstance(mv, int | float) and isinstance(bv, int | float):
                mark = " =" if mv == bv else " *" if mv < bv else ""
            cells.append(f"{fmt(mv)} / {fmt(bv)}{mark}")
        print(
            f"  {p(str(row.get('split')), 60)} ({p(str(row.get('test_ham')))} ham, "
            f"{p(str(row.get('test_spam')))} spam): " + "; ".join(cells)
        )
    for caveat in _list(table.get("caveats")):
        print(f"  note: {p(str(caveat), 600)}")


def _f(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}%"


def _print_report(r: dict[str, Any]) -> None:
    print(f"messages  {r['messages']} ({r['ham']} ham, {r['spam']} spam)")
    print(f"ROC AUC   {_f(r['roc_auc'], 6)}   (1-ROCA)% {_f(r['one_minus_roca_pct'])}")
    print(
        f"recall    {_pct(r['recall_at_fpr_0_1pct'])} of spam at ham FPR 0.1%, "
        f"{_pct(r['recall_at_fpr_1pct'])} at 1%"
    )
    c = r["confusion"]
    print(
        f"threshold {_f(c['threshold'], 6)}: spam caught {c['spam_caught']}, missed "
        f"{c['spam_missed']}; ham flagged {c['ham_flagged']}, passed {c['ham_passed']} "
        f"(ham FPR {_pct(c['ham_fpr'])}, spam recall {_pct(c['spam_recall'])})"
    )


# -- info ----------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from gateway.classifier.model import ModelError, load

    try:
        path = _model_path(args)
        model = load(path)
    except (ModelError, ConfigError, ConfigErrors, OSError) as exc:
        print(f"mailgate: {printable(str(exc), 500)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(model.card, indent=2))
    else:
        _print_card(model.card, path)
    return 0


def _obj(value: Any) -> dict[str, Any]:
    """A card's sub-object, or {} when the (untrusted) card holds something else there."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _rates(r: dict[str, Any]) -> str:
    return (
        f"(1-ROCA)% {_f(r.get('one_minus_roca_pct'))}, recall "
        f"{_pct(r.get('recall_at_fpr_0_1pct'))} at ham FPR 0.1%, "
        f"{_pct(r.get('recall_at_fpr_1pct'))} at 1%"
    )


def _print_card(card: dict[str, Any], path: Path) -> None:
    """The card for a human; every value from the file is printed through `printable`."""
    p = printable
    training = _obj(card.get("training"))
    thresholds = _obj(card.get("thresholds"))
    print(f"model     {p(str(path))} (sha256 {p(str(card.get('sha256')), 64)}, verified)")
    print(f"version   {p(str(card.get('version')))} created {p(str(card.get('created')))}")
    span = " to ".join(str(d) for d in _list(training.get("time_range")))
    print(
        f"training  {p(str(training.get('messages')))} messages ({p(str(training.get('ham')))} "
        f"ham, {p(str(training.get('spam')))} spam, {p(str(training.get('admin_labels', 0)))} "
        f"admin labels), {p(span)}"
    )
    for source in map(_obj, _list(training.get("sources"))):
        where = source.get("path") or source.get("feedback") or source.get("source")
        label = source.get("label", "feedback")
        print(f"          {p(str(label))}: {p(str(where))} ({p(str(source.get('messages')))})")
    print(
        f"threshold spam p >= {thresholds.get('spam')}, suspect >= {thresholds.get('suspect')}, "
        f"ham p <= {thresholds.get('ham')}"
    )
    fit = p(json.dumps(card.get("fit")), 300)
    print(f"features  {p(str(card.get('features_known')))} known, {fit}")
    found = _obj(card.get("metrics"))
    if found:
        print(f"measured  time hold-out: {_rates(_obj(found.get('time_holdout')))}")
        mean = _obj(_obj(found.get("time_cv")).get("mean"))
        print(f"          time CV mean: {_rates(mean)}")
    bands = _obj(card.get("held_out_bands"))
    for label in ("ham", "spam"):
        counts = _obj(bands.get(label))
        if counts:
            shown = " ".join(f"{p(str(k)[8:], 8)}:{p(str(v), 8)}" for k, v in counts.items())
            print(f"held-out {label} per ML_BAND_*: {shown}")
    trained_on = card.get("trained_on")
    if isinstance(trained_on, str):
        print(f"trained on {p(trained_on, 600)}")
    if _obj(card.get("cross_source")):
        print_cross_source(_obj(card.get("cross_source")))
    for name, extra in _obj(card.get("extra_metrics")).items():
        if isinstance(extra, dict):
            print(f"          {p(name)}: {_rates(extra)}")
