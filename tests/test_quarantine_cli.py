"""`mailgate quarantine` subcommands: list, show, delete, purge, learn, stats, and their errors.

Entries come from the gateway over real sockets where what matters is what the gateway records
(metadata, expiry); older entries are stored directly, with their time set in the past.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from harness import GatewayFactory, RecordingSink, RunningGateway, make_settings, message
from quarantine_fixtures import QuarantineCli, run_cli, run_mailgate, send
from test_downstream_faults import SUSPICIOUS, SUSPICIOUS_SYMBOLS

from gateway.config import QuarantineSettings
from gateway.quarantine import SqliteStore

DAY = 86400


def put_old(store: SqliteStore, entry_id: str, age_days: float, **changes: Any) -> None:
    when = time.time() - age_days * DAY
    meta: dict[str, Any] = {
        "id": entry_id,
        "time": when,
        "expires": when + 30 * DAY,
        "client_ip": "192.0.2.9",
        "helo": "old.example.net",
        "mail_from": "old@example.net",
        "rcpt_tos": ["bob@example.com"],
        "subject": f"old {age_days}",
        "score": 8.0,
        "reason": "score 8 >= quarantine threshold 6",
        "findings": [{"symbol": "HDR_DATE_MISSING", "score": 1.5, "detail": ""}],
        "policy_version": "abc",
    }
    meta.update(changes)
    store.put(entry_id, message(subject=f"old {age_days}"), meta)


async def test_what_the_gateway_records_is_what_list_and_show_tell(
    start_gateway: GatewayFactory, sink: RecordingSink, tmp_path: Path, qcli: QuarantineCli
) -> None:
    settings = make_settings(tmp_path, sink.port)
    settings = dataclasses.replace(settings, quarantine=QuarantineSettings(retention_days=2))
    gw: RunningGateway = await start_gateway(settings)
    sent = await send(gw, SUSPICIOUS, sender="spam@bad.example")
    assert sent.code == 250
    entry = SqliteStore(gw.settings.quarantine_dir).entry(sent.qid)
    assert entry.expires is not None
    assert abs(entry.expires - entry.received - 2 * DAY) < 1  # [quarantine] retention_days
    assert (entry.client_ip, entry.helo, entry.mail_from) == (
        "127.0.0.1",
        "client.example.net",
        "spam@bad.example",
    )
    assert entry.subject == "one"  # the first of two Subject fields

    listing = await asyncio.to_thread(qcli, "list")
    assert listing.code == 0
    header, row, footer = listing.text.splitlines()
    assert header.split() == ["ID", "RECEIVED", "(UTC)", "STATUS", "SCORE", "FROM", "TO", "SUBJECT"]
    assert row.startswith(f"{sent.qid} ")
    assert row.split()[3:8] == ["quarantined", "7.5", "spam@bad.example", "bob@example.com", "one"]
    assert footer == "1 entry"

    shown = (await asyncio.to_thread(qcli, "show", sent.qid)).text
    assert f"quarantine entry {sent.qid}\n" in shown
    assert "  sender      <spam@bad.example>\n" in shown
    assert "  recipients  <bob@example.com>\n" in shown
    assert "  verdict     score 7.5: score 7.5 >= quarantine threshold 6\n" in shown
    findings = shown.split("findings\n")[1].split("headers\n")[0]
    assert {line.split()[0] for line in findings.splitlines()} == SUSPICIOUS_SYMBOLS
    assert "  HDR_FROM_MISSING                     3" in findings
    assert f"  X-Mailgate-ID: {sent.qid}\n" in shown
    assert "  1         text/plain  10 bytes\n" in shown
    assert "  | Buy now.\n" in shown

    document = json.loads((await asyncio.to_thread(qcli, "show", sent.qid, "--json")).text)
    assert document["id"] == sent.qid
    assert document["score"] == 7.5
    assert {f["symbol"] for f in document["findings"]} == SUSPICIOUS_SYMBOLS
    assert ["X-Mailgate-ID", sent.qid] in document["headers"]
    assert document["parts"][0]["content_type"] == "text/plain"
    raw = await asyncio.to_thread(qcli, "show", sent.qid, "--raw")
    assert raw.out == (gw.settings.quarantine_dir / f"{sent.qid}.eml").read_bytes()


def test_list_filters_limit_and_json(tmp_path: Path, qcli: QuarantineCli) -> None:
    store = SqliteStore(tmp_path / "quarantine")
    put_old(store, "OLD000000001", 40, mail_from="a@one.example", score=20.0)
    put_old(store, "OLD000000002", 3, rcpt_tos=["carol@example.com", "dave@example.com"])
    put_old(store, "OLD000000003", 0.5, reason="forced by SPF_FAIL")
    put_old(
        store,
        "OLD000000004",
        0.1,
        findings=[{"symbol": "SPF_FAIL", "score": 5, "detail": ""}],
    )

    def ids(*args: str) -> list[str]:
        result = qcli("list", "--json", *args)
        assert result.code == 0, result
        return [e["id"] for e in json.loads(result.text)["entries"]]

    assert ids() == ["OLD000000004", "OLD000000003", "OLD000000002", "OLD000000001"]
    assert ids("--since", "1d") == ["OLD000000004", "OLD000000003"]
    ten_days_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 10 * DAY))
    assert ids("--until", "2d", "--since", ten_days_ago) == ["OLD000000002"]
    assert ids("--until", f"{ten_days_ago}T00:00") == ["OLD000000001"]
    assert ids("--from", "@one.example") == ["OLD000000001"]
    assert ids("--to", "dave@example.com") == ["OLD000000002"]
    assert ids("--rcpt", "*@example.com", "--min-score", "10") == ["OLD000000001"]
    assert ids("--symbol", "spf_fail") == ["OLD000000004"]
    assert ids("--reason", "spf") == ["OLD000000003"]
    assert ids("--status", "released") == []
    limited = json.loads(qcli("list", "--json", "--limit", "2").text)
    assert limited["total"] == 4
    assert len(limited["entries"]) == 2
    text = qcli("list", "--limit", "2").text
    assert text.splitlines()[-1] == "2 of 4 entries (newest first; --limit 0 shows all)"
    assert "carol@example.com +1" in qcli("list", "--to", "carol@example.com").text
    assert qcli("list", "--from", "nobody@example.net").text == "no entries match\n"
    bad = qcli("list", "--since", "yesterday")
    assert bad.code == 2
    assert b"neither a duration" in bad.err


def test_delete_purge_learn_and_stats(tmp_path: Path, qcli: QuarantineCli) -> None:
    store = SqliteStore(tmp_path / "quarantine")
    put_old(store, "OLD000000011", 45, expires=None)  # retention_days = 0: never expires
    put_old(store, "OLD000000012", 31, expires=time.time() - 60)
    put_old(store, "OLD000000013", 5)
    put_old(store, "OLD000000014", 1, mail_from="x@drop.example")
    put_old(store, "OLD000000015", 1, mail_from="y@drop.example")

    learned = qcli("learn", "--spam", "OLD000000011", "old000000013")
    assert learned.code == 0
    assert "OLD000000011  labelled spam" in learned.text
    assert qcli("learn", "--ham", "OLD000000013").code == 0
    assert "quarantined*" in qcli("list").text  # labelled entries are marked
    assert {(f.id, f.label) for f in store.feedback()} == {
        ("OLD000000011", "spam"),
        ("OLD000000013", "ham"),
    }

    dry = qcli("purge", "--older-than", "30d", "--dry-run")
    assert "dry run: 2 entries received before " in dry.text
    assert len(store.ids()) == 5
    expired = qcli("purge", "--expired")
    assert expired.text.startswith("purged 1 entry past the expiry time")
    assert "OLD000000012" not in store.ids()
    purged = qcli("purge", "--older-than", "30d")
    assert purged.text.startswith("purged 1 entry received before")
    assert store.ids() == ["OLD000000013", "OLD000000014", "OLD000000015"]
    assert (tmp_path / "quarantine" / "feedback" / "OLD000000011.eml").exists()  # kept to learn

    dry = qcli("delete", "--from", "@drop.example", "--dry-run")
    assert dry.text.count("would delete") == 2
    assert len(store.ids()) == 3
    gone = qcli("delete", "--from", "@drop.example")
    assert gone.text.splitlines()[-1] == "2 deleted"
    missing = qcli("delete", "OLD000000099", "OLD000000013")
    assert missing.code == 1
    assert "OLD000000099  no such entry" in missing.text
    assert store.ids() == []
    assert qcli("delete").code == 2  # no ids, no filter: refused, not "delete everything"

    put_old(store, "OLD000000021", 2)
    put_old(store, "OLD000000022", 0.5, reason="forced by SPF_FAIL")
    stats = qcli("stats")
    assert stats.code == 0
    lines = stats.text.splitlines()
    assert lines[0] == "entries  2 (2 quarantined)"
    assert "         1  score >= quarantine threshold 6" in lines
    assert "         1  forced by SPF_FAIL" in lines
    assert "         2  HDR_DATE_MISSING" in lines
    document = json.loads(qcli("stats", "--json").text)
    assert document["total"] == 2
    assert sum(n for _, n in document["by_day"]) == 2


def test_errors_are_short_and_exit_non_zero(tmp_path: Path, qcli: QuarantineCli) -> None:
    nothing = qcli("show", "ABCDEF123456")
    assert nothing.code == 1
    assert nothing.err == b"mailgate quarantine: no quarantine entry ABCDEF123456\n"
    assert qcli("show", "../../etc/passwd").code == 2
    assert qcli("list").text == "no entries\n"
    assert not (tmp_path / "quarantine").exists()  # reading never creates the quarantine
    broken = tmp_path / "broken.toml"
    broken.write_text("[quarantine]\nretention_days = 'forever'\n")
    result = run_cli("--config", broken, "quarantine", "list")
    assert result.code == 1
    assert b"retention_days" in result.err


def test_the_console_script_has_the_quarantine_commands(tmp_path: Path) -> None:
    result = run_mailgate("quarantine", "--help")
    assert result.returncode == 0
    for command in (b"list", b"show", b"release", b"delete", b"purge", b"learn", b"stats"):
        assert command in result.stdout


@pytest.mark.parametrize("width", [0, 1, 3, 10])
def test_table_cells_fit_wide_characters(width: int) -> None:
    from gateway.quarantine.cli import _width, fit

    for text in ("abc", "日本語のメール件名", "e\u0301te\u0301", ""):
        if width >= 3 or _width(text) <= width:
            assert _width(fit(text, width)) == width


def test_feedback_export_is_what_model_training_reads(tmp_path: Path, qcli: QuarantineCli) -> None:
    store = SqliteStore(tmp_path / "quarantine")
    put_old(store, "OLD000000031", 1)
    put_old(store, "OLD000000032", 1)
    assert qcli("learn", "--spam", "OLD000000031").code == 0
    assert qcli("learn", "--ham", "OLD000000032").code == 0
    store.delete(["OLD000000031"])  # the labelled copy stays for training
    text = qcli("feedback").text
    assert "OLD000000031" in text and text.endswith("2 labels\n")
    exported = tmp_path / "labels.jsonl"
    exported.write_bytes(qcli("feedback", "--jsonl").out)
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [(r["id"], r["label"]) for r in rows] == [
        ("OLD000000031", "spam"),
        ("OLD000000032", "ham"),
    ]
    corpus = pytest.importorskip("gateway.classifier.corpus")
    pairs = corpus.feedback_sources(exported)
    assert [(label, path.read_bytes()) for label, path in pairs] == [
        ("spam", message(subject="old 1")),
        ("ham", message(subject="old 1")),
    ]
    # `mailgate model train --feedback` also takes the quarantine folder itself.
    direct = corpus.feedback_sources(tmp_path / "quarantine")
    assert [(label, path.read_bytes()) for label, path in direct] == [
        (label, path.read_bytes()) for label, path in pairs
    ]
