"""`[listen] user`: started as root, a real `mailgate serve --dev` binds, then becomes that user
(/proc/PID/status says so), and mail still flows: relayed to the dev Maildir, quarantined into
the quarantine folder, rules reloaded on SIGHUP as that user. A folder root made is handed over;
one the user cannot write is refused by name; an unknown user is a config error at its line; no
user while root is a WARNING. With workers, each worker drops and the supervisor stays root."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, free_port, message
from quarantine_fixtures import run_cli
from test_signals import spawn_serve, wait_for_log, write_served_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs root")

USER = "nobody"  # in every Debian base system
TIMEOUT = 60.0  # bounds a failure only


@pytest.fixture(scope="module", autouse=True)
def code_traversable() -> Iterator[None]:
    """The user must read Python and our code (the service refuses otherwise): an interpreter
    under a 0700 home (pyenv in /root) gets o+x (traverse, not list) on the way, restored after.
    A real install (/usr, a venv in /opt/mailgate) needs nothing."""
    changed: dict[Path, int] = {}
    for entry in {*sys.path, str(Path(__file__).parent)}:
        if not entry or not Path(entry).is_dir():
            continue
        for folder in [Path(entry).resolve(), *Path(entry).resolve().parents]:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH and folder not in changed:
                changed[folder] = mode
                folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for folder, mode in changed.items():
            folder.chmod(stat.S_IMODE(mode))


@pytest.fixture
def served_root() -> Iterator[Path]:
    """A folder other users can traverse (pytest's tmp_path is 0700 root's): the served config,
    rules and log live here, as under /etc and /var/lib."""
    folder = Path(tempfile.mkdtemp(prefix="mailgate-priv-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _with_user(config: Path, lines: str) -> None:
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[listen]\n", f"[listen]\n{lines}\n", 1), encoding="utf-8")


def _ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/PID/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(n) for n in value.split()]
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=10)


def _send(port: int, subject: str) -> None:
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.example.net", timeout=10) as client:
        client.sendmail("alice@example.net", ["bob@example.com"], message(subject=subject))


def test_root_becomes_the_user_and_mail_still_flows(served_root: Path) -> None:
    nobody = pwd.getpwnam(USER)
    config, port = write_served_config(served_root)
    _with_user(config, f'user = "{USER}"')
    proc, log = spawn_serve(served_root, config)
    try:
        text = wait_for_log(proc, log, str.count, "gave up root", timeout=TIMEOUT)
        assert f"now user {USER} (uid {nobody.pw_uid})" in text
        assert "running as root" not in text
        ids = _ids(proc.pid)
        assert ids["Uid"] == [nobody.pw_uid] * 4  # real, effective, saved, filesystem
        assert ids["Gid"] == [nobody.pw_gid] * 4
        assert 0 not in ids["Groups"]
        quarantine = served_root / "quarantine"
        assert quarantine.stat().st_uid == nobody.pw_uid  # created for it
        assert f"created {quarantine} for user {USER}" in text

        _send(port, "relayed as nobody")
        maildir = served_root / "maildir" / "new"
        wait_for_log(proc, log, str.count, "action=relay", timeout=TIMEOUT)
        [delivered] = list(maildir.iterdir())
        assert b"relayed as nobody" in delivered.read_bytes()

        # Every plaintext message to quarantine: the rules reload reads rules/ as nobody too.
        actions = served_root / "rules" / "actions.toml"
        shipped = actions.read_text(encoding="utf-8")
        actions.write_text(shipped.replace("[forced]\n", '[forced]\nTLS_NONE = "quarantine"\n'))
        proc.send_signal(signal.SIGHUP)
        wait_for_log(proc, log, str.count, ": reloaded ", timeout=TIMEOUT)
        _send(port, "quarantined as nobody")
        text = wait_for_log(proc, log, str.count, "action=quarantine", timeout=TIMEOUT)
        [held] = list(quarantine.glob("*.eml"))
        assert held.stat().st_uid == nobody.pw_uid
        assert b"quarantined as nobody" in held.read_bytes()
        listed = run_cli("--config", config, "quarantine", "list")
        assert listed.code == 0 and held.stem.encode() in listed.out
        assert "ERROR" not in text and "Traceback" not in text
    finally:
        _stop(proc)
    assert proc.returncode == 0


def test_a_folder_root_made_is_handed_over(served_root: Path) -> None:
    """An earlier run as root left the quarantine (and its index) root's: the user gets it."""
    nobody = pwd.getpwnam(USER)
    config, _ = write_served_config(served_root)
    index = served_root / "quarantine" / "index"
    index.mkdir(parents=True)
    (index / "quarantine.sqlite3").write_bytes(b"")  # an empty file: SQLite makes it a database
    _with_user(config, f'user = "{USER}"\ngroup = "nogroup"')
    proc, log = spawn_serve(served_root, config)
    try:
        text = wait_for_log(proc, log, str.count, "gave up root", timeout=TIMEOUT)
        assert "belonged to root: handing it and its contents to nobody" in text
        for path in (index.parent, index, index / "quarantine.sqlite3"):
            assert path.stat().st_uid == nobody.pw_uid, path
    finally:
        _stop(proc)


def _start_refused_as_user(root: Path, config: Path) -> str:
    """`serve` with `[listen] user`, which must stop with exit 1; its log."""
    _with_user(config, f'user = "{USER}"')
    proc, log = spawn_serve(root, config)
    try:
        assert proc.wait(timeout=TIMEOUT) == 1
    finally:
        _stop(proc)
    return log.read_text(encoding="utf-8")


def test_a_folder_the_user_cannot_write_is_refused_by_name(served_root: Path) -> None:
    config, _ = write_served_config(served_root)
    quarantine = served_root / "quarantine"
    quarantine.mkdir()
    os.chown(quarantine, 1, 1)  # daemon's, say: someone else's folder is never taken
    quarantine.chmod(0o755)
    text = _start_refused_as_user(served_root, config)
    assert f"ERROR mailgate: user {USER} cannot write {quarantine}: chown -R {USER}:" in text
    assert "Traceback" not in text


def test_an_installation_the_user_cannot_read_is_refused_by_name(
    served_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Modules and data files load on first use: unreadable code would fail message by message."""
    private = served_root / "private-site"
    private.mkdir(mode=0o700)
    (private / "sitecustomize.py").write_text("")  # loaded at start-up: code lives there
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*sys.path, str(private)]))
    config, _ = write_served_config(served_root)
    text = _start_refused_as_user(served_root, config)
    assert f"ERROR mailgate: user {USER} cannot read {private}, where Python and" in text
    assert "Traceback" not in text


def test_workers_drop_and_the_supervisor_stays_root(served_root: Path) -> None:
    nobody = pwd.getpwnam(USER)
    config, port = write_served_config(served_root, [("listen", "workers", "2")])
    _with_user(config, f'user = "{USER}"')
    proc, log = spawn_serve(served_root, config)
    workers: list[int] = []
    try:
        text = wait_for_log(proc, log, str.count, "gave up root", count=2, timeout=TIMEOUT)
        assert "workers become user nobody once bound; this supervisor stays root" in text
        workers = [int(p) for p in re.findall(r"worker \d+ started: pid (\d+)", text)]
        assert len(workers) == 2
        for pid in workers:
            assert _ids(pid)["Uid"] == [nobody.pw_uid] * 4
        assert _ids(proc.pid)["Uid"] == [0] * 4
        _send(port, "through a worker")
        wait_for_log(proc, log, str.count, "action=relay", timeout=TIMEOUT)
    finally:
        _stop(proc)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_root_without_a_user_is_warned(tmp_path: Path) -> None:
    """`serve` proper (--dev and --demo are trial runs, not warned): the delivery server may be
    absent, the warning comes once the port is bound. Its DNS probe asks a silent loopback port:
    no packet leaves the machine."""
    dns = f'\n[dns]\nnameservers = ["{LOOPBACK}"]\nport = {free_port()}\ntimeout = 1\n'
    config, _ = write_served_config(tmp_path, extra=dns)
    proc, log = spawn_serve(tmp_path, config, dev=False)
    try:
        text = wait_for_log(proc, log, str.count, "running as root", timeout=TIMEOUT)
        assert 'WARNING mailgate: running as root: set [listen] user (e.g. "mailgate")' in text
        assert "listening on" in text
    finally:
        _stop(proc)


def test_an_unknown_user_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    config, _ = write_served_config(tmp_path)
    _with_user(config, 'user = "no-such-mailgate-user"')
    line = config.read_text().splitlines().index('user = "no-such-mailgate-user"') + 1
    checked = run_cli("--config", config, "check", "--no-dns-probe")
    assert checked.code == 1
    assert (
        f"{config}:{line}: key 'listen.user': no such user on this system: 'no-such-mailgate-user'"
    ).encode() in checked.err
