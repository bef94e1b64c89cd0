"""Property: whatever bytes arrive, the MIME stage and the content scan return, within budget.

Hypothesis feeds arbitrary bytes, MIME-shaped noise, and real messages mutated (bytes flipped,
cut, spliced with hostile fragments: boundaries, duplicate fields, deep nesting, encodings).
Budgets are tightened so a run that ignored them would show.
"""

from __future__ import annotations

import dataclasses
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mime_samples import eicar, tiny_pe, with_attachment, zip_of

from gateway.mime.budgets import DEFAULT_LIMITS
from gateway.mime.content import scan
from gateway.mime.parse import analyze

LIMITS = dataclasses.replace(
    DEFAULT_LIMITS, time_budget=1.0, scan_time_budget=2.0, max_parts=100, max_depth=10
)
SLACK = 1.5

SEEDS = [
    with_attachment(zip_of({"a.exe": tiny_pe(), "b.txt": eicar()}), "a.zip"),
    with_attachment(b"%PDF-1.4\n<</OpenAction 1 0 R>>", "x.pdf", "application/pdf"),
    b'Content-Type: multipart/mixed; boundary="a"; boundary="b"\r\n\r\n--a\r\n\r\nx\r\n--b\r\n',
    b"Content-Type: text/html\r\n\r\n<a href='http://e.example'>http://p.example</a><script>",
]
FRAGMENTS = [
    b"\r\n--b1\r\n",
    b"\r\n--b1--\r\n",
    b"Content-Type: multipart/mixed; boundary=b1\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: x-uuencode\r\n",
    b"Content-Disposition: attachment; filename*0*=utf-8''%E2%80%AE; filename*1=x.exe\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"\r\n \r\n",
    b"\x00",
    b"begin 644 x.exe\r\n",
    b"=?utf-8?b?=?=",
    b';"' * 50,
    b"PK\x03\x04",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.integers(0, 3))
        if action == 0:
            data[where:where] = draw(st.sampled_from(FRAGMENTS)) * draw(st.integers(1, 20))
        elif action == 1 and data:
            data[min(where, len(data) - 1)] = draw(st.integers(0, 255))
        elif action == 2:
            del data[where : where + draw(st.integers(0, 200))]
        else:
            data[where:where] = draw(st.binary(max_size=64))
    return bytes(data)


def _stage(raw: bytes) -> None:
    started = time.monotonic()
    report = analyze(raw, LIMITS)
    assert time.monotonic() - started < LIMITS.time_budget + SLACK
    assert report.leaves
    content = scan(report, LIMITS)
    assert content.elapsed < LIMITS.scan_time_budget + SLACK
    for finding in (*report.findings, *content.findings):
        assert finding.symbol.isupper()


@settings(
    max_examples=200, deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(raw: bytes) -> None:
    _stage(raw)


@settings(
    max_examples=200, deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(mutated())
def test_mutated_messages(raw: bytes) -> None:
    _stage(raw)


@settings(
    max_examples=50, deadline=10000, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=400))
def test_mime_shaped_noise(parts: list[bytes]) -> None:
    _stage(b"".join(parts))
