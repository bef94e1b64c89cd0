"""`mailgate quarantine ...`: review, release, delete, purge, label and count quarantined mail.

Safe while the gateway runs (the index is SQLite in WAL mode: readers never wait for the gateway,
writers wait their turn). Every value that came from a message or a client is printed through
gateway.text.printable, so a Subject, a file name or an address cannot move the cursor, retitle
the terminal, or fake a line of this output; `--json` escapes everything outside printable ASCII.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import json
import os
import re
import shutil
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.config import Settings, load_settings
from gateway.quarantine.maintenance import ORPHAN_AGE
from gateway.quarantine.model import (
    LABELS,
    RELEASING,
    STATUSES,
    Entry,
    NotFound,
    Selection,
    Store,
    storable,
)
from gateway.quarantine.release import (
    FAILED,
    PARTIAL,
    RELEASED,
    SKIPPED,
    ReleaseResult,
    release,
)
from gateway.quarantine.sqlite import SqliteStore
from gateway.quarantine.store import StoreError
from gateway.quarantine.view import MessageView, view_message
from gateway.text import printable
from gateway.tomlfile import ConfigError, ConfigErrors

DEFAULT_LIMIT = 100
OUTCOMES = (RELEASED, PARTIAL, SKIPPED, FAILED)
SHOW_RECIPIENTS = 20
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# -- argument types ------------------------------------------------------------------------------


def duration(text: str) -> float:
    """A duration ("30d", "12h", "90m", "45s", "2w") in seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 12h, 30d or 2w")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def moment(text: str) -> float:
    """A duration back from now ("1d"), or a date or time in UTC ("2026-11-27", "...T10:00")."""
    if _DURATION.match(text):
        return time.time() - duration(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (1d, 12h) nor a date (2026-11-27[T10:00])"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _entry_id(text: str) -> str:
    value = text.strip().upper()
    if not re.fullmatch(r"[A-Z0-9]{6,32}", value):
        raise argparse.ArgumentTypeError(f"{printable(text, 60)!s} is not a quarantine id")
    return value


def _address(text: str) -> str:
    if not text or any(c in text for c in "\r\n\0<> ") or "@" not in text:
        raise argparse.ArgumentTypeError(f"{printable(text, 100)} is not a mail address")
    return text


# -- output helpers ------------------------------------------------------------------------------


def utc(when: float | None) -> str:
    if when is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def _width(text: str) -> int:
    """Terminal columns: wide (CJK) characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(_char_width(c) for c in text)


def fit(text: str, width: int) -> str:
    """Cut (with "...") or pad already printable text to `width` terminal columns."""
    used = _width(text)
    if used <= width:
        return text + " " * (width - used)
    room = max(0, width - 3)
    if text.isascii():
        return text[:room] + "..." + " " * (width - 3 - room) if width >= 3 else text[:width]
    out: list[str] = []
    used = 0
    for char in text:
        step = _char_width(char)
        if used + step > room:
            break
        out.append(char)
        used += step
    if width < 3:
        return "".join(out) + " " * (width - used)
    return "".join(out) + "..." + " " * (room - used)


def _clean(value: Any) -> Any:
    """JSON-safe copy: text with undecodable bytes as visible \\xNN, everything else as is."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def json_text(document: Any) -> str:
    # ensure_ascii escapes every control and non-ASCII character; DEL is the one left over.
    return json.dumps(_clean(document), ensure_ascii=True, indent=2).replace("\x7f", "\\u007f")


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "received": entry.received,
        "received_utc": utc(entry.received),
        "status": entry.status,
        "expires": entry.expires,
        "client_ip": entry.client_ip,
        "helo": entry.helo,
        "tls": entry.tls,
        "mail_from": entry.mail_from,
        "rcpt_tos": entry.rcpt_tos,
        "message_id": entry.message_id,
        "from": entry.header_from,
        "subject": entry.subject,
        "size": entry.size,
        "score": entry.score,
        "reason": entry.reason,
        "findings": [
            {"symbol": f.symbol, "score": f.score, "detail": f.detail} for f in entry.findings
        ],
        "policy_version": entry.policy_version,
        "released_at": entry.released_at,
        "release_note": entry.release_note,
        "label": entry.label,
    }


class Output:
    """stdout that cannot fail on an unencodable character (a latin-1 terminal, a pipe)."""

    def __init__(self) -> None:
        stream = sys.stdout
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
        self.stream = stream

    def __call__(self, text: str = "") -> None:
        print(text, file=self.stream)


def _err(text: str) -> None:
    print(f"mailgate quarantine: {text}", file=sys.stderr)


# -- arguments -----------------------------------------------------------------------------------


def _selection_arguments(parser: argparse.ArgumentParser, recipient: Sequence[str]) -> None:
    group = parser.add_argument_group("selection (all given criteria must match)")
    group.add_argument(
        "--since",
        type=moment,
        metavar="WHEN",
        help="received at or after WHEN: 30m, 12h, 1d, 2w ago, or a UTC date like 2026-11-27",
    )
    group.add_argument("--until", type=moment, metavar="WHEN", help="received before WHEN")
    group.add_argument(
        "--from",
        dest="sender",
        metavar="ADDR",
        help="envelope sender: an address, @domain, or a pattern with * (*@*.example.net)",
    )
    group.add_argument(
        *recipient, dest="recipient", metavar="ADDR", help="any envelope recipient (same forms)"
    )
    group.add_argument("--symbol", type=str.upper, help="entries with this finding")
    group.add_argument("--min-score", type=float, metavar="N", help="score at least N")
    group.add_argument("--reason", metavar="TEXT", help="verdict reason contains TEXT")
    group.add_argument("--status", choices=STATUSES, help="entries in this state")


def _bulk_arguments(parser: argparse.ArgumentParser, recipient: Sequence[str]) -> None:
    parser.add_argument("ids", nargs="*", type=_entry_id, metavar="ID", help="quarantine ids")
    _selection_arguments(parser, recipient)
    parser.add_argument(
        "--all", action="store_true", help="act on every entry when no ID or filter is given"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would be done, and do nothing"
    )


def add_quarantine_parser(sub: Any) -> None:
    """Hook `quarantine` and its subcommands into the `mailgate` parser."""
    quarantine: argparse.ArgumentParser = sub.add_parser(
        "quarantine",
        help="review quarantined mail: list, show, release, delete, purge, learn, stats",
        description="Review the quarantine. Works while the gateway runs.",
    )
    commands = quarantine.add_subparsers(dest="quarantine_command", required=True)

    p = commands.add_parser("list", help="entries, newest first")
    _selection_arguments(p, ("--to", "--rcpt"))
    p.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"show N (default {DEFAULT_LIMIT}; 0: all)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(quarantine_func=cmd_list)

    p = commands.add_parser("show", help="one entry: envelope, findings, headers, parts, preview")
    p.add_argument("id", type=_entry_id, metavar="ID")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--raw", action="store_true", help="write the stored .eml to stdout")
    mode.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(quarantine_func=cmd_show)

    p = commands.add_parser(
        "release",
        help="deliver to the delivery server with the original envelope",
        description="Deliver entries to the delivery server and mark them released. "
        "Releasing twice sends once (unless --again); a failed release leaves the entry "
        "in quarantine and says why. Filter by recipient with --rcpt here.",
    )
    _bulk_arguments(p, ("--rcpt",))
    p.add_argument(
        "--to",
        dest="new_recipients",
        action="append",
        type=_address,
        metavar="ADDR",
        help="deliver to ADDR instead of the original recipients (repeatable)",
    )
    p.add_argument("--again", action="store_true", help="send even if released before")
    p.set_defaults(quarantine_func=cmd_release)

    p = commands.add_parser("delete", help="remove entries and their messages")
    _bulk_arguments(p, ("--to", "--rcpt"))
    p.set_defaults(quarantine_func=cmd_delete)

    p = commands.add_parser(
        "purge",
        help="delete old or expired entries, and files crashes left behind",
        description="Delete entries received more than AGE ago (--older-than) or past their "
        "expiry (--expired; the gateway also does this hourly by itself).",
    )
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--older-than", type=duration, metavar="AGE", help="e.g. 30d, 12h")
    when.add_argument("--expired", action="store_true", help="past their retention time")
    p.add_argument("--dry-run", action="store_true", help="count, and do nothing")
    p.set_defaults(quarantine_func=cmd_purge)

    p = commands.add_parser("learn", help="label entries spam or ham for the classifier's training")
    label = p.add_mutually_exclusive_group(required=True)
    label.add_argument("--spam", dest="label", action="store_const", const="spam")
    label.add_argument("--ham", dest="label", action="store_const", const="ham")
    _bulk_arguments(p, ("--to", "--rcpt"))
    p.set_defaults(quarantine_func=cmd_learn)

    p = commands.add_parser(
        "feedback",
        help="the labels given with learn",
        description="The spam/ham labels given with `learn`, oldest first. --jsonl writes what "
        "`mailgate model train --feedback FILE` reads.",
    )
    p.add_argument("--since", type=moment, metavar="WHEN", help="labelled at or after WHEN")
    p.add_argument(
        "--jsonl", action="store_true", help='one {"label", "path", ...} object per line'
    )
    p.set_defaults(quarantine_func=cmd_feedback)

    p = commands.add_parser("stats", help="counts by status, reason, symbol and day")
    _selection_arguments(p, ("--to", "--rcpt"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(quarantine_func=cmd_stats)

    quarantine.set_defaults(func=run)


# -- running -------------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, Store, Settings, Output], int]


def run(args: argparse.Namespace) -> int:
    """Entry point from gateway.cli: load the settings, open the store, run the subcommand."""
    from gateway.config_search import find_config

    choice = find_config(args.config)
    try:
        settings = load_settings(choice.path)
    except (ConfigError, ConfigErrors) as exc:
        _err(f"configuration error:\n{exc}")
        return 1
    if choice.path is None:
        # `cd / && mailgate quarantine list` must not say "no entries" of a folder nobody uses
        _err(f"{choice.describe()}; reading the quarantine in {settings.quarantine_dir}")
    command: Command = args.quarantine_func
    store = SqliteStore(settings.quarantine_dir, create=False)
    try:
        return command(args, store, settings, Output())
    except NotFound as exc:
        _err(printable(str(exc), 300))
        return 1
    except StoreError as exc:
        _err(printable(str(exc), 500))
        return 1
    finally:
        store.close()


def _selection(args: argparse.Namespace, ids: Sequence[str] = ()) -> Selection:
    return Selection(
        ids=tuple(ids),
        since=args.since,
        until=args.until,
        sender=args.sender,
        recipient=args.recipient,
        symbol=args.symbol,
        min_score=args.min_score,
        reason=args.reason,
        status=args.status,
    )


def _chosen(args: argparse.Namespace, store: Store) -> tuple[list[Entry], list[str]] | None:
    """Entries named by id and/or filters, and the ids that match nothing; None if unbounded."""
    selection = _selection(args, args.ids)
    if selection.is_everything() and not args.all:
        _err("name entries by ID, or select them with filters (or --all for every entry)")
        return None
    entries = store.select(selection)
    found = {e.id for e in entries}
    return entries, [i for i in args.ids if i not in found]


# -- list ----------------------------------------------------------------------------------------

_COLUMNS = (("ID", 12), ("RECEIVED (UTC)", 19), ("STATUS", 12), ("SCORE", 6))


def cmd_list(args: argparse.Namespace, store: Store, settings: Settings, out: Output) -> int:
    selection = _selection(args)
    limit = args.limit if args.limit and args.limit > 0 else None
    entries = store.select(selection, limit=limit)
    total = store.count(selection) if limit is not None and len(entries) == limit else len(entries)
    if args.json:
        out(json_text({"total": total, "entries": [entry_json(e) for e in entries]}))
        return 0
    if not entries:
        out("no entries" + ("" if selection.is_everything() else " match"))
        return 0
    header = " ".join(fit(name, width) for name, width in _COLUMNS)
    out(f"{header} {fit('FROM', 28)} {fit('TO', 28)} SUBJECT")
    for e in entries:
        rcpts = e.rcpt_tos
        to = printable(rcpts[0] if rcpts else "-", 100)
        if len(rcpts) > 1:
            to = f"{fit(to, 28 - len(str(len(rcpts) - 1)) - 2).rstrip()} +{len(rcpts) - 1}"
        cells = [
            fit(e.id, 12),
            fit(utc(e.received), 19),
            fit(e.status + ("*" if e.label else ""), 12),
            f"{e.score:6.1f}",
            fit(printable(e.mail_from or "<>", 100), 28),
            fit(to, 28),
            fit(printable(e.subject or "(no subject)", 200), 60).rstrip(),
        ]
        out(" ".join(cells))
    noun = "entry" if total == 1 else "entries"
    shown = f"{len(entries)} of {total} {noun}" if total != len(entries) else f"{total} {noun}"
    note = " (newest first; --limit 0 shows all)" if total > len(entries) else ""
    labelled = "; * = labelled with learn" if any(e.label for e in entries) else ""
    out(f"{shown}{note}{labelled}")
    return 0


# -- show ----------------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace, store: Store, settings: Settings, out: Output) -> int:
    entry = store.entry(args.id)
    if args.raw:
        sys.stdout.flush()
        with store.open_message(entry.id) as handle:
            shutil.copyfileobj(handle, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
        return 0
    with store.open_message(entry.id) as handle:
        raw = handle.read()
    view = view_message(raw)
    if args.json:
        document = entry_json(entry)
        document.update(
            stored_size=len(raw),
            headers=[[name, value] for name, value in view.headers],
            parts=[vars(part) for part in view.parts],
            part_count=view.part_count,
            preview_type=view.preview_type,
            preview=view.preview,
            defects=view.defects,
        )
        out(json_text(document))
        return 0
    _print_entry(entry, len(raw), view, out)
    return 0


def _print_entry(entry: Entry, stored: int, view: MessageView, out: Output) -> None:
    p = printable
    out(f"quarantine entry {entry.id}")
    status = entry.status
    if entry.expires is not None:
        status += f"; expires {utc(entry.expires)} UTC"
    out(f"  status      {status}")
    if entry.released_at is not None:
        out(f"  released    {utc(entry.released_at)} UTC")
    if entry.release_note:
        out(f"  last try    {p(entry.release_note, 500)}")
    if entry.label:
        out(f"  label       {entry.label} (for the classifier)")
    client = f"{p(entry.client_ip)}, helo {p(entry.helo or '-', 100)}"
    client += f", {p(entry.tls)}" if entry.tls else ", no TLS"
    out(f"  received    {utc(entry.received)} UTC from {client}")
    out(f"  sender      {_angle(entry.mail_from)}")
    rcpts = entry.rcpt_tos
    for index, rcpt in enumerate(rcpts[:SHOW_RECIPIENTS]):
        out(f"  {'recipients' if index == 0 else '':<10}  {_angle(rcpt)}")
    if len(rcpts) > SHOW_RECIPIENTS:
        out(f"              ... and {len(rcpts) - SHOW_RECIPIENTS} more (show --json lists all)")
    out(f"  message-id  {p(entry.message_id or '-', 300)}")
    out(f"  from        {p(entry.header_from or '-', 300)}")
    out(f"  subject     {p(entry.subject or '-', 300)}")
    out(f"  size        {entry.size} bytes received, {stored} stored with our trace fields")
    out(f"  verdict     score {entry.score:g}: {p(entry.reason, 300)}")
    out(f"  policy      {p(entry.policy_version or '-', 40)}")
    out("findings")
    for f in sorted(entry.findings, key=lambda f: (-f.score, f.symbol)):
        detail = f"  {p(f.detail, 200)}" if f.detail else ""
        out(f"  {fit(p(f.symbol, 40), 30)} {f.score:>7g}{detail}")
    if not entry.findings:
        out("  (none)")
    out("headers")
    for name, value in view.headers:
        out(f"  {p(name, 60)}: {p(value.replace(chr(9), ' '), 500)}")
    if view.header_count > len(view.headers):
        out(f"  ... and {view.header_count - len(view.headers)} more fields")
    out("parts (types and file names as declared by the sender)")
    for part in view.parts:
        bits = [fit(part.path, 8), p(part.content_type, 80)]
        if part.disposition:
            bits.append(p(part.disposition, 30))
        if part.filename is not None:
            bits.append(f'file "{p(part.filename, 200)}"')
        if part.charset:
            bits.append(f"charset {p(part.charset, 40)}")
        bits.append(f"{part.size} bytes")
        out("  " + "  ".join(bits))
    if view.part_count > len(view.parts):
        out(f"  ... and {view.part_count - len(view.parts)} more parts")
    if view.defects:
        out(f"  parser defects: {', '.join(view.defects)}")
    if view.preview_type is None:
        out("preview: no text part")
        return
    shown_as = " converted to text, links written out" if view.preview_type == "text/html" else ""
    out(f"preview ({view.preview_type}{shown_as}; control characters shown as \\xNN)")
    lines = view.preview.replace("\r\n", "\n").rstrip().split("\n")
    for line in lines[:60]:
        out(f"  | {p(line.expandtabs(4), 300)}")
    if len(lines) > 60:
        out(f"  | ... {len(lines) - 60} more lines")


# -- release -------------------------------------------------------------------------------------


def cmd_release(args: argparse.Namespace, store: Store, settings: Settings, out: Output) -> int:
    chosen = _chosen(args, store)
    if chosen is None:
        return 2
    entries, missing = chosen
    for entry_id in missing:
        out(f"{entry_id}  no such entry")
    targets = tuple(args.new_recipients or ())
    if args.dry_run:
        for e in reversed(entries):
            rcpts = targets or tuple(e.rcpt_tos)
            if e.released_at is not None and not args.again:
                what = f"skip: released at {utc(e.released_at)} UTC (--again sends anyway)"
            elif e.status == RELEASING:
                what = "skip unless that release has stopped: a release is under way"
            else:
                what = f"would release to {_rcpt_summary(rcpts)}"
            out(f"{e.id}  from {_angle(e.mail_from)}  {what}")
        out(f"dry run: {_entries(len(entries))} selected, nothing sent")
        return 1 if missing else 0

    # Each release is logged where the gateway logs (its [logging] settings), not only printed.
    from gateway.cli import _setup_logging

    _setup_logging(settings)

    async def release_all() -> list[ReleaseResult]:
        results = []
        for e in reversed(entries):  # oldest first, as they arrived
            result = await release(store, settings, e.id, targets, again=args.again)
            out(f"{result.id}  {result.outcome}: {printable(result.detail, 600)}")
            results.append(result)
        return results

    results = asyncio.run(release_all())
    counts = {name: sum(1 for r in results if r.outcome == name) for name in OUTCOMES}
    out(
        f"{counts[RELEASED]} released, {counts[PARTIAL]} released to some recipients only, "
        f"{counts[SKIPPED]} skipped, {counts[FAILED]} failed (still in quarantine)"
    )
    return 1 if counts[PARTIAL] or counts[FAILED] or missing else 0


def _entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


def _angle(address: str) -> str:
    return "<>" if address in ("", "<>") else f"<{printable(address, 300)}>"


def _rcpt_summary(rcpts: Sequence[str]) -> str:
    if not rcpts:
        return "(no recipients)"
    first = f"<{printable(rcpts[0], 100)}>"
    return first if len(rcpts) == 1 else f"{first} and {len(rcpts) - 1} more"


# -- delete, purge -------------------------------------------------------------------------------


def cmd_delete(args: argparse.Namespace, store: Store, settings: Settings, out: Output) -> int:
    chosen = _chosen(args, store)
    if chosen is None:
        return 2
    entries, missing = chosen
    for entry_id in missing:
        out(f"{entry_id}  no such entry")
    if args.dry_run:
        for e in entries:
            out(f"{e.id}  would delete ({_brief(e)})")
        out(f"dry run: {_entries(len(entries))} selected, nothing deleted")
        return 1 if missing else 0
    deleted = set(store.delete([e.id for e in entries]))
    for e in entries:
        out(f"{e.id}  {'deleted' if e.id in deleted else 'already gone'}")
    out(f"{len(deleted)} deleted")
    return 1 if missing else 0


def _brief(entry: Entry) -> str:
    subject = printable(entry.subject or "(no subject)", 60)
    return f"{utc(entry.received)} UTC, {_angle(entry.mail_from)}, {subject}"


def cmd_purge(args: argparse.Namespace, store: Store, settings: Settings, out: Output) -> int:
    now = time.time()
    if args.expired:
        selection, what = Selection(expired_by=now), "past the expiry time"
    else:
        selection = Selection(until=now - args.older_than)
        what = f"received before {utc(now - args.older_than)} UTC"
    if args.dry_run:
        out(f"dry run: {_entries(store.count(selection))} {what} would be deleted")
        return 0
    deleted = 0
    while True:
        due = [e.id for e in store.select(selection, limit=500) if e.status != RELEASING]
        gone = store.delete(due) if due else []
        deleted += len(gone)
        if len(due) < 500 or not gone:
            break
    swept = store.sweep(ORPHAN_AGE)
    out(f"purged {_entries(deleted)} {what}; removed {swept} files left by interrupted writes")
    return 0


# -- learn ---------------------------------------------------------------------------------------


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def cmd_learn(args: argparse.Namespace, store: Store, settings: Settings, out: Output) -> int:
    assert args.label in LABELS
    chosen = _chosen(args, store)
    if chosen is None:
        return 2
    entries, missing = chosen
    for entry_id in missing:
        out(f"{entry_id}  no such entry")
    user = _login()
    for e in entries:
        if args.dry_run:
            out(f"{e.id}  would label {args.label} ({_brief(e)})")
            continue
        store.label(e.id, args.label, user)
        out(f"{e.id}  labelled {args.label}")
    verb = "would be labelled" if args.dry_run else "labelled"
    out(f"{len(entries)} {verb} {args.label}")
    return 1 if missing else 0


def cmd_feedback(args: argparse.Namespace, store: Store, settings: Settings, out: Output) -> int:
    labels = store.feedback(since=args.since)
    if args.jsonl:
        for f in labels:
            document = {
                "label": f.label,
                "path": str(settings.quarantine_dir / f.message_path),
                "id": f.id,
                "labelled_at": f.labelled_at,
                "labelled_by": f.labelled_by,
                **f.extra,
            }
            out(json.dumps(_clean(document), ensure_ascii=True).replace("\x7f", "\\u007f"))
        return 0
    for f in labels:
        by = fit(printable(f.labelled_by, 40), 16)
        out(f"{f.id}  {utc(f.labelled_at)} UTC  {f.label:<4}  {by}  {f.message_path}")
    out(f"{len(labels)} {'label' if len(labels) == 1 else 'labels'}")
    return 0


# -- stats ---------------------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace, store: Store, settings: Settings, out: Output) -> int:
    stats = store.stats(_selection(args))
    if args.json:
        out(
            json_text(
                {
                    "total": stats.total,
                    "by_status": dict(stats.by_status),
                    "by_reason": [list(r) for r in stats.by_reason],
                    "by_symbol": [list(s) for s in stats.by_symbol],
                    "by_day": [list(d) for d in stats.by_day],
                }
            )
        )
        return 0
    states = ", ".join(f"{n} {s}" for s, n in sorted(stats.by_status.items()))
    out(f"entries  {stats.total}" + (f" ({states})" if states else ""))
    _counts(out, "by reason", stats.by_reason)
    _counts(out, "by symbol", stats.by_symbol)
    _counts(out, "by day (UTC)", stats.by_day)
    return 0


def _counts(out: Output, title: str, rows: Iterable[tuple[str, int]]) -> None:
    out(title)
    empty = True
    for name, count in rows:
        empty = False
        out(f"  {count:>8}  {printable(name, 200)}")
    if empty:
        out("  (none)")
