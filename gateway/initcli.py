"""`mailgate init DIR`: lay out a configuration folder (/etc/mailgate) from what mailgate ships.

It writes DIR/gateway.toml, the shipped example with its [paths] pointing at DIR/rules and
/var/lib/mailgate, and DIR/rules/, a copy of the shipped policy for the admin to edit. Nothing is
ever replaced: an existing file stays as it is unless --force is given.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from gateway.config import SYSTEM_QUARANTINE
from gateway.shipped import shipped

# The shipped file's [paths] is relative to a checkout's config/; in DIR they are these.
SYSTEM_PATHS = {
    'rules = "../rules"': 'rules = "rules"',
    'quarantine = "../var/quarantine"': f'quarantine = "{SYSTEM_QUARANTINE}"',
    'dev_maildir = "../var/maildir"': f'dev_maildir = "{SYSTEM_QUARANTINE.parent / "maildir"}"',
}


def add_commands(sub: Any) -> None:
    init = sub.add_parser(
        "init",
        help="write a configuration folder (gateway.toml, rules/) from the shipped files",
        description=(
            "Write DIR/gateway.toml (the shipped example; [paths]: DIR/rules and "
            "/var/lib/mailgate) and DIR/rules/ (a copy of the shipped policy). Existing files "
            "are kept unless --force."
        ),
    )
    init.add_argument("dir", metavar="DIR", help="the folder, e.g. /etc/mailgate")
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(func=cmd_init)


def system_config_text() -> str:
    """The shipped gateway.toml with the [paths] of a system layout."""
    text = (shipped("config") / "gateway.toml").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines):
        wanted = SYSTEM_PATHS.get(line.strip())
        if wanted is not None:
            lines[n] = wanted + "\n"
    return "".join(lines)


def cmd_init(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    config, rules = folder / "gateway.toml", folder / "rules"
    existing = [str(p) for p in (config, rules) if p.exists()]
    if existing and not args.force:
        print(f"mailgate: {', '.join(existing)} exists; use --force to replace it", file=sys.stderr)
        return 1
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shipped("rules"), rules, dirs_exist_ok=True)
        config.write_text(system_config_text(), encoding="utf-8")
    except OSError as exc:
        print(f"mailgate: cannot write {folder}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {config} and {rules}/")
    print(f"edit {config} ([listen], [relay] domains, [delivery]), then: mailgate check")
    return 0
