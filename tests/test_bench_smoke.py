"""The benchmark harness still runs end to end: a smoke run, not a timed test.

`python3 -m bench --quick` starts the sink, the DNS server and every gateway scenario, drives a
few messages through each, and writes JSON; nothing here looks at how fast anything was, only
that every scenario answered, the per-plugin CPU table and the paced latency run are filled in,
and no process logged a problem.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.corpus import DEFAULT_CORPUS

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not DEFAULT_CORPUS.is_dir(), reason="corpus not available")


def test_quick_bench_run_fills_every_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--paced-rate", "40", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    # The bench's own lines ("bench: full, 2 workers: ..."), then the end of what it printed: a
    # failure's reason comes first and the gateway log tail after it.
    own = "\n".join(line for line in done.stderr.splitlines() if line.startswith("bench:"))
    report = f"stdout:\n{done.stdout[-4000:]}\nbench said:\n{own[:3000]}"
    report += f"\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode in (0, 1), report  # 1: warnings (a small run always has some)
    assert "plugin CPU ms/msg" in done.stdout, report
    document = json.loads(out.read_text())
    scenarios = {s["name"]: s for s in document["scenarios"]}
    assert set(scenarios) == {
        "direct",
        "pass-through",
        "full chain",
        "full, 2 workers",
        "full+STARTTLS",
    }
    for name, scenario in scenarios.items():
        # Under a loaded machine a plugin may time out and the message be deferred (4xx): that
        # is the gateway doing its job. What must not happen is a broken harness or connection.
        outcomes = scenario["outcomes"]
        assert set(outcomes) <= {"relayed", "kept", "4xx"}, (name, outcomes, report)
        assert outcomes.get("relayed", 0) + outcomes.get("kept", 0) > 0, (name, report)
        assert scenario["paced_latency_p99_ms"] is not None, (name, report)
    full = scenarios["full chain"]["plugin_cpu_ms_per_message"]
    # a third of the mix is DKIM-signed: verified (never refused: outcomes above), and paid for
    assert document["sample"]["dkim_signed"] > 0
    for plugin in ("mime", "attachments", "classifier", "spf", "dkim", "dmarc", "headers"):
        assert full.get(plugin, 0) > 0, (plugin, full, report)
    assert full.get("resolver", 0) > 0, full  # the DNS lookups' own CPU
    # no plugin, no DNS in the pass-through gateway: only its commands to the delivery server
    passing = scenarios["pass-through"]["plugin_cpu_ms_per_message"]
    assert passing.get("relay", 0) > 0, passing
    assert not any(v for k, v in passing.items() if k != "relay"), passing
