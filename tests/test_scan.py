"""`mailgate scan` over many messages: files, folders, Maildirs, mbox files and stdin, streamed;
--jsonl and the summary; the exit status by the worst action; DNS as configured or off."""

from __future__ import annotations

import dataclasses
import io
import json
import mailbox
import re
import shutil
from pathlib import Path

import pytest
from dns_server import DnsTestServer
from harness import REPO
from test_cli import mailgate

from gateway.app import Gateway
from gateway.config import DnsSettings, load_settings
from gateway.dns import OfflineResolver
from gateway.scan import Envelope, Summary, messages, record, scan_message

SHIPPED = REPO / "config" / "gateway.toml"


def mail(subject: str, sender: str = "alice@example.net", extra: bytes = b"") -> bytes:
    return (
        f"From: Alice <{sender}>\nTo: Bob <bob@example.com>\nSubject: {subject}\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.net>\n".encode()
        + extra
        + b"\nHello Bob, the minutes of Tuesday's meeting are attached.\n"
    )


REJECTED = mail("two froms", extra=b"From: Bank <security@bank.example>\nFrom: x@example.org\n")


@pytest.fixture
def narrow(tmp_path: Path) -> Path:
    """The shipped install with the checks that need no DNS and no model (exact verdicts)."""
    root = tmp_path / "install"
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "rules", root / "rules")
    config = root / "config" / "gateway.toml"
    text, changed = re.subn(
        r"(?m)^order = \[.*\]$",
        'order = ["lists", "headers", "limits", "mime", "attachments"]',
        config.read_text(),
    )
    assert changed == 1
    config.write_text(text)
    return config


def labels(paths: list[str], max_size: int = 1 << 20, stdin: bytes = b"") -> list[str]:
    return [found.label for found in messages(paths, max_size, io.BytesIO(stdin))]


# -- finding messages ----------------------------------------------------------------------------


def test_folders_recursively_maildirs_and_mbox_files(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(mail("one"))
    (tmp_path / ".hidden").write_bytes(mail("skipped: a dot file"))
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.eml").write_bytes(mail("two"))
    maildir = tmp_path / "Maildir"
    for part in ("cur", "new", "tmp"):
        (maildir / part).mkdir(parents=True)
    (maildir / "cur" / "1:2,S").write_bytes(mail("three"))
    (maildir / "new" / "2").write_bytes(mail("four"))
    (maildir / "tmp" / "3").write_bytes(mail("skipped: delivery in progress"))
    (maildir / "dovecot-uidlist").write_bytes(b"3 V1 N4\n")  # not a message: outside cur/new
    (maildir / ".Sent" / "cur").mkdir(parents=True)  # a Maildir++ folder
    (maildir / ".Sent" / "new").mkdir()
    (maildir / ".Sent" / "cur" / "5").write_bytes(mail("five"))
    box = tmp_path / "z.mbox"
    box.write_bytes(b"From a@b Fri Nov 27 10:00:00 2026\n" + mail("six") + b"\n"
                    b"From b@c Fri Nov 27 10:01:00 2026\n" + mail("seven"))  # fmt: skip
    assert labels([str(tmp_path)]) == [
        str(maildir / ".Sent" / "cur" / "5"),
        str(maildir / "cur" / "1:2,S"),
        str(maildir / "new" / "2"),
        str(tmp_path / "a.eml"),
        str(sub / "b.eml"),
        f"{box}:1",
        f"{box}:2",
    ]


def test_mbox_is_split_as_python_mailbox_splits_it(tmp_path: Path) -> None:
    box = tmp_path / "box"
    box.write_bytes(
        b"From a@b Mon\n" + mail("one") + b"\n"
        b"From b@c Tue\n" + mail("two") + b">From quoted stays\n\n\n"
        b"From c@d Wed\n" + mail("three")
    )
    mine = [found.raw for found in messages([str(box)], 1 << 20, io.BytesIO())]
    reference = mailbox.mbox(box)
    theirs = [reference.get_bytes(key) for key in reference.iterkeys()]
    reference.close()
    assert mine == theirs and len(mine) == 3


def test_stdin_and_sizes_are_bounded(tmp_path: Path) -> None:
    big = mail("big") + b"x" * 5000
    (tmp_path / "big.eml").write_bytes(big)
    box = tmp_path / "box"
    box.write_bytes(b"From a@b\n" + big + b"\nFrom b@c\n" + mail("small"))
    found = list(messages(["-", str(tmp_path / "big.eml"), str(box)], 2000, io.BytesIO(big)))
    assert [(f.label, f.raw is None) for f in found] == [
        ("-", True),
        (str(tmp_path / "big.eml"), True),
        (f"{box}:1", True),
        (f"{box}:2", False),
    ]
    assert all("limits.max_message_size" in f.problem for f in found[:3])
    assert not any(f.unreadable for f in found)


# -- scanning ------------------------------------------------------------------------------------


async def test_dns_off_answers_nxdomain_and_sends_nothing(dns_server: DnsTestServer) -> None:
    settings = load_settings(SHIPPED)
    # served domains of its own: the test's example.net mail must not look like a TLD swap of them
    relay = dataclasses.replace(settings.relay, domains=("served.test",))
    resolver = OfflineResolver()
    gateway = Gateway.create(dataclasses.replace(settings, relay=relay), resolver=resolver)
    envelope = Envelope("alice@example.net", ("bob@served.test",), "192.0.2.1", "mx.example.net")
    scanned = await scan_message(gateway, "m", mail("offline").replace(b"\n", b"\r\n"), envelope)
    symbols = {f.symbol for f in scanned.verdict.findings}
    assert {"SPF_NONE", "DKIM_NONE", "DMARC_NO_RECORD"} <= symbols
    assert scanned.verdict.action.value == "relay"
    assert resolver.stats().queries == 0 and dns_server.queries == []
    await gateway.aclose()


async def test_scan_uses_the_configured_resolver(dns_server: DnsTestServer) -> None:
    dns_server.load({"example.net": [("TXT", "v=spf1 ip4:192.0.2.1 -all")]})
    settings = load_settings(SHIPPED)
    dns = DnsSettings(nameservers=(dns_server.host,), port=dns_server.port, timeout=2.0)
    gateway = Gateway.create(settings.__class__(**{**settings.__dict__, "dns": dns}))
    envelope = Envelope("alice@example.net", ("bob@example.com",), "192.0.2.1", "mx.example.net")
    scanned = await scan_message(gateway, "m", mail("online"), envelope)
    assert "SPF_PASS" in {f.symbol for f in scanned.verdict.findings}
    assert dns_server.count("example.net", "TXT") == 1
    await gateway.aclose()


async def test_forged_trace_fields_are_removed_as_serve_removes_them() -> None:
    """scan used to inspect a message with its forged `Authentication-Results: <our host>`
    still in it, which serve removes before any plugin reads the message."""
    settings = load_settings(SHIPPED)
    gateway = Gateway.create(settings, resolver=OfflineResolver())
    forged = b"Authentication-Results: mailgate.localhost; dmarc=pass header.from=example.net\n"
    raw = forged + mail("forged")
    envelope = Envelope("alice@example.net", ("bob@example.com",), "192.0.2.1", "mx.example.net")
    scanned = await scan_message(gateway, "m", raw, envelope)
    assert b"Authentication-Results" not in scanned.ctx.raw
    assert record(scanned)["size"] == len(mail("forged").replace(b"\n", b"\r\n"))
    await gateway.aclose()


def test_summary_counts_and_exit_status() -> None:
    summary = Summary()
    assert summary.exit_status() == 0
    summary.actions.update({"relay": 3, "quarantine": 1})
    summary.worst = 2
    assert summary.lines()[0] == "summary   4 messages: relay 3, quarantine 1"
    summary.unreadable = 1
    assert summary.exit_status() == 66  # an input that could not be read wins


# -- the command ---------------------------------------------------------------------------------


def test_many_messages_jsonl_summary_and_worst_exit_status(tmp_path: Path, narrow: Path) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "1.eml").write_bytes(mail("fine"))
    (folder / "2.eml").write_bytes(REJECTED)
    result = mailgate("--config", narrow, "scan", "--jsonl", folder, "-", cwd=tmp_path)
    assert result.returncode == 2, result.stderr.decode()  # the worst: quarantine
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["path"], r["action"]) for r in rows] == [
        (str(folder / "1.eml"), "relay"),
        (str(folder / "2.eml"), "tag"),  # 3 From fields: 5, past tag (4), under quarantine (6)
        ("-", "quarantine"),  # stdin was empty: an empty message (MSG_EMPTY, no headers)
    ]
    assert rows[0]["subject"] == "fine" and rows[0]["message_id"] == "<fine@example.net>"
    details = {f["symbol"]: f["detail"] for f in rows[1]["findings"]}
    assert details["HDR_FROM_MULTIPLE"] == "3 From fields"
    err = result.stderr.decode()
    assert (
        "summary   3 messages: relay 1, tag 1, quarantine 1" in err
    )  # stdout stays JSON lines only
    assert "symbols   " in err and "HDR_FROM_MULTIPLE 1 (33%)" in err


def test_many_messages_text_blocks_and_exit_by_action(tmp_path: Path, narrow: Path) -> None:
    box = tmp_path / "box"
    box.write_bytes(b"From a@b\n" + mail("fine") + b"\nFrom b@c\n" + mail("also fine"))
    result = mailgate("--config", narrow, "scan", box, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode().splitlines()
    assert out[0] == f"{box}:1  RELAY 0  subject fine"
    assert f"{box}:2  RELAY 0  subject also fine" in out
    assert out[-1].startswith("summary   2 messages: relay 2")
    quarantined = mail("no date").replace(b"Date: Fri", b"X-Date: Fri")
    quarantined = quarantined.replace(b"From: Alice", b"From: A <a@example.net>\nFrom: Alice")
    (tmp_path / "q.eml").write_bytes(quarantined)
    result = mailgate("--config", narrow, "scan", tmp_path / "q.eml", cwd=tmp_path)
    assert result.returncode == 2  # quarantine (6.5)
    assert b"verdict   QUARANTINE" in result.stdout


def test_json_is_for_one_message(tmp_path: Path, narrow: Path) -> None:
    box = tmp_path / "box"
    box.write_bytes(b"From a@b\n" + mail("one") + b"\nFrom b@c\n" + mail("two"))
    result = mailgate("--config", narrow, "scan", "--json", box, cwd=tmp_path)
    assert result.returncode == 64 and b"use --jsonl" in result.stderr


def test_configuration_error_is_exit_78(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[relay]\ndomains = 3\n")
    result = mailgate("--config", config, "scan", "--dns-off", "-", cwd=tmp_path)
    assert result.returncode == 78 and b"configuration error" in result.stderr
