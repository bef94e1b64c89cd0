"""How `mailgate` ends when its world refuses it, over real pipes and sockets: a reader that went
away (`| head -1`) ends it quietly, like any Unix tool; an address already in use is one line
naming it, exit 1; and `--version` names the policy and the model it would serve with."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from harness import LOOPBACK, REPO, message
from quarantine_fixtures import mailgate_command
from test_signals import write_served_config

from gateway.quarantine import SqliteStore

SIGPIPE_STATUS = 128 + 13


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose quarantine holds 300 entries, one of them a 2 MB message."""
    folder = tmp_path_factory.mktemp("filled")
    config, _ = write_served_config(folder)
    store = SqliteStore(folder / "quarantine")
    for n in range(300):
        body = b"x" * 70 + b"\r\n"
        body *= 30_000 if n == 0 else 1
        meta = {
            "id": f"PIPE{n:08d}",
            "mail_from": "a@example.net",
            "rcpt_tos": ["bob@example.com"],
            "subject": f"entry {n}",
            "score": 9.0,
            "reason": "score 9 >= quarantine threshold 6",
            "findings": [],
        }
        store.put(f"PIPE{n:08d}", message(subject=f"entry {n}", body=body), meta)
    store.close()
    return config


def env_without_config() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}


COMMANDS = (
    ["quarantine", "list", "--limit", "0"],
    ["quarantine", "show", "PIPE00000000"],
    ["quarantine", "show", "PIPE00000000", "--raw"],
    ["quarantine", "stats"],
    ["check", "--no-dns-probe"],
)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:3]))
def test_a_reader_gone_before_the_first_line_ends_it_quietly(
    filled: Path, command: list[str]
) -> None:
    """`mailgate ... | true`: the pipe's reader is closed before anything is written."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [*mailgate_command(), "--config", str(filled), *command],
            stdout=writer,
            stderr=subprocess.PIPE,
            env=env_without_config(),
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
    assert done.stderr == b""
    assert done.returncode == SIGPIPE_STATUS


@pytest.mark.parametrize("command", COMMANDS[:3], ids=lambda c: " ".join(c[:3]))
def test_head_1_reads_one_line_and_the_rest_ends_quietly(filled: Path, command: list[str]) -> None:
    if shutil.which("bash") is None or shutil.which("head") is None:
        pytest.skip("needs bash and head")
    line = " ".join([*map(_quoted, mailgate_command()), "--config", _quoted(str(filled))])
    script = f'{line} {" ".join(command)} | head -1; echo "status=${{PIPESTATUS[0]}}" >&2'
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        env=env_without_config(),
        timeout=60,
        check=False,
    )
    assert len(done.stdout.splitlines()) == 1, done.stdout[:300]
    assert b"Traceback" not in done.stderr, done.stderr
    status = re.search(rb"status=(\d+)", done.stderr)
    assert status is not None and int(status[1]) in (0, SIGPIPE_STATUS), done.stderr
    if command[-1] == "--raw":  # 2 MB cannot sit in the pipe: the reader surely left first
        assert int(status[1]) == SIGPIPE_STATUS


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _serve_on_a_taken_port(
    tmp_path: Path, workers: int, metrics_below: bool = False
) -> tuple[subprocess.CompletedProcess[str], int]:
    """`mailgate serve` on a port another socket already listens on; its run and that port.
    With metrics_below, the taken port is the metrics endpoint of worker 1 instead of the SMTP
    one. The start-up DNS probe asks loopback only (nothing answers there)."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = f'\n[metrics]\naddress = "{LOOPBACK}:{port - 1}"\n' if metrics_below else ""
        listen = [] if metrics_below else [("listen", "port", str(port))]
        config, _ = write_served_config(
            tmp_path,
            [*listen, ("listen", "workers", str(workers))],
            extra='\n[dns]\nnameservers = ["127.0.0.1"]\ntimeout = 1\n' + metrics,
        )
        done = subprocess.run(
            [*mailgate_command(), "--config", str(config), "serve"],
            capture_output=True,
            text=True,
            env=env_without_config(),
            timeout=300,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done, port


def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    done, port = _serve_on_a_taken_port(tmp_path, workers=1)
    assert f"mailgate: cannot listen on {LOOPBACK}:{port}: address already in use\n" in (
        done.stderr
    )


def test_with_workers_a_port_in_use_stops_the_supervisor_not_a_restart_loop(
    tmp_path: Path,
) -> None:
    """Each worker binds for itself: one that cannot (EX_CONFIG, before it was ever ready) is
    not restarted forever; the supervisor stops them all and exits 1."""
    done, port = _serve_on_a_taken_port(tmp_path, workers=2)
    assert f"cannot listen on {LOOPBACK}:{port}: address already in use" in done.stderr
    assert "cannot start (its error is above): stopping every worker" in done.stderr
    assert "restarting in" not in done.stderr, done.stderr


def test_a_worker_metrics_port_in_use_is_named_as_that_worker_metrics(tmp_path: Path) -> None:
    """Worker i serves metrics on [metrics] address port + i: when that one is taken, the line
    says so, not just a port the config never names."""
    done, port = _serve_on_a_taken_port(tmp_path, workers=2, metrics_below=True)
    assert (
        f"cannot listen on {LOOPBACK}:{port} for the metrics endpoint ([metrics] address, "
        "port + 1 for worker 1): address already in use"
    ) in done.stderr, done.stderr


def test_version_names_the_policy_and_the_model(tmp_path: Path) -> None:
    def version(*args: str | Path) -> list[str]:
        done = subprocess.run(
            [*mailgate_command(), *map(str, args), "--version"],
            capture_output=True,
            text=True,
            env=env_without_config(),
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    shipped = REPO / "config" / "gateway.toml"
    check = subprocess.run(
        [*mailgate_command(), "--config", str(shipped), "check", "--no-dns-probe"],
        capture_output=True,
        text=True,
        env=env_without_config(),
        timeout=60,
        check=False,
    )
    policy = re.search(r"\(policy ([0-9a-f]{12}),", check.stdout)
    assert policy is not None, check.stdout + check.stderr
    lines = version("--config", shipped)
    assert re.fullmatch(r"mailgate \d+\.\d+\.\d+\S*", lines[0])
    assert lines[1] == f"policy {policy[1]} ({(REPO / 'rules').resolve()})"
    assert re.fullmatch(r"model \d{8}\.\d{6} \(.*/models/spam\.npz\)", lines[2]), lines
    # another policy: another version
    config, _ = write_served_config(tmp_path)
    scores = tmp_path / "rules" / "scores.toml"
    scores.write_text(scores.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    other = version("--config", config)
    assert other[1].startswith("policy ") and other[1] != lines[1]


def test_bind_refusals_name_the_address_and_other_errors_stay_errors() -> None:
    import errno

    from gateway.cli import _bind_refusal

    text = "error while attempting to bind on address ('::1', 2525, 0, 0): address already in use"
    assert _bind_refusal(OSError(errno.EADDRINUSE, text)) == (
        "cannot listen on [::1]:2525: address already in use"
    )
    text = "error while attempting to bind on address ('0.0.0.0', 25): permission denied"
    refusal = _bind_refusal(OSError(errno.EACCES, text))
    assert refusal is not None and "0.0.0.0:25" in refusal and "CAP_NET_BIND_SERVICE" in refusal
    assert _bind_refusal(OSError(errno.ENOENT, "no such file")) is None
    assert _bind_refusal(PermissionError(errno.EACCES, "Permission denied", "/var/x")) is None
