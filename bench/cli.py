"""`python3 -m bench`: start the sink and the gateways, drive the same load through each scenario
in interleaved rounds, and print the ratios between them.

Run it from the repository root. `--quick` is a smoke check of a few seconds; the default run takes
well under a minute on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.corpus import DEFAULT_CORPUS, CorpusError, Sample, load_sample
from bench.load import DEFERRED, FAILED, client_tls, run_load, senders
from bench.report import (
    DIRECT,
    FULL,
    PASS,
    RunRecord,
    Summary,
    compute_ratios,
    cpu_table,
    paced_table,
    percentile,
    stage_table,
    table,
)
from bench.signing import SIGNED_DOMAIN, sign_share


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    order: tuple[str, ...] | None  # None: no gateway, straight to the sink
    workers: int = 1  # gateway processes ([listen] workers)
    tls: bool = False  # STARTTLS on every connection


@dataclass(frozen=True)
class Options:
    messages: int
    connections: int
    per_connection: int
    rounds: int
    warmup: int
    sample: int
    seed: int
    time_limit: float
    budget: float
    corpus: Path
    json_path: Path | None
    profile_dir: Path | None
    keep: bool
    profiler: str = "cprofile"
    only: tuple[str, ...] = ()
    paced_rate: float = 50.0
    paced_messages: int = 1000


WARMUP_LIMIT = 15.0
NEEDS_DAEMON = frozenset({"clamav"})
QUICK = {"messages": 60, "connections": 4, "per_connection": 5, "rounds": 1, "warmup": 8}
DEFAULTS = {"messages": 2000, "connections": 16, "per_connection": 50, "rounds": 5, "warmup": 200}


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python3 -m bench",
        description="Benchmark mailgate against direct delivery and a pass-through gateway.",
    )
    parser.add_argument("--messages", type=int, help="messages per scenario and round")
    parser.add_argument("--connections", type=int, help="concurrent SMTP connections")
    parser.add_argument("--per-connection", type=int, help="messages sent over one connection")
    parser.add_argument("--rounds", type=int, help="rounds; each runs every scenario once")
    parser.add_argument("--warmup", type=int, help="unmeasured messages per scenario first")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument("--sample", type=int, default=300, help="corpus messages in the mix")
    parser.add_argument("--seed", type=int, default=20261127, help="seed of the corpus sample")
    parser.add_argument(
        "--time-limit", type=float, default=20.0, help="seconds at most per measured run"
    )
    parser.add_argument(
        "--budget", type=float, default=120.0, help="seconds at most for warm-up and all rounds"
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="SpamAssassin corpus")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write results here")
    parser.add_argument(
        "--profile",
        type=Path,
        dest="profile_dir",
        help="run each gateway under cProfile, writing <scenario>.prof here (inflates CPU)",
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=50.0,
        help="messages/s of the paced latency run after the rounds (0: skip it)",
    )
    parser.add_argument(
        "--paced-messages", type=int, help="messages in the paced latency run per scenario"
    )
    parser.add_argument(
        "--profiler",
        choices=("cprofile", "py-spy"),
        default="cprofile",
        help="with --profile: cProfile on the thread's CPU clock (event-loop thread, exact "
        "calls) or py-spy (every thread, sampled; writes <scenario>.txt collapsed stacks; "
        "needs py-spy installed)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help="run only this scenario (repeatable; direct and pass-through always run, "
        "as the ratios need them)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    for key, value in values.items():
        minimum = 0 if key == "warmup" else 1
        if value < minimum:
            parser.error(f"--{key.replace('_', '-')} must be at least {minimum}")
    if args.sample < 2 or args.time_limit <= 0 or args.budget <= 0:
        parser.error("--sample must be at least 2, --time-limit and --budget positive")
    return Options(
        messages=values["messages"],
        connections=values["connections"],
        per_connection=values["per_connection"],
        rounds=values["rounds"],
        warmup=values["warmup"],
        sample=args.sample,
        seed=args.seed,
        time_limit=args.time_limit,
        budget=args.budget,
        corpus=args.corpus,
        json_path=args.json_path,
        profile_dir=args.profile_dir,
        keep=args.keep,
        profiler=args.profiler,
        only=tuple(args.only),
        paced_rate=max(0.0, args.paced_rate),
        paced_messages=args.paced_messages or (40 if args.quick else 1000),
    )


def full_chain_order() -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """Every built-in plugin: the default order, then any registered built-in it lacks (those
    are returned too); and what the shipped rules say against either chain."""
    from gateway.config import PluginSettings
    from gateway.plugins import builtin_registry
    from gateway.policy import load_rules

    registry = builtin_registry()
    default = PluginSettings().order
    # clamav needs a clamd daemon the bench does not run: without one every message would take
    # its failure path (CLAMAV_ERROR), which is not what "full chain" should measure.
    extra = tuple(
        name for name in registry.names() if name not in default and name not in NEEDS_DAEMON
    )
    rules = load_rules(procs.REPO / "rules")
    order = default + extra
    problems = [f"full chain: {p}" for p in registry.check_policy(order, rules)]
    problems += [f"pass-through: {p}" for p in registry.check_policy((), rules)]
    return order, extra, problems


def scenarios(order: tuple[str, ...], extra: tuple[str, ...]) -> list[Scenario]:
    full = f"gateway, plugins {','.join(order)}, relaying to the sink"
    if extra:
        full += f" ({','.join(extra)}: built in, not in the default plugins.order)"
    return [
        Scenario(DIRECT, "load generator straight to the sink (ceiling)", None),
        Scenario(PASS, "gateway, empty plugin chain, relaying to the sink (floor)", ()),
        Scenario(FULL, full, order),
        Scenario(FULL_WORKERS, "the full chain, [listen] workers = 2 (SO_REUSEPORT)", order, 2),
        Scenario(FULL_TLS, "the full chain, STARTTLS on every connection", order, tls=True),
    ]


FULL_WORKERS = "full, 2 workers"
FULL_TLS = "full+STARTTLS"


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }


@dataclass
class Children:
    """Every process the bench started, so that all of them are stopped whatever happens."""

    sink: procs.Child
    dns: procs.Child
    gateways: dict[str, procs.Child]

    def all(self) -> list[procs.Child]:
        return [self.sink, self.dns, *self.gateways.values()]


class RefusedWarmup(Exception):
    """A scenario answered 4xx or nothing during warm-up: the environment is broken, not slow."""


async def measure(
    scenario: Scenario,
    round_no: int,
    messages: Sequence[tuple[str, bytes]],
    options: Options,
    children: Children,
    limit: float,
) -> RunRecord:
    gateway = children.gateways.get(scenario.name)
    port = gateway.port if gateway else children.sink.port
    gw_before = gateway.cpu() if gateway else 0.0
    stages_before = await procs.plugin_cpu(gateway) if gateway else {}
    sink_before, dns_before = children.sink.cpu(), children.dns.cpu()
    self_before, machine_before = procs.self_cpu_seconds(), procs.machine_cpu_seconds()
    tls = client_tls() if scenario.tls else None
    result = await run_load(port, messages, options.connections, options.per_connection, limit, tls)
    for child in (children.sink, children.dns, *([gateway] if gateway else [])):
        procs.ensure_alive(child)
    gw_after = gateway.cpu() if gateway else 0.0
    stages_after = await procs.plugin_cpu(gateway) if gateway else {}
    stages = {name: value - stages_before.get(name, 0.0) for name, value in stages_after.items()}
    return RunRecord(
        scenario=scenario.name,
        round=round_no,
        sent=len(messages),
        answered=result.answered,
        wall=result.wall,
        latencies=result.latencies,
        outcomes=result.outcomes,
        errors=result.errors,
        truncated=result.truncated,
        gateway_cpu=gw_after - gw_before if gateway else None,
        stage_cpu=stages,
        sink_cpu=children.sink.cpu() - sink_before,
        dns_cpu=children.dns.cpu() - dns_before,
        loadgen_cpu=procs.self_cpu_seconds() - self_before,
        machine_cpu=procs.machine_cpu_seconds() - machine_before,
    )


def workload(sample: Sample, count: int, tag: str) -> list[tuple[str, bytes]]:
    """`count` messages cycling through the sample, each with its own envelope sender."""
    mix = sample.messages
    return [(sender, mix[i % len(mix)]) for i, sender in enumerate(senders(count, tag))]


async def start_children(
    options: Options, plan: list[Scenario], workdir: Path, records: dict[str, str]
) -> Children:
    started: list[procs.Child] = []
    try:
        sink = procs.start_sink(workdir)
        started.append(sink)
        dns = procs.start_dns(workdir, records)
        started.append(dns)
        gateways: dict[str, procs.Child] = {}
        for scenario in plan:
            if scenario.order is None:
                continue
            slug = scenario.name.replace(" ", "-")
            profile = None
            if options.profile_dir is not None:
                options.profile_dir.mkdir(parents=True, exist_ok=True)
                suffix = ".txt" if options.profiler == "py-spy" else ".prof"
                profile = (options.profile_dir / f"{slug}{suffix}").resolve()
            tls = None
            if scenario.tls:
                from gateway.certs import make_selfsigned

                tls = (workdir / f"{slug}.crt", workdir / f"{slug}.key")
                make_selfsigned("mailgate.bench.test", tls[0], tls[1], days=2)
            gateway = procs.start_gateway(
                workdir,
                slug,
                sink.port,
                dns.port,
                scenario.order,
                profile,
                scenario.workers,
                tls,
                options.profiler,
            )
            started.append(gateway)
            gateways[scenario.name] = gateway
        await asyncio.gather(
            procs.wait_ready(sink),
            procs.wait_ready(dns, smtp=False),
            *(procs.wait_ready(g) for g in gateways.values()),
        )
    except BaseException:
        for child in reversed(started):
            child.stop()
        raise
    return Children(sink, dns, gateways)


async def warm_up(
    options: Options, sample: Sample, plan: list[Scenario], children: Children
) -> None:
    """Imports, connections and caches settle; any 4xx or failure here stops the bench."""
    if not options.warmup:
        return
    for scenario in plan:
        gateway = children.gateways.get(scenario.name)
        port = gateway.port if gateway else children.sink.port
        messages = workload(sample, options.warmup, "warmup")
        limit = min(WARMUP_LIMIT, options.time_limit)
        tls = client_tls() if scenario.tls else None
        result = await run_load(
            port, messages, options.connections, options.per_connection, limit, tls
        )
        if gateway:
            procs.ensure_alive(gateway)
        bad = result.outcomes.get(DEFERRED, 0) + result.outcomes.get(FAILED, 0)
        if bad or result.truncated:
            detail = "\n".join(result.errors[:3])
            log = gateway.log_tail(8) if gateway else children.sink.log_tail(8)
            raise RefusedWarmup(
                f"{scenario.name}: warm-up got {dict(result.outcomes)}"
                f"{' and ran out of time' if result.truncated else ''}; "
                f"the numbers would measure a failure path, so the bench stops here.\n"
                f"{detail}\nlast log lines of {gateway.name if gateway else 'the sink'}:\n{log}"
            )


async def paced(
    options: Options,
    sample: Sample,
    plan: list[Scenario],
    children: Children,
    summaries: dict[str, Summary],
) -> None:
    """Latency below saturation and without DNS waits: each scenario first gets the paced
    messages at full speed, unmeasured, so their SPF and DMARC answers are in the gateway's
    cache; then the same messages again at `paced_rate` over a few connections, measured."""
    messages = workload(sample, options.paced_messages, "paced")
    connections = min(4, options.connections)
    per_connection = min(50, options.per_connection)
    for scenario in plan:
        gateway = children.gateways.get(scenario.name)
        port = gateway.port if gateway else children.sink.port
        tls = client_tls() if scenario.tls else None
        limit = max(options.time_limit, 3 * options.paced_messages / options.paced_rate)
        await run_load(port, messages, options.connections, options.per_connection, limit, tls)
        result = await run_load(
            port, messages, connections, per_connection, limit, tls, rate=options.paced_rate
        )
        summaries[scenario.name].paced = result.latencies
        summaries[scenario.name].extra["paced_outcomes"] = dict(result.outcomes)
        print(
            f"  paced {scenario.name:<13} {options.paced_rate:g} msg/s: {result.answered} answered,"
            f" p99 {percentile(result.latencies, 99) * 1000:.2f} ms",
            file=sys.stderr,
        )


async def run(
    options: Options,
    sample: Sample,
    plan: list[Scenario],
    workdir: Path,
    records: dict[str, str],
) -> list[Summary]:
    budget_end = time.monotonic() + options.budget
    children = await start_children(options, plan, workdir, records)
    try:
        await warm_up(options, sample, plan, children)
        summaries = {s.name: Summary(s.name, s.description, []) for s in plan}
        for round_no in range(options.rounds):
            shift = round_no % len(plan)  # rotate who goes first: no scenario always runs cold
            for scenario in plan[shift:] + plan[:shift]:
                limit = min(options.time_limit, budget_end - time.monotonic())
                if limit <= 1.0:
                    print(f"  out of --budget: stopped after {round_no} rounds", file=sys.stderr)
                    for summary in summaries.values():
                        summary.runs = [r for r in summary.runs if r.round < round_no]
                        summary.extra["cut_by_budget"] = True
                    break
                messages = workload(sample, options.messages, f"r{round_no}")
                record = await measure(scenario, round_no, messages, options, children, limit)
                summaries[scenario.name].runs.append(record)
                print(
                    f"  round {round_no + 1}/{options.rounds} {scenario.name:<13} "
                    f"{record.throughput:7.0f} msg/s  ({record.answered} in {record.wall:.2f}s)",
                    file=sys.stderr,
                )
            else:
                continue
            break
        if options.paced_rate:
            await paced(options, sample, plan, children, summaries)
        for name, gateway in children.gateways.items():
            summaries[name].peak_rss = gateway.peak_rss()
            summaries[name].extra["gateway_log_problems"] = gateway.log_problems()
        summaries[DIRECT].extra["dns_log_problems"] = children.dns.log_problems()
        return [summaries[s.name] for s in plan]
    finally:
        for child in reversed(children.all()):
            child.stop(grace=30.0 if options.profile_dir else 5.0)


def header(options: Options, sample: Sample, info: dict[str, Any], plan: list[Scenario]) -> str:
    lines = [
        f"mailgate bench: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"loadavg {info['loadavg'][0]:.2f} at start",
        f"mix: {len(sample.messages)} SpamAssassin messages ({sample.ham} ham, {sample.spam} "
        f"spam, seed {sample.seed}, mean {sample.mean_size / 1024:.1f} KiB, "
        f"{sample.skipped} unusable skipped); {sample.signed} of them DKIM-signed (RSA-2048, "
        f"From in {SIGNED_DOMAIN}, DMARC p=reject)",
        f"load: {options.messages} messages x {options.rounds} rounds per scenario, "
        f"{options.connections} connections, {options.per_connection} messages per connection, "
        f"{options.warmup} warm-up",
    ]
    lines += [f"  {s.name:<13} {s.description}" for s in plan]
    return "\n".join(lines)


KEEP = " (rerun with --keep to read the logs)"
NOTES = """\
x direct / x pass: throughput relative to direct delivery / to the pass-through gateway (median of
per-round ratios); +p50/+p99: latency added over direct delivery; ±: half the per-round range of
msg/s; busy: CPU used by the bench's own processes (load generator, gateway, sink, DNS) over all
cores; near 100% means the machine is the limit (with a gateway in the path three or four processes
share the cores, in direct only two); other: CPU used by anything else meanwhile (other programs,
kernel network softirq): above a few % the machine was not quiet and absolute numbers are suspect
(the paired ratios and CPU per message much less so)."""


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup that stops every child


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sample, records = sign_share(load_sample(options.corpus, options.sample, options.seed))
    except (CorpusError, OSError) as exc:
        print(f"bench: corpus: {exc}", file=sys.stderr)
        return 2
    full_order, extra, problems = full_chain_order()
    if problems:
        print("bench: the shipped rules do not fit:\n" + "\n".join(problems), file=sys.stderr)
        return 2
    plan = scenarios(full_order, extra)
    if options.only:
        known = {s.name for s in plan}
        unknown = [name for name in options.only if name not in known]
        if unknown:
            print(
                f"bench: unknown scenario {unknown[0]!r}; known: {sorted(known)}", file=sys.stderr
            )
            return 2
        plan = [s for s in plan if s.name in (DIRECT, PASS, *options.only)]
    info = machine()
    print(header(options, sample, info, plan), flush=True)
    print(file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    started = time.monotonic()
    try:
        summaries = asyncio.run(run(options, sample, plan, workdir, records))
    except (procs.ProcessError, RefusedWarmup) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    finally:
        if options.keep:
            print(f"bench: kept {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    compute_ratios({s.name: s for s in summaries})
    cores = info["cores"]
    print()
    print(table(summaries, cores))
    print()
    print(cpu_table(summaries))
    print()
    print(stage_table(summaries))
    if options.paced_rate:
        print()
        print(paced_table(summaries, options.paced_rate))
    print()
    print(NOTES)
    print(f"\ntotal {elapsed:.1f}s, loadavg {os.getloadavg()[0]:.2f} at end")
    small = options.rounds == 1 and options.messages < 500
    if small:
        print("small run: a smoke check; CPU time is counted in 10 ms ticks, so figures are coarse")
    if options.profile_dir is not None:
        print(f"profiles in {options.profile_dir} (CPU figures above include profiler overhead)")
    status = warnings(summaries, cores, small)
    if options.json_path is not None:
        write_json(options, sample, info, elapsed, summaries)
    return status


def warnings(summaries: Sequence[Summary], cores: int, small: bool) -> int:
    """Print what makes the numbers suspect; 1 if some messages failed or runs were cut."""
    status = 0
    noisy = max(s.other(cores) for s in summaries)
    if noisy > 0.10 and not small:
        print(f"WARNING: up to {noisy:.0%} of the CPU went to other work during the runs")
    for s in summaries:
        if s.outcomes.get(FAILED) or s.truncated:
            status = 1
            cut = " (truncated by --time-limit)" if s.truncated else ""
            print(f"WARNING {s.name}: {s.outcomes.get(FAILED, 0)} failed{cut}", file=sys.stderr)
            for error in s.errors[:3]:
                print(f"  {error}", file=sys.stderr)
        problems = s.extra.get("gateway_log_problems", 0)
        if problems:
            print(f"WARNING {s.name}: the gateway logged {problems} warnings or errors{KEEP}")
        if s.extra.get("dns_log_problems"):
            print(f"WARNING: the bench DNS server logged problems{KEEP}")
        if s.extra.get("cut_by_budget"):
            status = 1
            print(f"WARNING {s.name}: fewer rounds than asked (--budget)")
    return status


def write_json(
    options: Options, sample: Sample, info: dict[str, Any], elapsed: float, summaries: list[Summary]
) -> None:
    if options.json_path is None:
        return
    document = {
        "machine": info,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "sample": {
            "messages": len(sample.messages),
            "ham": sample.ham,
            "spam": sample.spam,
            "skipped": sample.skipped,
            "dkim_signed": sample.signed,
            "mean_bytes": sample.mean_size,
            "seed": sample.seed,
        },
        "elapsed_s": elapsed,
        "scenarios": [s.as_json(info["cores"]) for s in summaries],
        "runs": [r.as_json() for s in summaries for r in s.runs],
    }
    options.json_path.write_text(json.dumps(document, indent=1) + "\n")
