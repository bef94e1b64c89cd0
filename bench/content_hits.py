"""How often each content rule of rules/ hits on labelled folders, and what the rules cost.

    python3 -m bench.content_hits [--rules rules] [--limit N] LABEL=FOLDER ...

e.g. `ham=../shared/corpora/modern/ham spam=../shared/corpora/modern/spam`. Every file below a
folder is one message. Each message runs through the real content plugin and the composite step
on the one parse, as the chain runs them; the CPU time of that step (time.process_time, the MIME
parse and the URL list excluded: other plugins make them anyway; the body text rendered from
HTML included: only content rules read it) is reported per message.
Before shipping a rule, its hits on ham say what it would cost legitimate mail.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from collections import Counter
from pathlib import Path

from gateway.config import Settings, load_settings
from gateway.content_rules import PartHits
from gateway.line_endings import normalize_line_endings
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins.content import ContentRulesPlugin
from gateway.policy import RuleSet, load_rules


def messages(folder: Path, limit: int | None) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return found[:limit] if limit else found


async def measure(
    rules: RuleSet, settings: Settings, files: list[Path]
) -> tuple[Counter[str], float]:
    plugin = ContentRulesPlugin(Services(settings, resolver=None))
    hits: Counter[str] = Counter()
    cpu = 0.0
    for path in files:
        ctx = MessageContext(client=ClientInfo("192.0.2.1", 0), rules=rules, settings=settings)
        ctx.mail_from = "sender@example.net"
        ctx.raw = normalize_line_endings(path.read_bytes())
        await ctx.message.urls()  # the shared parse, made by earlier plugins in the chain
        started = time.process_time()
        findings = list(await plugin.check(Phase.DATA, ctx))
        parts = ctx.results.get(PartHits)  # rules that only feed composites, as the chain reads
        findings += rules.content.composite_findings(findings, parts)
        cpu += time.process_time() - started
        hits.update({f.symbol for f in findings})
        hits.update(list(parts.details) if parts is not None else [])
    return hits, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=Path, default=Path("rules"))
    parser.add_argument("--limit", type=int, default=None, help="messages per folder")
    parser.add_argument("folders", nargs="+", help="LABEL=FOLDER")
    args = parser.parse_args()
    rules = load_rules(args.rules)
    settings = dataclasses.replace(load_settings(Path("config/gateway.toml")), rules_dir=args.rules)
    symbols = [r.symbol for r in rules.content.rules] + [c.symbol for c in rules.content.composites]
    print(f"{'folder':<14}{'messages':>9}{'CPU ms/msg':>11}  " + "  ".join(symbols))
    for spec in args.folders:
        label, _, folder = spec.partition("=")
        files = messages(Path(folder), args.limit)
        hits, cpu = asyncio.run(measure(rules, settings, files))
        per = 1000 * cpu / max(1, len(files))
        cells = [f"{hits[s]} ({100 * hits[s] / max(1, len(files)):.2f}%)" for s in symbols]
        print(f"{label:<14}{len(files):>9}{per:>11.3f}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
