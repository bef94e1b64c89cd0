"""Release over real sockets: client -> gateway (quarantines) -> CLI release -> delivery server.

What the delivery server receives must be byte for byte what the client sent, with only the trace
fields the gateway adds on top, under the original envelope; releasing twice sends once; a
release the delivery server refuses leaves the message in quarantine and says why.
"""

from __future__ import annotations

import asyncio
import json
import logging
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from harness import GatewayFactory, RecordingSink, RunningGateway, free_port, message
from quarantine_fixtures import (
    RELEASED_FIELDS,
    CliResult,
    QuarantineCli,
    Sent,
    as_stored,
    run_cli,
    run_mailgate,
    send,
    write_config,
)

from gateway.header_edit import mark_released
from gateway.message import ParsedMessage
from gateway.quarantine import SqliteStore
from gateway.quarantine.release import release, releasing_user

# The fields the gateway puts on top of a message (Received, the verdict, authentication results).
TRACE_FIELDS = {b"received", b"authentication-results", b"arc-seal", b"arc-message-signature"}
TRACE_FIELDS |= {b"arc-authentication-results"}

# (what the client sends, what the gateway keeps of it, sender, recipients, MAIL options)
CASES = [
    (message(subject="plain"),) * 2 + ("alice@example.net", ("bob@example.com",), ()),
    (
        message(subject="8bit", body="Grüße aus Köln.\r\n".encode()),
        message(subject="8bit", body="Grüße aus Köln.\r\n".encode()),
        "alice@example.net",
        ("bob@example.com", "carol@deep.sub.example.org"),
        ("BODY=8BITMIME",),
    ),
    (
        "Subject: Grüße\r\nFrom: jörg@example.net\r\n\r\nhallo\r\n".encode(),
        "Subject: Grüße\r\nFrom: jörg@example.net\r\n\r\nhallo\r\n".encode(),
        "jörg@example.net",
        ("bob@example.com",),
        ("SMTPUTF8", "BODY=8BITMIME"),
    ),
    (
        message(subject="dots", body=b".leading dot\r\n..two dots\r\n.\tdot tab\r\nend\r\n"),
        message(subject="dots", body=b".leading dot\r\n..two dots\r\n.\tdot tab\r\nend\r\n"),
        "alice@example.net",
        ("bob@example.com",),
        (),
    ),
    (
        message(subject="forged", extra=b"X-Mailgate-Action: relay\r\nX-Mailgate-Score: -99\r\n"),
        message(subject="forged"),  # the sender's X-Mailgate-* fields are never kept
        "alice@example.net",
        ("bob@example.com",),
        (),
    ),
    (message(subject="bounce"),) * 2 + ("", ("bob@example.com",), ()),
]


def check_delivered(content: bytes, kept: bytes, qid: str, stored: bytes) -> None:
    """The stored file (the trace fields on top of what the client sent), marked released: our
    verdict field says `release`, and when, by whom and what the verdict was follows it."""
    marked = RELEASED_FIELDS.search(content)
    assert marked is not None, content[:600]
    assert marked.group("user").decode() == releasing_user()
    assert parsedate_to_datetime(marked.group("date").decode()).tzinfo is not None
    assert as_stored(content) == stored
    assert b"X-Mailgate-Action: quarantine" not in content
    assert content.endswith(kept)
    trace = content[: len(content) - len(kept)]
    parsed = ParsedMessage(trace + b"\r\n")
    assert parsed.header_end == len(trace)
    fields = [f.raw(parsed.raw) for f in parsed.fields]
    assert all(not f.odd_name for f in parsed.fields)
    names = [f.split(b":")[0].lower() for f in fields]
    assert names[0] == b"received"
    assert all(n in TRACE_FIELDS or n.startswith(b"x-mailgate-") for n in names), names
    assert f"X-Mailgate-ID: {qid}\r\n".encode() in fields
    assert b"X-Mailgate-Action: release\r\n" in fields


async def quarantine_cases(gw: RunningGateway) -> list[Sent]:
    sent = []
    for raw, _, sender, rcpts, options in CASES:
        reply = await send(gw, raw, sender=sender, rcpts=rcpts, mail_options=options)
        assert reply.code == 250, reply
        assert reply.text.startswith("2.0.0 Message accepted"), reply
        sent.append(reply)
    return sent


async def test_every_quarantined_message_is_released_byte_identical_with_its_envelope(
    start_gateway: GatewayFactory, sink: RecordingSink, quarantine_all: Path, qcli: QuarantineCli
) -> None:
    gw: RunningGateway = await start_gateway()
    sent = await quarantine_cases(gw)
    assert sink.delivered == []
    store = SqliteStore(gw.settings.quarantine_dir, create=False)
    stored = {s.qid: store.get(s.qid)[0] for s in sent}

    result = await asyncio.to_thread(qcli, "release", "--since", "1h")
    assert result.code == 0, result
    assert f"{len(CASES)} released," in result.text

    delivered = await sink.arrived(len(CASES))
    assert len(delivered) == len(CASES)
    by_qid = {d.xforward["IDENT"]: d for d in delivered}
    for reply, (_, kept, sender, rcpts, options) in zip(sent, CASES, strict=True):
        got = by_qid[reply.qid]
        check_delivered(got.content, kept, reply.qid, stored[reply.qid])
        assert got.mail_from == (sender or "<>")
        assert got.rcpt_tos == list(rcpts)
        assert ("SMTPUTF8" in got.mail_options) == ("SMTPUTF8" in options)
        assert got.xforward["ADDR"] == "127.0.0.1"  # the original client, for the server's log
        assert got.xforward["HELO"] == "client.example.net"
    listed = json.loads((await asyncio.to_thread(qcli, "list", "--json")).text)
    assert {e["status"] for e in listed["entries"]} == {"released"}
    assert all(e["release_note"].startswith("delivered to ") for e in listed["entries"])


async def test_release_is_idempotent_and_again_sends_again(
    start_gateway: GatewayFactory,
    sink: RecordingSink,
    quarantine_all: Path,
    qcli: QuarantineCli,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.quarantine")
    gw: RunningGateway = await start_gateway()
    qid = (await send(gw, message(subject="once"))).qid
    first = await asyncio.to_thread(qcli, "release", qid)
    assert first.code == 0
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"qid={qid} ")]
    assert f'qid={qid} release by="{releasing_user()}" rcpt="bob@example.com" outcome=released' in (
        line
    )
    assert "delivered to 1 of 1 recipients: 250 2.0.0 delivery server: " in line
    assert f"{qid}  released: delivered to 1 of 1 recipients: 250 " in first.text
    second = await asyncio.to_thread(qcli, "release", qid.lower())
    assert second.code == 0
    assert f"{qid}  skipped: {qid} was released at " in second.text
    assert len(await sink.arrived(1)) == 1
    again = await asyncio.to_thread(qcli, "release", qid, "--again")
    assert again.code == 0
    assert len(await sink.arrived(2)) == 2
    # marked once each time (the stored copy is never changed), at the time of its release
    first_copy, second_copy = (RELEASED_FIELDS.sub(b"", d.content) for d in sink.delivered)
    assert first_copy == second_copy
    assert all(d.content.count(b"X-Mailgate-Released:") == 1 for d in sink.delivered)


async def test_concurrent_releases_of_one_entry_deliver_once(
    start_gateway: GatewayFactory, sink: RecordingSink, quarantine_all: Path
) -> None:
    gw: RunningGateway = await start_gateway()
    qid = (await send(gw, message(subject="race"))).qid
    sink.behaviour.data_delay = 0.3  # both releases overlap for sure
    stores = [SqliteStore(gw.settings.quarantine_dir, create=False) for _ in range(4)]
    results = await asyncio.gather(*(release(s, gw.settings, qid) for s in stores))
    assert sorted(r.outcome for r in results) == ["released", "skipped", "skipped", "skipped"]
    assert len(await sink.arrived(1)) == 1


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("data", "the delivery server refused it: 452 4.3.1 Insufficient system storage"),
        ("data5xx", "the delivery server refused it: 554 5.7.1 Rejected as spam"),
        ("mail", "the delivery server refused it: 451 4.7.1 greylisted"),
        ("down", "mailgate could not hand it over: 451 4.4.1 Delivery server unavailable"),
    ],
)
async def test_a_failed_release_stays_in_quarantine_and_says_why(
    start_gateway: GatewayFactory,
    sink: RecordingSink,
    quarantine_all: Path,
    qcli: QuarantineCli,
    tmp_path: Path,
    fault: str,
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.quarantine")
    gw: RunningGateway = await start_gateway()
    qid = (await send(gw, message(subject="retry me"))).qid
    command: QuarantineCli = qcli
    if fault == "data":
        sink.behaviour.data_reply = "452 4.3.1 Insufficient system storage"
    elif fault == "data5xx":
        sink.behaviour.data_reply = "554 5.7.1 Rejected as spam"
    elif fault == "mail":
        sink.behaviour.mail_reply = "451 4.7.1 greylisted"
    else:
        down = write_config(
            tmp_path / "down.toml",
            quarantine=gw.settings.quarantine_dir,
            rules=gw.settings.rules_dir,
            delivery_port=free_port(),
        )

        def elsewhere(*args: str | Path) -> CliResult:
            return run_cli("--config", down, "quarantine", *args)

        command = elsewhere

    failed = await asyncio.to_thread(command, "release", qid)
    assert failed.code == 1
    text = failed.text
    assert f"{qid}  failed: release failed, still in quarantine: " in text
    assert expected in text
    assert "0 released, 0 released to some recipients only, 0 skipped, 1 failed" in text
    shown = await asyncio.to_thread(qcli, "show", qid)
    assert "  status      quarantined;" in shown.text
    assert expected in shown.text  # the last try is recorded with the entry
    assert sink.delivered == []
    [line] = [r for r in caplog.records if r.getMessage().startswith(f"qid={qid} release ")]
    assert line.levelno == logging.WARNING
    assert f'by="{releasing_user()}"' in line.getMessage()
    assert 'rcpt="bob@example.com" outcome=failed' in line.getMessage()
    assert expected in line.getMessage()
    # whose answer it was, said once: never our own 451 as the delivery server's
    assert ("mailgate could not" in text) == (fault == "down")

    sink.behaviour = type(sink.behaviour)()
    retried = await asyncio.to_thread(qcli, "release", qid)
    assert retried.code == 0, retried
    assert len(await sink.arrived(1)) == 1


async def test_release_to_other_recipients_and_partial_refusal(
    start_gateway: GatewayFactory, sink: RecordingSink, quarantine_all: Path, qcli: QuarantineCli
) -> None:
    gw: RunningGateway = await start_gateway()
    one = (await send(gw, message(subject="redirect"))).qid
    two = await send(gw, message(subject="partly"), rcpts=("bob@example.com", "x@example.com"))
    redirected = await asyncio.to_thread(
        qcli, "release", one, "--to", "postmaster@example.com", "--to", "audit@example.com"
    )
    assert redirected.code == 0
    [got] = await sink.arrived(1)
    assert got.rcpt_tos == ["postmaster@example.com", "audit@example.com"]

    sink.behaviour.rcpt_replies["x@example.com"] = "550 5.1.1 No such user"
    partly = await asyncio.to_thread(qcli, "release", two.qid)
    assert partly.code == 1  # not everybody got it: the admin should look
    assert "partial: delivered to 1 of 2 recipients: 250 " in partly.text
    assert "refused: <x@example.com> 550 5.1.1 delivery server: No such user" in partly.text
    assert (await sink.arrived(2))[1].rcpt_tos == ["bob@example.com"]
    bad = await asyncio.to_thread(qcli, "release", one, "--to", "not an address")
    assert bad.code == 2


async def test_bulk_release_by_selection_with_a_dry_run_first(
    start_gateway: GatewayFactory, sink: RecordingSink, quarantine_all: Path, qcli: QuarantineCli
) -> None:
    gw: RunningGateway = await start_gateway()
    mine = [(await send(gw, message(subject=f"m{i}"), sender="x@y.example")).qid for i in range(3)]
    other = (await send(gw, message(subject="other"), sender="z@example.net")).qid

    dry = await asyncio.to_thread(qcli, "release", "--from", "x@y.example", "--since", "1d", "-n")
    assert dry.code == 2  # no such option: argparse refuses, nothing happens
    dry = await asyncio.to_thread(
        qcli, "release", "--from", "x@y.example", "--since", "1d", "--dry-run"
    )
    assert dry.code == 0, dry
    for qid in mine:
        assert f"{qid}  from <x@y.example>  would release to <bob@example.com>" in dry.text
    assert other not in dry.text
    assert "dry run: 3 entries selected, nothing sent" in dry.text
    assert sink.commands == [] or "DATA" not in sink.commands[-1:]
    assert sink.delivered == []

    done = await asyncio.to_thread(qcli, "release", "--from", "@y.example", "--since", "1d")
    assert done.code == 0
    assert "3 released, 0 released to some recipients only, 0 skipped, 0 failed" in done.text
    assert sorted(d.xforward["IDENT"] for d in await sink.arrived(3)) == sorted(mine)
    nothing = await asyncio.to_thread(qcli, "release")
    assert nothing.code == 2
    assert b"name entries by ID" in nothing.err


async def test_the_release_command_logs_each_release_as_the_service_logs(
    start_gateway: GatewayFactory, sink: RecordingSink, quarantine_all: Path, cli_config: Path
) -> None:
    """`mailgate quarantine release` as its own process: the log line goes where the gateway's
    logging goes (stderr, at the configured level: warning here, so a failed release shows)."""
    gw: RunningGateway = await start_gateway()
    qid = (await send(gw, message(subject="logged"))).qid
    sink.behaviour.data_reply = "554 5.7.1 Rejected\x1b[31m as spam"
    args = ("--config", cli_config, "quarantine", "release", qid)
    done = await asyncio.to_thread(run_mailgate, *args)
    assert done.returncode == 1, done
    expected = "the delivery server refused it: 554 5.7.1 Rejected\\x1b[31m as spam"
    assert f"{qid}  failed: release failed, still in quarantine: {expected}" in done.stdout.decode()
    err = done.stderr.decode()
    assert f'WARNING mailgate.quarantine: qid={qid} release by="{releasing_user()}" ' in err, err
    assert 'rcpt="bob@example.com" outcome=failed detail="release failed' in err
    assert expected.replace("\\", "\\\\") in err and "\x1b" not in err  # quoted: \ is \\
    assert sink.delivered == []


def test_release_marks_replace_our_verdict_field_in_place_and_nothing_else() -> None:
    stored = (
        b"Received: from x by mx.gateway.test\r\nX-Mailgate-ID: AAAA00000001\r\n"
        b"X-Mailgate-Action: quarantine\r\nX-Mailgate-Score: 7\r\n"
        b"Subject: hi\r\n\r\nX-Mailgate-Action: quarantine\r\n"  # in the body: not a field
    )
    marked = mark_released(stored, "Thu, 03 Dec 2026 12:00:00 GMT by alice")
    assert marked == stored.replace(
        b"X-Mailgate-Action: quarantine\r\nX-Mailgate-Score",
        b"X-Mailgate-Action: release\r\n"
        b"X-Mailgate-Released: Thu, 03 Dec 2026 12:00:00 GMT by alice; verdict=quarantine\r\n"
        b"X-Mailgate-Score",
    )
    assert as_stored(marked) == stored
    # Without a verdict field (an entry from an older version), the marks go on top.
    bare = b"Subject: hi\r\n\r\nbody\r\n"
    assert mark_released(bare, "now by bob").startswith(b"X-Mailgate-Action: release\r\n")
    assert mark_released(bare, "now by bob").endswith(bare)
