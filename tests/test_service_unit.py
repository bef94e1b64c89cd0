"""config/systemd as systemd reads it: `systemd-analyze verify` on the unit (ExecStart pointed at
this checkout's real `mailgate`, the one thing verify needs that this machine lacks: the
/opt/mailgate venv), the sysusers and tmpfiles snippets applied to a scratch root (the user they
make owns the folders they make), and MemoryDenyWriteExecute=yes kept honest: a scan that loads
numpy, re2, zxing-cpp and Pillow runs under the kernel's own W^X switch (PR_SET_MDWE)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO
from qr_samples import mail, pillow_pdf, qr_image, qr_png
from test_signals import mailgate_command

UNIT_DIR = REPO / "config" / "systemd"
INSTALLED = "/opt/mailgate/bin/mailgate"


def _tool(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package systemd)")
    return found


def _unit_keys(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def test_the_unit_verifies(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    shipped = (UNIT_DIR / "mailgate.service").read_text(encoding="utf-8")
    assert shipped.count(INSTALLED) == 1  # ExecStart: the documented venv
    unit = tmp_path / "mailgate.service"
    unit.write_text(shipped.replace(INSTALLED, " ".join(mailgate_command())), encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False, timeout=120
    )
    # verify exits 0 on warnings too (an unknown key, a bad value): none may be printed
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done


def test_the_unit_says_what_the_service_needs() -> None:
    keys = _unit_keys((UNIT_DIR / "mailgate.service").read_text(encoding="utf-8"))
    assert keys["ExecStart"] == [f"{INSTALLED} --config /etc/mailgate/gateway.toml serve"]
    assert keys["Type"] == ["notify"] and keys["NotifyAccess"] == ["main"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["User"] == ["mailgate"] and keys["Group"] == ["mailgate"]
    assert keys["AmbientCapabilities"] == keys["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert keys["MemoryDenyWriteExecute"] == ["yes"]
    # Above the shipped shutdown grace plus the supervisor's 5 s for its workers.
    from gateway.config import load_settings

    grace = load_settings(REPO / "config" / "gateway.toml").limits.shutdown_grace
    assert float(keys["TimeoutStopSec"][0]) > grace + 5


def test_sysusers_and_tmpfiles_make_the_user_and_its_folders(tmp_path: Path) -> None:
    sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    users = str(UNIT_DIR / "mailgate.sysusers")
    dry = subprocess.run(
        [sysusers, f"--root={tmp_path}", "--dry-run", users],
        capture_output=True,
        text=True,
        check=False,
    )
    assert dry.returncode == 0 and "Creating user 'mailgate'" in dry.stderr, dry
    assert not (tmp_path / "etc" / "passwd").exists()
    subprocess.run([sysusers, f"--root={tmp_path}", users], check=True, capture_output=True)
    [entry] = [
        line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
        if line.startswith("mailgate:")
    ]
    uid, gid, shell = int(entry[2]), int(entry[3]), entry[6]
    assert uid < 1000 and shell == "/usr/sbin/nologin"  # a system user, no login
    done = subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", str(UNIT_DIR / "mailgate.tmpfiles")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done
    for folder in ("var/lib/mailgate", "var/lib/mailgate/quarantine"):
        info = (tmp_path / folder).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (uid, gid, 0o750), folder


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


# In a child, then exec: from there on no memory may become writable and executable (the
# setting is inherited across exec), which is what systemd's MemoryDenyWriteExecute= enforces.
UNDER_MDWE = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(99)
os.execvp(sys.argv[1], sys.argv[1:])
"""


def test_memory_deny_write_execute_holds_for_the_native_libraries(tmp_path: Path) -> None:
    if tuple(int(n) for n in os.uname().release.split(".")[:2] if n.isdigit()) < (6, 3):
        pytest.skip("PR_SET_MDWE needs Linux 6.3")
    message = tmp_path / "qr.eml"
    pdf = pillow_pdf(qr_image("https://pdf.example/pay"))
    message.write_bytes(
        mail(
            attachments=(
                (qr_png("https://phish.example/login"), "image/png", "scan.png"),
                (pdf, "application/pdf", "invoice.pdf"),
            ),
            html='<p>Pay <a href="https://pay.example/">here</a></p>',
        )
    )
    done = subprocess.run(
        [
            *(sys.executable, "-c", UNDER_MDWE, *mailgate_command()),
            *("--config", str(REPO / "config" / "gateway.toml"), "scan", "--dns-off"),
            str(message),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode != 99, "prctl(PR_SET_MDWE) refused"
    assert "Traceback" not in done.stderr, done.stderr
    # every native stage ran: zxing on the PNG and the PDF's picture, numpy's classifier
    assert "QR_CODE_IN_PDF" in done.stdout and "ML_BAND_" in done.stdout, done.stdout
    assert "CLASSIFIER_ERROR" not in done.stdout and "_ERROR " not in done.stdout, done.stdout
