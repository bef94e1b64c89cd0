"""The embedded quarantine store: one .eml file per message and an SQLite index (WAL).

The quarantine folder holds:

    <ID>.eml                    the message as stored: our trace fields, then what the client sent
    <ID>.json                   the metadata, as in the index (to rebuild a lost index by hand;
                                written without fsync: the index holds it durably)
    .tmp/                       files being written; anything old there is the remains of a crash
    index/quarantine.sqlite3    the index (with its -wal and -shm files while in use)
    feedback/<ID>.eml           messages an admin labelled with `learn` (hard links), kept for the
                                classifier after the entry itself is deleted or expires

Commit protocol. `put` writes the .eml durably and the .json (temp file, fsync for the .eml,
rename, fsync the folder), then inserts the index row in one write transaction with
`synchronous=FULL`: the row is the commit mark. A process killed before the COMMIT leaves at
most files without a row, which no listing shows (`sweep` removes them later); killed after it,
the entry is complete, because its message file was on disk before the row was written.
Deleting goes the other way round: row first, files after. The gateway answers 250 only after
`put` returned.

Concurrency. WAL lets readers (the CLI's `list`) run while the gateway writes; every write is one
short `BEGIN IMMEDIATE` transaction, and a busy timeout makes writers from other processes (more
gateway workers, the CLI) wait for each other instead of failing. Within a process one connection
is shared under a lock: file writing, the slow part of `put`, happens outside it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from gateway.quarantine import store as files
from gateway.quarantine.model import (
    DAY,
    LABELS,
    QUARANTINED,
    RELEASED,
    RELEASING,
    Entry,
    Feedback,
    NotFound,
    ReleaseRefused,
    Selection,
    Stats,
    storable,
)
from gateway.quarantine.store import StoreError

INDEX_DIR = "index"
INDEX_FILE = "quarantine.sqlite3"
FEEDBACK_DIR = "feedback"
SCHEMA_VERSION = 1
# A release claim from another host is considered abandoned after this long.
CLAIM_LIFETIME = 3600.0
_FILE = re.compile(r"^([A-Z0-9]{6,32})\.(eml|json)$")
_CHUNK = 500  # ids per statement: well under SQLite's limit on bound parameters

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        id TEXT PRIMARY KEY,
        received REAL NOT NULL,          -- unix time the gateway stored it
        mail_from TEXT NOT NULL,         -- envelope sender; undecodable bytes as \\xNN
        header_from TEXT,
        subject TEXT,                    -- RFC 2047 decoded, untrusted
        message_id TEXT,
        client_ip TEXT NOT NULL,
        size INTEGER NOT NULL,
        score REAL NOT NULL,
        reason TEXT NOT NULL,
        policy_version TEXT,
        expires REAL,                    -- unix time; NULL: kept until deleted
        status TEXT NOT NULL,            -- quarantined, releasing, released
        claimed_by TEXT,                 -- host:pid of a release under way
        claimed_at REAL,
        released_at REAL,
        release_note TEXT,
        sender_domain TEXT NOT NULL      -- lowercase, for --from @domain
    )""",
    "CREATE INDEX IF NOT EXISTS entries_received ON entries(received, id)",
    "CREATE INDEX IF NOT EXISTS entries_sender ON entries(mail_from COLLATE NOCASE)",
    "CREATE INDEX IF NOT EXISTS entries_sender_domain ON entries(sender_domain)",
    "CREATE INDEX IF NOT EXISTS entries_score ON entries(score)",
    # The whole metadata (JSON, lossless), apart: `entries` rows stay small, so scans are fast.
    """CREATE TABLE IF NOT EXISTS documents (
        id TEXT PRIMARY KEY,
        metadata TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires) WHERE expires IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS recipients (
        entry TEXT NOT NULL,
        address TEXT NOT NULL,
        domain TEXT NOT NULL             -- lowercase, for --to @domain
    )""",
    "CREATE INDEX IF NOT EXISTS recipients_address ON recipients(address COLLATE NOCASE, entry)",
    "CREATE INDEX IF NOT EXISTS recipients_domain ON recipients(domain, entry)",
    "CREATE INDEX IF NOT EXISTS recipients_entry ON recipients(entry)",
    """CREATE TABLE IF NOT EXISTS findings (
        entry TEXT NOT NULL,
        symbol TEXT NOT NULL,
        score REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS findings_symbol ON findings(symbol, entry)",
    "CREATE INDEX IF NOT EXISTS findings_entry ON findings(entry)",
    # The admins' labels for the classifier. Not tied to `entries`: a label outlives the entry.
    """CREATE TABLE IF NOT EXISTS feedback (
        id TEXT PRIMARY KEY,             -- the quarantine id (= X-Mailgate-ID of the message)
        label TEXT NOT NULL CHECK (label IN ('spam', 'ham')),
        labelled_at REAL NOT NULL,       -- unix time of the (last) label
        labelled_by TEXT NOT NULL,       -- the admin's login name
        message_path TEXT NOT NULL,      -- relative to the quarantine folder: feedback/<id>.eml
        received REAL NOT NULL,          -- when the gateway quarantined it
        score REAL NOT NULL,             -- the gateway's verdict at the time...
        symbols TEXT NOT NULL,           -- ... JSON list of the symbols found
        policy_version TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_labelled_at ON feedback(labelled_at)",
)

# "score 7.5 >= quarantine threshold 6" and "score 9 >= ..." are one reason for the statistics.
_SCORE_REASON = re.compile(r"^score \S+ >= (.*)$", re.DOTALL)


def _check_id(entry_id: str) -> None:
    if not files._ID.match(entry_id):
        raise NotFound(f"invalid quarantine id {entry_id!r}")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def _address_clause(column: str, domain_column: str, pattern: str) -> tuple[str, list[Any]]:
    value = storable(pattern.strip())
    if "*" in value:
        return f"{column} LIKE ? ESCAPE '\\'", [_like_escape(value).replace("*", "%")]
    if value.startswith("@"):
        return f"{domain_column} = ?", [value[1:].lower()]
    return f"{column} = ? COLLATE NOCASE", [value]


def _where(selection: Selection) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if selection.ids:
        clauses.append(f"e.id IN ({','.join('?' * len(selection.ids))})")
        params += [i.upper() for i in selection.ids]
    if selection.since is not None:
        clauses.append("e.received >= ?")
        params.append(selection.since)
    if selection.until is not None:
        clauses.append("e.received < ?")
        params.append(selection.until)
    if selection.sender is not None:
        clause, values = _address_clause("e.mail_from", "e.sender_domain", selection.sender)
        clauses.append(clause)
        params += values
    if selection.recipient is not None:
        clause, values = _address_clause("r.address", "r.domain", selection.recipient)
        clauses.append(f"e.id IN (SELECT r.entry FROM recipients r WHERE {clause})")
        params += values
    if selection.symbol is not None:
        clauses.append("e.id IN (SELECT f.entry FROM findings f WHERE f.symbol = ?)")
        params.append(selection.symbol.upper())
    if selection.min_score is not None:
        clauses.append("e.score >= ?")
        params.append(selection.min_score)
    if selection.reason is not None:
        clauses.append("e.reason LIKE ? ESCAPE '\\'")
        params.append(f"%{_like_escape(storable(selection.reason))}%")
    if selection.status is not None:
        clauses.append("e.status = ?")
        params.append(selection.status)
    if selection.expired_by is not None:
        clauses.append("e.expires IS NOT NULL AND e.expires <= ?")
        params.append(selection.expired_by)
    return (" AND ".join(clauses) or "1"), params


def metadata_document(metadata: Mapping[str, Any], compact: bool = False) -> str:
    """The metadata as JSON: ASCII only, so undecodable bytes (surrogate escapes) survive."""
    if compact:
        return json.dumps(dict(metadata), ensure_ascii=True, separators=(",", ":"))
    return json.dumps(dict(metadata), ensure_ascii=True, indent=1, sort_keys=True)


def _text(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return None if value is None else storable(str(value))


def _number(metadata: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = metadata.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _claim_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim_alive(owner: str | None, claimed_at: float | None) -> bool:
    """Is the process that claimed a release still at it? Same host: ask the kernel."""
    if not owner:
        return False
    host, _, pid_text = owner.rpartition(":")
    if host == socket.gethostname() and pid_text.isdigit():
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return claimed_at is not None and time.time() - claimed_at < CLAIM_LIFETIME


class SqliteStore:
    """The default store. `create=False` (the CLI) never creates the index: no index, no entries.

    Blocking calls; safe to share between threads.
    """

    def __init__(self, directory: Path, *, busy_timeout: float = 10.0, create: bool = True) -> None:
        self.directory = directory
        self.index_path = directory / INDEX_DIR / INDEX_FILE
        self.busy_timeout = busy_timeout
        self.create = create
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._pending: list[_Pending] = []  # entries waiting for the group commit
        self._pending_lock = threading.Lock()
        self._committer = threading.Lock()  # one group commit at a time

    # -- connection ------------------------------------------------------------------------

    def _open(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not self.index_path.exists():
            if not (create and self.create):
                return None
            index_dir = self.index_path.parent
            if not index_dir.is_dir():
                index_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                files._fsync_dir(self.directory)
        conn = sqlite3.connect(
            str(self.index_path),
            timeout=self.busy_timeout,
            isolation_level=None,  # we say BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # shared between the gateway's threads, under self._lock
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                raise StoreError(f"{self.index_path}: cannot use WAL mode (got {mode})")
            # FULL: a COMMIT is on disk when it returns, as the 250 after it promises.
            conn.execute("PRAGMA synchronous=FULL")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.index_path} was written by a newer mailgate")
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _reset(self) -> None:
        """Drop the connection after an error: the next call opens a fresh one (the disk may be
        back, the index replaced); SQLite rolls back whatever was left open."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._reset()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            self._reset()
            raise StoreError(f"quarantine index {self.index_path}: {what}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"quarantine {self.directory}: {what}: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """One read transaction: a consistent snapshot, never blocking the writer (WAL)."""
        with self._lock, self._errors("reading"):
            conn = self._open(create=False)
            if conn is None:
                yield None
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("COMMIT")

    @contextlib.contextmanager
    def _writing(self, what: str, create: bool = False) -> Iterator[sqlite3.Connection]:
        """One short write transaction; BEGIN IMMEDIATE so the busy timeout covers it all."""
        with self._lock, self._errors(what):
            conn = self._open(create=create)
            if conn is None:
                raise NotFound("the quarantine is empty (no index yet)")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _paths(self, entry_id: str) -> tuple[Path, Path]:
        return self.directory / f"{entry_id}.eml", self.directory / f"{entry_id}.json"

    # -- the gateway's call ----------------------------------------------------------------

    def put(self, entry_id: str, raw: bytes, metadata: Mapping[str, Any]) -> None:
        """Store durably and list, or raise StoreError and leave nothing listed."""
        if not files._ID.match(entry_id):
            raise StoreError(f"invalid quarantine id {entry_id!r}")
        eml, meta = self._paths(entry_id)
        tmp = self.directory / ".tmp"
        document = metadata_document(metadata)
        stage = "files"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            if eml.exists() or meta.exists():
                stage = "taken"
                raise FileExistsError(f"quarantine id {entry_id} is taken")
            files._write_durably(tmp / eml.name, eml, raw)
            # The index row carries the same document durably: this copy needs no fsync.
            files._write_durably(tmp / meta.name, meta, document.encode("ascii"), sync=False)
            stage = "index"  # the folder's fsync comes with the index commit (group commit)
            self._commit_entry(entry_id, metadata, metadata_document(metadata, True), eml)
        except (OSError, sqlite3.Error, StoreError) as exc:
            if isinstance(exc, _CommitFailed):
                stage = "commit"
            if stage != "taken" and not self._listed_after_failure(entry_id, stage):
                # The client hears 4xx and sends again under a new id: leave no trace.
                for leftover in (tmp / eml.name, tmp / meta.name, meta, eml):
                    # Best effort: when the folder itself is unusable the unlink fails too.
                    with contextlib.suppress(OSError):
                        leftover.unlink(missing_ok=True)
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, sqlite3.Error):
                self.close()
                detail = f"index {self.index_path}: {exc}"
            else:
                detail = str(exc.strerror or exc)
            raise StoreError(f"cannot store in {self.directory}: {detail}") from exc

    def _listed_after_failure(self, entry_id: str, stage: str) -> bool:
        """After a failure in COMMIT itself SQLite may or may not have written the row; keep the
        files unless the row is certainly absent (a listed entry must never lose its message)."""
        if stage != "commit":
            return False
        try:
            with self._lock:
                self._reset()
                conn = self._open(create=False)
                if conn is None:
                    return False
                row = conn.execute("SELECT 1 FROM entries WHERE id = ?", (entry_id,)).fetchone()
                return row is not None
        except (sqlite3.Error, OSError, StoreError):
            return True

    def _commit_entry(
        self, entry_id: str, metadata: Mapping[str, Any], document: str, eml: Path
    ) -> None:
        """List one entry whose files are written; returns once its row is committed.

        Group commit: puts that reach this point while another commit is under way queue up,
        and the next committer lists them all with one fsync of the folder and one transaction
        (one fsync of the WAL) instead of one each. Every put still returns only after its own
        row is on disk, and each entry fails or succeeds on its own."""
        mine = _Pending(entry_id, metadata, document, eml)
        with self._pending_lock:
            self._pending.append(mine)
        with self._committer:
            if not mine.done:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_batch(batch)
        if mine.error is not None:
            raise copy.copy(mine.error)  # its own object: the batch's puts raise in parallel

    def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            files._fsync_dir(self.directory)  # the renames of every file in the batch
            with self._lock:
                conn = self._open(create=True)
                if conn is None:
                    raise StoreError(f"{self.index_path} does not exist (store opened for reading)")
                conn.execute("BEGIN IMMEDIATE")
                listed = self._insert_batch(conn, batch)
                if not listed:
                    conn.execute("ROLLBACK")
                    return
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    failed = _CommitFailed(str(exc))
                    for pending in listed:
                        pending.fail(failed)
                    return
                for pending in listed:
                    pending.done = True  # listed, on disk
        except (OSError, sqlite3.Error, StoreError) as exc:
            for pending in batch:
                if not pending.done:
                    pending.fail(exc)
        finally:
            for pending in batch:
                if not pending.done:  # something unexpected stopped the commit: not listed
                    pending.fail(StoreError("the quarantine commit was interrupted"))

    def _insert_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> list[_Pending]:
        """Insert each entry under its own savepoint: one bad entry does not sink the others."""
        listed = []
        for pending in batch:
            # `sweep` deletes unlisted files under this same write lock: once we hold it, the
            # message file is either still there (and stays) or gone (and this entry fails).
            if not pending.eml.exists():
                pending.fail(FileNotFoundError(f"{pending.eml} vanished before it was listed"))
                continue
            conn.execute("SAVEPOINT entry")
            try:
                self._insert_rows(conn, pending.entry_id, pending.metadata, pending.document)
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO entry")
                    conn.execute("RELEASE entry")
                pending.fail(exc)
                continue
            conn.execute("RELEASE entry")
            listed.append(pending)
        return listed

    @staticmethod
    def _insert_rows(
        conn: sqlite3.Connection, entry_id: str, metadata: Mapping[str, Any], document: str
    ) -> None:
        expires = metadata.get("expires")
        sender = _text(metadata, "mail_from") or ""
        conn.execute(
            "INSERT INTO entries (id, received, mail_from, header_from, subject, message_id,"
            " client_ip, size, score, reason, policy_version, expires, status, sender_domain)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry_id,
                _number(metadata, "time", time.time()),
                sender,
                _text(metadata, "from"),
                _text(metadata, "subject"),
                _text(metadata, "message_id"),
                _text(metadata, "client_ip") or "",
                int(_number(metadata, "size")),
                _number(metadata, "score"),
                _text(metadata, "reason") or "",
                _text(metadata, "policy_version"),
                float(expires) if isinstance(expires, int | float) else None,
                QUARANTINED,
                _domain(sender),
            ),
        )
        conn.execute("INSERT INTO documents (id, metadata) VALUES (?, ?)", (entry_id, document))
        rcpts = metadata.get("rcpt_tos")
        addresses = [storable(str(r)) for r in (rcpts if isinstance(rcpts, list) else [])]
        conn.executemany(
            "INSERT INTO recipients (entry, address, domain) VALUES (?, ?, ?)",
            [(entry_id, address, _domain(address)) for address in addresses],
        )
        found = metadata.get("findings")
        conn.executemany(
            "INSERT INTO findings (entry, symbol, score) VALUES (?, ?, ?)",
            [
                (entry_id, storable(str(f.get("symbol", "?"))), _number(f, "score"))
                for f in (found if isinstance(found, list) else [])
                if isinstance(f, dict)
            ],
        )

    # -- reading ---------------------------------------------------------------------------

    def select(
        self, selection: Selection, limit: int | None = None, offset: int = 0
    ) -> list[Entry]:
        """Matching entries, newest first."""
        where, params = _where(selection)
        page = ""
        if limit is not None:
            page = " LIMIT ? OFFSET ?"
            params += [limit, offset]
        # Pick the page first, then fetch the (large) metadata of those rows only.
        sql = (
            "SELECT p.id, p.status, p.released_at, p.release_note, d.metadata, f.label FROM"
            " (SELECT e.id, e.status, e.released_at, e.release_note, e.received FROM entries e"
            f" WHERE {where} ORDER BY e.received DESC, e.id DESC{page}) p"
            " JOIN documents d ON d.id = p.id LEFT JOIN feedback f ON f.id = p.id"
            " ORDER BY p.received DESC, p.id DESC"
        )
        with self._reading() as conn:
            if conn is None:
                return []
            rows = conn.execute(sql, params).fetchall()
        return [
            Entry(
                id=row[0],
                status=row[1],
                released_at=row[2],
                release_note=row[3],
                metadata=json.loads(row[4]),
                label=row[5],
            )
            for row in rows
        ]

    def count(self, selection: Selection) -> int:
        where, params = _where(selection)
        with self._reading() as conn:
            if conn is None:
                return 0
            return int(
                conn.execute(f"SELECT count(*) FROM entries e WHERE {where}", params).fetchone()[0]
            )

    def ids(self) -> list[str]:
        with self._reading() as conn:
            if conn is None:
                return []
            return [row[0] for row in conn.execute("SELECT id FROM entries ORDER BY id")]

    def entry(self, entry_id: str) -> Entry:
        _check_id(entry_id.upper())
        found = self.select(Selection(ids=(entry_id.upper(),)))
        if not found:
            raise NotFound(f"no quarantine entry {entry_id}")
        return found[0]

    def open_message(self, entry_id: str) -> BinaryIO:
        entry = self.entry(entry_id)
        try:
            return open(self._paths(entry.id)[0], "rb")  # the caller closes it
        except OSError as exc:
            raise StoreError(f"message file of {entry.id}: {exc.strerror or exc}") from exc

    def get(self, entry_id: str) -> tuple[bytes, dict[str, Any]]:
        """The stored message and its metadata."""
        entry = self.entry(entry_id)
        with self.open_message(entry.id) as handle:
            return handle.read(), dict(entry.metadata)

    def stats(self, selection: Selection) -> Stats:
        where, params = _where(selection)
        with self._reading() as conn:
            if conn is None:
                return Stats(0, {}, [], [], [])
            by_status = {
                str(s): int(n)
                for s, n in conn.execute(
                    f"SELECT e.status, count(*) FROM entries e WHERE {where} GROUP BY 1", params
                )
            }
            reasons = conn.execute(
                f"SELECT e.reason, count(*) FROM entries e WHERE {where} GROUP BY 1", params
            ).fetchall()
            if selection.is_everything():  # no need to look at the entries at all
                symbol_sql = "SELECT f.symbol, count(DISTINCT f.entry) FROM findings f GROUP BY 1"
            else:
                symbol_sql = (
                    "SELECT f.symbol, count(DISTINCT f.entry) FROM findings f"
                    f" JOIN entries e ON e.id = f.entry WHERE {where} GROUP BY 1"
                )
            symbols = conn.execute(symbol_sql, params).fetchall()
            days = conn.execute(
                "SELECT CAST(e.received / 86400 AS INTEGER), count(*)"
                f" FROM entries e WHERE {where} GROUP BY 1",
                params,
            ).fetchall()
        # Grouping and formatting here is cheaper than per-row SQL expressions on 100k rows.
        by_reason: dict[str, int] = {}
        for reason, count in reasons:
            key = _SCORE_REASON.sub(r"score >= \1", str(reason))
            by_reason[key] = by_reason.get(key, 0) + int(count)
        return Stats(
            total=sum(by_status.values()),
            by_status=by_status,
            by_reason=sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])),
            by_symbol=sorted(
                ((str(k), int(n)) for k, n in symbols), key=lambda kv: (-kv[1], kv[0])
            ),
            by_day=[
                (time.strftime("%Y-%m-%d", time.gmtime(int(day) * DAY)), int(n))
                for day, n in sorted(days, reverse=True)
            ],
        )

    # -- admin actions ---------------------------------------------------------------------

    def delete(self, entry_ids: Sequence[str]) -> list[str]:
        """Unlist, then remove the files; returns the ids that were listed."""
        deleted: list[str] = []
        for start in range(0, len(entry_ids), _CHUNK):
            chunk = [i.upper() for i in entry_ids[start : start + _CHUNK]]
            marks = ",".join("?" * len(chunk))
            try:
                with self._writing("deleting") as conn:
                    found = [
                        row[0]
                        for row in conn.execute(
                            f"SELECT id FROM entries WHERE id IN ({marks})", chunk
                        )
                    ]
                    conn.execute(f"DELETE FROM recipients WHERE entry IN ({marks})", chunk)
                    conn.execute(f"DELETE FROM findings WHERE entry IN ({marks})", chunk)
                    conn.execute(f"DELETE FROM documents WHERE id IN ({marks})", chunk)
                    conn.execute(f"DELETE FROM entries WHERE id IN ({marks})", chunk)
            except NotFound:
                return deleted
            # Unlisted now: a crash before these unlinks leaves orphans for `sweep`.
            for entry_id in found:
                for path in self._paths(entry_id):
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
            deleted += found
        return deleted

    def begin_release(self, entry_id: str, *, again: bool = False) -> Entry:
        """Claim the entry for one release; ReleaseRefused if released or claimed already."""
        _check_id(entry_id.upper())
        entry_id = entry_id.upper()
        with self._writing("claiming a release") as conn:
            row = conn.execute(
                "SELECT status, claimed_by, claimed_at, released_at FROM entries WHERE id = ?",
                (entry_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no quarantine entry {entry_id}")
            status, owner, claimed_at, released_at = row
            if status == RELEASING and _claim_alive(owner, claimed_at):
                raise ReleaseRefused(
                    f"{entry_id} is being released by {owner} since {_utc(claimed_at)}"
                )
            if released_at is not None and not again:
                raise ReleaseRefused(f"{entry_id} was released at {_utc(released_at)}")
            conn.execute(
                "UPDATE entries SET status = ?, claimed_by = ?, claimed_at = ? WHERE id = ?",
                (RELEASING, _claim_owner(), time.time(), entry_id),
            )
        return self.entry(entry_id)

    def end_release(self, entry_id: str, *, delivered: bool, note: str) -> None:
        """Record the outcome: released, or back to where it was (with the reason why not)."""
        with self._writing("recording a release") as conn:
            if delivered:
                conn.execute(
                    "UPDATE entries SET status = ?, released_at = ?, release_note = ?,"
                    " claimed_by = NULL, claimed_at = NULL WHERE id = ?",
                    (RELEASED, time.time(), storable(note), entry_id.upper()),
                )
            else:
                conn.execute(
                    "UPDATE entries SET status = CASE WHEN released_at IS NULL THEN ? ELSE ? END,"
                    " release_note = ?, claimed_by = NULL, claimed_at = NULL WHERE id = ?",
                    (QUARANTINED, RELEASED, storable(note), entry_id.upper()),
                )

    def label(self, entry_id: str, label: str, user: str) -> Feedback:
        """Record an admin's spam/ham label, keeping a link to the message for the trainer."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}")
        entry = self.entry(entry_id)
        relative = f"{FEEDBACK_DIR}/{entry.id}.eml"
        target = self.directory / relative
        with self._errors("keeping the message for feedback"):
            if not target.exists():
                target.parent.mkdir(mode=0o700, exist_ok=True)
                source = self._paths(entry.id)[0]
                try:
                    os.link(source, target)
                except OSError:  # no hard links here (another file system, no permission)
                    tmp = self.directory / ".tmp" / f"{entry.id}.feedback"
                    tmp.parent.mkdir(exist_ok=True)
                    shutil.copyfile(source, tmp)
                    os.replace(tmp, target)
                files._fsync_dir(target.parent)
        now = time.time()
        symbols = json.dumps([f.symbol for f in entry.findings], ensure_ascii=True)
        with self._writing("recording a label") as conn:
            conn.execute(
                "INSERT INTO feedback (id, label, labelled_at, labelled_by, message_path,"
                " received, score, symbols, policy_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET label = excluded.label,"
                " labelled_at = excluded.labelled_at, labelled_by = excluded.labelled_by",
                (
                    entry.id,
                    label,
                    now,
                    storable(user),
                    relative,
                    entry.received,
                    entry.score,
                    symbols,
                    entry.policy_version,
                ),
            )
        return Feedback(entry.id, label, now, user, relative)

    def feedback(self, since: float | None = None) -> list[Feedback]:
        """The labels, oldest first (what the classifier's trainer reads)."""
        with self._reading() as conn:
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT id, label, labelled_at, labelled_by, message_path, received, score,"
                " symbols, policy_version FROM feedback WHERE labelled_at >= ?"
                " ORDER BY labelled_at, id",
                (since if since is not None else float("-inf"),),
            ).fetchall()
        return [
            Feedback(
                id=r[0],
                label=r[1],
                labelled_at=r[2],
                labelled_by=r[3],
                message_path=r[4],
                extra={
                    "received": r[5],
                    "score": r[6],
                    "symbols": json.loads(r[7]),
                    "policy_version": r[8],
                },
            )
            for r in rows
        ]

    def sweep(self, min_age: float = 3600.0) -> int:
        """Remove what crashes left: temp files, and message files no index row lists.

        Only files older than `min_age` are touched, and unlisted files are removed while holding
        the index's write lock, which `put` takes before it checks its file and lists it.
        Without an index nothing but temp files is removed (a lost index is no reason to delete
        every message: rebuild it from the .json files instead).
        """
        if not self.directory.is_dir():
            return 0
        cutoff = time.time() - min_age
        removed = 0
        tmp = self.directory / ".tmp"
        with self._errors("sweeping"):
            for path in tmp.iterdir() if tmp.is_dir() else []:
                if path.lstat().st_mtime <= cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
            candidates: dict[str, list[Path]] = {}
            for path in self.directory.iterdir():
                match = _FILE.match(path.name)
                if match and path.lstat().st_mtime <= cutoff:
                    candidates.setdefault(match.group(1), []).append(path)
        if not candidates:
            return removed
        try:
            with self._writing("sweeping") as conn:
                names = sorted(candidates)
                listed: set[str] = set()
                for start in range(0, len(names), _CHUNK):
                    chunk = names[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    listed.update(
                        row[0]
                        for row in conn.execute(
                            f"SELECT id FROM entries WHERE id IN ({marks})", chunk
                        )
                    )
                for entry_id, paths in candidates.items():
                    if entry_id in listed:
                        continue
                    for path in paths:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                            removed += 1
        except NotFound:
            pass
        return removed


class _Pending:
    """One entry waiting for the group commit; `error` is set if it could not be listed."""

    __slots__ = ("document", "done", "eml", "entry_id", "error", "metadata")

    def __init__(
        self, entry_id: str, metadata: Mapping[str, Any], document: str, eml: Path
    ) -> None:
        self.entry_id = entry_id
        self.metadata = metadata
        self.document = document
        self.eml = eml
        self.done = False
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True


class _CommitFailed(sqlite3.Error):
    """COMMIT itself failed: whether the row is on disk must be checked, not assumed."""


def _utc(when: float | None) -> str:
    if when is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
