"""rules/attachments.toml: loading, validation errors with file/key/line, per-domain exceptions,
and the attachments plugin's verdicts through the chain and over SMTP."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from pathlib import Path

import aiosmtplib
import pytest
from harness import REPO, GatewayFactory, RecordingSink, make_settings, message
from mime_samples import OLETOOLS, tiny_pe, with_attachment, zip_of

from gateway.config import PluginSettings, Settings
from gateway.mime.filetypes import FileFacts
from gateway.mime.policy import AttachmentPolicy
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins.attachments import AttachmentInspection
from gateway.plugins.mime import MimeStructure
from gateway.policy import load_rules
from gateway.tomlfile import ConfigErrors
from gateway.verdict import Action, Finding


def _rules(tmp_path: Path, attachments: str | None) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    if attachments is None:
        (rules / "attachments.toml").unlink()
    else:
        (rules / "attachments.toml").write_text(attachments)
    return rules


EXE = FileFacts("1.2", "setup.exe", "exe", "executable", "application/x-dosexec", 500, 0)
ZIP_LOCKED = FileFacts("1.2", "a.zip", "zip", "archive", "application/zip", 500, 0, encrypted=True)
MACRO_DOC = FileFacts(
    "1.2", "a.xlsm", "xlsm", "office", "application/vnd.ms-excel", 9, 0, macros=True
)


def test_shipped_rules_load_with_the_attachment_policy() -> None:
    rules = load_rules(REPO / "rules")
    policy = rules.attachments
    assert "executable" in policy.block_families and "exe" in policy.block_extensions
    assert [f.symbol for f in policy.decide([EXE], "a@b.example", ["c@d.example"])] == [
        "ATT_POLICY_REJECT"
    ]
    assert [f.symbol for f in policy.decide([ZIP_LOCKED, MACRO_DOC], None, [])] == [
        "ATT_POLICY_QUARANTINE"
    ]


def test_rules_without_the_file_get_the_defaults(tmp_path: Path) -> None:
    rules = load_rules(_rules(tmp_path, None))
    assert rules.attachments == AttachmentPolicy()


def test_exceptions_by_sender_or_by_every_recipient(tmp_path: Path) -> None:
    text = (
        '[[exceptions]]\nsenders = ["build.partner.example"]\nallow_families = ["executable"]\n'
        'allow_extensions = ["exe"]\n\n'
        '[[exceptions]]\nrecipients = ["it.example.com", ".lab.example.com"]\n'
        'allow_families = ["executable"]\nallow_extensions = ["exe"]\nallow_encrypted = true\n'
    )
    policy = load_rules(_rules(tmp_path, text)).attachments
    assert policy.decide([EXE], "ci@build.partner.example", ["x@example.com"]) == []
    assert (
        policy.decide([EXE], "x@other.example", ["a@it.example.com", "b@x.lab.example.com"]) == []
    )
    mixed = policy.decide([EXE], "x@other.example", ["a@it.example.com", "b@example.com"])
    assert [f.symbol for f in mixed] == ["ATT_POLICY_REJECT"]
    assert policy.decide([ZIP_LOCKED], "x@y.example", ["a@it.example.com"]) == []


def test_actions_and_sizes(tmp_path: Path) -> None:
    text = (
        '[block]\nfamilies = []\nextensions = ["exe"]\naction = "quarantine"\n'
        '[encrypted]\narchives = "reject"\n[macros]\naction = "score"\n'
        '[sizes]\nmax_attachment_bytes = 100\naction = "quarantine"\n'
    )
    policy = load_rules(_rules(tmp_path, text)).attachments
    found = {f.symbol: f.detail for f in policy.decide([EXE, ZIP_LOCKED, MACRO_DOC], None, [])}
    assert set(found) == {"ATT_POLICY_QUARANTINE", "ATT_POLICY_REJECT"}
    assert (
        "setup.exe" in found["ATT_POLICY_QUARANTINE"] and "bytes" in found["ATT_POLICY_QUARANTINE"]
    )
    assert "encrypted" in found["ATT_POLICY_REJECT"]


def test_errors_name_file_key_and_line(tmp_path: Path) -> None:
    text = (
        "# comment\n"
        "[block]\n"
        'families = ["executable", "malware"]\n'
        'action = "explode"\n'
        "[macros]\n"
        "action = 3\n"
        "[sizes]\n"
        "max_attachment_bytes = -1\n"
        "[[exceptions]]\n"
        'senders = ["ok.example"]\n'
        "[[exceptions]]\n"
        'senders = ["user@bad.example"]\n'
        'allow_macros = "yes"\n'
        "[whatever]\n"
    )
    with pytest.raises(ConfigErrors) as caught:
        load_rules(_rules(tmp_path, text))
    messages = [str(e) for e in caught.value.errors]
    path = str(tmp_path / "rules" / "attachments.toml")

    def has(line: int, key: str) -> bool:
        return any(m.startswith(f"{path}:{line}: key '{key}'") for m in messages)

    assert has(3, "block.families"), messages
    assert has(4, "block.action"), messages
    assert has(6, "macros.action"), messages
    assert has(8, "sizes.max_attachment_bytes"), messages
    assert has(12, "exceptions[1].senders"), messages  # the line of the key itself
    assert has(13, "exceptions[1].allow_macros"), messages
    assert has(14, "whatever"), messages


def _settings(tmp_path: Path, sink_port: int = 1) -> Settings:
    return make_settings(tmp_path, sink_port, plugins=PluginSettings(order=("mime", "attachments")))


async def _findings(settings: Settings, raw: bytes, sender: str = "a@x.example") -> list[Finding]:
    ctx = MessageContext(
        client=ClientInfo(ip="192.0.2.1", port=1),
        rules=load_rules(settings.rules_dir),
        settings=settings,
        raw=raw,
        mail_from=sender,
        rcpt_tos=["bob@example.com"],
    )
    services = Services(settings)
    found = list(await MimeStructure(services).check(Phase.DATA, ctx))
    found += await AttachmentInspection(services).check(Phase.DATA, ctx)
    assert ctx.message.mime_report is not None  # parsed once, shared: the second plugin reused it
    return found


async def test_plugins_decide_through_rules(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    rules = load_rules(settings.rules_dir)
    found = await _findings(settings, with_attachment(zip_of({"setup.exe": tiny_pe()}), "a.zip"))
    verdict = rules.decide(found)
    assert verdict.action is Action.REJECT and verdict.reply.code == 554
    assert {"ATT_EXECUTABLE", "ATT_POLICY_REJECT"} <= {f.symbol for f in found}
    clean = await _findings(settings, message())
    assert rules.decide(clean).action is Action.RELAY
    if OLETOOLS.is_dir():
        locked = (OLETOOLS / "msodde" / "dde-test-from-office2016.doc.zip").read_bytes()
        found = await _findings(settings, with_attachment(locked, "invoice.zip"))
        assert rules.decide(found).action is Action.QUARANTINE


async def test_a_unix_shell_script_is_relayed_a_windows_script_refused(tmp_path: Path) -> None:
    """Lists mail shell scripts daily (no name extension, libmagic: text/x-shellscript); they run
    only from a shell. A batch file or a .js name is what a double click runs."""
    settings = _settings(tmp_path)
    rules = load_rules(settings.rules_dir)
    script = b'#!/bin/sh\nset -e\nfor f in *.log; do gzip "$f"; done\n'
    found = await _findings(settings, with_attachment(script, "rotate-logs", "text/plain"))
    assert rules.decide(found).action is Action.RELAY, [f.symbol for f in found]
    assert "ATT_SCRIPT" not in {f.symbol for f in found}
    batch = b"@echo off\r\npowershell -enc SQBFAFgA\r\n"
    for name in ("run.bat", "invoice.js"):
        found = await _findings(settings, with_attachment(batch, name, "text/plain"))
        assert rules.decide(found).action is Action.REJECT, (name, [f.symbol for f in found])


async def test_unscannable_message_is_quarantined(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    body = "".join(
        f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n' for i in range(60)
    )
    found = await _findings(settings, b"From: a@x.example\r\n" + body.encode())
    symbols = {f.symbol for f in found}
    assert {"MIME_LIMIT_DEPTH", "ATT_UNSCANNABLE"} <= symbols
    assert load_rules(settings.rules_dir).decide(found).action is Action.QUARANTINE


async def test_over_smtp_an_executable_is_refused_and_clean_mail_relayed(
    tmp_path: Path, sink: RecordingSink, start_gateway: GatewayFactory
) -> None:
    gw = await start_gateway(settings=_settings(tmp_path, sink.port))
    client = aiosmtplib.SMTP(hostname=gw.host, port=gw.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await client.sendmail(
                "a@x.example", ["bob@example.com"], with_attachment(tiny_pe(), "invoice.pdf.exe")
            )
        assert refused.value.code == 554
        await client.sendmail("a@x.example", ["bob@example.com"], message())
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()
    delivered = await asyncio.to_thread(sink.wait_for, 1)
    assert len(delivered) == 1
    assert b"X-Mailgate-Symbols" in delivered[0].content


def test_mime_and_clamav_settings_are_validated(tmp_path: Path) -> None:
    from gateway.config import load_settings
    from gateway.tomlfile import ConfigError

    shipped = (REPO / "config" / "gateway.toml").read_text()
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "gateway.toml"
    path.write_text(
        re.sub(r"(?m)^order = \[.*\]$", 'order = ["lists", "clamav"]', shipped)
        + "\n[mime]\nmax_parts = 0\ntime_budget = 2.5\nmax_partz = 3\n"
    )
    with pytest.raises((ConfigErrors, ConfigError)) as caught:
        load_settings(path)
    text = str(caught.value)
    assert "mime.max_parts" in text and "mime.max_partz" in text
    assert "clamav.address" in text
    lines = path.read_text().splitlines()
    assert f"{path}:{lines.index('max_parts = 0') + 1}: key 'mime.max_parts'" in text
    path.write_text(shipped + '\n[mime]\ntime_budget = 2.5\n[clamav]\naddress = "127.0.0.1:3310"\n')
    settings = load_settings(path)
    assert settings.mime.time_budget == 2.5 and settings.clamav.address == "127.0.0.1:3310"
