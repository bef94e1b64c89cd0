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


# -- a small built copy of the corpora layout (../shared/corpora), for --corpora and splits -----

_HAM_WORDS = ["patch", "review", "kernel", "build", "merge", "thanks", "test", "driver", "config"]
_SPAM_WORDS = ["loan", "offer", "invest", "winner", "prize", "urgent", "account", "verify"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _made_up(
    index: int, kind: str, list_name: str, words: list[str], extra_headers: str = ""
) -> bytes:
    """One invented message of a list archive: dated, with the list's fields and footer."""
    day = 1 + index % 27
    month = 1 + (index // 27) % 12
    picked = " ".join(words[(index + k) % len(words)] for k in range(12))
    sender = f"person{index}@{kind}{index % 5}.example"
    return (
        f"Return-Path: <{list_name}-bounces@lists.example.org>\n"
        f"Delivered-To: lists+{list_name}@archive.example\n"
        f"Received: from lists.example.org by archive.example; "
        f"{day:02d} Mar 2024 10:00:00 +0000\n"
        f"From: Person {index} <{sender}>\n"
        f"To: {list_name}@lists.example.org\n"
        f"Subject: [{list_name}] {words[index % len(words)]} {index}\n"
        f"Date: Mon, {day:02d} {_MONTHS[month - 1]} 2024 09:00:00 +0000\n"
        f"Message-ID: <{index}.{kind}@{kind}{index % 5}.example>\n"
        f"List-Id: <{list_name}.lists.example.org>\n"
        f"List-Post: <mailto:{list_name}@lists.example.org>\n"
        f"{extra_headers}"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n"
        f"{picked}\n{picked}\n"
        "_______________________________________________\n"
        f"{list_name} mailing list\nhttps://lists.example.org/listinfo/{list_name}\n"
    ).encode()


def build_corpora(root: Path, per_source: int = 8) -> Path:
    """A corpora folder laid out as ../shared/corpora, small: slices of the SpamAssassin corpus
    and invented modern list mail (two ham lists; SourceForge-style tagged spam; redacted spam;
    phishing), each source with the artefacts its real counterpart has."""
    for folder, start in (("easy_ham", 0), ("hard_ham", 0), ("spam", 0), ("spam_2", 0)):
        target = root / "spamassassin" / folder
        target.mkdir(parents=True)
        for path in corpus_files(folder, start, per_source * 2):
            shutil.copyfile(path, target / path.name)
    for name in ("nbd.other.debian.org", "cake.lists.bufferbloat.net"):
        folder = root / "modern" / "ham" / name
        folder.mkdir(parents=True)
        for i in range(per_source):
            (folder / f"{i:03d}.eml").write_bytes(
                _made_up(i, "ham", name.split(".")[0], _HAM_WORDS)
            )
    tagged = "X-Spam-Score: 8.7 (++++++++)\nX-Spam-Flag: YES\n"
    for folder, extra in (
        ("spam/sf-lists-flagged", tagged),
        ("spam/sf-lists-unflagged", "X-Spam-Score: 2.7 (++)\n"),
        ("phish/sf-lists-heuristic", tagged),
    ):
        target = root / "modern" / folder
        target.mkdir(parents=True)
        for i in range(per_source):
            raw = _made_up(i + 100, "spam", "osst-users", _SPAM_WORDS, extra)
            if "flagged" in folder or "heuristic" in folder:
                raw = raw.replace(b"Subject: [osst-users] ", b"Subject: [osst-users] [SPAM] ")
            (target / f"osst-users__{i:03d}.eml").write_bytes(raw)
    target = root / "modern" / "spam" / "glitchyzorua-spam-archive"
    target.mkdir(parents=True)
    for i in range(per_source):
        raw = (
            f"From:[removed]\nTo:[removed]\nSubject: loan offer {i}\n"
            f"Date: Tue, {1 + i:02d} Oct 2024 10:00:00 +0000\nMessage-ID: <[removed]>\n\n"
            f"Dear [removed], we offer a loan at 2% interest, reply now {i}.\n"
        )
        (target / f"2024_{i:03d}.eml").write_bytes(raw.encode())
    return root
