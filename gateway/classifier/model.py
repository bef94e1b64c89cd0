"""The model file: plain arrays in an .npz, and a JSON card beside it.

`spam.npz` holds only numeric arrays (never pickled objects; it is read with allow_pickle=False,
so a file from an untrusted source cannot run code):

    index        int32[k]   the hashed features the model knows, sorted, < 2**bits
    coef         float32[k] their weights
    idf          float32[k] their inverse document frequencies
    scalars      float64[4] intercept, idf of an unknown feature, Platt a, Platt b

`spam.json`, the card, says what the arrays mean and how they were made: format version, the
sha256 of the .npz (a model and a card that do not belong together are refused), feature and vector
settings, thresholds, the training corpus, the measured metrics, the number of admin labels.

Scoring a message: tokens (features.extract) -> hashed tf-idf vector (vectorize) -> z = w . x + b
-> P(spam) = sigmoid(a z + c). A few sparse dot products, which vectorize.LinearScorer computes
straight from the tokens without building the vector.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.classifier.features import READING, FeatureSettings, extract
from gateway.classifier.vectorize import FloatArray, LinearScorer, VectorSpec
from gateway.message import ParsedMessage
from gateway.mime.model import MimeReport
from gateway.tomlfile import ConfigError

FORMAT = "mailgate-spam-model/1"
MAX_MODEL_BYTES = 64 * 1024 * 1024
_ARRAYS = {"index": np.int32, "coef": np.float32, "idf": np.float32, "scalars": np.float64}


class ModelError(ConfigError):
    """A model file that cannot be used; the message names the file and what is wrong.

    A ConfigError, so `mailgate serve` and `mailgate check` report it at start-up like any other
    configuration problem, before a single connection is accepted.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(path, None, None, problem)


def card_path_for(npz: Path) -> Path:
    return npz.with_suffix(".json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Thresholds:
    """Probabilities: ML_SPAM at or above `suspect` (weight rising to 1 at `spam`); ML_HAM at or
    below `ham`."""

    spam: float
    suspect: float
    ham: float

    @classmethod
    def from_json(cls, data: Any) -> Thresholds:
        if not isinstance(data, dict):
            raise ValueError("thresholds must be an object")
        values = {}
        for key in ("spam", "suspect", "ham"):
            v = data.get(key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"thresholds.{key} must be a probability (0 to 1)")
            values[key] = float(v)
        if not values["ham"] < values["suspect"] <= values["spam"]:
            raise ValueError("thresholds must satisfy ham < suspect <= spam")
        return cls(**values)

    def to_json(self) -> dict[str, float]:
        return {"spam": self.spam, "suspect": self.suspect, "ham": self.ham}


@dataclass(frozen=True)
class Score:
    probability: float
    z: float


class SpamModel:
    """A loaded model: dense weight and idf vectors over the hashed space, ready to score."""

    def __init__(
        self,
        card: dict[str, Any],
        features: FeatureSettings,
        vector: VectorSpec,
        thresholds: Thresholds,
        coef: FloatArray,
        idf: FloatArray,
        intercept: float,
        platt: tuple[float, float],
        source: Path | None = None,
    ) -> None:
        self.card = card
        self.features = features
        self.vector = vector
        self.thresholds = thresholds
        self.intercept = intercept
        self.platt = platt
        self.source = source
        # The scorer keeps weights and idf interleaved in one array; the separate arrays are not
        # kept (8 MB of RSS per worker for nothing).
        self.scorer = LinearScorer(vector, coef, idf, intercept)

    @property
    def version(self) -> str:
        return str(self.card.get("version", "?"))

    def stale_reading(self) -> str | None:
        """What to tell the admin when the model was trained on an older reading of messages
        (features.READING): it still loads and scores, but on text it never learnt from."""
        reading = self.card.get("features", {}).get("reading", 1)
        if reading == READING:
            return None
        return (
            f"model {self.source} was trained on reading {reading} of messages, this gateway"
            f" reads them as {READING} (HTML as the MIME stage renders it): its probabilities"
            " may be off; retrain it (mailgate model train)"
        )

    def z_of_fields(self, fields: dict[str, list[str]]) -> float:
        return self.scorer.z(fields)

    def probability_of_z(self, z: float) -> float:
        a, b = self.platt
        t = a * z + b
        if t < -700.0:
            return 0.0
        return 1.0 / (1.0 + math.exp(-t))

    def score(
        self,
        raw: bytes,
        envelope_from: str | None = None,
        arrival: datetime | None = None,
        message: ParsedMessage | None = None,
        mime: MimeReport | None = None,
    ) -> Score:
        """P(spam) of `raw`; `message` is the gateway's parse of it and `mime` its one MIME
        parse (`await message.mime()`), when there are (else they are made here)."""
        fields = extract(raw, self.features, envelope_from, arrival, message, mime)
        z = self.z_of_fields(fields)
        return Score(self.probability_of_z(z), z)


# -- saving ----------------------------------------------------------------------------------------


def save(
    npz: Path,
    coef: FloatArray,
    idf: FloatArray,
    intercept: float,
    platt: tuple[float, float],
    card: dict[str, Any],
) -> dict[str, Any]:
    """Write the arrays (only the features seen in training) and the card; return the card."""
    default_idf = float(idf.max()) if len(idf) else 1.0
    known = np.nonzero((coef != 0.0) | (idf < default_idf))[0]
    scalars = np.array([intercept, default_idf, platt[0], platt[1]], dtype=np.float64)
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(f".{npz.name}.tmp")
    with tmp.open("wb") as handle:
        np.savez_compressed(
            handle,
            index=known.astype(np.int32),
            coef=coef[known].astype(np.float32),
            idf=idf[known].astype(np.float32),
            scalars=scalars,
        )
    os.replace(tmp, npz)
    out = dict(card)
    out["format"] = FORMAT
    out["model_file"] = npz.name
    out["sha256"] = sha256_of(npz)
    out["features_known"] = len(known)
    card_file = card_path_for(npz)
    tmp_card = card_file.with_name(f".{card_file.name}.tmp")
    tmp_card.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp_card, card_file)
    return out


# -- loading -------------------------------------------------------------------------------------


def read_card(npz: Path) -> dict[str, Any]:
    path = card_path_for(npz)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(path, "model card not found (it must sit beside the .npz)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(path, f"cannot read the model card: {exc}") from None
    try:
        card = json.loads(text)
    except ValueError as exc:
        raise ModelError(path, f"model card is not valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise ModelError(path, "model card must be a JSON object")
    return card


def load(npz: Path) -> SpamModel:
    """Load and verify a model; every problem is a ModelError naming the file. Never unpickles."""
    card = read_card(npz)
    card_file = card_path_for(npz)
    if card.get("format") != FORMAT:
        raise ModelError(card_file, f"unknown model format {card.get('format')!r} (want {FORMAT})")
    try:
        size = npz.stat().st_size
    except OSError as exc:
        raise ModelError(npz, f"cannot read the model file: {exc.strerror or exc}") from None
    if size > MAX_MODEL_BYTES:
        raise ModelError(npz, f"model file is {size} bytes, more than {MAX_MODEL_BYTES}")
    expected = card.get("sha256")
    actual = sha256_of(npz)
    if expected != actual:
        raise ModelError(
            npz,
            f"sha256 {actual} does not match the card's {expected!r}: the model file is "
            "corrupt or belongs to another card",
        )
    try:
        features = FeatureSettings.from_json(card.get("features", {}).get("settings"))
        vector = VectorSpec.from_json(card.get("features", {}).get("vector"))
        thresholds = Thresholds.from_json(card.get("thresholds"))
    except (ValueError, AttributeError) as exc:
        raise ModelError(card_file, str(exc)) from None
    arrays = _read_arrays(npz, vector.size)
    index = arrays["index"].astype(np.int64)
    scalars = arrays["scalars"]
    intercept, default_idf, platt_a, platt_b = (float(v) for v in scalars)
    coef = np.zeros(vector.size, dtype=np.float32)
    coef[index] = arrays["coef"]
    idf = np.full(vector.size, default_idf, dtype=np.float32)
    idf[index] = arrays["idf"]
    return SpamModel(
        card=card,
        features=features,
        vector=vector,
        thresholds=thresholds,
        coef=coef,
        idf=idf,
        intercept=intercept,
        platt=(platt_a, platt_b),
        source=npz,
    )


def _read_arrays(npz: Path, space: int) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(npz) as archive:
            names = {info.filename: info.file_size for info in archive.infolist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(npz, f"not a readable .npz archive: {exc}") from None
    wanted = {f"{name}.npy" for name in _ARRAYS}
    if set(names) != wanted:
        raise ModelError(
            npz, f"model file must hold exactly {sorted(_ARRAYS)}, found {sorted(names)}"
        )
    limit = space * 8 + 4096
    for name, uncompressed in names.items():
        if uncompressed > limit:
            raise ModelError(npz, f"array {name} is {uncompressed} bytes unpacked, too large")
    out: dict[str, Any] = {}
    try:
        with np.load(npz, allow_pickle=False) as data:
            for name, dtype in _ARRAYS.items():
                array = data[name]
                if array.dtype != dtype or array.ndim != 1:
                    raise ModelError(
                        npz,
                        f"array {name} must be 1-d {np.dtype(dtype).name}, got "
                        f"{array.ndim}-d {array.dtype}",
                    )
                out[name] = array
    except ModelError:
        raise
    except ValueError as exc:  # an object array: allow_pickle=False refuses to unpickle it
        raise ModelError(npz, f"refused: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelError(npz, f"cannot read the arrays: {exc}") from None
    k = len(out["index"])
    if len(out["coef"]) != k or len(out["idf"]) != k or len(out["scalars"]) != 4:
        raise ModelError(npz, "index, coef and idf must have one length; scalars must have 4")
    index = out["index"]
    if k and (int(index.min()) < 0 or int(index.max()) >= space or np.any(np.diff(index) <= 0)):
        raise ModelError(npz, f"index must be sorted, unique, and within 0..{space - 1}")
    for name in ("coef", "idf", "scalars"):
        if not np.all(np.isfinite(out[name])):
            raise ModelError(npz, f"array {name} holds a value that is not a finite number")
    return out
