"""Started as root: become `[listen] user` once the listening sockets are bound.

Port 25 needs root or CAP_NET_BIND_SERVICE. The systemd unit grants the capability and starts us
as the mailgate user, so none of this runs there. Started as root some other way (an init script,
a container, by hand), a process binds first, then gives root up for good: supplementary groups,
group, user, in that order (each step needs root). What it writes afterwards must then be
writable by that user: a folder root made (an earlier run as root, or this start-up) is handed
over, a folder missing is created for it, and anything else it cannot write is refused by name
before a message depends on it.

With workers each worker binds and drops by itself; the supervisor stays root, as Postfix's
master does: it only starts, watches and signals its workers, and must be able to restart one.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ListenSettings, Settings

log = logging.getLogger("mailgate")

ROOT_WARNING = (
    'running as root: set [listen] user (e.g. "mailgate") to give root up once the port is '
    "bound, or start it as that user with CAP_NET_BIND_SERVICE (config/systemd/mailgate.service)"
)


class PrivilegeError(Exception):
    """We could not become the configured user, or it cannot write what it must."""


@dataclass(frozen=True)
class Account:
    user: str
    uid: int
    group: str
    gid: int


def account_of(listen: ListenSettings) -> Account | None:
    """The configured user and group (default: the user's own group); None when unset."""
    if listen.user is None:
        return None
    try:
        entry = pwd.getpwnam(listen.user)
        group = grp.getgrnam(listen.group) if listen.group else grp.getgrgid(entry.pw_gid)
    except KeyError as exc:  # checked when the config was read: removed since?
        raise PrivilegeError(f"[listen] user/group: no longer on this system: {exc}") from None
    return Account(entry.pw_name, entry.pw_uid, group.gr_name, group.gr_gid)


def folders_written(settings: Settings, dev: bool) -> list[Path]:
    """What a serving process writes: the quarantine, and the dev sink's Maildir under --dev."""
    return [settings.quarantine_dir, *([settings.dev_maildir] if dev else [])]


def announce_supervisor(listen: ListenSettings, warn: bool = True) -> None:
    """In a supervisor: say once what its workers will do about root."""
    if os.geteuid() != 0:
        return
    if listen.user is None:
        if warn:
            log.warning(ROOT_WARNING)
    else:
        log.info(
            "workers become user %s once bound; this supervisor stays root to restart them",
            listen.user,
        )


def drop_privileges(listen: ListenSettings, writable: Sequence[Path], warn: bool = True) -> None:
    """Become `[listen] user` if we are root (call it after binding); a no-op otherwise.

    `writable`: folders the process writes from now on. `warn`: log that we stay root when no
    user is set (a supervisor's workers leave that to it; --dev and --demo are trial runs).
    """
    if os.geteuid() != 0:
        if listen.user is not None and _name_of(os.geteuid()) != listen.user:
            log.info("not started as root: [listen] user %s left alone", listen.user)
        return
    target = account_of(listen)
    if target is None:
        if warn:
            log.warning(ROOT_WARNING)
        return
    code = _code_folders()
    try:
        for folder in writable:
            _hand_over(folder, target)
        os.initgroups(target.user, target.gid)
        os.setgid(target.gid)
        os.setuid(target.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot become user {target.user}: {exc}") from None
    unreadable = [folder for folder in code if not os.access(folder, os.R_OK | os.X_OK)]
    if unreadable:  # modules and data files load on first use: per-message failures otherwise
        raise PrivilegeError(
            f"user {target.user} cannot read {', '.join(unreadable)}, where Python and "
            "mailgate's code are installed: install them where it can (a venv in /opt/mailgate)"
        )
    problems = [problem for folder in writable for problem in _unwritable(folder)]
    if problems:
        raise PrivilegeError(
            f"user {target.user} cannot write {', '.join(problems)}: "
            f"chown -R {target.user}:{target.group} the folder, or point [paths] at one it owns"
        )
    log.info(
        "gave up root: now user %s (uid %d), group %s (gid %d)",
        target.user,
        target.uid,
        target.group,
        target.gid,
    )


def _name_of(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a container's arbitrary uid
        return None


def _code_folders() -> list[str]:
    """The folders of the Python path our modules came from (looked up while we see them all);
    others (the current directory under `python -m`) are only searched in vain if unreadable."""
    entries = [os.path.join(entry, "") for entry in sys.path if os.path.isdir(entry)]
    used: dict[str, None] = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            # the longest entry holding it: "/" under `cd / && python -m` holds everything
            found = max((e for e in entries if file.startswith(e)), key=len, default=None)
            if found is not None:
                used[found.rstrip("/") or "/"] = None
    return list(used)


def _hand_over(folder: Path, target: Account) -> None:
    """Create `folder` for `target`, or give it (and what is in it) to them if root owns it."""
    if not folder.exists():
        folder.mkdir(mode=0o750, parents=True)
        os.chown(folder, target.uid, target.gid)
        log.info("created %s for user %s", folder, target.user)
        return
    if folder.stat().st_uid != 0:
        return  # someone's own folder: checked once we are the user, never taken
    log.warning("%s belonged to root: handing it and its contents to %s", folder, target.user)
    for path in _tree(folder):
        with contextlib.suppress(FileNotFoundError):  # a sibling worker may be moving it
            os.lchown(path, target.uid, target.gid)


def _tree(folder: Path) -> Iterator[str]:
    yield str(folder)
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            yield os.path.join(parent, name)


def _unwritable(folder: Path) -> Iterator[str]:
    """Folders under `folder` we cannot create files in, and SQLite files (rewritten in place)
    we cannot write."""
    if not os.access(folder, os.W_OK | os.X_OK):
        yield str(folder)
        return
    for parent, dirs, files in os.walk(folder):
        for name in dirs:
            path = os.path.join(parent, name)
            if not os.access(path, os.W_OK | os.X_OK):
                yield path
        for name in files:
            path = os.path.join(parent, name)
            if ".sqlite3" in name and not os.access(path, os.W_OK):
                yield path
