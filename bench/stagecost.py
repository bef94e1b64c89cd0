"""What the per-stage benches (`bench.mime_cost`, `bench.classifier_cost`) share: run each
variant over the same messages, interleaved, keep each variant's fastest round (the machine is
shared), and print ms per message with ratios to baseline variants measured in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence


def _round(func: Callable[[bytes], object], messages: Sequence[bytes]) -> list[float]:
    times: list[float] = []
    for raw in messages:
        started = time.process_time()
        func(raw)
        times.append(time.process_time() - started)
    return times


def best_rounds(
    variants: Mapping[str, Callable[[bytes], object]], messages: Sequence[bytes], rounds: int
) -> dict[str, list[float]]:
    """Process CPU seconds per message for each variant, from its fastest whole round."""
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, func in variants.items():
            times = _round(func, messages)
            if name not in best or sum(times) < sum(best[name]):
                best[name] = times
    return best


def print_table(best: Mapping[str, list[float]], baselines: Mapping[str, str]) -> None:
    """One row per variant: total, mean, p50, p99 and max, and `x <label>` = its total over the
    total of the baseline variant named by `baselines[label]`."""
    floors = {label: sum(best[name]) for label, name in baselines.items()}
    print(
        f"{'variant':<16}{'total s':>9}{'ms/msg':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        + "".join(f"{'x ' + label:>12}" for label in floors)
    )
    for name, times in best.items():
        ordered = sorted(times)
        total = sum(times)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(
            f"{name:<16}{total:>9.2f}{total / len(times) * 1000:>9.3f}"
            f"{statistics.median(times) * 1000:>9.3f}{p99 * 1000:>9.2f}{max(times) * 1000:>9.1f}"
            + "".join(f"{total / floor:>12.2f}" for floor in floors.values())
        )
