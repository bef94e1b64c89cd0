"""Tokens per field -> one hashed sparse vector.

Each field hashes into its own space (CRC-32 seeded with the field's number, so "free" in the
subject and "free" in the body are different features), term frequencies are dampened
(1 + log tf), multiplied by an inverse document frequency learnt at training time, and each
field's part of the vector is scaled to unit length times the field's weight, so a long body
cannot drown the header traits. CRC-32 is defined once and for all: a model file stays valid
across Python, numpy and scikit-learn versions.
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zlib import crc32

import numpy as np
import numpy.typing as npt

from gateway.classifier.features import FIELDS

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]

# The hashed spaces: the extracted fields, plus "chars", the character n-grams of body words
# (robust to misspellings, obfuscation and languages written without spaces).
SPACES = (*FIELDS, "chars")
_SEED = {name: i + 1 for i, name in enumerate(SPACES)}


@lru_cache(maxsize=1 << 17)
def _hash(token: str, seed: int) -> int:
    return crc32(token.encode("utf-8", "replace"), seed)


@lru_cache(maxsize=1 << 16)
def _gram_hashes(word: str, low: int, high: int) -> npt.NDArray[np.int64]:
    """Hashes of the character n-grams (low..high) of " word " (word boundaries marked).
    Cached: the array is shared, never modify it."""
    return np.array(_gram_crcs(word, low, high), dtype=np.int64)


def _gram_crcs(word: str, low: int, high: int) -> list[int]:
    """The hashes of `_gram_hashes` as a list (LinearScorer packs them its own way)."""
    padded = f" {word} "
    seed = _SEED["chars"]
    out = []
    for n in range(low, high + 1):
        if len(padded) < n:
            break
        for i in range(len(padded) - n + 1):
            out.append(crc32(padded[i : i + n].encode("utf-8", "replace"), seed))
    return out


@dataclass(frozen=True)
class VectorSpec:
    """The shape of the hashed space; stored in the model card."""

    bits: int = 20
    weights: tuple[tuple[str, float], ...] = tuple((name, 1.0) for name in SPACES)
    sublinear_tf: bool = True
    char_ngrams: tuple[int, int] = (3, 5)  # (0, 0): none

    @property
    def size(self) -> int:
        return 1 << self.bits

    def to_json(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "weights": dict(self.weights),
            "sublinear_tf": self.sublinear_tf,
            "char_ngrams": list(self.char_ngrams),
            "hash": "crc32(utf-8 token, seed=1 + index in spaces), low bits",
            "spaces": list(SPACES),
        }

    @classmethod
    def from_json(cls, data: Any) -> VectorSpec:
        if not isinstance(data, dict):
            raise ValueError("features.vector must be an object")
        bits = data.get("bits")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 8 <= bits <= 24:
            raise ValueError("features.vector.bits must be an integer from 8 to 24")
        if data.get("spaces") != list(SPACES):
            raise ValueError(f"features.vector.spaces must be {list(SPACES)}")
        weights = data.get("weights")
        if not isinstance(weights, dict) or set(weights) != set(SPACES):
            raise ValueError(f"features.vector.weights must give a weight to each of {SPACES}")
        pairs = []
        for name in SPACES:
            w = weights[name]
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
                raise ValueError(f"features.vector.weights.{name} must be a number")
            pairs.append((name, float(w)))
        sublinear = data.get("sublinear_tf", True)
        if not isinstance(sublinear, bool):
            raise ValueError("features.vector.sublinear_tf must be true or false")
        grams = data.get("char_ngrams", [0, 0])
        if (
            not isinstance(grams, list)
            or len(grams) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) for g in grams)
            or not (grams == [0, 0] or 1 <= grams[0] <= grams[1] <= 8)
        ):
            raise ValueError("features.vector.char_ngrams must be [low, high] (1-8) or [0, 0]")
        return cls(
            bits=bits,
            weights=tuple(pairs),
            sublinear_tf=sublinear,
            char_ngrams=(grams[0], grams[1]),
        )


@dataclass(frozen=True)
class FieldCounts:
    """Hashed term counts of one field of one message (indices unique, counts >= 1)."""

    field: str
    index: IndexArray
    count: FloatArray


def hashed_counts(fields: Mapping[str, Sequence[str]], spec: VectorSpec) -> list[FieldCounts]:
    """Term counts per hashed space. Tokens are counted first and each distinct one hashed
    once (cached across messages), so the cost follows the vocabulary of the message."""
    mask = spec.size - 1
    weights = dict(spec.weights)
    out: list[FieldCounts] = []
    for name in FIELDS:
        tokens = fields.get(name, ())
        if not tokens:
            continue
        counter = Counter(tokens)
        n = len(counter)
        counts = np.fromiter(counter.values(), dtype=np.float64, count=n)
        if weights.get(name, 0.0) != 0.0:
            seed = _SEED[name]
            hashes = np.fromiter((_hash(t, seed) for t in counter), dtype=np.int64, count=n)
            out.append(_counts(name, hashes, counts, mask))
        low, high = spec.char_ngrams
        if name == "body" and low and weights.get("chars", 0.0) != 0.0:
            grams = [_gram_hashes(word, low, high) for word in counter]
            sizes = np.fromiter((len(g) for g in grams), dtype=np.int64, count=n)
            if sizes.sum():
                out.append(_counts("chars", np.concatenate(grams), np.repeat(counts, sizes), mask))
    return out


def _counts(
    name: str, hashes: npt.NDArray[np.int64], counts: npt.NDArray[np.float64], mask: int
) -> FieldCounts:
    hashes = hashes & mask
    index, inverse = np.unique(hashes, return_inverse=True)
    summed = np.bincount(inverse, weights=counts, minlength=len(index))
    return FieldCounts(name, index, summed.astype(np.float32))


def weighted(
    counts: Sequence[FieldCounts], spec: VectorSpec, idf: FloatArray | None
) -> tuple[IndexArray, FloatArray]:
    """The message's vector as (indices, values): tf-idf per field, l2 per field, field weight."""
    weights = dict(spec.weights)
    indices: list[IndexArray] = []
    values: list[FloatArray] = []
    for fc in counts:
        weight = weights.get(fc.field, 0.0)
        if weight == 0.0:
            continue
        tf = (1.0 + np.log(fc.count)) if spec.sublinear_tf else fc.count
        value = tf * idf[fc.index] if idf is not None else tf
        norm = float(np.sqrt(np.dot(value, value)))
        if norm <= 0.0:
            continue
        indices.append(fc.index)
        values.append((value * (weight / norm)).astype(np.float32))
    if not indices:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(indices), np.concatenate(values)


# -- scoring ---------------------------------------------------------------------------------------

_CACHE_LIMIT = 1 << 16  # distinct tokens whose hashes are kept, per field (like the lru_caches)


class LinearScorer:
    """w . x + b for a message's tokens, computed straight from the tokens: the same value as
    `weighted(hashed_counts(...))` dotted with the weights, without building the vector.

    Per-token work is cached (the hashed index of a token per field; for a body word, its index and
    those of its character n-grams), the small fields are merged in plain Python (a numpy call
    costs more than a handful of tokens), and the whole message then takes one pass of numpy
    calls: tf-idf of every feature, and per field the squared norm and the dot product with the
    weights (in float64; the sums differ from the float32 ones of `weighted` by rounding only).
    Safe to call from several threads (messages over 32 KiB are scored in a worker): the caches
    are only ever added to or trimmed, and a cache trimmed under a caller's feet costs it a
    recomputation.
    """

    def __init__(self, spec: VectorSpec, coef: FloatArray, idf: FloatArray, intercept: float):
        self.spec = spec
        self.intercept = intercept
        self._coef_idf = coef.astype(np.complex64)  # one gather (and cache line) for both
        self._coef_idf.imag = idf
        self._mask = spec.size - 1
        weights = dict(spec.weights)
        self._small = [
            (name, _SEED[name], weights[name], dict[str, int]())
            for name in FIELDS
            if name != "body" and weights.get(name, 0.0) != 0.0
        ]
        self._body_weight = weights.get("body", 0.0)
        self._chars_weight = weights.get("chars", 0.0) if spec.char_ngrams[0] else 0.0
        self._words: dict[str, bytes] = {}

    def _indices(self, tokens: Counter[str], seed: int, cache: dict[str, int]) -> list[int]:
        """The hashed index of each distinct token, in the counter's order."""
        try:
            return list(map(cache.__getitem__, tokens))
        except KeyError:
            pass
        mask = self._mask
        missing = set(tokens).difference(cache)  # (a dict, not its keys: no scan of the cache)
        _make_room(cache, len(missing))
        for token in missing:
            cache[token] = crc32(token.encode("utf-8", "replace"), seed) & mask
        try:
            return list(map(cache.__getitem__, tokens))
        except KeyError:  # another thread trimmed the cache meanwhile
            return [crc32(token.encode("utf-8", "replace"), seed) & mask for token in tokens]

    def _word_keys(self, words: Counter[str]) -> list[bytes]:
        """The sort keys of each distinct body word (see `z`), as the bytes of an int64 array:
        joining bytes is much cheaper than concatenating many small arrays."""
        cache = self._words
        try:
            return list(map(cache.__getitem__, words))
        except KeyError:
            pass
        missing = set(words).difference(cache)
        _make_room(cache, len(missing))
        for word in missing:
            cache[word] = self._keys_of(word)
        try:
            return list(map(cache.__getitem__, words))
        except KeyError:  # another thread trimmed the cache meanwhile
            return list(map(self._keys_of, words))

    def _keys_of(self, word: str) -> bytes:
        mask = self._mask
        keys = array("q")  # int64, as numpy reads it back
        if self._body_weight != 0.0:
            keys.append((crc32(word.encode("utf-8", "replace"), _SEED["body"]) & mask) << 32)
        if self._chars_weight != 0.0:
            low, high = self.spec.char_ngrams
            keys.extend([(h & mask) << 32 | _CHARS_KEY for h in _gram_crcs(word, low, high)])
        return keys.tobytes()

    def z(self, fields: Mapping[str, Sequence[str]]) -> float:
        indices: list[int] = []  # the features of the small fields, field after field
        totals: list[int] = []  # their counts in the message
        starts: list[int] = []  # where each field begins
        field_weights: list[float] = []
        for name, seed, weight, cache in self._small:
            tokens = fields.get(name, ())
            if not tokens:
                continue
            counter = Counter(tokens)
            hashed = self._indices(counter, seed, cache)
            starts.append(len(indices))
            field_weights.append(weight)
            if len(set(hashed)) == len(hashed):
                indices += hashed
                totals += counter.values()
            else:  # two tokens of the field share a hashed feature: their counts add up
                merged: dict[int, int] = {}
                for feature, n in zip(hashed, counter.values(), strict=True):
                    merged[feature] = merged.get(feature, 0) + n
                indices += merged
                totals += merged.values()
        index = np.array(indices, dtype=np.intp)
        total = np.array(totals, dtype=np.float64)
        words = fields.get("body", ())
        if words and (self._body_weight != 0.0 or self._chars_weight != 0.0):
            # The body's features and those of its character n-grams, as sort keys
            # (space << 56 | index << 32 | count): sorting them brings the features of each
            # space together (body, then chars) and each feature's occurrences next to each
            # other, whose counts add up (a gram in several words, two words that share an index).
            # A count is below 2**32: a message never has that many words.
            body = Counter(words)
            blobs = self._word_keys(body)
            sizes = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) >> 3
            counts = np.fromiter(body.values(), dtype=np.int64, count=len(body))
            keys: npt.NDArray[np.int64] = np.frombuffer(b"".join(blobs), dtype=np.int64)
            keys = np.sort(keys | np.repeat(counts, sizes))
            if len(keys):
                space_index: npt.NDArray[np.int64] = keys >> 32
                first = np.empty(len(space_index), dtype=np.bool_)
                first[0] = True
                np.not_equal(space_index[1:], space_index[:-1], out=first[1:])
                runs = np.flatnonzero(first)
                space_index = space_index[runs]
                at = len(index)
                chars_at = at + int(np.searchsorted(space_index, _CHARS_KEY >> 32))
                index = np.concatenate((index, space_index & self._mask))
                total = np.concatenate((total, np.add.reduceat(keys & 0xFFFFFFFF, runs)))
                for begin, end, weight in (
                    (at, chars_at, self._body_weight),
                    (chars_at, len(index), self._chars_weight),
                ):
                    if weight != 0.0 and begin < end:
                        starts.append(begin)
                        field_weights.append(weight)
        if not starts:
            return self.intercept
        tf = 1.0 + np.log(total) if self.spec.sublinear_tf else total
        weights = self._coef_idf[index]
        value = tf * weights.imag
        norms2 = np.add.reduceat(value * value, starts).tolist()
        dots = np.add.reduceat(weights.real * value, starts).tolist()
        z = self.intercept
        for weight, norm2, dot in zip(field_weights, norms2, dots, strict=True):
            if norm2 > 0.0:
                z += weight * dot / math.sqrt(norm2)
        return z


_CHARS_KEY = 1 << 56  # the space of char n-grams in a body sort key (see LinearScorer.z)


def _make_room(cache: dict[str, Any], adding: int) -> None:
    """Trim a cache about to grow by `adding` entries to stay within _CACHE_LIMIT: the oldest
    half goes (a dict keeps the order of insertion)."""
    if len(cache) + adding > _CACHE_LIMIT:
        for key in list(
            itertools.islice(cache, max(len(cache) // 2, len(cache) + adding - _CACHE_LIMIT))
        ):
            cache.pop(key, None)
