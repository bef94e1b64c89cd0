"""Every message under ../shared/mime and the SpamAssassin corpus goes through the stage.

No exception escapes, and each message is inside its time budgets (plus slack for a shared
2-core machine). The parse runs on every message; the content scan on all of ../shared/mime and
on every third corpus message (the whole corpus takes ~20 s of scanning: bench/mime_cost.py
measures it). The slowest message is printed (`pytest -s`) for the record.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mime_samples import SHARED

from gateway.mime.budgets import DEFAULT_LIMITS
from gateway.mime.content import scan, scan_light
from gateway.mime.parse import analyze

MIME_DIR = SHARED / "mime"
CORPUS_DIR = SHARED / "corpora" / "spamassassin"
SLACK = 1.5  # seconds over a budget a unit of work may run before the next budget check


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "cmds")


def _run(paths: list[Path], scan_every: int) -> tuple[float, str]:
    slowest = (0.0, "")
    lights = [0]
    for index, path in enumerate(paths):
        raw = path.read_bytes()
        started = time.monotonic()
        report = analyze(raw)
        parsed = time.monotonic() - started
        assert parsed < DEFAULT_LIMITS.time_budget + SLACK, path
        assert report.leaves, path  # something is always handed on to be scanned
        if index % scan_every == 0:
            content = scan(report)
            assert content.elapsed < DEFAULT_LIMITS.scan_time_budget + SLACK, path
            assert "ATT_UNSCANNABLE" not in content.symbols() or not report.complete, path
            # the light scan the gateway runs on the event loop gives up, or finds the same
            light = scan_light(report)
            if light is not None:
                assert (light.findings, light.files, light.complete) == (
                    content.findings,
                    content.files,
                    content.complete,
                ), path
                lights[0] += 1
        elapsed = time.monotonic() - started
        slowest = max(slowest, (elapsed, str(path)))
    assert lights[0] > len(paths) // scan_every // 2  # most mail needs no thread
    return slowest


@pytest.mark.skipif(not MIME_DIR.is_dir(), reason="../shared/mime is not here")
def test_every_file_under_shared_mime() -> None:
    paths = _files(MIME_DIR)
    assert len(paths) > 300
    slowest = _run(paths, scan_every=1)
    print(f"\nslowest of {len(paths)} under shared/mime: {slowest[0] * 1000:.0f} ms {slowest[1]}")


@pytest.mark.skipif(not CORPUS_DIR.is_dir(), reason="../shared/corpora is not here")
def test_the_spamassassin_corpus() -> None:
    paths = _files(CORPUS_DIR)
    assert len(paths) > 6000
    slowest = _run(paths, scan_every=3)
    print(f"\nslowest of {len(paths)} corpus messages: {slowest[0] * 1000:.0f} ms {slowest[1]}")
