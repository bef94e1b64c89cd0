"""bench/folds.py's first step: two folds of whole sources, commercial ham halved by sender."""

from __future__ import annotations

import shutil
from pathlib import Path

from classifier_data import build_corpora

from bench import folds
from gateway.classifier import crosssource


def test_folds_keep_whole_sources_apart_and_halve_commercial_senders(tmp_path: Path) -> None:
    root = build_corpora(tmp_path / "corpora")
    templates = root / "commercial" / "ham" / "templates"
    templates.mkdir(parents=True)
    for i in range(6):
        (templates / f"org{i}__reset.eml").write_bytes(
            f"From: Org {i} <noreply@org{i}.example>\r\nTo: ann@made-up.test\r\n"
            f"Subject: Reset your password\r\nX-Spam-Flag: YES\r\n\r\nHello {i}\r\n".encode()
        )
    work = tmp_path / "work"
    folds.fold(root, work)
    found = {
        f: dict(
            (p.relative_to(work / f"mail-{f}").as_posix(), label)
            for label, p in folds._mail_folders(work, f)
        )
        for f in folds.FOLDS
    }
    assert found["A"]["spamassassin/easy_ham"] == "ham"
    assert found["A"]["spamassassin/spam"] == "spam"
    assert found["B"]["spamassassin/spam_2"] == "spam"
    assert found["B"]["modern/phish/sf-lists-heuristic"] == "phish"
    assert not set(found["A"]) - {"commercial/ham/templates"} & set(found["B"])
    senders = {
        f: {
            crosssource.sender_domain(p.read_bytes())
            for p in (work / f"mail-{f}" / "commercial/ham/templates").iterdir()
        }
        for f in folds.FOLDS
    }
    assert senders["A"] and senders["B"] and not senders["A"] & senders["B"]
    # what a filter added is gone from the copies the chain reads; training links the sources
    assert not any(b"X-Spam-" in p.read_bytes() for p in (work / "mail-A").rglob("*.eml"))
    assert (work / "train-A" / "spamassassin" / "easy_ham").is_symlink()
    assert len(list((work / "train-B" / "commercial/ham/templates").iterdir())) == len(
        list((work / "mail-B" / "commercial/ham/templates").iterdir())
    )
    shutil.rmtree(work)
