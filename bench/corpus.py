"""The message mix: a fixed, seeded sample of the SpamAssassin public corpus, as CRLF bytes.

Files are read as bytes (many are not UTF-8). Each one is cleaned the way an MTA would hand it on:
the mbox `From ` separator line is dropped and every line ending (bare CR, bare LF or CRLF) becomes
CRLF. Messages the gateway would refuse for reasons unrelated to inspection cost (a NUL byte, a
line longer than the configured limit) are left out of the sample, and counted.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HAM_DIRS = ("easy_ham", "easy_ham_2", "hard_ham")
SPAM_DIRS = ("spam", "spam_2")
DEFAULT_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared/corpora/spamassassin"
MAX_LINE = 4000  # below the gateway's default limits.max_line_length (4096)

_LINE_END = re.compile(rb"\r\n|\r|\n")
_MESSAGE_FILE = re.compile(r"^\d{5}\.[0-9a-f]+$")


class CorpusError(Exception):
    """The corpus is missing or too small for the sample asked for."""


@dataclass(frozen=True)
class Sample:
    """The messages of one run, in the order they are sent; the same for every scenario."""

    messages: tuple[bytes, ...]
    ham: int
    spam: int
    skipped: int
    source: Path
    seed: int
    signed: int = 0  # of `messages`, DKIM-signed by bench.signing.sign_share

    @property
    def mean_size(self) -> float:
        return sum(len(m) for m in self.messages) / max(1, len(self.messages))

    @property
    def total_bytes(self) -> int:
        return sum(len(m) for m in self.messages)


def to_crlf(raw: bytes) -> bytes:
    """Drop an mbox `From ` line; make every line ending CRLF; end with CRLF."""
    if raw.startswith(b"From "):
        raw = raw.partition(b"\n")[2]
    text = _LINE_END.sub(b"\r\n", raw)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text


def usable(message: bytes) -> bool:
    """Whether the gateway would inspect it at all (no NUL, no line over the limit)."""
    if b"\x00" in message or not message.strip():
        return False
    return all(len(line) <= MAX_LINE for line in message.split(b"\r\n"))


def _files(base: Path, dirs: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for name in dirs:
        folder = base / name
        if folder.is_dir():
            found.extend(p for p in folder.iterdir() if _MESSAGE_FILE.match(p.name))
    return sorted(found)


def _pick(files: list[Path], count: int, rng: random.Random) -> tuple[list[bytes], int]:
    """`count` usable messages from `files` in a seeded order, and how many were skipped."""
    order = files[:]
    rng.shuffle(order)
    picked: list[bytes] = []
    skipped = 0
    for path in order:
        if len(picked) == count:
            break
        message = to_crlf(path.read_bytes())
        if usable(message):
            picked.append(message)
        else:
            skipped += 1
    return picked, skipped


def load_sample(base: Path, size: int, seed: int) -> Sample:
    """Half ham, half spam, drawn with `seed`, interleaved in a seeded order."""
    ham_files, spam_files = _files(base, HAM_DIRS), _files(base, SPAM_DIRS)
    if not ham_files or not spam_files:
        raise CorpusError(f"no ham or no spam messages under {base} (expected {HAM_DIRS}...)")
    rng = random.Random(seed)
    ham, ham_skipped = _pick(ham_files, size - size // 2, rng)
    spam, spam_skipped = _pick(spam_files, size // 2, rng)
    if len(ham) + len(spam) < size:
        raise CorpusError(f"only {len(ham) + len(spam)} usable messages under {base}, need {size}")
    messages = ham + spam
    rng.shuffle(messages)
    return Sample(
        messages=tuple(messages),
        ham=len(ham),
        spam=len(spam),
        skipped=ham_skipped + spam_skipped,
        source=base,
        seed=seed,
    )
