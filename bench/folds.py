"""The two-fold recipe behind rules/fitted.toml and the README's held-out figures, as one command.

    python3 -m bench.folds --corpora ../shared/corpora --work /tmp/folds [--step STEP]

1. fold:    the sources of the corpora root in two folds of whole sources (FOLDS below); the
            optional commercial sources (corpora.SOURCES, commercial/) are cut in two halves of
            whole sender domains, one per fold. For each fold, a corpora root to train on
            (WORK/train-A, links to the shared folders) and neutralised copies of its messages
            to run through the chain (WORK/mail-A: what a list's spam filter or the archive
            added is taken out, as training does; nbd's spam in relabelled-spam/).
2. models:  `mailgate model train --corpora WORK/train-X` per fold, the shipped recipe
            (WORK/model-X/spam.npz).
3. vectors: each fold's mail through the chain offline with the OTHER fold's model
            (`mailgate --config WORK/config-X rules fit --save-vectors WORK/vectors-X.jsonl`).
4. fit:     `rules fit --vectors` of both folds' vectors at once, --min-count 20, every
            ML_* (the bands, ML_CERTAINTY) and the scored CONTENT_* rules kept:
            WORK/fitted.toml (copy it to rules/fitted.toml).
5. figures: `python3 -m bench.detection` on both folds (WORK/detection.txt).

So no classifier output a score is fitted on, and no figure, comes from a model that saw the
message's source. Steps run in order from --step (default: all); each one's output is kept.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.classifier import corpora, crosssource
from gateway.classifier.corpus import iter_source

# The folds of the shared sources (the commercial ones are halved by sender, see _halves).
FOLDS: dict[str, tuple[str, ...]] = {
    "A": (
        "spamassassin/easy_ham",
        "spamassassin/spam",
        "modern/ham/blinux-list.redhat.com",
        "modern/ham/cake.lists.bufferbloat.net",
        "modern/ham/samba-technical.lists.samba.org",
        "modern/ham/linux-f2fs-devel.lists.sourceforge.net",
        "modern/spam/sf-lists-unflagged",
    ),
    "B": (
        "spamassassin/easy_ham_2",
        "spamassassin/hard_ham",
        "spamassassin/spam_2",
        "modern/ham/speakup.linux-speakup.org",
        "modern/ham/nbd.other.debian.org",
        "modern/ham/kernel-hardening.lists.openwall.com",
        "modern/spam/sf-lists-flagged",
        "modern/spam/glitchyzorua-spam-archive",
        "modern/phish/sf-lists-heuristic",
    ),
}
STEPS = ("fold", "models", "vectors", "fit", "figures")
# Scored by hand, with the reason beside them in rules/scores.toml: a newsletter's preheader
# (no ham of the corpora is a newsletter, so a fit reads it as spam), frames mail clients never
# load.
HAND_SET = ("HTML_PREHEADER", "HTML_FRAME_REMOTE")
REPO = Path(__file__).resolve().parent.parent


def _other(fold: str) -> str:
    return "B" if fold == "A" else "A"


def _mailgate(*args: str) -> None:
    command = [sys.executable, "-m", "gateway", *args]
    print("+", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def _halves(root: Path, source: corpora.Source) -> list[set[str]]:
    """The file names of a commercial source in two halves of whole sender domains."""
    messages = corpora.load(root, [source])
    halves = crosssource.commercial_halves(messages, list(range(len(messages))))
    return [{messages[i].name for i in half} for half in halves]


def fold(root: Path, work: Path) -> None:
    by_name = {s.name: s for s in corpora.discover(root)}
    members: dict[str, list[tuple[corpora.Source, set[str] | None]]] = {"A": [], "B": []}
    for name_of_fold, shared in FOLDS.items():
        members[name_of_fold] = [(by_name[n], None) for n in shared if n in by_name]
    for source in by_name.values():
        if source.corpus == "commercial":
            first, second = _halves(root, source)
            members["A"].append((source, first))
            members["B"].append((source, second))
    for name_of_fold, chosen in members.items():
        train = work / f"train-{name_of_fold}"
        mail = work / f"mail-{name_of_fold}"
        for folder in (train, mail):
            shutil.rmtree(folder, ignore_errors=True)
        for source, names in chosen:
            target = train / source.folder
            target.parent.mkdir(parents=True, exist_ok=True)
            if names is None:
                os.symlink((root / source.folder).resolve(), target)
            else:
                target.mkdir()
                for name in sorted(names):
                    shutil.copyfile(root / source.folder / name, target / name)
            relabelled = corpora.RELABELLED_SPAM.get(source.name, frozenset())
            for name, raw in iter_source(root / source.folder):
                if names is not None and name not in names:
                    continue
                clean, _ = corpora.neutralise(raw, source.artefacts)
                where = source.folder
                if name in relabelled:
                    where = f"relabelled-spam/{source.folder.rpartition('/')[2]}"
                out = mail / where / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(clean)
        print(f"fold {name_of_fold}: {len(chosen)} sources", file=sys.stderr)


def _label_of(folder: str) -> str:
    """ham, spam or phish: the label of the source a mail folder holds."""
    if folder.startswith("relabelled-spam/"):
        return "spam"
    (source,) = [s for s in corpora.SOURCES if s.folder == folder]
    return "phish" if source.phish else source.label


def _mail_folders(work: Path, name_of_fold: str) -> list[tuple[str, Path]]:
    mail = work / f"mail-{name_of_fold}"
    found: list[tuple[str, Path]] = []
    for folder in sorted(p for p in mail.rglob("*") if p.is_dir()):
        if any(child.is_file() for child in folder.iterdir()):
            found.append((_label_of(folder.relative_to(mail).as_posix()), folder))
    return found


def models(work: Path) -> None:
    for name_of_fold in FOLDS:
        out = work / f"model-{name_of_fold}" / "spam.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        _mailgate(
            "model",
            "train",
            "--corpora",
            str(work / f"train-{name_of_fold}"),
            "--no-eval",
            "--out",
            str(out),
        )


def _config(work: Path, name_of_fold: str) -> Path:
    """The shipped configuration, with the other fold's model and nothing kept on disk."""
    text = (REPO / "config" / "gateway.toml").read_text(encoding="utf-8")
    text = text.replace('rules = "../rules"', f'rules = "{REPO / "rules"}"')
    model = work / f"model-{_other(name_of_fold)}" / "spam.npz"
    text += f'\n[plugins.classifier]\nmodel = "{model}"\n'
    folder = work / f"config-{name_of_fold}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gateway.toml").write_text(text, encoding="utf-8")
    return folder / "gateway.toml"


def vectors(work: Path) -> None:
    for name_of_fold in FOLDS:
        args = ["--config", str(_config(work, name_of_fold)), "rules", "fit"]
        for label, folder in _mail_folders(work, name_of_fold):
            args += [f"--{label}", str(folder)]
        args += ["--save-vectors", str(work / f"vectors-{name_of_fold}.jsonl")]
        args += ["--out", str(work / f"fitted-{name_of_fold}-alone.toml")]
        _mailgate(*args)


def _kept() -> list[str]:
    from gateway.policy import load_rules

    rules = load_rules(REPO / "rules")
    kept = [s for s in rules.scores if s.startswith("ML_")]  # the bands and ML_CERTAINTY
    kept += [s for s, v in rules.scores.items() if s.startswith("CONTENT_") and v != 0.0]
    return sorted(set(kept) | set(HAND_SET))


def fit(work: Path) -> None:
    both = work / "vectors-both.jsonl"
    with both.open("wb") as out:
        for name_of_fold in FOLDS:
            out.write((work / f"vectors-{name_of_fold}.jsonl").read_bytes())
    args = ["rules", "fit", "--min-count", "20", "--out", str(work / "fitted.toml")]
    args += ["--vectors", str(both)]
    for symbol in _kept():
        args += ["--keep", symbol]
    _mailgate(*args)


def figures(work: Path) -> None:
    args = [sys.executable, "-m", "bench.detection", "--min-count", "20", "--keep-bands"]
    for name_of_fold in FOLDS:
        args += ["--fold", f"{name_of_fold}={work / f'train-{name_of_fold}'}:"]
        args[-1] += str(work / f"vectors-{name_of_fold}.jsonl")
    for symbol in _kept():
        if not symbol.startswith("ML_"):
            args += ["--keep", symbol]
    print("+", " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(args, check=True, cwd=REPO, capture_output=True, text=True)
    (work / "detection.txt").write_text(done.stdout, encoding="utf-8")
    sys.stdout.write(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.folds", description=__doc__)
    parser.add_argument("--corpora", required=True, type=Path, help="the corpora root")
    parser.add_argument("--work", required=True, type=Path, help="where every step writes")
    parser.add_argument("--step", choices=STEPS, default="fold", help="start here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    for step in STEPS[STEPS.index(args.step) :]:
        print(f"== {step}", file=sys.stderr, flush=True)
        if step == "fold":
            fold(args.corpora, args.work)
        elif step == "models":
            models(args.work)
        elif step == "vectors":
            vectors(args.work)
        elif step == "fit":
            fit(args.work)
        else:
            figures(args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
