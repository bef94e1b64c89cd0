"""The SQLite + files quarantine store on its own: commit mark, queries, releases, labels, sweep.

Over-the-wire behaviour (250 only after `put`, 4xx when it fails) is in test_downstream_faults.py
and test_quarantine_faults.py; this file pins the store's own promises.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_settings
from gateway.message import decode_encoded_words
from gateway.quarantine import (
    NotFound,
    ReleaseRefused,
    Selection,
    SqliteStore,
    StoreError,
)
from gateway.quarantine.maintenance import expire, maintain_once, run_maintenance
from gateway.tomlfile import ConfigErrors

RAW = b"From: a@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


def meta(entry_id: str, **changes: Any) -> dict[str, Any]:
    """Metadata shaped like gateway.transaction.metadata writes it."""
    base: dict[str, Any] = {
        "id": entry_id,
        "time": time.time(),
        "expires": time.time() + 30 * 86400,
        "client_ip": "192.0.2.7",
        "client_port": 40000,
        "helo": "mail.example.net",
        "tls": None,
        "mail_from": "alice@example.net",
        "rcpt_tos": ["bob@example.com"],
        "mail_options": [],
        "message_id": f"<{entry_id}@example.net>",
        "from": "Alice <alice@example.net>",
        "subject": "hello",
        "size": len(RAW),
        "action": "quarantine",
        "score": 7.5,
        "reason": "score 7.5 >= quarantine threshold 6",
        "findings": [
            {"symbol": "HDR_DATE_MISSING", "score": 1.5, "detail": ""},
            {"symbol": "HDR_FROM_MULTIPLE", "score": 6.0, "detail": "2 From fields"},
        ],
        "policy_version": "0123456789ab",
    }
    base.update(changes)
    return base


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "quarantine")


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


# -- put / get ------------------------------------------------------------------------------------


def test_put_lists_a_complete_entry_and_lays_out_the_folder(store: SqliteStore) -> None:
    written = meta("AAAA00000001")
    store.put("AAAA00000001", RAW, written)
    assert store.ids() == ["AAAA00000001"]
    raw, metadata = store.get("AAAA00000001")
    assert raw == RAW
    assert metadata == json.loads(json.dumps(written))
    assert files_in(store.directory) == ["AAAA00000001.eml", "AAAA00000001.json"]
    assert (store.directory / "index" / "quarantine.sqlite3").is_file()
    assert (store.directory / "AAAA00000001.eml").stat().st_mode & 0o777 == 0o600
    entry = store.entry("aaaa00000001")  # ids are case-insensitive on the way in
    assert entry.status == "quarantined"
    assert entry.subject == "hello"
    assert [f.symbol for f in entry.findings] == ["HDR_DATE_MISSING", "HDR_FROM_MULTIPLE"]
    conn = sqlite3.connect(store.index_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_undecodable_envelope_bytes_survive_the_round_trip(store: SqliteStore) -> None:
    # aiosmtpd hands over undecodable bytes as surrogate escapes; release must send them back.
    sender = b"j\xf6rg@example.net".decode("utf-8", errors="surrogateescape")
    store.put("AAAA00000002", RAW, meta("AAAA00000002", mail_from=sender, rcpt_tos=[sender]))
    entry = store.entry("AAAA00000002")
    assert entry.mail_from == sender
    assert entry.rcpt_tos == [sender]
    assert store.select(Selection(sender="j\\xf6rg@example.net"))  # searchable as shown


def test_an_id_is_never_stored_twice(store: SqliteStore) -> None:
    store.put("AAAA00000003", RAW, meta("AAAA00000003"))
    with pytest.raises(StoreError, match="taken"):
        store.put("AAAA00000003", b"other", meta("AAAA00000003"))
    assert store.get("AAAA00000003")[0] == RAW  # the first one is untouched


def test_unknown_or_invalid_ids_are_not_found(store: SqliteStore) -> None:
    store.put("AAAA00000004", RAW, meta("AAAA00000004"))
    for bad in ("BBBB00000000", "../../etc/passwd", ""):
        with pytest.raises(NotFound):
            store.entry(bad)
    with pytest.raises(StoreError):
        store.put("../x", RAW, meta("X"))


def test_cli_store_never_creates_the_index(tmp_path: Path) -> None:
    reader = SqliteStore(tmp_path / "quarantine", create=False)
    assert reader.select(Selection()) == []
    assert reader.count(Selection()) == 0
    assert reader.stats(Selection()).total == 0
    assert reader.delete(["AAAA00000005"]) == []
    with pytest.raises(NotFound):
        reader.begin_release("AAAA00000005")
    assert reader.sweep(0) == 0
    assert not (tmp_path / "quarantine").exists()


def test_an_index_from_a_newer_mailgate_is_refused(store: SqliteStore) -> None:
    store.put("AAAA00000006", RAW, meta("AAAA00000006"))
    store.close()
    conn = sqlite3.connect(store.index_path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreError, match="newer mailgate"):
        store.ids()


# -- failures leave nothing listed ----------------------------------------------------------------


def test_index_full_fails_the_put_and_leaves_no_file(store: SqliteStore) -> None:
    store.put("AAAA00000010", RAW, meta("AAAA00000010"))
    conn = store._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "database or disk is full"
    big = meta("AAAA00000011", rcpt_tos=[f"r{i}@example.com" for i in range(2000)])
    with pytest.raises(StoreError, match="full"):
        store.put("AAAA00000011", RAW, big)
    assert store.ids() == ["AAAA00000010"]
    assert files_in(store.directory) == ["AAAA00000010.eml", "AAAA00000010.json"]
    assert list((store.directory / ".tmp").iterdir()) == []
    store.put("AAAA00000012", RAW, big)  # a fresh connection after the error: no limit
    assert store.ids() == ["AAAA00000010", "AAAA00000012"]


def test_an_unusable_index_fails_the_put_and_leaves_no_file(store: SqliteStore) -> None:
    (store.directory / "index").mkdir(parents=True)
    (store.directory / "index" / "quarantine.sqlite3").mkdir()  # not a database
    with pytest.raises(StoreError):
        store.put("AAAA00000013", RAW, meta("AAAA00000013"))
    assert files_in(store.directory) == []


class _CommitProxy:
    """A connection whose COMMIT reports failure: after committing, or instead of it."""

    def __init__(self, conn: sqlite3.Connection, commit_anyway: bool) -> None:
        self.conn = conn
        self.commit_anyway = commit_anyway

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            if self.commit_anyway:
                self.conn.execute(sql)
            else:
                self.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


@pytest.mark.parametrize("commit_anyway", [True, False], ids=["row-written", "row-not-written"])
def test_a_failing_commit_never_leaves_a_listed_entry_without_its_message(
    store: SqliteStore, commit_anyway: bool
) -> None:
    store.put("AAAA00000020", RAW, meta("AAAA00000020"))
    assert store._conn is not None
    store._conn = _CommitProxy(store._conn, commit_anyway)  # type: ignore[assignment]
    with pytest.raises(StoreError):
        store.put("AAAA00000021", RAW, meta("AAAA00000021"))
    # The gateway answered 4xx either way; what is listed is complete.
    fresh = SqliteStore(store.directory)
    listed = fresh.ids()
    assert ("AAAA00000021" in listed) is commit_anyway
    for entry_id in listed:
        assert fresh.get(entry_id)[0] == RAW
    if not commit_anyway:
        assert not (store.directory / "AAAA00000021.eml").exists()


def _batched_puts(store: SqliteStore, entry_ids: list[str]) -> dict[str, BaseException | None]:
    """Put every id from its own thread while the committer is held, so that all of them wait
    for one group commit; returns what each put raised (None: stored)."""
    results: dict[str, BaseException | None] = {}

    def put(entry_id: str) -> None:
        try:
            store.put(entry_id, RAW, meta(entry_id))
            results[entry_id] = None
        except BaseException as exc:
            results[entry_id] = exc

    with store._committer:
        threads = [threading.Thread(target=put, args=(i,)) for i in entry_ids]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(store._pending) < len(entry_ids) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(store._pending) == len(entry_ids)
    for thread in threads:
        thread.join(10)
    return results


def test_concurrent_puts_share_one_commit_and_all_are_listed(store: SqliteStore) -> None:
    store.put("AAAA00000030", RAW, meta("AAAA00000030"))  # the index exists
    entry_ids = [f"AAAA0000004{i}" for i in range(8)]
    assert _batched_puts(store, entry_ids) == dict.fromkeys(entry_ids)
    fresh = SqliteStore(store.directory)
    assert set(fresh.ids()) == {"AAAA00000030", *entry_ids}
    for entry_id in entry_ids:
        raw, document = fresh.get(entry_id)
        assert raw == RAW and document["message_id"] == f"<{entry_id}@example.net>"


def test_one_failing_entry_does_not_sink_its_batch(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("AAAA00000050", RAW, meta("AAAA00000050"))
    real_insert = SqliteStore._insert_rows

    def insert(conn: sqlite3.Connection, entry_id: str, metadata: Any, document: str) -> None:
        real_insert(conn, entry_id, metadata, document)
        if entry_id == "AAAA00000052":
            # a row written, then a failure: its savepoint must take the row back
            raise sqlite3.IntegrityError("simulated failure of one entry")

    monkeypatch.setattr(SqliteStore, "_insert_rows", staticmethod(insert))
    entry_ids = ["AAAA00000051", "AAAA00000052", "AAAA00000053"]
    results = _batched_puts(store, entry_ids)
    assert results["AAAA00000051"] is None and results["AAAA00000053"] is None
    assert isinstance(results["AAAA00000052"], StoreError)
    fresh = SqliteStore(store.directory)
    assert set(fresh.ids()) == {"AAAA00000050", "AAAA00000051", "AAAA00000053"}
    assert not (store.directory / "AAAA00000052.eml").exists()
    assert fresh.count(Selection()) == 3


def test_a_failing_group_commit_fails_every_put_of_the_batch(store: SqliteStore) -> None:
    store.put("AAAA00000060", RAW, meta("AAAA00000060"))
    assert store._conn is not None
    store._conn = _CommitProxy(store._conn, False)  # type: ignore[assignment]
    entry_ids = ["AAAA00000061", "AAAA00000062"]
    results = _batched_puts(store, entry_ids)
    assert all(isinstance(results[i], StoreError) for i in entry_ids), results
    fresh = SqliteStore(store.directory)
    assert fresh.ids() == ["AAAA00000060"]
    for entry_id in entry_ids:
        assert not (store.directory / f"{entry_id}.eml").exists()


# -- queries --------------------------------------------------------------------------------------


@pytest.fixture
def filled(store: SqliteStore) -> SqliteStore:
    now = time.time()
    rows = [
        ("AAAA00000101", 5 * 86400, "spammer@bad.example", ["bob@example.com"], 15.0, "forced"),
        ("AAAA00000102", 3600, "alice@example.net", ["bob@example.com", "carol@x.org"], 7.5, ""),
        ("AAAA00000103", 60, "Bob@Sub.Example.NET", ["dave@example.com"], 6.0, ""),
        ("AAAA00000104", 10, "<>", ["bob@example.com"], 9.0, ""),
    ]
    for entry_id, age, sender, rcpts, score, kind in rows:
        findings = [{"symbol": "HDR_DATE_MISSING", "score": 1.5, "detail": ""}]
        reason = f"score {score:g} >= quarantine threshold 6"
        if kind == "forced":
            findings.append({"symbol": "LIST_SENDER_BLOCKED", "score": 0.0, "detail": ""})
            reason = "forced by LIST_SENDER_BLOCKED"
        store.put(
            entry_id,
            RAW,
            meta(
                entry_id,
                time=now - age,
                mail_from=sender,
                rcpt_tos=rcpts,
                score=score,
                reason=reason,
                findings=findings,
            ),
        )
    return store


def ids(store: SqliteStore, **criteria: Any) -> list[str]:
    return [e.id for e in store.select(Selection(**criteria))]


def test_select_filters_and_orders_newest_first(filled: SqliteStore) -> None:
    now = time.time()
    assert ids(filled) == ["AAAA00000104", "AAAA00000103", "AAAA00000102", "AAAA00000101"]
    assert ids(filled, since=now - 7200) == ["AAAA00000104", "AAAA00000103", "AAAA00000102"]
    assert ids(filled, until=now - 7200) == ["AAAA00000101"]
    assert ids(filled, sender="ALICE@example.net") == ["AAAA00000102"]
    assert ids(filled, sender="@sub.example.net") == ["AAAA00000103"]
    assert ids(filled, sender="*@*.example") == ["AAAA00000101"]
    assert ids(filled, sender="<>") == ["AAAA00000104"]
    assert ids(filled, recipient="carol@x.org") == ["AAAA00000102"]
    assert ids(filled, recipient="@example.com") == [
        "AAAA00000104",
        "AAAA00000103",
        "AAAA00000102",
        "AAAA00000101",
    ]
    assert ids(filled, symbol="list_sender_blocked") == ["AAAA00000101"]
    assert ids(filled, min_score=9) == ["AAAA00000104", "AAAA00000101"]
    assert ids(filled, reason="FORCED") == ["AAAA00000101"]
    assert ids(filled, reason="%") == []  # LIKE wildcards are literal
    assert ids(filled, recipient="@example.com", min_score=7, since=now - 7200) == [
        "AAAA00000104",
        "AAAA00000102",
    ]
    assert ids(filled, ids=("AAAA00000101", "AAAA00000103")) == ["AAAA00000103", "AAAA00000101"]
    assert [e.id for e in filled.select(Selection(), limit=2, offset=1)] == [
        "AAAA00000103",
        "AAAA00000102",
    ]
    assert filled.count(Selection(recipient="bob@example.com")) == 3


def test_stats_group_reasons_symbols_and_days(filled: SqliteStore) -> None:
    stats = filled.stats(Selection())
    assert stats.total == 4
    assert stats.by_status == {"quarantined": 4}
    assert dict(stats.by_reason) == {
        "score >= quarantine threshold 6": 3,
        "forced by LIST_SENDER_BLOCKED": 1,
    }
    assert stats.by_symbol[0] == ("HDR_DATE_MISSING", 4)
    assert ("LIST_SENDER_BLOCKED", 1) in stats.by_symbol
    assert sum(n for _, n in stats.by_day) == 4
    assert stats.by_day[0][0] == time.strftime("%Y-%m-%d", time.gmtime())
    assert filled.stats(Selection(sender="nobody@example.net")).total == 0


# -- delete, expiry, sweep ------------------------------------------------------------------------


def test_delete_unlists_then_removes_the_files(filled: SqliteStore) -> None:
    assert filled.delete(["AAAA00000101", "AAAA00000199"]) == ["AAAA00000101"]
    assert "AAAA00000101" not in filled.ids()
    assert not (filled.directory / "AAAA00000101.eml").exists()
    assert not (filled.directory / "AAAA00000101.json").exists()
    assert filled.count(Selection(symbol="LIST_SENDER_BLOCKED")) == 0
    conn = sqlite3.connect(filled.index_path)
    for table in ("recipients", "findings"):
        sql = f"SELECT count(*) FROM {table} WHERE entry = 'AAAA00000101'"
        assert conn.execute(sql).fetchone() == (0,)
    conn.close()


def test_expiry_deletes_only_expired_entries_not_being_released(store: SqliteStore) -> None:
    now = time.time()
    store.put("AAAA00000201", RAW, meta("AAAA00000201", expires=now - 1))
    store.put("AAAA00000202", RAW, meta("AAAA00000202", expires=now - 1))
    store.put("AAAA00000203", RAW, meta("AAAA00000203", expires=now + 3600))
    store.put("AAAA00000204", RAW, meta("AAAA00000204", expires=None))  # retention_days = 0
    store.begin_release("AAAA00000202")
    assert expire(store, now) == ["AAAA00000201"]
    assert store.ids() == ["AAAA00000202", "AAAA00000203", "AAAA00000204"]
    assert maintain_once(store, now + 7200) == (1, 0)
    assert store.ids() == ["AAAA00000202", "AAAA00000204"]


async def test_the_gateway_task_expires_periodically_and_survives_errors(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("AAAA00000211", RAW, meta("AAAA00000211", expires=time.time() - 1))
    calls = []
    real = store.sweep

    def flaky_sweep(min_age: float = 3600.0) -> int:
        calls.append(min_age)
        if len(calls) == 1:
            raise StoreError("disk trouble")
        return real(min_age)

    monkeypatch.setattr(store, "sweep", flaky_sweep)
    task = asyncio.create_task(run_maintenance(store, first_run=0, interval=0.05))
    for _ in range(100):
        if len(calls) >= 2:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert len(calls) >= 2
    assert store.ids() == []


def _orphan(store: SqliteStore, entry_id: str, age: float) -> None:
    for suffix in (".eml", ".json"):
        path = store.directory / f"{entry_id}{suffix}"
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age, time.time() - age))


def test_sweep_removes_old_unlisted_files_only(store: SqliteStore) -> None:
    store.put("AAAA00000301", RAW, meta("AAAA00000301"))
    old = time.time() - 7200
    os.utime(store.directory / "AAAA00000301.eml", (old, old))
    _orphan(store, "AAAA00000302", 7200)  # remains of a crash before the commit
    _orphan(store, "AAAA00000303", 10)  # maybe a put in progress: too young
    stale = store.directory / ".tmp" / "AAAA00000304.eml"
    stale.write_bytes(b"half")
    os.utime(stale, (old, old))
    assert store.sweep(3600) == 3
    assert files_in(store.directory) == [
        "AAAA00000301.eml",
        "AAAA00000301.json",
        "AAAA00000303.eml",
        "AAAA00000303.json",
    ]
    assert list((store.directory / ".tmp").iterdir()) == []


def test_sweep_without_an_index_keeps_every_message(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "quarantine")
    (tmp_path / "quarantine").mkdir()
    _orphan(store, "AAAA00000305", 7200)
    assert store.sweep(0) == 0
    assert len(files_in(store.directory)) == 2


def test_a_sweep_racing_a_put_makes_the_put_fail_never_a_listed_entry_without_file(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("AAAA00000310", RAW, meta("AAAA00000310"))
    other = SqliteStore(store.directory)  # another process's maintenance, say
    real = SqliteStore._commit_entry

    def sweep_first(self: SqliteStore, *args: Any) -> None:
        assert other.sweep(min_age=-1) == 2  # takes this put's files: unlisted yet
        real(self, *args)

    monkeypatch.setattr(SqliteStore, "_commit_entry", sweep_first)
    with pytest.raises(StoreError, match="vanished"):
        store.put("AAAA00000311", RAW, meta("AAAA00000311"))
    assert store.ids() == ["AAAA00000310"]
    assert files_in(store.directory) == ["AAAA00000310.eml", "AAAA00000310.json"]


# -- release claims and labels --------------------------------------------------------------------


def test_a_release_is_claimed_once_and_recorded(store: SqliteStore) -> None:
    store.put("AAAA00000401", RAW, meta("AAAA00000401"))
    assert store.begin_release("AAAA00000401").status == "releasing"
    with pytest.raises(ReleaseRefused, match="being released"):
        store.begin_release("AAAA00000401")
    store.end_release("AAAA00000401", delivered=False, note="451 4.4.1 down")
    entry = store.entry("AAAA00000401")
    assert (entry.status, entry.release_note, entry.released_at) == (
        "quarantined",
        "451 4.4.1 down",
        None,
    )
    store.begin_release("AAAA00000401")
    store.end_release("AAAA00000401", delivered=True, note="250 ok")
    entry = store.entry("AAAA00000401")
    assert entry.status == "released"
    assert entry.released_at is not None
    with pytest.raises(ReleaseRefused, match="was released"):
        store.begin_release("AAAA00000401")
    store.begin_release("AAAA00000401", again=True)
    store.end_release("AAAA00000401", delivered=False, note="failed")
    assert store.entry("AAAA00000401").status == "released"  # the earlier release stands


def test_a_claim_of_a_dead_process_is_taken_over(store: SqliteStore) -> None:
    store.put("AAAA00000402", RAW, meta("AAAA00000402"))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    conn = sqlite3.connect(store.index_path)
    owner = f"{socket.gethostname()}:{dead.stdout.strip()}"
    conn.execute(
        "UPDATE entries SET status = 'releasing', claimed_by = ?, claimed_at = ?",
        (owner, time.time()),
    )
    conn.commit()
    conn.close()
    assert store.begin_release("AAAA00000402").status == "releasing"


def test_labels_keep_the_message_for_the_classifier_after_delete(store: SqliteStore) -> None:
    store.put("AAAA00000501", RAW, meta("AAAA00000501"))
    feedback = store.label("AAAA00000501", "spam", "admin")
    assert feedback.message_path == "feedback/AAAA00000501.eml"
    assert store.entry("AAAA00000501").label == "spam"
    store.label("AAAA00000501", "ham", "other-admin")  # a change of mind replaces the label
    store.delete(["AAAA00000501"])
    [kept] = store.feedback()
    assert (kept.id, kept.label, kept.labelled_by) == ("AAAA00000501", "ham", "other-admin")
    assert kept.extra["symbols"] == ["HDR_DATE_MISSING", "HDR_FROM_MULTIPLE"]
    assert kept.extra["score"] == 7.5
    assert (store.directory / kept.message_path).read_bytes() == RAW
    assert store.feedback(since=time.time() + 60) == []
    with pytest.raises(ValueError):
        store.label("AAAA00000501", "maybe", "admin")


# -- configuration and header decoding ------------------------------------------------------------


def test_retention_days_is_read_from_the_quarantine_table(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[relay]\ndomains = ["example.com"]\n[quarantine]\nretention_days = 7\n')
    assert load_settings(config).quarantine.retention_days == 7
    config.write_text('[relay]\ndomains = ["example.com"]\n')
    assert load_settings(config).quarantine.retention_days == 30
    config.write_text('[relay]\ndomains = ["example.com"]\n[quarantine]\nretention_days = -1\n')
    with pytest.raises(ConfigErrors, match=r"quarantine\.retention_days"):
        load_settings(config)
    config.write_text('[relay]\ndomains = ["example.com"]\n[quarantine]\nretain = 1\n')
    with pytest.raises(ConfigErrors, match="unknown setting"):
        load_settings(config)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?utf-8?b?G1sySg==?= tail", "\x1b[2J tail"),
        ("=?x-unknown?q?abc?=", "abc"),
        ("=?utf-8?q?=FF?=", "\ufffd"),
        ("plain \udcff bytes", "plain \udcff bytes"),
        ("=?utf-8?q?broken", "=?utf-8?q?broken"),
    ],
)
def test_subjects_are_decoded_without_ever_raising(value: str, expected: str) -> None:
    assert decode_encoded_words(value, 2000) == expected
