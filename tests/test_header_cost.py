"""Header handling is linear: RFC 2047 decoding and the From reading, against the standard
library's reading and against their own cost at a smaller size (a ratio in one run, never a
wall-clock window)."""

from __future__ import annotations

import email.header
import random
import time
from collections.abc import Callable

import pytest

from gateway.encoded_words import EncodedWordError, decode_header_linear
from gateway.message import ParsedMessage, decode_encoded_words

SAMPLES = [
    "plain text",
    "=?utf-8?q?caf=C3=A9?=",
    "=?utf-8?q?a?= =?utf-8?q?b?=",
    "=?utf-8?q?a?=  \t =?iso-8859-1?q?b?= tail",
    "head =?utf-8?b?w6k=?= mid =?UTF-8?B?w6k?= end",
    "=?utf-8?q?a?= x =?utf-8?q?b?=",
    "  lead =?utf-8?q?a?=\n  =?utf-8?q?b?=\nline two",
    "=?utf-8?q?_?= =?utf-8?q? ?= =?utf-8?q?c?=",
    "=?unknown?q?x?= =?utf-8?q?y?=",
    "=?utf-8?q??= =?utf-8?b??=",
    "a=?utf-8?q?b?=c",
    "=?utf-8?q?a?==?utf-8?q?b?=",
    "\u00e9 =?utf-8?q?x?= \u00e9",
]


def _random_header(rng: random.Random) -> str:
    pieces = ["=?utf-8?q?a=C3=A9?=", "=?utf-8?b?w6k=?=", "=?latin-1?q?x?=", " ", "\t", "txt",
              "\n ", "=?", "?=", "=?x?q?", "=?utf-8?B?", "\u00e9"]  # fmt: skip
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))


def _stdlib(text: str) -> object:
    try:
        return email.header.decode_header(text)
    except email.errors.HeaderParseError:
        return "error"


def _ours(text: str) -> object:
    try:
        return decode_header_linear(text)
    except EncodedWordError:
        return "error"


@pytest.mark.parametrize("text", SAMPLES)
def test_the_linear_decoder_reads_as_decode_header(text: str) -> None:
    assert _ours(text) == _stdlib(text)


def test_the_linear_decoder_agrees_on_random_headers() -> None:
    rng = random.Random(13)
    for _ in range(3000):
        text = _random_header(rng)
        assert _ours(text) == _stdlib(text), text


def test_a_bad_base64_word_is_an_error_as_in_decode_header() -> None:
    assert _ours("=?utf-8?b?a?=") == _stdlib("=?utf-8?b?a?=") == "error"


def _cost(run: Callable[[int], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        run(n)
        best = min(best, time.process_time() - started)
    return best


def _grows_linearly(run: Callable[[int], object], small: int) -> None:
    """Eight times the input costs about 8 times the time (linear), far from 64 (quadratic)."""
    run(small)  # warm caches and imports
    ratio = _cost(run, 8 * small) / max(_cost(run, small), 1e-6)
    assert ratio < 16, f"8x the input cost {ratio:.1f}x the time"


def test_decoding_many_encoded_words_is_linear() -> None:
    """decode_header (stdlib) took close to a minute for 100,000 words: list.pop(0), bytes +=."""
    _grows_linearly(lambda n: decode_encoded_words(" =?utf-8?q?b?=" * n + f" {n}"), 5000)


def test_reading_a_from_folded_over_many_lines_is_linear() -> None:
    def authors(n: int) -> object:
        raw = b"From: a" + b"\r\n =?utf-8?q?b?=" * n + b"\r\nSubject: s\r\n\r\nbody\r\n"
        return ParsedMessage(raw).authors

    _grows_linearly(authors, 2500)


def test_one_field_folded_100000_times_is_scanned_in_linear_time() -> None:
    def scan(n: int) -> object:
        raw = b"X-Long: a" + b"\r\n b" * n + b"\r\n\r\nbody\r\n"
        message = ParsedMessage(raw)
        return message.fields, message.first("x-long"), message.decoded("x-long")

    _grows_linearly(scan, 12_500)
