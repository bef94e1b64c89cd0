"""The verdict ladder over SMTP: relay < tag < quarantine < reject.

A tagged message is relayed with X-Spam-Flag: YES, an X-Spam-Status naming its score, the
thresholds and the symbols, and (when rules/ says so) a Subject prefix written by offset; every
other relayed message says X-Spam-Flag: NO; X-Spam-* fields a sender wrote never reach the
delivery server. The tests assert what the downstream server received.
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

import aiosmtplib
import pytest
from auth_helpers import field_values, header_block, mail, sign, start_auth_gateway
from dns_server import DnsTestServer
from harness import GatewayFactory, RecordingSink, RunningGateway, make_settings, message
from test_dmarc_gateway import load_zones

from gateway import metrics
from gateway.header_edit import prefix_subject
from gateway.message import ParsedMessage
from gateway.policy import load_rules
from gateway.tomlfile import ConfigErrors
from gateway.verdict import Action, Finding, ForcedAction, combine

SCORES = {"LOW": 1.0, "MID": 4.5, "HIGH": 7.0}


def test_combine_walks_the_ladder() -> None:
    def action(*symbols: str) -> Action:
        return combine([Finding(s) for s in symbols], SCORES, {}, 6.0, 15.0, 4.0).action

    assert action("LOW") is Action.RELAY
    assert action("MID") is Action.TAG
    assert action("HIGH") is Action.QUARANTINE
    assert action("HIGH", "HIGH", "HIGH") is Action.REJECT
    tagged = combine([Finding("MID")], SCORES, {}, 6.0, 15.0, 4.0)
    assert tagged.reason == "score 4.5 >= tag threshold 4" and tagged.reply.code == 250
    # without a tag threshold (or one not below quarantine) there is no tag step
    assert combine([Finding("MID")], SCORES, {}, 6.0, 15.0).action is Action.RELAY
    assert combine([Finding("MID")], SCORES, {}, 4.0, 15.0, 4.0).action is Action.QUARANTINE


def test_a_forced_tag_is_milder_than_any_refusal() -> None:
    forced = {"LOW": ForcedAction(Action.TAG), "MID": ForcedAction(Action.QUARANTINE)}
    assert combine([Finding("LOW")], SCORES, forced, 6.0, 15.0, 4.0).action is Action.TAG
    both = combine([Finding("LOW"), Finding("MID")], SCORES, forced, 6.0, 15.0, 4.0)
    assert both.action is Action.QUARANTINE and both.forced_by == "MID"


# -- rules/actions.toml --------------------------------------------------------------------------


def rules_copy(tmp_path: Path) -> Path:
    make_settings(tmp_path, 1)  # copies rules/ to tmp_path/rules
    return tmp_path / "rules"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_shipped_thresholds_are_in_ladder_order() -> None:
    rules = load_rules(Path(__file__).resolve().parent.parent / "rules")
    assert rules.tag_at is not None
    assert rules.tag_at < rules.quarantine_at < rules.reject_at
    assert rules.tag.add_headers


def test_a_tag_threshold_above_quarantine_names_its_line(tmp_path: Path) -> None:
    rules = rules_copy(tmp_path)
    edit(rules / "actions.toml", "tag = 4.0", "tag = 7.0")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    [error] = caught.value.errors
    line = next(
        n
        for n, text in enumerate((rules / "actions.toml").read_text().splitlines(), 1)
        if text.startswith("tag = 7.0")
    )
    assert str(error).startswith(f"{rules / 'actions.toml'}:{line}: key 'thresholds.tag'")
    assert "must not be above thresholds.quarantine" in str(error)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('subject_prefix = ""', 'subject_prefix = "[SP\u00c4M] "', "tag.subject_prefix"),
        ('subject_prefix = ""', 'subject_prefix = "[x]\\r\\nBcc: a@b"', "tag.subject_prefix"),
        ("add_headers = true", 'add_headers = "yes"', "tag.add_headers"),
        ("tag = 4.0", "tag = nan", "thresholds.tag"),
    ],
)
def test_bad_tag_settings_are_refused(tmp_path: Path, old: str, new: str, key: str) -> None:
    rules = rules_copy(tmp_path)
    edit(rules / "actions.toml", old, new)
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    [error] = caught.value.errors
    assert error.key == key


def test_rules_without_a_tag_threshold_have_no_tag_step(tmp_path: Path) -> None:
    rules = rules_copy(tmp_path)
    edit(rules / "actions.toml", "tag = 4.0", "")
    loaded = load_rules(rules)
    assert loaded.tag_at is None and loaded.tag_threshold == loaded.quarantine_at
    assert loaded.decide([Finding("HDR_FROM_MISSING"), Finding("HDR_DATE_MISSING")]).action is (
        Action.RELAY
    )


# -- the Subject prefix, by offset ---------------------------------------------------------------


def test_prefix_goes_before_the_value_and_keeps_its_encoding() -> None:
    encoded = "=?UTF-8?B?" + base64.b64encode("Grüße".encode()).decode() + "?="
    raw = f"From: a@example.net\r\nSubject: {encoded}\r\n\r\nbody\r\n".encode()
    out = prefix_subject(ParsedMessage(raw), "[SPAM] ")
    assert out == raw.replace(b"Subject: ", b"Subject: [SPAM] ")
    assert ParsedMessage(out).decoded("subject") == "[SPAM] Grüße"
    # already marked: left alone (a message tagged twice keeps one prefix)
    assert prefix_subject(ParsedMessage(out), "[SPAM] ") == out


def test_prefix_reaches_every_subject_however_it_is_written() -> None:
    raw = b"Subject:tight\r\nsubject :\r\n folded\r\n\r\nSubject: in the body\r\n"
    out = prefix_subject(ParsedMessage(raw), "[SPAM]")
    assert (
        out
        == b"Subject: [SPAM] tight\r\nsubject : [SPAM] \r\n folded\r\n\r\nSubject: in the body\r\n"
    )


def test_a_missing_subject_becomes_the_prefix() -> None:
    raw = b"From: a@example.net\r\n\r\nbody\r\n"
    assert prefix_subject(ParsedMessage(raw), "[SPAM] ") == b"Subject: [SPAM]\r\n" + raw


# -- over SMTP -----------------------------------------------------------------------------------

TAGGED_SCORE = "HDR_MESSAGE_ID_MISSING = 1.0"


async def start(
    tmp_path: Path, start_gateway: GatewayFactory, prefix: str = "[SPAM] ", add_headers: bool = True
) -> RunningGateway:
    """A gateway whose rules tag a message without Message-ID (score 4.5: tag 4, quarantine 6)."""
    rules = rules_copy(tmp_path)
    edit(rules / "scores.toml", TAGGED_SCORE, "HDR_MESSAGE_ID_MISSING = 4.5")
    edit(rules / "actions.toml", 'subject_prefix = ""', f'subject_prefix = "{prefix}"')
    if not add_headers:
        edit(rules / "actions.toml", "add_headers = true", "add_headers = false")
    running: RunningGateway = await start_gateway()
    return running


def without_message_id(raw: bytes) -> bytes:
    return re.sub(rb"Message-ID: [^\r]*\r\n", b"", raw)


async def send(gw: RunningGateway, raw: bytes) -> str:
    answer = await aiosmtplib.send(
        raw,
        sender="alice@example.net",
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
    )
    return answer[1]


FORGED = b"X-Spam-Flag: NO\r\nx-spam-status : No, score=-50\r\nX-Spam-Level:\r\n\t*****\r\n"


async def test_a_tagged_message_is_relayed_marked(
    tmp_path: Path,
    sink: RecordingSink,
    start_gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(metrics, "enabled", True)
    tagged_before = (
        metrics.REGISTRY.get_sample_value("mailgate_messages_total", {"action": "tag"}) or 0.0
    )
    gw = await start(tmp_path, start_gateway)
    encoded = "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?="
    sent = without_message_id(message(subject=encoded, extra=FORGED))
    with caplog.at_level(logging.INFO, logger="mailgate.message"):
        reply = await send(gw, sent)
    assert reply.startswith("2.0.0 OK id=")
    [delivered] = await sink.arrived(1)
    content = delivered.content
    assert field_values(content, "X-Spam-Flag") == ["YES"]
    [status] = field_values(content, "X-Spam-Status")
    assert status == ("Yes, score=4.5 tag=4 quarantine=6 reject=15 tests=HDR_MESSAGE_ID_MISSING")
    assert field_values(content, "X-Spam-Level") == []  # the forged fields are gone
    assert field_values(content, "X-Mailgate-Action") == ["tag"]
    # the body and every other field as sent; the Subject has the prefix before its encoding
    ours, _, rest = content.partition(b"From: Alice")
    assert b"From: Alice" + rest == sent.replace(FORGED, b"").replace(
        f"Subject: {encoded}".encode(), f"Subject: [SPAM] {encoded}".encode()
    )
    assert b"Subject" not in ours
    assert "action=tag" in caplog.text and 'reason="score 4.5 >= tag threshold 4"' in caplog.text
    tagged_after = metrics.REGISTRY.get_sample_value("mailgate_messages_total", {"action": "tag"})
    assert tagged_after == tagged_before + 1


async def test_an_untagged_message_says_no_and_forged_fields_are_removed(
    tmp_path: Path, sink: RecordingSink, start_gateway: GatewayFactory
) -> None:
    gw = await start(tmp_path, start_gateway)
    forged = b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=99\r\n"
    sent = message(subject="plain", extra=forged)
    await send(gw, sent)
    [delivered] = await sink.arrived(1)
    assert field_values(delivered.content, "X-Spam-Flag") == ["NO"]
    [status] = field_values(delivered.content, "X-Spam-Status")
    assert status == "No, score=0 tag=4 quarantine=6 reject=15 tests=none"
    assert field_values(delivered.content, "Subject") == ["plain"]
    assert delivered.content.endswith(sent.replace(forged, b"").partition(b"From: Alice")[2])


async def test_tagged_without_subject_or_headers(
    tmp_path: Path, sink: RecordingSink, start_gateway: GatewayFactory
) -> None:
    gw = await start(tmp_path, start_gateway, add_headers=False)
    sent = without_message_id(message(extra=FORGED)).replace(b"Subject: hello\r\n", b"")
    await send(gw, sent)
    [delivered] = await sink.arrived(1)
    assert "X-Spam" not in header_block(delivered.content)  # none of ours, none forged
    assert field_values(delivered.content, "Subject") == ["[SPAM]"]
    assert field_values(delivered.content, "X-Mailgate-Action") == ["tag"]


async def test_quarantined_mail_is_stored_unmarked(
    tmp_path: Path, sink: RecordingSink, start_gateway: GatewayFactory
) -> None:
    gw = await start(tmp_path, start_gateway)
    sent = without_message_id(message(extra=b"X-Spam-Flag: NO\r\n")).replace(
        b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n", b""
    )  # 4.5 + 1.5: quarantine
    reply = await send(gw, sent)
    assert "Message accepted" in reply
    assert sink.delivered == []
    match = re.search(r"id=(\w+)", reply)
    assert match
    stored, meta = gw.gateway.store.get(match.group(1))
    assert meta["action"] == "quarantine"
    assert b"X-Spam-" not in stored.split(b"\r\n\r\n")[0]
    assert b"Subject: hello\r\n" in stored


# -- authentication credit -----------------------------------------------------------------------


@pytest.fixture
async def known_gw(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> RunningGateway:
    """The authentication plugins on, good.example listed as a well-known sender."""
    load_zones(dns_server)
    rules = rules_copy(tmp_path)
    edit(rules / "auth.toml", "known_senders = [\n", 'known_senders = [\n    "good.example",\n')
    return await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)


async def send_auth(gw: RunningGateway, content: bytes) -> None:
    await aiosmtplib.send(
        content,
        sender="alice@good.example",
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
        local_hostname="client.test.example",
    )


async def test_only_an_aligned_dkim_pass_of_a_known_sender_earns_credit(
    known_gw: RunningGateway, sink: RecordingSink
) -> None:
    await send_auth(known_gw, sign(mail()))
    await send_auth(known_gw, mail())  # SPF passes and aligns: DMARC passes, no credit
    signed, unsigned = await sink.arrived(2)
    [symbols] = field_values(signed.content, "X-Mailgate-Symbols")
    assert "DMARC_KNOWN_SENDER(-" in symbols and "DMARC_PASS(0)" in symbols
    assert "DKIM_VALID(0)" in symbols and "SPF_PASS(0)" in symbols
    [symbols] = field_values(unsigned.content, "X-Mailgate-Symbols")
    assert "DMARC_PASS(0)" in symbols and "DMARC_KNOWN_SENDER" not in symbols


def test_a_pass_for_a_domain_anyone_can_register_is_worth_nothing() -> None:
    rules = load_rules(Path(__file__).resolve().parent.parent / "rules")
    for symbol in ("SPF_PASS", "DKIM_VALID", "DMARC_PASS"):
        assert rules.scores[symbol] == 0.0
    assert rules.scores["DMARC_KNOWN_SENDER"] < 0
    assert rules.scores["SPF_FAIL"] > 0 and rules.scores["DKIM_INVALID"] > 0
    assert not rules.auth.known_sender("gmail.com") and not rules.auth.known_sender("outlook.com")
    # spam the model is certain of, from a self-registered domain passing everything: not relayed
    spammy = [
        Finding(s) for s in ("SPF_PASS", "DKIM_VALID", "DMARC_PASS", "ML_BAND_999", "ML_CERTAINTY")
    ]
    assert rules.decide(spammy).action.severity >= Action.TAG.severity
