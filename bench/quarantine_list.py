"""`python3 -m bench.quarantine_list`: how `mailgate quarantine list` scales to 100,000 entries.

Fills a fresh quarantine index with N synthetic entries (default 100,000 over 30 days: senders
from 5,000 domains, 1-3 of 500 recipients, 2-6 of 40 symbols, 10% forced verdicts), then times
the CLI's own `list` code (query, count, table rendering) with and without filters, and `stats`,
each as the median of several runs, and reports each as a ratio to a plain
`SELECT count(*) FROM entries` measured in the same run on the same index. The index is filled
directly (one transaction per 10,000 rows, no message files): `list` reads only the index.

Not a test: numbers depend on the machine; the ratios are what to compare between changes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.cli import build_parser
from gateway.config import load_settings
from gateway.quarantine.cli import Output
from gateway.quarantine.sqlite import SqliteStore, metadata_document

DAY = 86400.0
WORDS = [
    "invoice",
    "payment",
    "urgent",
    "account",
    "verify",
    "offer",
    "free",
    "winner",
    "meeting",
    "report",
    "update",
    "shipment",
    "order",
    "delivery",
    "password",
    "reset",
    "bonus",
    "crypto",
    "loan",
    "prize",
    "security",
    "notice",
]


def synthetic(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = time.time()
    domains = [f"d{i}.example" for i in range(5000)]
    users = [f"user{i}@example.com" for i in range(500)]
    symbols = [f"SYM_{i:02d}" for i in range(40)]
    out = []
    for i in range(n):
        received = now - rng.random() * 30 * DAY
        found = rng.sample(symbols, rng.randint(2, 6))
        score = round(rng.uniform(6, 30), 1)
        forced = rng.random() < 0.1
        out.append(
            {
                "id": f"{i:012X}",
                "time": received,
                "expires": received + 30 * DAY,
                "client_ip": f"198.51.100.{rng.randint(1, 254)}",
                "client_port": rng.randint(1024, 65535),
                "helo": "mail.example.net",
                "tls": None,
                "mail_from": f"s{rng.randint(0, 99)}@{rng.choice(domains)}",
                "rcpt_tos": rng.sample(users, rng.randint(1, 3)),
                "mail_options": [],
                "message_id": f"<{i}@example.net>",
                "from": "Sender <sender@example.net>",
                "subject": " ".join(rng.choices(WORDS, k=rng.randint(2, 8))),
                "size": rng.randint(1000, 200_000),
                "action": "quarantine",
                "score": score,
                "reason": f"forced by {found[0]}"
                if forced
                else f"score {score:g} >= quarantine threshold 6",
                "findings": [
                    {"symbol": s, "score": round(score / len(found), 2), "detail": ""}
                    for s in found
                ],
                "policy_version": "0123456789ab",
            }
        )
    return out


def fill(store: SqliteStore, entries: list[dict[str, Any]]) -> None:
    conn = store._open(create=True)
    assert conn is not None
    for start in range(0, len(entries), 10_000):
        conn.execute("BEGIN IMMEDIATE")
        for meta in entries[start : start + 10_000]:
            store._insert_rows(conn, meta["id"], meta, metadata_document(meta))
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")


def median_ms(action: Callable[[], object], repeat: int) -> float:
    action()  # warm the page cache and the statement cache
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def cli_action(store: SqliteStore, argv: Sequence[str]) -> Callable[[], object]:
    """The `mailgate quarantine ...` code path in this process, output to a buffer."""
    args = build_parser().parse_args(["quarantine", *argv])
    settings = load_settings(None)

    def run() -> object:
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            code = args.quarantine_func(args, store, settings, Output())
        assert code == 0, sink.getvalue()[-500:]
        return sink.getvalue()

    return run


def cases(sample: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The list variants to time; addresses taken from the data so that they match."""
    sender = str(sample["mail_from"])
    domain = "@" + sender.rpartition("@")[2]
    return [
        ("list (newest 100)", ["list"]),
        ("list --json", ["list", "--json"]),
        ("list --since 1d", ["list", "--since", "1d"]),
        (f"list --from {sender}", ["list", "--from", sender]),
        (f"list --from {domain}", ["list", "--from", domain]),
        ("list --to user7@example.com", ["list", "--to", "user7@example.com"]),
        ("list --to @example.com (all)", ["list", "--to", "@example.com"]),
        ("list --symbol SYM_07 (10%)", ["list", "--symbol", "SYM_07"]),
        ("list --min-score 29", ["list", "--min-score", "29"]),
        ("list --reason forced", ["list", "--reason", "forced"]),
        (
            "list --since 7d --symbol SYM_07 --min-score 20",
            ["list", "--since", "7d", "--symbol", "SYM_07", "--min-score", "20"],
        ),
        ("stats", ["stats"]),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.quarantine_list")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, help="where to build the index (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args(argv)

    base = options.dir or Path(tempfile.mkdtemp(prefix="mailgate-bench-quarantine-"))
    folder = base / "quarantine"
    shutil.rmtree(folder, ignore_errors=True)
    store = SqliteStore(folder)
    started = time.perf_counter()
    data = synthetic(options.entries, options.seed)
    fill(store, data)
    filled = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (folder / "index").iterdir())
    print(
        f"index: {options.entries} entries, filled in {filled:.1f}s, "
        f"{size / 1e6:.1f} MB ({folder / 'index'})"
    )
    store.close()

    store = SqliteStore(folder, create=False)  # as the CLI opens it
    plain = sqlite3.connect(store.index_path)
    baseline = median_ms(
        lambda: plain.execute("SELECT count(*) FROM entries").fetchone(), options.repeat
    )
    rows: list[dict[str, Any]] = [
        {"case": "SELECT count(*) FROM entries", "ms": baseline, "ratio": 1.0}
    ]
    # SQLite counts by reading page headers only, so count(*) is nearly free; the bare query
    # for the newest 100 ids is a second yardstick, closer to what `list` must do.
    bare = median_ms(
        lambda: plain.execute(
            "SELECT id FROM entries ORDER BY received DESC, id DESC LIMIT 100"
        ).fetchall(),
        options.repeat,
    )
    rows.append({"case": "SELECT id ... ORDER BY received DESC LIMIT 100", "ms": bare})
    for name, argv_case in cases(data[0]):
        ms = median_ms(cli_action(store, argv_case), options.repeat)
        rows.append({"case": f"quarantine {name}", "ms": ms})

    # The whole command as an admin runs it: a new process (interpreter start-up included),
    # against a new process that only runs the count.
    config = base / "bench.toml"
    config.write_text(f'[relay]\ndomains = ["example.com"]\n[paths]\nquarantine = "{folder}"\n')
    whole = median_ms(
        lambda: subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(config), "quarantine", "list"],
            check=True,
            capture_output=True,
        ),
        max(3, options.repeat // 2),
    )
    python_count = median_ms(
        lambda: subprocess.run(
            [
                sys.executable,
                "-c",
                "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute("
                "'SELECT count(*) FROM entries').fetchone()",
                str(store.index_path),
            ],
            check=True,
            capture_output=True,
        ),
        max(3, options.repeat // 2),
    )
    rows.append({"case": "process: python -c count(*)", "ms": python_count})
    rows.append({"case": "process: mailgate quarantine list", "ms": whole})
    plain.close()
    store.close()

    for r in rows:
        process = r["case"].startswith("process")
        r["x_count"] = r["ms"] / (python_count if process else baseline)
        r["x_page"] = None if process else r["ms"] / bare
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  {'median ms':>10}  {'x count(*)':>10}  {'x page query':>12}")
    for r in rows:
        page = "-" if r["x_page"] is None else f"{r['x_page']:.1f}"
        ratios = f"{r['x_count']:>10.1f}  {page:>12}"
        print(f"{r['case']:<{width}}  {r['ms']:>10.2f}  {ratios}")
    if options.json:
        options.json.write_text(json.dumps({"entries": options.entries, "rows": rows}, indent=2))
    if options.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
