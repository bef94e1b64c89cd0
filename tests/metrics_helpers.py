"""Reading the Prometheus endpoint in tests: samples by their exposition name, what moved
between two scrapes, and `mailgate serve --dev` with [metrics], STARTTLS and config changes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_signals import spawn_serve, stop_serving, write_served_config
from test_workers import GRACE, Cluster

# The families whose every change a test accounts for (timings and CPU vary run to run).
TRACKED = (
    "mailgate_refusals_total",
    "mailgate_connections_",
    "mailgate_tls_sessions_total",
    "mailgate_deliveries_total",
    "mailgate_messages_total",
    "mailgate_relay_replies_total",
    "mailgate_delivery_seconds_count",
)


def samples(text: str) -> dict[str, float]:
    """Every sample as `name{label="value",...}` (labels sorted) -> value; no _created ones."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def changes(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The tracked samples that moved, by how much (a new sample counts from 0)."""
    moved = {}
    for name, value in after.items():
        if name.startswith(TRACKED) and value != before.get(name, 0.0):
            moved[name] = value - before.get(name, 0.0)
    return moved


@contextlib.contextmanager
def serving(
    tmp_path: Path,
    extra: str = "",
    changes: list[tuple[str, str, str]] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Cluster]:
    """`mailgate serve --dev` (one process), ready once it logged that it listens."""
    config, port = write_served_config(tmp_path, changes, extra)
    if tls is not None:
        text = config.read_text(encoding="utf-8")
        keys = f'[tls]\ncert_file = "{tls[0]}"\nkey_file = "{tls[1]}"\n'
        config.write_text(text.replace("[tls]\n", keys, 1), encoding="utf-8")
    proc, log = spawn_serve(tmp_path, config)
    cluster = Cluster(proc, port, log, tmp_path / "maildir")
    try:
        cluster.wait_log(r"mailgate: listening on", 1)
        yield cluster
    finally:
        stop_serving(proc, GRACE)
