"""Small slices of the SpamAssassin corpus and a tiny model trained on them, for classifier tests.

The corpus is read as bytes (`cmds` files are not messages). The tiny model is trained with the
real recipe (features, time-ordered folds, calibration, model file and card), only on ~100
messages, so a test module pays about a second for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway.classifier import corpus
from gateway.classifier.cli import PRESETS
from gateway.classifier.features import FeatureSettings
from gateway.classifier.train import TrainSettings, build

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpora" / "spamassassin"
SHIPPED = REPO / "models" / "spam.npz"

SA_FEATURES = FeatureSettings(
    redact=PRESETS["spamassassin"]["redact"],
    collector_received=PRESETS["spamassassin"]["collector"],
)


def corpus_files(folder: str, start: int, count: int) -> list[Path]:
    """`count` message files of a corpus folder from position `start` (file name order)."""
    names = sorted(p for p in (CORPUS / folder).iterdir() if p.name != "cmds")
    return names[start : start + count]


def slice_dir(root: Path, folder: str, start: int, count: int) -> Path:
    """A folder holding copies of a slice of a corpus folder."""
    target = root / f"{folder}-{start}-{count}"
    target.mkdir(parents=True, exist_ok=True)
    for path in corpus_files(folder, start, count):
        shutil.copyfile(path, target / path.name)
    return target


def tiny_sources(root: Path) -> list[tuple[str, Path]]:
    return [
        ("ham", slice_dir(root, "easy_ham", 0, 40)),
        ("ham", slice_dir(root, "hard_ham", 0, 15)),
        ("spam", slice_dir(root, "spam", 0, 30)),
        ("spam", slice_dir(root, "spam_2", 0, 15)),
    ]


def train_tiny(root: Path, out: Path, feedback: list[corpus.Message] | None = None) -> Path:
    """Train the tiny model into `out` (an .npz path; the card goes beside it)."""
    sources = tiny_sources(root)
    messages = corpus.load(sources) + (feedback or [])
    build(
        messages,
        TrainSettings(features=SA_FEATURES),
        out,
        [{"label": label, "path": str(path)} for label, path in sources],
        folds=2,
        evaluate_first=False,
    )
    return out
