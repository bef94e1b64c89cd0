"""A private, throw-away Postfix instance for end-to-end tests.

The gateway sits in front of a real MTA in production, so the end-to-end tests deliver to a real
Postfix (Debian's package) rather than to a hand-written stub: the reply codes, the XFORWARD and
XCLIENT handling and the Received header are then the ones a deployment would see.

Each `PostfixInstance` is self-contained: its own config_directory (main.cf, master.cf), queue
directory, data directory, Maildirs and log file, all inside one scratch directory, and one
SMTP listener on 127.0.0.1 on a port picked at start. Nothing in /etc/postfix or
/var/spool/postfix is read or written, so several instances (and a system Postfix) can run side
by side. Mail is only ever accepted for `example.com` and delivered locally; every other
destination is refused at RCPT and the outbound transports are `error:`, so nothing can leave
the loopback interface.

Running it needs root: Postfix's master must start as root to switch to the `postfix` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["PostfixInstance", "PostfixStartError", "find_postfix"]

DOMAIN = "example.com"
"""The only domain the instance accepts mail for."""

DEFAULT_USERS: tuple[str, ...] = ("user", "alice", "bob")
"""Local parts with a mailbox; any other `@example.com` recipient gets a 550 at RCPT."""

LOOPBACK = "127.0.0.1"

# Settings that keep the instance on loopback and off the network; `extra_main_cf` may not
# override them, so a test cannot turn the fixture into something that sends mail out.
_PROTECTED_SETTINGS = frozenset(
    {
        "inet_interfaces",
        "inet_protocols",
        "relayhost",
        "default_transport",
        "relay_transport",
        "smtp_dns_support_level",
        "lmtp_dns_support_level",
        "queue_directory",
        "data_directory",
        "maillog_file",
        "maillog_file_prefixes",
        "virtual_mailbox_base",
    }
)

_LOCAL_PART = re.compile(r"[a-z0-9][a-z0-9._+-]*")

_FATAL = re.compile(r"postfix/[\w./-]+\[\d+\]: (fatal|panic): |bad command startup").search

# Every daemon runs unchrooted ("n" in the chroot column): a chroot would need copies of
# /etc/services, /etc/resolv.conf etc. inside the queue directory, which Debian only prepares for
# the system instance. postlogd writes `maillog_file` (Postfix >= 3.4) so tests can read the log
# without a syslog daemon.
_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixStartError(RuntimeError):
    """Postfix did not come up; the message carries the command output and the mail log."""


def find_postfix() -> str | None:
    """Return the path of the `postfix` command, or None when Postfix is not installed.

    /usr/sbin is searched too because it is often missing from a non-root PATH.
    """
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("postfix", path=search)


def _free_port() -> int:
    """Ask the kernel for a free loopback port.

    There is a window between closing this probe socket and Postfix binding the port; `start`
    covers it by retrying with a new port when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _searchable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether a process running as uid/gid (no supplementary groups) can traverse `path`."""
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


class PostfixInstance:
    """A private Postfix listening on 127.0.0.1:`port`, delivering example.com to Maildirs.

    Layout inside `scratch_dir`: `etc/` (main.cf, master.cf), `spool/` (queue_directory),
    `data/` (data_directory), `mail/<user>/` (Maildirs) and `maillog` (the log file).

    Use `start()`/`stop()` or the instance as a context manager. `port` is only known after
    `start()`, since a free port is picked then.
    """

    def __init__(
        self,
        scratch_dir: Path | str,
        *,
        users: Sequence[str] = DEFAULT_USERS,
        start_timeout: float = 20.0,
        extra_main_cf: Mapping[str, str] | None = None,
        mailbox_owner: str = "nobody",
    ) -> None:
        """Prepare (but do not start) an instance rooted at `scratch_dir`.

        `users` are the local parts of example.com that have a mailbox. `extra_main_cf` adds or
        overrides main.cf settings (e.g. `message_size_limit`), except those that keep the
        instance on loopback. `mailbox_owner` is the account the virtual(8) agent delivers as:
        Postfix refuses to deliver as root, so it must be an unprivileged user.

        The scratch directory and all its ancestors must be searchable by that account and by
        the `postfix` account, because the daemons open the Maildirs and data directory after
        dropping root. pytest's `tmp_path` is not (its base is mode 0700), which is why the
        `postfix` fixture makes its own directory with `tempfile.mkdtemp` and mode 0711.
        """
        self.scratch_dir = Path(scratch_dir).resolve()
        self.config_dir = self.scratch_dir / "etc"
        self.queue_dir = self.scratch_dir / "spool"
        self.data_dir = self.scratch_dir / "data"
        self.mail_dir = self.scratch_dir / "mail"
        self.log_path = self.scratch_dir / "maillog"
        self.host = LOOPBACK
        self.domain = DOMAIN
        self.users: tuple[str, ...] = tuple(users)
        self.start_timeout = start_timeout
        self._extra = dict(extra_main_cf or {})
        self._port: int | None = None

        for local in self.users:
            if not _LOCAL_PART.fullmatch(local):
                raise ValueError(f"unsupported local part for a test mailbox: {local!r}")
        for key in self._extra:
            if key in _PROTECTED_SETTINGS:
                raise ValueError(f"main.cf setting {key!r} is fixed by PostfixInstance")
        owner = pwd.getpwnam(mailbox_owner)
        if owner.pw_uid == 0:
            raise ValueError("mailbox_owner must not be root: virtual(8) refuses uid 0")
        self.mailbox_uid = owner.pw_uid
        self.mailbox_gid = owner.pw_gid

    # -- public API ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The SMTP port on 127.0.0.1; only valid after `start()`."""
        if self._port is None:
            raise RuntimeError("PostfixInstance has not been started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """`(host, port)`, ready for smtplib/aiosmtplib or the gateway's next-hop setting."""
        return (self.host, self.port)

    @property
    def running(self) -> bool:
        """Whether `start()` succeeded and `stop()` has not been called since."""
        return self._port is not None

    def start(self) -> None:
        """Write the configuration, run `postfix -c CONFDIR start` and wait for the 220 banner.

        Raises `PostfixStartError` (with the command output and the log) if Postfix is not
        answering within `start_timeout` seconds. A port lost to another process between
        picking and binding it is retried with a fresh port.
        """
        if self._port is not None:
            raise RuntimeError("PostfixInstance is already running")
        postfix = find_postfix()
        if postfix is None:
            raise PostfixStartError(
                "the postfix command is not installed (apt-get install postfix)"
            )
        if os.geteuid() != 0:
            raise PostfixStartError("a private Postfix instance must be started as root")
        self._prepare_dirs()
        deadline = time.monotonic() + self.start_timeout
        attempts = 0
        while True:
            attempts += 1
            port = _free_port()
            self._write_config(port)
            log_offset = self._log_size()
            try:
                self._start_once(postfix, port, deadline, log_offset)
            except PostfixStartError as exc:
                self._shutdown(postfix)
                lost_port = "Address already in use" in str(exc) + self._read_log_from(log_offset)
                if lost_port and attempts < 5:
                    continue
                raise
            self._port = port
            return

    def stop(self) -> None:
        """Run `postfix -c CONFDIR stop`, then make sure no process of this instance is left.

        Safe to call more than once and on an instance that never started.
        """
        self._shutdown(find_postfix())
        self._port = None

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def maildir(self, user: str) -> Path:
        """The Maildir of `user` (a local part or `local@example.com`)."""
        local, _, domain = user.partition("@")
        if domain and domain.lower() != self.domain:
            raise ValueError(f"{user!r} is not in {self.domain}")
        if local not in self.users:
            raise ValueError(f"{user!r} has no mailbox; known users: {', '.join(self.users)}")
        return self.mail_dir / local

    def delivered(self, user: str) -> list[bytes]:
        """The messages in `user`'s Maildir `new/` right now, in delivery order.

        Delivery order need not be submission order: Postfix delivers messages in parallel.

        The files are as Postfix stored them: Return-Path, Delivered-To and Received headers
        prepended, and LF line endings (Postfix converts CRLF when it queues a message).
        """
        new = self.maildir(user) / "new"
        try:
            entries = list(new.iterdir())
        except FileNotFoundError:  # virtual(8) creates the Maildir on first delivery
            return []
        # Maildir names start with the delivery time in seconds; the mtime breaks ties.
        entries.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in entries]

    def wait_for_delivery(self, user: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        """Poll `user`'s Maildir until it holds at least `count` messages; return them all.

        Delivery is asynchronous (the SMTP 250 only means "queued"), hence the polling. Raises
        `TimeoutError` with the tail of the mail log if `count` is not reached in time.
        Messages only ever land in `new/` via rename, so a file seen there is complete.
        """
        deadline = time.monotonic() + timeout
        while True:
            messages = self.delivered(user)
            if len(messages) >= count:
                return messages
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(messages)} of {count} message(s) delivered to {user} after "
                    f"{timeout:.1f}s; mail log tail:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def read_log(self) -> str:
        """The whole Postfix log of this instance so far ('' before anything was logged)."""
        return self._read_log_from(0)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Poll the log until it contains `text`; return the first line that does.

        postlogd writes asynchronously, so a line may show up a moment after the SMTP reply.
        """
        deadline = time.monotonic() + timeout
        while True:
            for line in self.read_log().splitlines():
                if text in line:
                    return line
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{text!r} not logged after {timeout:.1f}s; mail log tail:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def pids(self) -> list[int]:
        """Live (non-zombie) processes that belong to this instance; empty after `stop()`.

        Postfix passes MAIL_CONFIG=<config_directory> to every daemon it spawns, so the
        environment identifies our processes exactly, even after master died and they were
        re-parented.
        """
        marker = b"MAIL_CONFIG=" + os.fsencode(self.config_dir)
        pids: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                # Field 3 of /proc/PID/stat is the state; the command name before it is in
                # parentheses and may contain spaces.
                state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue  # exited meanwhile, or not ours to read
            if state not in (b"Z", b"X"):
                pids.append(int(entry.name))
        return pids

    # -- internals ----------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        """Create the directories Postfix expects to exist, and check they are reachable."""
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(exist_ok=True)
        # The postfix command chdirs to queue_directory first, so it must exist (root-owned,
        # as Postfix wants it); its subdirectories and the data directory are then created by
        # `postfix start` itself (post-install create-missing) with the owners it needs: a
        # data_directory pre-created as root makes master fail with "open lock file ...
        # Permission denied".
        self.queue_dir.mkdir(mode=0o755, exist_ok=True)
        self.mail_dir.mkdir(exist_ok=True)
        os.chown(self.mail_dir, self.mailbox_uid, self.mailbox_gid)
        postfix_user = pwd.getpwnam("postfix")
        accounts = {
            "mailbox owner": (self.mailbox_uid, self.mailbox_gid),
            "postfix": (postfix_user.pw_uid, postfix_user.pw_gid),
        }
        for directory in (self.scratch_dir, *self.scratch_dir.parents):
            for who, (uid, gid) in accounts.items():
                if not _searchable_by(directory, uid, gid):
                    raise PostfixStartError(
                        f"{directory} is not searchable by the {who} account (uid {uid}), so "
                        f"Postfix cannot reach {self.scratch_dir}; use a scratch directory "
                        "whose ancestors are all world-searchable (e.g. tempfile.mkdtemp() "
                        "chmod 0o711; pytest's tmp_path is under a 0700 directory)"
                    )

    def _main_cf(self) -> dict[str, str]:
        mailboxes = ", ".join(f"{u}@{self.domain}={u}/" for u in self.users)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            # Logging to a file needs postlogd (master.cf) and a whitelisted path prefix.
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.scratch_dir),
            "syslog_name": "postfix",
            # A fixed name: no gethostname()/DNS lookups, and no accidental local domain.
            "myhostname": "mx.postfix-test.invalid",
            "mydomain": "postfix-test.invalid",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            # Loopback only, IPv4 only, no way out.
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "",
            "default_transport": "error:the test Postfix delivers nothing off this host",
            "relay_transport": "error:the test Postfix delivers nothing off this host",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            # Only example.com, even from mynetworks (no permit_mynetworks): anything else is
            # 554 "Relay access denied" at RCPT.
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "smtpd_reject_unlisted_recipient": "yes",
            # Let the gateway pass on the real client identity.
            "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            # Tests provoke errors on purpose; do not make them wait for the tarpit.
            "smtpd_error_sleep_time": "0",
            # Virtual mailbox delivery to Maildirs (trailing '/' in the map) as an unprivileged
            # user: we run as root, and Postfix never delivers as root.
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": f"inline:{{ {mailboxes} }}",
            "virtual_uid_maps": f"static:{self.mailbox_uid}",
            "virtual_gid_maps": f"static:{self.mailbox_gid}",
            "virtual_minimum_uid": str(min(self.mailbox_uid, 100)),
            # A delivery that failed temporarily is retried within seconds, not minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "biff": "no",
            "readme_directory": "no",
        }
        settings.update(self._extra)
        return settings

    def _write_config(self, port: int) -> None:
        main_cf = "".join(f"{key} = {value}\n" for key, value in self._main_cf().items())
        (self.config_dir / "main.cf").write_text(
            "# Written by tests/postfix_instance.py for a private test instance.\n" + main_cf
        )
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(listen=f"{LOOPBACK}:{port}"))
        # Postfix re-reads a main.cf whose mtime is not at least a second in the past, pausing
        # 300 ms each time ("let it cool down"), which costs ~2 s on every start. Back-date it.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))

    def _shutdown(self, postfix: str | None) -> None:
        """Stop the way Postfix wants to be stopped, then enforce it.

        `postfix stop` is skipped when nothing runs: like every Postfix error path, its "not
        running" failure sleeps a second before exiting.
        """
        if postfix is not None and self.pids():
            subprocess.run(
                [postfix, "-c", str(self.config_dir), "stop"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )
        # `postfix stop` signals master and returns; children exit on their own shortly after.
        self._kill_leftovers(grace=5.0)

    def _start_once(self, postfix: str, port: int, deadline: float, log_offset: int) -> None:
        """One start attempt: `postfix start`, then wait for a 220 greeting on `port`."""
        cmd = [postfix, "-c", str(self.config_dir), "start"]
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 0.1),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise self._start_error(f"{' '.join(cmd)} did not return in time", exc) from None
        if proc.returncode != 0:
            raise self._start_error(f"{' '.join(cmd)} exited with {proc.returncode}", proc)
        last_error = "no attempt"
        while time.monotonic() < deadline:
            # master is up, but smtpd only starts on the first connection: a bad setting shows
            # as a daemon's "fatal:" line, and waiting any longer would not help.
            fatal = [line for line in self._read_log_from(log_offset).splitlines() if _FATAL(line)]
            if fatal:
                raise self._start_error(f"a daemon failed: {fatal[0]}", proc)
            try:
                banner = self._read_banner(port, timeout=min(0.5, deadline - time.monotonic()))
            except OSError as exc:
                last_error = repr(exc)
            else:
                if banner.startswith(b"220"):
                    return
                last_error = f"unexpected greeting {banner!r}"
            time.sleep(0.05)
        raise self._start_error(f"no 220 greeting on {LOOPBACK}:{port} ({last_error})", proc)

    @staticmethod
    def _read_banner(port: int, timeout: float) -> bytes:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as conn:
            banner = conn.recv(512)
            with contextlib.suppress(OSError):
                conn.sendall(b"QUIT\r\n")
                conn.recv(512)
        return banner

    def _start_error(
        self,
        what: str,
        result: subprocess.CompletedProcess[str] | subprocess.TimeoutExpired,
    ) -> PostfixStartError:
        def text(value: str | bytes | None) -> str:
            if isinstance(value, bytes):
                return value.decode(errors="replace")
            return value or ""

        return PostfixStartError(
            f"Postfix did not start: {what} (start_timeout={self.start_timeout:g}s)\n"
            f"--- stdout ---\n{text(result.stdout)}--- stderr ---\n{text(result.stderr)}"
            f"--- {self.log_path} ---\n{self._log_tail()}"
        )

    def _kill_leftovers(self, grace: float) -> None:
        """Wait up to `grace` s for this instance's processes to exit, then SIGKILL the rest."""
        deadline = time.monotonic() + grace
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            end = time.monotonic() + 2.0
            while self.pids() and time.monotonic() < end:
                time.sleep(0.05)
        left = self.pids()
        if left:
            raise RuntimeError(f"Postfix processes {left} of {self.config_dir} survived SIGKILL")

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _read_log_from(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 40) -> str:
        tail = self.read_log().splitlines()[-lines:]
        return "\n".join(tail) + "\n" if tail else "(empty)\n"
