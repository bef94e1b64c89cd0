"""CPU cost of the sender-authentication stage (DKIM + ARC + DMARC + Authentication-Results).

    python3 -m bench.auth_cost [--messages 300] [--rounds 3] [--seed N] [--corpus DIR]

A seeded sample of the SpamAssassin corpus is given a From in `auth.bench.test` and DKIM-signed
here with dkimpy, once with a freshly generated RSA 2048 key and once with an Ed25519 key. The
public keys and a `p=reject` DMARC record are served by a small DNS server in a child process on
loopback (its CPU is not counted), and the gateway's own plugins (dkim, arc, dmarc) check every
message through the gateway's resolver, exactly as at end of DATA, with the A-R field written.

The figure is CPU time (process_time, worker threads included) per message. As the design asks,
it is reported as a ratio to a pass-through cost measured in the same run on the same messages:
parsing each message with the email package (compat32, what a filter that parses pays at least),
and also the header-only parse the gateway itself always does. The first round (cold DNS cache:
every key and DMARC record fetched over the wire) is reported apart from the warm rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import email.parser
import email.policy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.corpus import DEFAULT_CORPUS, load_sample
from bench.procs import free_port
from bench.signing import ed25519_key, rsa_key, signed, with_author
from gateway.auth.arc import ArcResult
from gateway.auth.dkim import DkimResult
from gateway.auth.dmarc import DmarcResult
from gateway.auth.results import authentication_results
from gateway.config import DnsSettings, load_settings
from gateway.dns import Resolver
from gateway.plugin import ClientInfo, MessageContext, Phase, Plugin, Results, Services
from gateway.plugins.arc import ArcCheck
from gateway.plugins.dkim import DkimCheck
from gateway.plugins.dmarc import DmarcCheck
from gateway.policy import load_rules

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "auth.bench.test"
LOOPBACK = "127.0.0.1"


# -- the DNS child ------------------------------------------------------------------------------


def serve_dns(port: int, records_file: Path) -> None:
    """Answer TXT queries for the names in `records_file` (JSON name -> text); NXDOMAIN else."""
    import socket

    import dns.message
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    records: dict[str, str] = json.loads(records_file.read_text())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, port))
    while True:
        data, addr = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(data)
        except Exception:
            continue
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        text = records.get(name)
        if text is not None and question.rdtype == dns.rdatatype.TXT:
            chunks = " ".join(f'"{text[i : i + 250]}"' for i in range(0, len(text), 250))
            response.answer.append(
                dns.rrset.from_text(question.name, 300, dns.rdataclass.IN, "TXT", chunks)
            )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(response.to_wire(max_size=4096), addr)


# -- messages -----------------------------------------------------------------------------------


def new_keys() -> tuple[bytes, str, bytes, str]:
    """(RSA PEM, its p=, Ed25519 seed (base64), its p=)."""
    return (*rsa_key(), *ed25519_key())


def signed_sets(
    messages: Sequence[bytes], keys: tuple[bytes, str, bytes, str]
) -> tuple[list[bytes], list[bytes], int]:
    pem, _rsa_p, seed, _ed_p = keys
    rsa_signed: list[bytes] = []
    ed_signed: list[bytes] = []
    skipped = 0
    for i, raw in enumerate(messages):
        message = with_author(raw, i, DOMAIN)
        by_rsa = signed(message, "rsa", DOMAIN, pem)
        by_ed = signed(message, "ed", DOMAIN, seed, "ed25519-sha256")
        if by_rsa is None or by_ed is None:
            skipped += 1  # a header section dkimpy cannot read (the corpus has a few)
            continue
        rsa_signed.append(by_rsa)
        ed_signed.append(by_ed)
    return rsa_signed, ed_signed, skipped


# -- measuring ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    name: str
    cpu_ms: list[float]  # per round, ms per message
    outcome: str = ""


def parse_cost(messages: Sequence[bytes], headers_only: bool) -> float:
    parser = email.parser.BytesParser(policy=email.policy.compat32)
    started = time.process_time()
    for raw in messages:
        parser.parsebytes(raw, headersonly=headers_only)
    return (time.process_time() - started) * 1000 / len(messages)


async def auth_cost(
    messages: Sequence[bytes], plugins: Sequence[Plugin], base: MessageContext
) -> tuple[float, dict[str, int]]:
    outcomes: dict[str, int] = {}
    started = time.process_time()
    for raw in messages:
        ctx = dataclasses.replace(base, raw=raw, findings=[], timings={}, results=Results())
        for plugin in plugins:
            for finding in await plugin.check(Phase.DATA, ctx):
                outcomes[finding.symbol] = outcomes.get(finding.symbol, 0) + 1
        found = ctx.results.get(DmarcResult)
        authentication_results(
            DOMAIN,
            dkim=ctx.results.get(DkimResult),
            arc=ctx.results.get(ArcResult),
            dmarc=found,
        )
        dmarc = found.worst if found else None
        key = f"dmarc={dmarc.verdict.value}" if dmarc else "dmarc=-"
        outcomes[key] = outcomes.get(key, 0) + 1
    return (time.process_time() - started) * 1000 / len(messages), outcomes


def run(options: argparse.Namespace) -> dict[str, object]:
    sample = load_sample(options.corpus, options.messages, options.seed)
    keys = new_keys()
    rsa_signed, ed_signed, skipped = signed_sets(sample.messages, keys)
    records = {
        f"rsa._domainkey.{DOMAIN}": f"v=DKIM1; k=rsa; p={keys[1]}",
        f"ed._domainkey.{DOMAIN}": f"v=DKIM1; k=ed25519; p={keys[3]}",
        f"_dmarc.{DOMAIN}": "v=DMARC1; p=reject",
    }
    workdir = Path(tempfile.mkdtemp(prefix="mailgate-authbench-"))
    (workdir / "records.json").write_text(json.dumps(records))
    port = free_port()
    argv = [sys.executable, "-m", "bench.auth_cost", "--serve-dns", str(port)]
    child = subprocess.Popen([*argv, str(workdir / "records.json")], cwd=REPO)
    try:
        time.sleep(0.5)
        return asyncio.run(measure(options, sample.mean_size, rsa_signed, ed_signed, skipped, port))
    finally:
        child.terminate()
        child.wait(timeout=5)


async def measure(
    options: argparse.Namespace,
    mean_size: float,
    rsa_signed: list[bytes],
    ed_signed: list[bytes],
    skipped: int,
    port: int,
) -> dict[str, object]:
    settings = load_settings(None)
    settings = dataclasses.replace(
        settings, dns=DnsSettings(nameservers=(LOOPBACK,), port=port, timeout=2.0)
    )
    resolver = Resolver.from_settings(settings.dns)
    services = Services(settings, resolver)
    plugins: list[Plugin] = [DkimCheck(services), ArcCheck(services), DmarcCheck(services)]
    base = MessageContext(
        client=ClientInfo(ip="192.0.2.7", port=25000, helo="mx.sender.example"),
        rules=load_rules(REPO / "rules"),
        settings=settings,
        mail_from=f"bounce@{DOMAIN}",
        rcpt_tos=["bob@example.com"],
    )
    rows: dict[str, Row] = {}
    cold: dict[str, float] = {}
    outcomes: dict[str, dict[str, int]] = {}
    for round_no in range(options.rounds + 1):
        for name, messages in (("rsa-2048", rsa_signed), ("ed25519", ed_signed)):
            if round_no == 0:
                resolver.clear_cache()
            cost, seen = await auth_cost(messages, plugins, base)
            if round_no == 0:
                cold[name] = cost
                outcomes[name] = seen
                continue
            rows.setdefault(name, Row(name, [])).cpu_ms.append(cost)
        if round_no:
            rows.setdefault("parse (full)", Row("parse (full)", [])).cpu_ms.append(
                parse_cost(rsa_signed, headers_only=False)
            )
            rows.setdefault("parse (headers)", Row("parse (headers)", [])).cpu_ms.append(
                parse_cost(rsa_signed, headers_only=True)
            )
    await resolver.aclose()
    full = statistics.median(rows["parse (full)"].cpu_ms)
    header_only = statistics.median(rows["parse (headers)"].cpu_ms)
    print(
        f"{len(rsa_signed)} messages (mean {mean_size / 1024:.1f} KiB, {skipped} skipped: "
        f"dkimpy could not sign them), {options.rounds} warm rounds, median per round\n"
    )
    print(
        f"{'stage':<18}{'CPU ms/msg':>12}{'x full parse':>14}{'x header parse':>16}{'cold ms':>10}"
    )
    result: dict[str, object] = {"messages": len(rsa_signed), "rounds": options.rounds}
    for name, row in rows.items():
        ms = statistics.median(row.cpu_ms)
        print(
            f"{name:<18}{ms:>12.3f}{ms / full:>14.2f}{ms / header_only:>16.2f}"
            f"{cold.get(name, 0.0):>10.3f}"
        )
        result[name] = {"cpu_ms": ms, "ratio_full_parse": ms / full, "cold_ms": cold.get(name)}
    for name, seen in outcomes.items():
        top = ", ".join(
            f"{k}:{v}" for k, v in sorted(seen.items()) if k.startswith(("dmarc=", "DKIM_"))
        )
        print(f"\n{name} outcomes (cold round): {top}")
    result["outcomes"] = outcomes
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve-dns"]:
        serve_dns(int(args[1]), Path(args[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python3 -m bench.auth_cost", description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--json", type=Path, dest="json_path")
    options = parser.parse_args(args)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    result = run(options)
    if options.json_path:
        options.json_path.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
