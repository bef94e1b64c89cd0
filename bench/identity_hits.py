"""`python3 -m bench.identity_hits`: how often each identity symbol fires on ham and on spam.

False positives matter as much as detection, so every symbol of the identity plugin is run
over the labelled folders of ../shared/corpora (modern ham, spam, phishing; SpamAssassin's) and
its hit rate per folder printed, with the CPU time of the plugin's check per message (the MIME
parse and URL extraction are made before the clock starts: they are shared with every other
plugin and the classifier). `--show SYMBOL` prints the ham messages a symbol fires on, to tune
it. The envelope sender is read from Return-Path; no DMARC result is given (every From counts
as external), the served domain is `--served` (default mailgate-served.example).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from collections import Counter
from pathlib import Path

from bench.corpus import to_crlf
from gateway.config import RelaySettings, Settings, load_settings
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins.identity import IdentityCheck
from gateway.policy import load_rules

REPO = Path(__file__).resolve().parent.parent
CORPORA = REPO.parent / "shared" / "corpora"
HAM = [
    *(f"modern/ham/{d.name}" for d in sorted((CORPORA / "modern/ham").glob("*"))),
    "spamassassin/easy_ham",
    "spamassassin/easy_ham_2",
    "spamassassin/hard_ham",
]
SPAM = [
    "modern/phish/sf-lists-heuristic",
    *(f"modern/spam/{d.name}" for d in sorted((CORPORA / "modern/spam").glob("*"))),
    "spamassassin/spam",
    "spamassassin/spam_2",
]


def _settings(served: str) -> Settings:
    base = load_settings(REPO / "config" / "gateway.toml")
    return dataclasses.replace(base, relay=RelaySettings(domains=(served,)))


def _envelope_sender(raw: bytes) -> str:
    end = raw.find(b"\r\n\r\n")
    for line in raw[: end if end != -1 else len(raw)].split(b"\r\n"):
        if line.lower().startswith(b"return-path:"):
            value = line[12:].strip().strip(b"<>").decode("utf-8", "replace")
            return value
    return ""


def _messages(folder: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()]


async def run_folder(
    folder: Path, plugin: IdentityCheck, settings: Settings, show: str
) -> tuple[int, Counter[str], int, float]:
    rules = load_rules(settings.rules_dir)
    hits: Counter[str] = Counter()
    total = any_hit = 0
    cpu = 0.0
    for path, data in _messages(folder):
        raw = to_crlf(data)
        ctx = MessageContext(client=ClientInfo("192.0.2.1", 25), rules=rules, settings=settings)
        ctx.raw = raw
        ctx.mail_from = _envelope_sender(raw)
        await ctx.message.urls()
        _ = ctx.message.authors
        start = time.process_time()
        found = await plugin.check(Phase.DATA, ctx)
        cpu += time.process_time() - start
        total += 1
        symbols = {f.symbol for f in found}
        any_hit += bool(symbols)
        hits.update(symbols)
        if show and (show in symbols or (show == "ANY" and symbols)):
            for f in found:
                if show in (f.symbol, "ANY"):
                    print(f"  {folder.name}/{path.name}: {f.symbol} {f.detail}")
    return total, hits, any_hit, cpu


async def main_async(args: argparse.Namespace) -> None:
    settings = _settings(args.served)
    plugin = IdentityCheck(Services(settings))
    symbols = sorted(IdentityCheck.symbols)
    rows: list[tuple[str, int, Counter[str], int, float]] = []
    for name in HAM + SPAM:
        folder = CORPORA / name
        if not folder.is_dir():
            continue
        show = args.show if name in HAM else args.show_spam
        total, hits, any_hit, cpu = await run_folder(folder, plugin, settings, show)
        rows.append((name, total, hits, any_hit, cpu))
    print(f"{'symbol':36}" + "".join(f"{r[0].split('/')[-1][:9]:>10}" for r in rows))
    for symbol in symbols:
        cells = "".join(f"{100 * r[2][symbol] / max(r[1], 1):9.2f}%" for r in rows)
        print(f"{symbol.removeprefix('IDENTITY_'):36}{cells}")
    print(f"{'any':36}" + "".join(f"{100 * r[3] / max(r[1], 1):9.2f}%" for r in rows))
    print(f"{'messages':36}" + "".join(f"{r[1]:10d}" for r in rows))
    print(f"{'ms CPU / message':36}" + "".join(f"{1000 * r[4] / max(r[1], 1):10.3f}" for r in rows))
    ham = [r for r in rows if r[0] in HAM]
    ham_total = sum(r[1] for r in ham)
    ham_any = sum(r[3] for r in ham)
    print(f"ham: {ham_any} of {ham_total} messages with any identity symbol")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--served", default="mailgate-served.example")
    parser.add_argument("--show", default="", help="print ham hits of SYMBOL (or ANY)")
    parser.add_argument("--show-spam", default="", help="print spam hits of SYMBOL (or ANY)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
