"""`python3 -m bench.classifier_cost`: CPU per message of the spam classifier.

On the same messages in the same run (a seeded sample of the SpamAssassin corpus, as CRLF, the
way the gateway sees them), it measures process CPU time of:

  parse-compat32   email.message_from_bytes with compat32 and every part decoded: the floor,
                   what parsing alone costs
  mime-parse       gateway.mime.parse.analyze: the gateway's one MIME parse, made once per
                   message by the MIME stage and shared by every check (the classifier too)
  features         gateway.classifier.features.extract on that shared MIME report: decode,
                   HTML to text, tokens
  classify         features + hashing + tf-idf + the dot product + calibration on the shared
                   MIME report: what the `classifier` plugin adds per message (SpamModel.score)
  classify+parse   classify with the MIME parse made for it (a chain without the MIME stage)
  predict-only     hashing + tf-idf + dot product on already extracted tokens

Each variant runs over the whole set `--rounds` times, interleaved, and the fastest round counts
(the machine is shared). The table gives ms per message (mean, p50, p99, max) and the ratio of each
variant's total to parse-compat32, measured in the same run.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import time
from collections.abc import Callable
from pathlib import Path

from bench.corpus import DEFAULT_CORPUS, load_sample
from bench.stagecost import best_rounds, print_table
from gateway.classifier.features import Fields, extract
from gateway.classifier.model import SpamModel, load
from gateway.mime.model import MimeReport
from gateway.mime.parse import analyze

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "spam.npz"


def _compat32(raw: bytes) -> None:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in message.walk():
        part.get_payload(decode=True)


def variants(
    model: SpamModel, fields: dict[bytes, Fields], reports: dict[bytes, MimeReport]
) -> dict[str, Callable[[bytes], None]]:
    def mime_parse(raw: bytes) -> None:
        analyze(raw)

    def features(raw: bytes) -> None:
        extract(raw, model.features, mime=reports[raw])

    def classify(raw: bytes) -> None:
        model.score(raw, mime=reports[raw])

    def classify_and_parse(raw: bytes) -> None:
        model.score(raw)

    def predict_only(raw: bytes) -> None:
        model.z_of_fields(fields[raw])

    return {
        "parse-compat32": _compat32,
        "mime-parse": mime_parse,
        "features": features,
        "classify": classify,
        "classify+parse": classify_and_parse,
        "predict-only": predict_only,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.classifier_cost", description=__doc__)
    parser.add_argument("--sample", type=int, default=1000, help="corpus messages (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    model = load(args.model)
    load_ms = (time.perf_counter() - started) * 1000
    sample = load_sample(args.corpus, args.sample, args.seed)
    messages = list(dict.fromkeys(sample.messages))  # distinct, so `fields` can key on bytes
    reports = {raw: analyze(raw) for raw in messages}
    fields = {raw: extract(raw, model.features, mime=reports[raw]) for raw in messages}
    for raw in messages[:50]:  # warm the token hash caches as a running gateway would have
        model.score(raw)
    total_bytes = sum(len(raw) for raw in messages)
    print(
        f"{len(messages)} messages ({sample.ham} ham + {sample.spam} spam from the corpus, seed "
        f"{args.seed}), {total_bytes / 1e6:.1f} MB, best of {args.rounds} rounds, process CPU "
        f"time; model {args.model.name} version {model.version} loaded in {load_ms:.0f} ms"
    )
    best = best_rounds(variants(model, fields, reports), messages, args.rounds)
    print_table(best, {"parse": "parse-compat32"})
    slowest = max(range(len(messages)), key=lambda i: best["classify"][i])
    print(
        f"slowest under classify: message #{slowest} "
        f"({best['classify'][slowest] * 1000:.1f} ms, {len(messages[slowest])} bytes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
