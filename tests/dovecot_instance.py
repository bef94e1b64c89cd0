"""A private, throw-away Dovecot (Debian's dovecot-imapd and dovecot-lmtpd) for end-to-end tests.

The seed flow ends in a mailbox a user reads over IMAP, so the test delivers into a real Dovecot
over LMTP and reads back with a real IMAP login, as a deployment would.

Each `DovecotInstance` is self-contained inside one scratch directory: its own base_dir (sockets
and pid file), state_dir, log file, passwd-file (users and plaintext passwords), and Maildirs.
/etc/dovecot is never read, so it runs beside a system Dovecot. IMAP listens on 127.0.0.1 on a
port picked at start, with plaintext logins allowed (loopback, no TLS); LMTP listens on the Unix
socket given by the caller (e.g. inside a private Postfix's queue directory), owned by the
account that connects to it. Mail is stored as the unprivileged `mail_user` account.

Running it needs root: Dovecot's master must start as root to switch users.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

__all__ = ["DovecotInstance", "DovecotStartError", "find_dovecot"]

LOOPBACK = "127.0.0.1"


class DovecotStartError(RuntimeError):
    """Dovecot did not come up; the message carries its output and log."""


def find_dovecot() -> str | None:
    """The `dovecot` binary, or None when it (or the IMAP and LMTP servers) is not installed."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    binary = shutil.which("dovecot", path=search)
    if binary is None:
        return None
    # dovecot-core alone has neither protocol; the packages add these programs.
    for program in ("imap", "lmtp"):
        if not Path("/usr/lib/dovecot", program).exists():
            return None
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class DovecotInstance:
    """A private Dovecot: IMAP on 127.0.0.1:`imap_port`, LMTP on the Unix socket `lmtp_socket`.

    `users` maps full addresses (the IMAP login and the LMTP recipient) to passwords.
    `lmtp_extra` is Dovecot configuration appended verbatim (e.g. the deployment guide's
    listener block); the caller's `lmtp_socket` is where that block must put the socket.
    """

    def __init__(
        self,
        scratch_dir: Path,
        *,
        users: Mapping[str, str],
        lmtp_socket: Path,
        lmtp_extra: str = "",
        mail_user: str = "mail",
        start_timeout: float = 20.0,
    ) -> None:
        self.scratch_dir = scratch_dir.resolve()
        self.run_dir = self.scratch_dir / "run"
        self.state_dir = self.scratch_dir / "state"
        self.mail_dir = self.scratch_dir / "mail"
        self.conf_path = self.scratch_dir / "dovecot.conf"
        self.passwd_path = self.scratch_dir / "users"
        self.log_path = self.scratch_dir / "dovecot.log"
        self.output_path = self.scratch_dir / "dovecot.out"
        self.lmtp_socket = lmtp_socket
        self.users = dict(users)
        self.lmtp_extra = lmtp_extra
        owner = pwd.getpwnam(mail_user)
        if owner.pw_uid == 0:
            raise ValueError("mail_user must not be root: Dovecot refuses uid 0 for mail")
        self.mail_uid = owner.pw_uid
        self.mail_gid = owner.pw_gid
        self.start_timeout = start_timeout
        self.host = LOOPBACK
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def imap_port(self) -> int:
        if self._port is None:
            raise RuntimeError("DovecotInstance has not been started")
        return self._port

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Write the configuration, run `dovecot -F` and wait for the IMAP greeting and the
        LMTP socket. A port lost to another process before Dovecot bound it is retried."""
        binary = find_dovecot()
        if binary is None:
            raise DovecotStartError("dovecot-imapd and dovecot-lmtpd are not installed")
        if os.geteuid() != 0:
            raise DovecotStartError("a private Dovecot instance must be started as root")
        self._prepare()
        deadline = time.monotonic() + self.start_timeout
        for attempt in range(5):
            port = _free_port()
            self._write_config(port)
            # Its own output (config errors before the log opens) goes to a file: a pipe that
            # nobody reads could fill and block the master.
            with self.output_path.open("wb") as output:
                self._proc = subprocess.Popen(
                    [binary, "-F", "-c", str(self.conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            try:
                self._wait_ready(port, deadline)
            except DovecotStartError as exc:
                self.stop()
                if "Address already in use" in str(exc) and attempt < 4:
                    continue
                raise
            self._port = port
            return

    def stop(self) -> None:
        """SIGTERM the master (it stops its children), SIGKILL what is left. Idempotent."""
        proc, self._proc, self._port = self._proc, None, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._kill_leftovers()

    def __enter__(self) -> DovecotInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- reading mail -------------------------------------------------------------------------

    def fetch_all(self, user: str) -> list[bytes]:
        """Every message in `user`'s INBOX, read over IMAP with a plaintext login."""
        with imaplib.IMAP4(self.host, self.imap_port, timeout=10) as imap:
            imap.login(user, self.users[user])
            imap.select("INBOX", readonly=True)
            _, data = imap.search(None, "ALL")
            messages: list[bytes] = []
            for number in data[0].split():
                _, parts = imap.fetch(number.decode(), "(BODY.PEEK[])")
                for part in parts:
                    if isinstance(part, tuple):
                        messages.append(part[1])
            imap.logout()
        return messages

    def wait_for_messages(self, user: str, count: int, timeout: float = 30.0) -> list[bytes]:
        """Poll the INBOX over IMAP until it holds `count` messages; the timeout bounds only a
        failure, whose message carries the Dovecot log."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.fetch_all(user)
            if len(messages) >= count:
                return messages
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(messages)} of {count} message(s) in {user}'s INBOX after "
                    f"{timeout:g}s; Dovecot log:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)\n"
        return "\n".join(text.splitlines()[-lines:]) + "\n"

    # -- internals ----------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        for directory in (self.run_dir, self.state_dir):
            directory.mkdir(mode=0o755, exist_ok=True)
        self.mail_dir.mkdir(exist_ok=True)
        os.chown(self.mail_dir, self.mail_uid, self.mail_gid)
        # passwd-file: user:{scheme}password:uid:gid::home  (the userdb fields used below)
        lines = [
            f"{user}:{{PLAIN}}{password}:{self.mail_uid}:{self.mail_gid}::"
            f"{self.mail_dir / user}::\n"
            for user, password in self.users.items()
        ]
        self.passwd_path.write_text("".join(lines))
        self.passwd_path.chmod(0o644)
        self.log_path.touch()

    def _write_config(self, port: int) -> None:
        self.conf_path.write_text(
            f"""# Written by tests/dovecot_instance.py for a private test instance.
base_dir = {self.run_dir}
state_dir = {self.state_dir}
instance_name = mailgate-test-{os.getpid()}-{port}
log_path = {self.log_path}
protocols = imap lmtp
listen = {LOOPBACK}
ssl = no
# Loopback only: a plaintext password is fine here (never on a public listener).
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = {self.mail_uid}
last_valid_uid = {self.mail_uid}
first_valid_gid = {self.mail_gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.passwd_path}
}}
userdb {{
  driver = passwd-file
  args = {self.passwd_path}
}}
service imap-login {{
  inet_listener imap {{
    address = {LOOPBACK}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service managesieve-login {{
  inet_listener sieve {{
    port = 0
  }}
}}
{self.lmtp_extra}
"""
        )

    def _wait_ready(self, port: int, deadline: float) -> None:
        last = "no attempt"
        while time.monotonic() < deadline:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                output = self.output_path.read_text(errors="replace")
                raise DovecotStartError(
                    f"dovecot exited with {proc.returncode}:\n{output}\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}"
                )
            if "Address already in use" in self.log_tail():
                raise DovecotStartError(f"port {port}: Address already in use")
            try:
                with socket.create_connection((LOOPBACK, port), timeout=2) as conn:
                    greeting = conn.recv(512)
                if greeting.startswith(b"* OK") and self.lmtp_socket.is_socket():
                    return
                last = f"greeting {greeting!r}, LMTP socket present: {self.lmtp_socket.exists()}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise DovecotStartError(
            f"Dovecot not ready on {LOOPBACK}:{port} ({last}); log:\n{self.log_tail()}"
        )

    def _pids(self) -> list[int]:
        """Processes of this instance: each has our config file on its command line or runs
        from our base_dir (Dovecot's children are started with `-c` or from base_dir)."""
        marker = os.fsencode(self.conf_path)
        base = os.fsencode(self.run_dir)
        pids: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                cwd = os.fsencode(os.readlink(entry / "cwd"))
                state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                if state in (b"Z", b"X"):
                    continue
                if marker in cmdline or cwd == base or cwd.startswith(base + b"/"):
                    pids.append(int(entry.name))
        return pids

    def _kill_leftovers(self) -> None:
        deadline = time.monotonic() + 5
        while self._pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
