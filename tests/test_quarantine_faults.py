"""The quarantine under faults and load, over real sockets: full disk, read-only folder, full or
locked index, and the CLI reading and writing while the gateway quarantines.

The file-system faults are real where the machine allows it: a tiny tmpfs that fills up, a
read-only bind mount (which stops root too, unlike chmod). They need root and mount(8); without
them they skip (the monkeypatched ENOSPC and unusable-folder tests in test_downstream_faults.py
still run everywhere).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import GatewayFactory, RecordingSink, RunningGateway, message
from quarantine_fixtures import CliResult, QuarantineCli, run_mailgate, send
from test_downstream_faults import SUSPICIOUS

from gateway.quarantine import Selection, SqliteStore


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=10)


@pytest.fixture
def can_mount(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("mount(8) is not available")
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    except (subprocess.CalledProcessError, OSError):
        pytest.skip("cannot mount here (needs root with CAP_SYS_ADMIN)")
    _unmount(probe)


@pytest.fixture
def small_disk(can_mount: None, tmp_path: Path) -> Iterator[Path]:
    """The quarantine folder on a 2 MB file system of its own."""
    folder = tmp_path / "quarantine"
    folder.mkdir()
    _mount("-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        _unmount(folder)


@pytest.fixture
def read_only_folder(can_mount: None, tmp_path: Path) -> Iterator[Path]:
    """The quarantine folder mounted read-only (EROFS for everyone, root included)."""
    folder = tmp_path / "quarantine"
    folder.mkdir()
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,bind,ro", str(folder))
        yield folder
    finally:
        _unmount(folder)


def listed_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


async def test_a_full_disk_answers_451_cleans_up_and_serving_goes_on(
    small_disk: Path, start_gateway: GatewayFactory, sink: RecordingSink, quarantine_all: Path
) -> None:
    gw: RunningGateway = await start_gateway()
    first = await send(gw, message(subject="fits"))
    assert first.code == 250
    free_before = shutil.disk_usage(small_disk).free
    too_big = message(subject="too big", body=(b"z" * 998 + b"\r\n") * 3000)  # 3 MB > 2 MB disk
    refused = await send(gw, too_big)
    assert refused.code == 451, refused
    assert refused.text.startswith("4.3.0 Could not store message")
    assert shutil.disk_usage(small_disk).free >= free_before - 8192  # the partial file is gone
    assert listed_files(small_disk) == [f"{first.qid}.eml", f"{first.qid}.json"]
    assert list((small_disk / ".tmp").iterdir()) == []
    after = await send(gw, message(subject="fits again"))
    assert after.code == 250
    assert gw.gateway.store.ids() == sorted([first.qid, after.qid])
    gw.gateway.store.close()


async def test_a_read_only_folder_answers_451_and_relaying_goes_on(
    read_only_folder: Path, start_gateway: GatewayFactory, sink: RecordingSink, tmp_path: Path
) -> None:
    gw: RunningGateway = await start_gateway()
    refused = await send(gw, SUSPICIOUS)
    assert refused.code == 451, refused
    assert refused.text.startswith("4.3.0 Could not store message")
    relayed = await send(gw, message(subject="clean"))
    assert relayed.code == 250
    assert len(await sink.arrived(1)) == 1
    _unmount(read_only_folder)  # the admin fixes the mount; no restart needed
    stored = await send(gw, SUSPICIOUS)
    assert stored.code == 250, stored
    assert gw.gateway.store.ids() == [stored.qid]
    gw.gateway.store.close()


async def test_a_full_index_answers_451_and_the_next_message_is_stored(
    start_gateway: GatewayFactory, sink: RecordingSink, quarantine_all: Path
) -> None:
    gw: RunningGateway = await start_gateway()
    first = await send(gw, message(subject="one"))
    store = gw.gateway.store
    assert store._conn is not None
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count={pages}")  # SQLite: "database or disk is full"
    many = [f"{'r' * 50}{i}@example.com" for i in range(100)]  # ~20 KB of rows: new pages
    refused = await send(gw, message(subject="two"), rcpts=many)
    assert refused.code == 451, refused
    assert listed_files(gw.settings.quarantine_dir) == [f"{first.qid}.eml", f"{first.qid}.json"]
    again = await send(gw, message(subject="three"), rcpts=many)  # a fresh connection: room
    assert again.code == 250
    assert store.ids() == sorted([first.qid, again.qid])


async def test_a_writer_holding_the_index_delays_the_gateway_then_4xx_past_the_busy_timeout(
    start_gateway: GatewayFactory, sink: RecordingSink, quarantine_all: Path
) -> None:
    gw: RunningGateway = await start_gateway()
    store = gw.gateway.store
    await send(gw, message(subject="creates the index"))
    store.busy_timeout = 0.5
    store.close()  # reopen with the new timeout
    other = sqlite3.connect(store.index_path, isolation_level=None, check_same_thread=False)

    def hold(seconds: float) -> threading.Thread:
        other.execute("BEGIN IMMEDIATE")  # e.g. a CLI delete of many entries

        def release() -> None:
            time.sleep(seconds)
            other.execute("COMMIT")

        thread = threading.Thread(target=release)
        thread.start()
        return thread

    holder = hold(0.25)
    started = time.monotonic()
    waited = await send(gw, message(subject="waits"))
    holder.join()
    assert waited.code == 250
    assert time.monotonic() - started >= 0.2
    holder = hold(1.0)
    refused = await send(gw, message(subject="gives up"))
    holder.join()
    assert refused.code == 451, refused
    assert len(store.ids()) == 2
    other.close()


async def test_the_cli_reads_and_writes_while_the_gateway_quarantines(
    start_gateway: GatewayFactory,
    sink: RecordingSink,
    quarantine_all: Path,
    qcli: QuarantineCli,
    cli_config: Path,
) -> None:
    gw: RunningGateway = await start_gateway()
    await send(gw, message(subject="first"))  # the index exists before the readers start
    stop = threading.Event()
    results: list[CliResult] = []
    errors: list[BaseException] = []
    deleted: list[str] = []
    shown: list[tuple[str, CliResult]] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                for args in (("list",), ("list", "--json", "--symbol", "X"), ("stats",)):
                    results.append(qcli(*args))
                newest = SqliteStore(gw.settings.quarantine_dir, create=False).select(
                    Selection(), limit=1
                )
                if newest:  # the writer below deletes the oldest ones, maybe this one too
                    shown.append((newest[0].id, qcli("show", newest[0].id)))
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        store = SqliteStore(gw.settings.quarantine_dir, create=False)
        try:
            while not stop.is_set():
                entries = store.select(Selection(status="quarantined"))
                for entry in entries[1:3]:
                    store.label(entry.id, "spam", "tester")
                if len(entries) >= 3:
                    deleted.extend(store.delete([entries[-1].id]))
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    def subprocess_readers() -> None:
        try:
            for _ in range(3):
                done = run_mailgate("--config", cli_config, "quarantine", "list", "--json")
                results.append(CliResult(done.returncode, done.stdout, done.stderr))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=t) for t in (reader, writer, subprocess_readers)]
    for thread in threads:
        thread.start()

    async def client(n: int) -> list[str]:
        qids = []
        for i in range(12):
            reply = await send(gw, message(subject=f"c{n}-{i}"))
            assert reply.code == 250, reply
            qids.append(reply.qid)
        return qids

    batches = await asyncio.gather(*(client(n) for n in range(4)))
    for thread in threads[2:]:
        await asyncio.to_thread(thread.join, 60)
    stop.set()
    for thread in threads[:2]:
        await asyncio.to_thread(thread.join, 30)
    assert errors == []
    assert len(results) > 10
    # a show fails only for an entry the writer deleted meanwhile, and says so
    for qid, shown_result in shown:
        if shown_result.code != 0:
            assert qid in deleted and b"no quarantine entry" in shown_result.err, shown_result
        else:
            results.append(shown_result)
    assert [r for r in results if r.code != 0] == []
    assert not any(b"locked" in r.err or b"locked" in r.out for r in results)
    accepted = {qid for batch in batches for qid in batch}
    listed = set(gw.gateway.store.ids())
    assert accepted - set(deleted) <= listed
    assert deleted  # the writer did write
