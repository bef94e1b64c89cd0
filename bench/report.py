"""Per-run records, per-scenario summaries and their ratios, the printed table and the JSON.

Ratios are what the bench is for: absolute numbers move with the machine, the ratios between
scenarios measured in the same run much less. Throughput ratios are the median of per-round
paired ratios (each round runs every scenario once, back to back), which cancels slow drift of
the machine; latencies are pooled over rounds.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.load import FAILED, KEPT, RELAYED

DIRECT = "direct"
PASS = "pass-through"
FULL = "full chain"


@dataclass
class RunRecord:
    """One scenario in one round."""

    scenario: str
    round: int
    sent: int
    answered: int
    wall: float
    latencies: list[float]
    outcomes: Counter[str]
    errors: list[str]
    truncated: bool
    gateway_cpu: float | None
    sink_cpu: float
    dns_cpu: float
    loadgen_cpu: float
    machine_cpu: float
    # CPU seconds per plugin from the gateway's own accounting; "" = messages it concluded
    stage_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.answered / self.wall if self.wall > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "round": self.round,
            "sent": self.sent,
            "answered": self.answered,
            "wall_s": self.wall,
            "messages_per_s": self.throughput,
            "latency_p50_ms": percentile(self.latencies, 50) * 1000,
            "latency_p99_ms": percentile(self.latencies, 99) * 1000,
            "outcomes": dict(self.outcomes),
            "errors": self.errors,
            "truncated": self.truncated,
            "gateway_cpu_s": self.gateway_cpu,
            "sink_cpu_s": self.sink_cpu,
            "dns_cpu_s": self.dns_cpu,
            "loadgen_cpu_s": self.loadgen_cpu,
            "machine_cpu_s": self.machine_cpu,
            "plugin_cpu_s": {k: v for k, v in self.stage_cpu.items() if k and " " not in k},
            "dns_lookups": {k[4:]: v for k, v in self.stage_cpu.items() if k.startswith("dns ")},
            "messages_concluded": self.stage_cpu.get(""),
        }


@dataclass
class Summary:
    """One scenario over all rounds, with its ratios to direct and to pass-through."""

    name: str
    description: str
    runs: list[RunRecord]
    peak_rss: int | None = None
    ratio_direct: float | None = None
    ratio_pass: float | None = None
    added_p50: float | None = None
    added_p99: float | None = None
    cpu_ratio_pass: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    paced: list[float] = field(default_factory=list)  # latencies of the paced run

    @property
    def answered(self) -> int:
        return sum(r.answered for r in self.runs)

    @property
    def throughputs(self) -> list[float]:
        return [r.throughput for r in self.runs]

    @property
    def throughput(self) -> float:
        return statistics.median(self.throughputs) if self.runs else 0.0

    @property
    def spread(self) -> float | None:
        """Half the min-max range of per-round throughput, relative to the median."""
        values = self.throughputs
        if len(values) < 2 or not self.throughput:
            return None
        return (max(values) - min(values)) / 2 / self.throughput

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.runs for x in r.latencies]

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    def _per_message(self, total: float | None) -> float | None:
        return None if total is None or not self.answered else total / self.answered

    @property
    def gateway_cpu(self) -> float | None:
        """Gateway CPU seconds per answered message."""
        values = [r.gateway_cpu for r in self.runs]
        if any(v is None for v in values):
            return None
        return self._per_message(sum(v for v in values if v is not None))

    def stage_cpu(self) -> dict[str, float]:
        """CPU seconds per message for each plugin (and the quarantine write), as the gateway
        accounted it (gateway.cputime), over the messages it concluded in the measured runs."""
        messages = sum(r.stage_cpu.get("", 0.0) for r in self.runs)
        if not messages:
            return {}
        totals: Counter[str] = Counter()
        for run in self.runs:
            totals.update(
                {k: v for k, v in run.stage_cpu.items() if k and not k.startswith("dns ")}
            )
        return {name: seconds / messages for name, seconds in totals.items()}

    def dns_lookups(self) -> tuple[float, float] | None:
        """DNS lookups per concluded message: (answered from the cache, sent to the server)."""
        messages = sum(r.stage_cpu.get("", 0.0) for r in self.runs)
        if not messages:
            return None
        hits = sum(r.stage_cpu.get("dns hit", 0.0) for r in self.runs)
        misses = sum(r.stage_cpu.get("dns miss", 0.0) for r in self.runs)
        return hits / messages, misses / messages

    @property
    def sink_cpu(self) -> float | None:
        return self._per_message(sum(r.sink_cpu for r in self.runs))

    @property
    def dns_cpu(self) -> float | None:
        return self._per_message(sum(r.dns_cpu for r in self.runs))

    @property
    def loadgen_cpu(self) -> float | None:
        return self._per_message(sum(r.loadgen_cpu for r in self.runs))

    def _ours(self) -> float:
        return sum(
            (r.gateway_cpu or 0.0) + r.sink_cpu + r.dns_cpu + r.loadgen_cpu for r in self.runs
        )

    def busy(self, cores: int) -> float:
        """Share of the machine's CPU the bench's own processes used during the measured runs."""
        wall = sum(r.wall for r in self.runs)
        return self._ours() / (wall * cores) if wall else 0.0

    def other(self, cores: int) -> float:
        """Share of the machine's CPU used by anything else (other programs, kernel softirq)."""
        wall = sum(r.wall for r in self.runs)
        machine = sum(r.machine_cpu for r in self.runs)
        return max(0.0, machine - self._ours()) / (wall * cores) if wall else 0.0

    @property
    def outcomes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for run in self.runs:
            total.update(run.outcomes)
        return total

    @property
    def errors(self) -> list[str]:
        return [e for r in self.runs for e in r.errors]

    @property
    def truncated(self) -> bool:
        return any(r.truncated for r in self.runs)

    def as_json(self, cores: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "answered": self.answered,
            "messages_per_s": self.throughput,
            "messages_per_s_rounds": self.throughputs,
            "latency_p50_ms": self.p50 * 1000,
            "latency_p99_ms": self.p99 * 1000,
            "throughput_vs_direct": self.ratio_direct,
            "throughput_vs_pass_through": self.ratio_pass,
            "added_latency_p50_ms": _ms(self.added_p50),
            "added_latency_p99_ms": _ms(self.added_p99),
            "gateway_cpu_ms_per_message": _ms(self.gateway_cpu),
            "gateway_cpu_vs_pass_through": self.cpu_ratio_pass,
            "gateway_peak_rss_bytes": self.peak_rss,
            "sink_cpu_ms_per_message": _ms(self.sink_cpu),
            "dns_cpu_ms_per_message": _ms(self.dns_cpu),
            "loadgen_cpu_ms_per_message": _ms(self.loadgen_cpu),
            "plugin_cpu_ms_per_message": {k: v * 1000 for k, v in self.stage_cpu().items()},
            "paced_latency_p50_ms": percentile(self.paced, 50) * 1000 if self.paced else None,
            "paced_latency_p99_ms": percentile(self.paced, 99) * 1000 if self.paced else None,
            "machine_busy": self.busy(cores),
            "machine_other": self.other(cores),
            "outcomes": dict(self.outcomes),
            "errors": self.errors,
            "truncated": self.truncated,
            **self.extra,
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _paired_ratio(a: Summary, b: Summary) -> float | None:
    """Median over rounds of a's throughput / b's throughput in the same round."""
    by_round = {r.round: r.throughput for r in b.runs}
    ratios = [r.throughput / by_round[r.round] for r in a.runs if by_round.get(r.round, 0.0) > 0.0]
    return statistics.median(ratios) if ratios else None


def compute_ratios(summaries: Mapping[str, Summary]) -> None:
    direct, passthrough = summaries.get(DIRECT), summaries.get(PASS)
    for summary in summaries.values():
        if direct is not None and direct.runs:
            summary.ratio_direct = _paired_ratio(summary, direct)
            summary.added_p50 = summary.p50 - direct.p50
            summary.added_p99 = summary.p99 - direct.p99
        if passthrough is not None and passthrough.runs:
            summary.ratio_pass = _paired_ratio(summary, passthrough)
            mine, base = summary.gateway_cpu, passthrough.gateway_cpu
            if mine is not None and base:
                summary.cpu_ratio_pass = mine / base


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _outcomes(counts: Counter[str]) -> str:
    order = [RELAYED, KEPT, "4xx", "5xx", FAILED]
    return " ".join(f"{name}={counts[name]}" for name in order if counts.get(name))


def table(summaries: Sequence[Summary], cores: int) -> str:
    headers = [
        "scenario",
        "msg/s",
        "±",
        "x direct",
        "x pass",
        "p50 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms",
        "gw CPU ms/msg",
        "x pass",
        "gw peak RSS",
        "busy",
        "other",
        "outcomes",
    ]
    rows: list[list[str]] = []
    for s in summaries:
        rows.append(
            [
                s.name,
                f"{s.throughput:.0f}",
                _fmt(None if s.spread is None else s.spread * 100, ".0f", "%"),
                _fmt(s.ratio_direct, ".2f"),
                _fmt(s.ratio_pass, ".2f"),
                f"{s.p50 * 1000:.2f}",
                f"{s.p99 * 1000:.2f}",
                _fmt(_ms(s.added_p50), "+.2f"),
                _fmt(_ms(s.added_p99), "+.2f"),
                _fmt(_ms(s.gateway_cpu), ".3f"),
                _fmt(s.cpu_ratio_pass, ".2f"),
                _fmt(None if s.peak_rss is None else s.peak_rss / 2**20, ".1f", " MiB"),
                f"{s.busy(cores) * 100:.0f}%",
                f"{s.other(cores) * 100:.0f}%",
                _outcomes(s.outcomes),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    left = {0, len(headers) - 1}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def cpu_table(summaries: Sequence[Summary]) -> str:
    """Where the CPU went, per message, for every process in the run."""
    out = ["CPU ms per message   gateway     sink      dns  loadgen"]
    for s in summaries:
        out.append(
            f"  {s.name:<18}"
            f"{_fmt(_ms(s.gateway_cpu), '8.3f'):>8} "
            f"{_fmt(_ms(s.sink_cpu), '8.3f'):>8} "
            f"{_fmt(_ms(s.dns_cpu), '8.3f'):>8} "
            f"{_fmt(_ms(s.loadgen_cpu), '8.3f'):>8}"
        )
    return "\n".join(out)


def stage_table(summaries: Sequence[Summary]) -> str:
    """CPU ms per message for each plugin, the quarantine write, the commands to the delivery
    server (relay) and the DNS lookups (the resolver's shared tasks), one column per gateway
    scenario; "rest" is what the gateway spent outside all of them (the SMTP front: reading
    commands and DATA, replies; headers, logging, the event loop)."""
    columns = [s for s in summaries if s.stage_cpu()]
    if not columns:
        return "plugin CPU: no figures (the gateways' metrics endpoints did not answer)"
    per = {s.name: s.stage_cpu() for s in columns}
    names = sorted(
        {n for costs in per.values() for n in costs},
        key=lambda n: (n in ("quarantine", "relay", "resolver"), n),
    )
    width = max(len(s.name) for s in columns) + 2
    out = ["plugin CPU ms/msg".ljust(20) + "".join(s.name.rjust(width) for s in columns)]
    for name in [*names, "sum", "rest"]:
        cells = []
        for s in columns:
            costs = per[s.name]
            if name == "sum":
                value: float | None = sum(costs.values())
            elif name == "rest":
                value = None if s.gateway_cpu is None else s.gateway_cpu - sum(costs.values())
            else:
                value = costs.get(name)
            cells.append(_fmt(_ms(value), ".3f").rjust(width))
        label = {
            "quarantine": "quarantine write",
            "relay": "relay (downstream)",
            "resolver": "DNS lookups",
            "rest": "rest (SMTP front)",
        }.get(name, name)
        out.append(f"  {label:<18}" + "".join(cells))
    lookups = [s.dns_lookups() for s in columns]
    out.append(
        "  DNS cached/asked  "
        + "".join(("-" if x is None else f"{x[0]:.2f}/{x[1]:.2f}").rjust(width) for x in lookups)
    )
    return "\n".join(out)


def paced_table(summaries: Sequence[Summary], rate: float) -> str:
    """Latency at a fixed offered load, DNS answers cached: what the gateway adds to each
    message when it is not saturated (the saturated table above measures queueing too)."""
    direct = next((s for s in summaries if s.name == DIRECT and s.paced), None)
    title = f"paced {rate:g}/s, DNS cached"
    out = [f"{title:<24}answered  p50 ms  p99 ms  +p50 ms  +p99 ms"]
    for s in summaries:
        if not s.paced:
            continue
        p50, p99 = percentile(s.paced, 50), percentile(s.paced, 99)
        add50 = None if direct is None else p50 - percentile(direct.paced, 50)
        add99 = None if direct is None else p99 - percentile(direct.paced, 99)
        out.append(
            f"  {s.name:<22}{len(s.paced):>8}  {p50 * 1000:6.2f}  {p99 * 1000:6.2f}"
            f"  {_fmt(_ms(add50), '+7.2f'):>7}  {_fmt(_ms(add99), '+7.2f'):>7}"
        )
    return "\n".join(out)
