"""Issue 13's attachment section end to end: each sub-case's message (tests/issue13_samples.py)
through `mailgate scan --jsonl --dns-off`, the whole chain and the shipped rules."""

from __future__ import annotations

import json
from pathlib import Path

from harness import REPO
from issue13_samples import ANY, RELAYED, STOPPED, write
from test_cli import mailgate


def test_every_sub_case_of_issue_13_is_stopped_or_relayed_as_it_should(tmp_path: Path) -> None:
    cases = {path.name: case for path, case in write(tmp_path / "emls")}
    result = mailgate("scan", "--jsonl", "--dns-off", tmp_path / "emls", cwd=REPO)
    assert result.returncode in (0, 1, 2, 4), result.stderr.decode()
    verdicts = {Path(j["path"]).name: j for j in map(json.loads, result.stdout.splitlines())}
    assert verdicts.keys() == cases.keys()
    wrong = []
    for name, case in cases.items():
        action = verdicts[name]["action"]
        symbols = {f["symbol"] for f in verdicts[name]["findings"]}
        ok = {
            STOPPED: action in ("quarantine", "reject"),
            RELAYED: action == "relay",
            ANY: True,
        }[case.expected]
        ok = ok and set(case.present) <= symbols and not set(case.absent) & symbols
        if not ok:
            wrong.append((name, action, sorted(symbols)))
    assert not wrong
