"""The classifier's shortcuts give exactly what the plain code gives.

Scoring takes shortcuts (a Latin-1 twin of the word pattern, case-sensitive twins of
case-insensitive patterns on lower-cased text, substring tests before long alternations, header
fields indexed by name, a scorer that never builds the vector): each is checked here against the
plain way, on the corner cases that could tell them apart.
"""

from __future__ import annotations

import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from classifier_data import SA_FEATURES, corpus_files

from gateway.classifier import features as F
from gateway.classifier import vectorize
from gateway.classifier.features import FeatureSettings, extract
from gateway.classifier.vectorize import LinearScorer, VectorSpec, hashed_counts, weighted

ALL_CHARS = "".join(chr(i) for i in range(sys.maxunicode + 1) if not 0xD800 <= i < 0xE000)


def test_fold_traps_are_where_ignorecase_and_lower_disagree() -> None:
    folds_to_ascii = set(re.findall("[a-z]", ALL_CHARS, re.I))
    traps = set(F._FOLD_TRAPS.findall(ALL_CHARS))
    assert traps == {"\u0130", "\u0131", "\u017f"}
    words = set(re.findall(r"\w", ALL_CHARS))
    spaces = set(re.findall(r"\s", ALL_CHARS))
    for c in ALL_CHARS:
        if c in traps:
            continue
        lowered = c.lower()
        assert len(lowered) == 1, c
        assert lowered.lower() == lowered, c  # so lowering twice is lowering once
        # An ASCII letter matches c under IGNORECASE exactly when c lowers to it...
        if c in folds_to_ascii:
            assert lowered.isascii() and lowered.isalpha(), hex(ord(c))
            assert re.fullmatch(re.escape(lowered), c, re.I), hex(ord(c))
        else:
            assert not (lowered.isascii() and lowered.isalpha()), hex(ord(c))
        # ...and lowering keeps what \b and \s see.
        assert (c in words) == (lowered in words), hex(ord(c))
        assert (c in spaces) == (lowered in spaces), hex(ord(c))


def _samples(alphabet: list[str], n: int, length: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(alphabet, k=rng.randint(0, length))) for _ in range(n)]


TRICKY = ["K", "\u212a", "S", "s", "\u017f", "I", "i", "\u0130", "\u0131", "\u00e9", "\u00c9"]


@pytest.mark.parametrize("pattern", sorted(F._LOWER_TWIN, key=lambda p: p.pattern))
def test_lower_twins_find_what_the_ignorecase_patterns_find(pattern: re.Pattern[str]) -> None:
    twin = F._LOWER_TWIN[pattern]
    words = ["http://", "www.", "HREF", "src", "Action", "display", "none", "visibility"]
    words += ["hidden", "font-size", "0px", "color", "#FFF", "white", "<!--", "-->", "a", "Z"]
    alphabet = [*words, *TRICKY, " ", "\n", "=", ":", '"', "'", ">", "<", "/", "x"]
    checked = 0
    for text in _samples(alphabet, 3000, 30, 7):
        upper = text.upper() if len(text) % 2 else text
        for candidate in (text, upper):
            if not F._lowers_like_ignorecase(candidate):
                continue
            checked += 1
            lowered = candidate.lower()
            assert twin.findall(lowered) == [
                m.lower() if isinstance(m, str) else m for m in pattern.findall(candidate)
            ], candidate
    assert checked > 2000


def test_latin1_word_pattern_is_the_word_pattern_on_latin1_text() -> None:
    latin1 = [chr(i) for i in range(256)]
    for text in _samples([*latin1, "1.5", "2,50", "abc", "x" * 30, "9" * 15], 3000, 40, 11):
        assert F._LATIN1_WORD.findall(text) == F._WORD.findall(text), text
    assert F._words("na\u00efve caf\u00e9 \u00bd \u00b2x 3.14", 10) == F._WORD.findall(
        "na\u00efve caf\u00e9 \u00bd \u00b2x 3.14"
    )


def test_needed_literals_and_the_redaction_shortcut() -> None:
    assert F._needed_literal(r"spamassassin\.taint\.org") == "spamassassin.taint.org"
    assert F._needed_literal(r"\bjm@") == "jm@"
    assert F._needed_literal(r"zzzz\w*") == "zzzz"
    assert F._needed_literal("colou?r") == "colo"
    assert F._needed_literal("ab{0,2}c") == "a"
    assert F._needed_literal("a|b") == ""
    assert F._needed_literal("(?i)x") == ""
    assert F._needed_literal(r"\d+x") == ""
    assert F._needed_literals(("abc", r"\w+")) is None
    compiled = F._compiled(SA_FEATURES)
    assert compiled.redact is not None and compiled.redact_needs is not None
    texts = ["hello jm@example", "spamassassin.taint.org", "zzzzfoo bar", "plain text", ""]
    texts += ["xjm@y", "yyyy", "webnote.net and taint.org"]
    for text in texts:
        assert compiled.redacted(text) == compiled.redact.sub(" ", text), text
    collector = compiled.collector
    assert collector is not None
    for text in ["by FETCHMAIL-x", "from phobos", "from mail.example", "taint.org", "tai\u0131nt"]:
        assert compiled.is_collector(text) == bool(collector.search(text)), text


def _plain_z(
    fields: dict[str, list[str]], spec: VectorSpec, coef: np.ndarray, idf: np.ndarray
) -> float:
    index, value = weighted(hashed_counts(fields, spec), spec, idf)
    return float(np.dot(coef[index], value)) + 0.25


@pytest.mark.parametrize(
    "spec",
    [
        VectorSpec(bits=20),
        VectorSpec(bits=10),  # many collisions, within and across fields
        VectorSpec(bits=8, sublinear_tf=False, char_ngrams=(2, 4)),
        VectorSpec(
            weights=(("subject", 0.0), ("body", 0.0), ("url", 1.0), ("header", 1.0), ("chars", 2.0))
        ),
        VectorSpec(char_ngrams=(0, 0)),
    ],
)
def test_linear_scorer_is_the_dot_product_of_the_vector(
    spec: VectorSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vectorize, "_CACHE_LIMIT", 300)  # the caches get trimmed too
    rng = np.random.default_rng(3)
    coef = rng.normal(size=spec.size).astype(np.float32)
    idf = rng.uniform(1.0, 9.0, size=spec.size).astype(np.float32)
    scorer = LinearScorer(spec, coef, idf, 0.25)
    messages = [
        p.read_bytes() for p in corpus_files("spam", 0, 25) + corpus_files("hard_ham", 0, 25)
    ]
    extracted = [extract(raw, SA_FEATURES) for raw in messages]
    extracted += [{}, {"body": ["a"]}, {"header": ["x", "x", "y"]}, {"subject": [], "body": []}]
    for _ in range(2):  # cold caches, then warm ones
        for fields in extracted:
            assert scorer.z(fields) == pytest.approx(_plain_z(fields, spec, coef, idf), abs=1e-5)


def test_extract_with_and_without_settings_on_a_corpus_slice() -> None:
    # The shortcuts apply with and without redaction patterns: both still extract every field.
    for raw in [p.read_bytes() for p in corpus_files("spam_2", 100, 20)]:
        assert set(extract(raw, FeatureSettings())) == set(extract(raw, SA_FEATURES))


def test_linear_scorer_from_several_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectorize, "_CACHE_LIMIT", 50)  # caches trimmed all the time
    spec = VectorSpec()
    rng = np.random.default_rng(5)
    coef = rng.normal(size=spec.size).astype(np.float32)
    idf = rng.uniform(1.0, 9.0, size=spec.size).astype(np.float32)
    messages = [p.read_bytes() for p in corpus_files("easy_ham", 100, 30)]
    extracted = [extract(raw, SA_FEATURES) for raw in messages] * 8
    expected = [LinearScorer(spec, coef, idf, 0.0).z(fields) for fields in extracted]
    shared = LinearScorer(spec, coef, idf, 0.0)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(shared.z, extracted)) == expected
