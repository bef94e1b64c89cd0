"""The seed flow end to end, with the deployment guide's own Postfix and Dovecot settings.

client (smtplib) -> `mailgate serve` -> Postfix (Debian's package; the loopback listener of
config/postfix/master.cf, the main.cf lines of config/postfix/main.cf, the recipient table
config/postfix/vmailbox) -> LMTP (config/postfix/dovecot-lmtp.conf) -> Dovecot (Debian's
dovecot-lmtpd) -> IMAP (dovecot-imapd) -> the test, logged in as the user.

The guide's files are used verbatim, with only the ports and paths their headers name replaced,
so the README cannot describe a setup that was not tested. Every process is private to the test
(its own config, queue, sockets and loopback ports) and stopped afterwards, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from dns_server import running_dns_server
from dovecot_instance import DovecotInstance, find_dovecot
from harness import LOOPBACK, REPO, message
from postfix_instance import _MASTER_CF, PostfixInstance, find_postfix
from test_signals import _wait_for_banner, mailgate_command, write_served_config

pytestmark = pytest.mark.postfix

GUIDE = REPO / "config" / "postfix"
GUIDE_PORT = "10025"  # master.cf's loopback listener; the test's Postfix gets a free port
GUIDE_CONFIG_DIR = "/etc/postfix/"  # main.cf's recipient table folder
GUIDE_QUEUE_DIR = "/var/spool/postfix/"  # dovecot-lmtp.conf's socket folder

# Settings of the test's base main.cf that are what the guide is about: left out, so that only
# the guide's lines (or Postfix's defaults) decide them.
_GUIDE_DECIDES = re.compile(
    r"virtual_.*|mynetworks|smtpd_(relay|recipient)_restrictions|smtpd_reject_unlisted_recipient"
    r"|smtpd_authorized_x(forward|client)_hosts"
)


def guide_file(name: str) -> str:
    return (GUIDE / name).read_text(encoding="utf-8")


def substituted(text: str, token: str, value: str, file: str) -> str:
    """`text` with `token` replaced; the token must be in a setting, not only in comments."""
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert any(token in line for line in settings), f"config/postfix/{file} lost {token!r}"
    return text.replace(token, value)


def guide_addresses() -> list[str]:
    """The addresses of config/postfix/vmailbox, the guide's recipient table."""
    lines = guide_file("vmailbox").splitlines()
    return [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]


class GuidePostfix(PostfixInstance):
    """The private Postfix of the fixture, configured by the deployment guide's files.

    Its base main.cf keeps only what makes it a private loopback instance (queue, log, no way
    out); the guide's main.cf lines follow verbatim, and its master.cf listener replaces the
    fixture's. Mail goes to Dovecot over LMTP, as in the guide.
    """

    def _main_cf(self) -> dict[str, str]:
        base = super()._main_cf()
        return {key: value for key, value in base.items() if not _GUIDE_DECIDES.fullmatch(key)}

    def _write_config(self, port: int) -> None:
        super()._write_config(port)
        main_cf = substituted(
            guide_file("main.cf"), GUIDE_CONFIG_DIR, f"{self.config_dir}/", "main.cf"
        )
        services = [line for line in _MASTER_CF.splitlines() if not line.startswith("{listen}")]
        services.append("lmtp      unix  -       -       n       -       -       lmtp")
        master_cf = substituted(guide_file("master.cf"), GUIDE_PORT, str(port), "master.cf")
        with (self.config_dir / "main.cf").open("a", encoding="utf-8") as out:
            out.write("\n# --- config/postfix/main.cf ---\n" + main_cf)
        (self.config_dir / "master.cf").write_text(
            "\n".join(services) + "\n\n# --- config/postfix/master.cf ---\n" + master_cf,
            encoding="utf-8",
        )
        shutil.copyfile(GUIDE / "vmailbox", self.config_dir / "vmailbox")
        postmap = Path(find_postfix() or "postfix").with_name("postmap")
        subprocess.run(
            [str(postmap), "-c", str(self.config_dir), f"hash:{self.config_dir}/vmailbox"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for name in ("main.cf", "master.cf"):  # not "too new" (see PostfixInstance)
            os.utime(self.config_dir / name, (0, 0))


@dataclass
class SeedFlow:
    """The running chain: mailgate's port, its config (for the CLI), Postfix, Dovecot."""

    port: int
    config: Path
    log: Path
    postfix: GuidePostfix
    dovecot: DovecotInstance
    user: str

    def send(self, body: bytes, subject: str) -> str:
        """Send one message to the user through mailgate; return the final reply text."""
        with smtplib.SMTP(
            LOOPBACK, self.port, local_hostname="client.example.net", timeout=60
        ) as c:
            c.ehlo()
            c.mail("sender@example.net")
            code, text = c.rcpt(self.user)
            assert code == 250, (code, text)
            code, text = c.data(message(subject=subject, to=self.user, body=body))
            assert code == 250, (code, text, self.log_text())
            return text.decode()

    def mailgate(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One CLI command with the service's config, as an admin would run it."""
        return subprocess.run(
            [*mailgate_command(), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _unavailable(reason: str) -> None:
    """Skip where the packages are absent, but fail in CI: .ci/run installs them."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI is set, and .ci/run is supposed to provide it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def guide_postfix() -> Iterator[GuidePostfix]:
    """A started private Postfix configured by config/postfix/, in a scratch directory of its
    own: not tmp_path, since the daemons must reach their files once they dropped root."""
    if find_postfix() is None:
        _unavailable("postfix is not installed (apt-get install postfix)")
    if os.geteuid() != 0:
        _unavailable("a private Postfix instance can only be started as root")
    scratch = Path(tempfile.mkdtemp(prefix="mailgate-seed-"))
    try:
        scratch.chmod(0o711)
        with GuidePostfix(scratch / "postfix") as postfix:
            yield postfix
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _spawn_mailgate(
    stack: contextlib.ExitStack[bool | None], tmp_path: Path, config: Path, port: int
) -> Path:
    """`mailgate --config CONFIG serve` (no --dev: the real service), killed when `stack`
    closes; returns its log file once it greets on `port`."""
    log = tmp_path / "mailgate.log"
    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*mailgate_command(), "--config", str(config), "serve"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )

    def stop() -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)

    stack.callback(stop)
    _wait_for_banner(proc, port, log)
    return log


@pytest.fixture
def seed_flow(guide_postfix: GuidePostfix, tmp_path: Path) -> Iterator[SeedFlow]:
    """Dovecot behind the guide's Postfix, and `mailgate serve` in front of it; each stopped
    afterwards in reverse order (mailgate first), even when starting the next one failed."""
    if find_dovecot() is None:
        _unavailable("Dovecot is not installed (apt-get install dovecot-lmtpd dovecot-imapd)")
    users = {address: secrets.token_hex(8) for address in guide_addresses()}
    lmtp_conf = substituted(
        guide_file("dovecot-lmtp.conf"),
        GUIDE_QUEUE_DIR,
        f"{guide_postfix.queue_dir}/",
        "dovecot-lmtp.conf",
    )
    dovecot = DovecotInstance(
        guide_postfix.scratch_dir.parent / "dovecot",
        users=users,
        lmtp_socket=guide_postfix.queue_dir / "private" / "dovecot-lmtp",
        lmtp_extra=lmtp_conf,
    )
    with contextlib.ExitStack() as stack:
        dns = stack.enter_context(running_dns_server())
        stack.enter_context(dovecot)
        config, port = write_served_config(
            tmp_path,
            [
                ("delivery", "port", str(guide_postfix.port)),
                ("relay", "domains", json.dumps(sorted({a.split("@")[1] for a in users}))),
            ],
            # Every DNS check asks the loopback server (NXDOMAIN for all): nothing leaves.
            extra=f'\n[dns]\nnameservers = ["{LOOPBACK}"]\nport = {dns.port}\n',
        )
        log = _spawn_mailgate(stack, tmp_path, config, port)
        yield SeedFlow(port, config, log, guide_postfix, dovecot, guide_addresses()[0])


def test_the_loopback_listener_is_no_open_relay(guide_postfix: GuidePostfix) -> None:
    """mailgate connects from 127.0.0.1, which is in mynetworks: the guide's listener must still
    refuse other domains (no permit_mynetworks there), so even a client that reaches it directly
    (any local process) cannot relay through Postfix."""
    with smtplib.SMTP(*guide_postfix.address, local_hostname="local.example.net") as c:
        c.ehlo()
        assert b"XFORWARD" in (c.ehlo_resp or b"")  # trusted: 127.0.0.0/8
        c.mail("sender@example.net")
        code, text = c.rcpt("someone@example.org")
    assert code == 554, text
    assert b"Relay access denied" in text, text


def parsed(raw: bytes) -> Message:
    return message_from_bytes(raw)


def by_subject(messages: list[bytes], subject: str) -> list[Message]:
    return [m for m in map(parsed, messages) if m["Subject"] == subject]


def queue_id(reply: str) -> str:
    found = re.search(r"id=([A-Za-z0-9]+)", reply)
    assert found, reply
    return found.group(1)


def test_client_to_imap_through_mailgate_postfix_and_dovecot(seed_flow: SeedFlow) -> None:
    # 1. A clean message arrives in the INBOX, with mailgate's fields, the body intact.
    reply = seed_flow.send(b"The seed flow, end to end.\r\n", subject="clean")
    gateway_id = queue_id(reply)
    [clean] = by_subject(seed_flow.dovecot.wait_for_messages(seed_flow.user, 1), "clean")
    assert clean.get_payload() == "The seed flow, end to end.\r\n"
    assert clean["X-Mailgate-ID"] == gateway_id
    assert clean["X-Mailgate-Action"] == "relay"
    assert clean["X-Mailgate-Score"] is not None
    assert clean["Delivered-To"] == seed_flow.user  # Dovecot's LMTP stored it for that user
    received = clean.get_all("Received") or []
    assert any("(mailgate" in hop for hop in received), received
    assert any("with LMTP" in hop for hop in received), received

    # 2. An address the recipient table lacks: Postfix's 550 at RCPT, passed on by mailgate
    #    while the client is still connected.
    domain = seed_flow.user.split("@")[1]
    with smtplib.SMTP(
        LOOPBACK, seed_flow.port, local_hostname="client.example.net", timeout=60
    ) as c:
        c.ehlo()
        c.mail("sender@example.net")
        code, text = c.rcpt(f"nobody-{secrets.token_hex(3)}@{domain}")
    assert code == 550, text
    assert text.startswith(b"5.1.1 delivery server:"), text
    assert b"User unknown in virtual mailbox table" in text, text

    # Postfix logged the client and the queue id that mailgate reported (XFORWARD, trusted on
    # loopback), under the listener's own syslog_name: one grep follows the message through both.
    line = seed_flow.postfix.wait_for_log(f"orig_queue_id={gateway_id}", timeout=30)
    assert "postfix/mailgate/smtpd" in line, line
    assert "orig_client=unknown[127.0.0.1]" in line, line

    # 3. A message the shipped policy quarantines (a password form: HTML_PASSWORD_FIELD) is
    #    accepted but not delivered ...
    phishing = (
        b'<html><body><form action="login">Verify your account:'
        b'<input type="password" name="pw"></form></body></html>\r\n'
    )
    held_reply = seed_flow.send(phishing, subject="held")
    assert "Message accepted" in held_reply, held_reply
    listed = seed_flow.mailgate("quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)["entries"]
    [entry] = [e for e in entries if e["subject"] == "held"]
    assert "HTML_PASSWORD_FIELD" in [f["symbol"] for f in entry["findings"]], entry
    assert by_subject(seed_flow.dovecot.fetch_all(seed_flow.user), "held") == []

    # ... until released: then it goes through Postfix to Dovecot like any other.
    released = seed_flow.mailgate("quarantine", "release", str(entry["id"]))
    assert released.returncode == 0, released.stdout + released.stderr
    messages = seed_flow.dovecot.wait_for_messages(seed_flow.user, 2)
    [held] = by_subject(messages, "held")
    assert b'type="password"' in held.get_payload(decode=True)
    assert held["Delivered-To"] == seed_flow.user
    assert held["X-Mailgate-ID"] == queue_id(held_reply) == entry["id"]
