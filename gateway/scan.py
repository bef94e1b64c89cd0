"""`mailgate scan`: many messages through the chain and policy `serve` runs, one at a time.

This is how an admin tries a policy change on a folder of mail before it goes live, so each
message is inspected exactly as a live one (`transaction.inspect` after the same clean-up of
forged trace fields), and only the envelope is invented (command-line options). Inputs stream:
files, folders (recursively), Maildirs (cur/ and new/), mbox files (any file that starts with
"From ") and stdin, one message in memory at a time and none larger than the gateway would
accept (limits.max_message_size).

Exit status, from the worst message (an input that could not be read wins over every action):

    0 relay   1 tag   2 quarantine   3 tempfail   4 reject   5 an action this table lacks
    66 an input could not be read    78 configuration error   (2 is also argparse's usage error)
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.plugin import MessageContext
    from gateway.verdict import Verdict

EXIT_BY_ACTION = {"relay": 0, "tag": 1, "quarantine": 2, "tempfail": 3, "reject": 4}
EXIT_UNKNOWN_ACTION = 5
EXIT_UNREADABLE = 66  # sysexits EX_NOINPUT
EXIT_CONFIG = 78  # sysexits EX_CONFIG
MBOX_SEPARATOR = b"From "
READ_CHUNK = 1 << 16  # an mbox is read in lines of at most this: a line without end stays bounded
STDIN = "-"


@dataclass(frozen=True)
class Envelope:
    """What SMTP would have told the gateway about each message: the same for all of them."""

    mail_from: str  # "": the header From's address
    rcpt_tos: tuple[str, ...]
    client_ip: str
    helo: str


@dataclass(frozen=True)
class Found:
    """One message of the inputs, or why there is none where one was expected."""

    label: str  # the file; "FILE:N" for the Nth message of an mbox; "-" for stdin
    raw: bytes | None
    problem: str = ""  # raw is None: why
    unreadable: bool = False  # the problem is an I/O error (exit status 66), not a size


# -- finding the messages ------------------------------------------------------------------------


def messages(paths: Sequence[str], max_size: int, stdin: IO[bytes]) -> Iterator[Found]:
    """Every message of `paths`, in order (folders sorted by name), read lazily."""
    for path in paths:
        if path == STDIN:
            yield from _stream(STDIN, stdin, max_size)
            continue
        target = Path(path)
        if target.is_dir():
            yield from _folder(target, max_size)
        else:
            yield from _file(target, max_size)


def _folder(folder: Path, max_size: int) -> Iterator[Found]:
    """A folder, recursively; a Maildir's messages are the files of its cur/ and new/ (tmp/ is
    deliveries in progress). Dot files are skipped; dot folders (Maildir++ folders) are not."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        yield Found(str(folder), None, _os_problem(exc), unreadable=True)
        return
    names = {e.name for e in entries if e.is_dir(follow_symlinks=False)}
    maildir = {"cur", "new"} <= names
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if maildir and entry.name in ("cur", "new"):
                yield from _maildir_part(path, max_size)
            elif not (maildir and entry.name == "tmp"):
                yield from _folder(path, max_size)
        elif entry.is_file() and not entry.name.startswith(".") and not maildir:
            yield from _file(path, max_size)  # a Maildir's own files (dovecot-uidlist...) are not


def _maildir_part(folder: Path, max_size: int) -> Iterator[Found]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        yield Found(str(folder), None, _os_problem(exc), unreadable=True)
        return
    for entry in entries:
        if entry.is_file() and not entry.name.startswith("."):
            yield from _file(Path(entry.path), max_size)


def _file(path: Path, max_size: int) -> Iterator[Found]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        yield Found(str(path), None, _os_problem(exc), unreadable=True)
        return
    with handle:
        try:
            yield from _stream(str(path), handle, max_size)
        except OSError as exc:
            yield Found(str(path), None, _os_problem(exc), unreadable=True)


def _stream(label: str, handle: IO[bytes], max_size: int) -> Iterator[Found]:
    """One message, or an mbox of many when it starts with a "From " line."""
    head = handle.read(len(MBOX_SEPARATOR))
    if head == MBOX_SEPARATOR:
        yield from _mbox(label, head, handle, max_size)
        return
    rest = handle.read(max_size + 1 - len(head))
    raw = head + rest
    if len(raw) > max_size:
        yield Found(label, None, _too_large(max_size))
    else:
        yield Found(label, raw)


def _mbox(label: str, head: bytes, handle: IO[bytes], max_size: int) -> Iterator[Found]:
    """The messages of an mbox, split as Python's mailbox.mbox splits them: every line that
    starts with "From " begins a message (that line is not part of it), and the empty line
    before it ends the previous one. Lines are read in bounded chunks, messages held only up
    to `max_size`."""
    number = 0
    body = bytearray()
    too_large = last_was_empty = in_message = skipping_from_line = False
    at_line_start = True
    pending = head  # the first bytes of the first From_ line, already read

    def finish() -> Found:
        nonlocal number
        number += 1
        name = f"{label}:{number}"
        if too_large:
            return Found(name, None, _too_large(max_size))
        if last_was_empty:
            del body[-1:]  # the separator's empty line ("\n") belongs to no message
        return Found(name, bytes(body))

    while True:
        chunk = pending + handle.readline(READ_CHUNK)
        pending = b""
        if not chunk:
            break
        starts_line, at_line_start = at_line_start, chunk.endswith(b"\n")
        if skipping_from_line:  # the rest of a From_ line longer than one chunk
            skipping_from_line = not at_line_start
            continue
        if starts_line and chunk.startswith(MBOX_SEPARATOR):
            if in_message:
                yield finish()
            body.clear()
            too_large = last_was_empty = False
            in_message = True
            skipping_from_line = not at_line_start
            continue
        last_was_empty = starts_line and chunk == b"\n"
        if too_large:
            continue
        if len(body) + len(chunk) > max_size:
            too_large = True
            body.clear()
        else:
            body += chunk
    if in_message:
        yield finish()


def _too_large(max_size: int) -> str:
    return f"larger than limits.max_message_size ({max_size} bytes): serve refuses it (552 5.3.4)"


def _os_problem(exc: OSError) -> str:
    return f"cannot read: {exc.strerror or exc}"


# -- scanning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scanned:
    """One message's verdict and the context that explains it."""

    label: str
    verdict: Verdict
    ctx: MessageContext
    normalized: bool  # LF line endings were made CRLF, as SMTP would carry them


def _author_address(raw: bytes) -> str:
    """The header From's address: the envelope sender a scanned file most likely came with (a
    fixed made-up sender would look like a stranger, or a lookalike of a served domain)."""
    from gateway.message import ParsedMessage

    boxes = ParsedMessage(raw).authors.mailboxes
    return f"{boxes[0].local}@{boxes[0].domain}" if boxes else ""


async def scan_message(gateway: Gateway, label: str, raw: bytes, envelope: Envelope) -> Scanned:
    """Inspect one message through every phase of the chain, as `serve` would."""
    from gateway.header_edit import remove_forged
    from gateway.line_endings import normalize_line_endings
    from gateway.plugin import ClientInfo, MessageContext, Phase
    from gateway.transaction import inspect, without_leading_continuation

    # Files on disk often have LF line endings; over SMTP they would arrive as CRLF.
    crlf = normalize_line_endings(raw)
    client = ClientInfo(ip=envelope.client_ip, port=0, helo=envelope.helo, esmtp=True)
    ctx = MessageContext(client=client, rules=gateway.rules, settings=gateway.settings)
    chain = gateway.chain
    await chain.run(Phase.CONNECT, ctx)
    await chain.run(Phase.HELO, ctx)
    ctx.mail_from = envelope.mail_from or _author_address(crlf)
    await chain.run(Phase.MAIL, ctx)
    for rcpt in envelope.rcpt_tos:
        ctx.rcpt_tos.append(rcpt)
        await chain.run(Phase.RCPT, ctx)
    ctx.raw = crlf
    # As serve does: our own trace fields in a message are forgeries, removed before any
    # plugin reads it (otherwise scan and serve would read one message two ways).
    ctx.raw = without_leading_continuation(ctx.raw)
    ctx.raw, _ = remove_forged(ctx.message, gateway.settings.listen.hostname)
    verdict = await inspect(gateway, ctx)
    return Scanned(label, verdict, ctx, crlf != raw)


def record(scanned: Scanned) -> dict[str, Any]:
    """One message as JSON: what --json prints and each line of --jsonl."""
    ctx, verdict = scanned.ctx, scanned.verdict
    message = ctx.message
    return {
        "path": scanned.label,
        "id": ctx.queue_id,
        "message_id": message.first("message-id"),
        "from": message.decoded("from"),
        "subject": message.decoded("subject"),
        "size": len(ctx.raw),
        "line_endings_normalized": scanned.normalized,
        "envelope": {"from": ctx.mail_from, "rcpt": ctx.rcpt_tos},
        "client": {"ip": ctx.client.ip, "helo": ctx.client.helo},
        "action": verdict.action.value,
        "score": verdict.score,
        "reason": verdict.reason,
        "reply": str(verdict.reply),
        "findings": [
            {"symbol": f.symbol, "score": f.score, "detail": f.finding.detail}
            for f in verdict.findings
        ],
        "thresholds": thresholds(ctx),
        "policy_version": ctx.rules.version,
        "plugin_ms": {k: round(v * 1000, 3) for k, v in ctx.timings.items()},
    }


def thresholds(ctx: MessageContext) -> dict[str, float]:
    """Every `<action>_at` threshold the policy has (tag, when the policy knows it)."""
    rules = ctx.rules
    out: dict[str, float] = {}
    for action in ("tag", "quarantine", "reject"):
        value = getattr(rules, f"{action}_at", None)
        if isinstance(value, int | float):
            out[action] = float(value)
    return out


def exit_status(action: str) -> int:
    return EXIT_BY_ACTION.get(action, EXIT_UNKNOWN_ACTION)


@dataclass
class Summary:
    """Counts over all messages: bounded by the number of distinct actions and symbols."""

    actions: Counter[str] = field(default_factory=Counter)
    symbols: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    unreadable: int = 0
    worst: int = 0

    @property
    def scanned(self) -> int:
        return sum(self.actions.values())

    def add(self, scanned: Scanned) -> None:
        action = scanned.verdict.action.value
        self.actions[action] += 1
        self.symbols.update({f.symbol for f in scanned.verdict.findings})
        self.worst = max(self.worst, exit_status(action))

    def add_problem(self, found: Found) -> None:
        if found.unreadable:
            self.unreadable += 1
        else:
            self.skipped += 1

    def exit_status(self) -> int:
        return EXIT_UNREADABLE if self.unreadable else self.worst

    def lines(self, top: int = 15) -> list[str]:
        order = sorted(self.actions, key=lambda a: (exit_status(a), a))
        counts = ", ".join(f"{a} {self.actions[a]}" for a in order) or "nothing scanned"
        problems = []
        if self.skipped:
            problems.append(f"{self.skipped} too large")
        if self.unreadable:
            problems.append(f"{self.unreadable} unreadable")
        extra = f" ({', '.join(problems)})" if problems else ""
        out = [f"summary   {self.scanned} messages{extra}: {counts}"]
        if self.symbols:
            total = self.scanned
            top_symbols = ", ".join(
                f"{symbol} {n} ({100 * n / total:.0f}%)"
                for symbol, n in sorted(self.symbols.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            )
            out.append(f"symbols   {top_symbols}")
        return out


async def next_found(found: Iterator[Found]) -> Found | None:
    """The next message, read in a worker thread: file reads stay off the event loop."""
    return await asyncio.to_thread(next, found, None)
