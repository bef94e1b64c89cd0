"""Hit rate of each link and HTML symbol on labelled folders, and its CPU cost per message.

    python3 -m bench.link_hits [--limit N] FOLDER...

Each message is read as the gateway reads it (ParsedMessage: one MIME parse, one URL list);
the links plugin's check and the content scan's HTML symbols are counted per folder. The
CPU figure is time.process_time of the URL list plus the link check (the parse not included:
every plugin shares it). Not part of the test run; the corpora stay outside the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from pathlib import Path

from gateway.domains import registrable_domain
from gateway.linkcheck import LINK_SYMBOLS, check_links
from gateway.message import ParsedMessage
from gateway.mime.content import scan
from gateway.policy import load_rules

HTML_SYMBOLS = (
    "HTML_PASSWORD_FIELD",
    "HTML_SCRIPT_DECODE",
    "HTML_SCRIPT_REDIRECT",
    "HTML_META_REFRESH",
)
ROOT = Path(__file__).resolve().parents[1]


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def files_of(folder: Path, limit: int) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())[:limit]


async def measure(folder: Path, paths: list[Path]) -> tuple[int, Counter[str], float, list[str]]:
    rules = load_rules(ROOT / "rules")
    counts: Counter[str] = Counter()
    cpu = 0.0
    total = 0
    examples: list[str] = []
    for path in paths:
        message = ParsedMessage(crlf(path.read_bytes()))
        report = await message.mime()
        started = time.process_time()
        urls = await message.urls()
        domains = message.authors.domains
        sender = registrable_domain(domains[0]) if domains else ""
        found = {f.symbol: f.detail for f in check_links(urls, rules.links, sender)}
        cpu += time.process_time() - started
        for finding in scan(report).findings:
            if finding.symbol in HTML_SYMBOLS:
                found[finding.symbol] = finding.detail
        total += 1
        counts.update(found.keys())
        if len(examples) < 40:
            examples += [f"{path.name}: {s} {d[:90]}" for s, d in found.items()]
    return total, counts, cpu, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--examples", action="store_true")
    args = parser.parse_args()
    symbols = [*LINK_SYMBOLS, *HTML_SYMBOLS]
    print("folder".ljust(40), "n".rjust(5), "ms/msg".rjust(7), " ".join(s[5:][:9] for s in symbols))
    for folder in args.folders:
        total, counts, cpu, examples = asyncio.run(measure(folder, files_of(folder, args.limit)))
        rates = " ".join(f"{100 * counts[s] / max(total, 1):9.1f}" for s in symbols)
        name = "/".join(folder.parts[-2:])[:40]
        print(name.ljust(40), f"{total:5d}", f"{1000 * cpu / max(total, 1):7.2f}", rates)
        if args.examples:
            print("   " + "\n   ".join(examples))


if __name__ == "__main__":
    main()
