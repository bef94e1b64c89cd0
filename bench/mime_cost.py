"""`python3 -m bench.mime_cost`: CPU per message of the MIME and attachment stages.

On the same messages in the same run (a seeded sample of the SpamAssassin corpus, as CRLF, plus
every file under ../shared/mime), it measures process CPU time of:

  parse-compat32   email.message_from_bytes with compat32: the floor, what parsing alone costs
  parse-default    the same with email.policy.default (what a naive plugin would do)
  mime             gateway.mime.parse.analyze: the budgeted parse, both readings when ambiguous
  mime+content     analyze then gateway.mime.content.scan: names, libmagic, archives, documents

Each variant runs over the whole set `--rounds` times, interleaved, and the fastest round counts
(the machine is shared). The table gives ms per message (mean, p50, p99, max) and the ratio of
each variant's total to parse-compat32 and parse-default. The slowest message is named.
"""

from __future__ import annotations

import argparse
import email
import email.policy
from collections.abc import Callable
from pathlib import Path

from bench.corpus import DEFAULT_CORPUS, load_sample, to_crlf
from bench.stagecost import best_rounds, print_table
from gateway.mime.content import scan
from gateway.mime.parse import analyze

MIME_DIR = DEFAULT_CORPUS.parent.parent / "mime"


def _compat32(raw: bytes) -> None:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in message.walk():
        part.get_payload(decode=True)


def _default(raw: bytes) -> None:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for part in message.walk():
        part.get_payload(decode=True)
        part.get_filename()


def _mime(raw: bytes) -> None:
    analyze(raw)


def _mime_content(raw: bytes) -> None:
    scan(analyze(raw))


VARIANTS: dict[str, Callable[[bytes], None]] = {
    "parse-compat32": _compat32,
    "parse-default": _default,
    "mime": _mime,
    "mime+content": _mime_content,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.mime_cost", description=__doc__)
    parser.add_argument("--sample", type=int, default=1000, help="corpus messages (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--no-shared-mime", action="store_true", help="corpus sample only")
    args = parser.parse_args(argv)

    sample = load_sample(args.corpus, args.sample, args.seed)
    messages = [(f"corpus#{i}", raw) for i, raw in enumerate(sample.messages)]
    if not args.no_shared_mime and MIME_DIR.is_dir():
        for path in sorted(p for p in MIME_DIR.rglob("*") if p.is_file()):
            messages.append((str(path.relative_to(MIME_DIR)), to_crlf(path.read_bytes())))
    total_bytes = sum(len(raw) for _, raw in messages)
    print(
        f"{len(messages)} messages ({sample.ham} ham + {sample.spam} spam from the corpus, "
        f"seed {args.seed}, the rest from shared/mime), {total_bytes / 1e6:.1f} MB, "
        f"best of {args.rounds} rounds, process CPU time"
    )
    best = best_rounds(VARIANTS, [raw for _, raw in messages], args.rounds)
    print_table(best, {"compat32": "parse-compat32", "default": "parse-default"})
    slowest = max(range(len(messages)), key=lambda i: best["mime+content"][i])
    print(
        f"slowest under mime+content: {messages[slowest][0]} "
        f"({best['mime+content'][slowest] * 1000:.0f} ms, {len(messages[slowest][1])} bytes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
