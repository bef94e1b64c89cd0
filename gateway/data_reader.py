"""Reading the DATA of one SMTP transaction, every buffer bounded by the configured limits.

aiosmtpd's own reader kept appending the pieces of a line without CRLF after it had stopped
storing the message (one 120 MB line took a worker from 106 to 200 MB of RSS), and it answered
only at the end of DATA, so memory and time were bounded by nothing but the data timeout. Here
the pieces of an over-long line are dropped as they come, and the refusal is known at once: the
caller answers then, drains the rest without keeping it, and closes when the client sends more
than `drain_limit` bytes after the refusal.

DATA ends only on CRLF "." CRLF (RFC 5321 4.1.1.4): lines are read up to CRLF, so a bare LF or CR
can never end it (the smuggling reading).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway import front_replies
from gateway.verdict import SmtpReply

_END = b".\r\n"


@dataclass(frozen=True, slots=True)
class DataLimits:
    """`max_line` counts the CRLF and a stuffed dot; `max_header` the header section's lines."""

    max_size: int
    max_line: int
    max_header: int
    drain_limit: int


@dataclass(frozen=True, slots=True)
class DataResult:
    """The dot-unstuffed message, or the refusal already given (`content` is then None);
    `closed`: the client went on after the refusal and the caller must close."""

    content: bytes | None
    refusal: SmtpReply | None = None
    closed: bool = False


async def read_data(
    reader: asyncio.StreamReader,
    limits: DataLimits,
    refuse: Callable[[SmtpReply], Awaitable[None]],
) -> DataResult:
    """Read up to CRLF "." CRLF. On the first limit passed, `refuse(reply)` is awaited at once
    (the caller sends it) and nothing more is kept."""
    lines: list[bytes] = []
    size = 0
    header_size = 0
    in_header = True
    mid_line = False  # the previous read was a piece of an over-long line
    refusal: SmtpReply | None = None
    drained = 0
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
            piece = False
        except asyncio.LimitOverrunError as overrun:
            # Longer than the stream's limit: take what is there and keep none of it.
            line = await reader.read(overrun.consumed)
            piece = True
        except asyncio.IncompleteReadError:
            return DataResult(None, refusal, closed=True)  # the client went away mid-DATA
        if not line:
            return DataResult(None, refusal, closed=True)
        if not mid_line and not piece and line == _END:
            break
        starts_line = not mid_line
        mid_line = piece
        if refusal is not None:
            drained += len(line)
            if drained > limits.drain_limit:
                return DataResult(None, refusal, closed=True)
            continue
        size += len(line)
        reply: SmtpReply | None = None
        if piece or not starts_line or len(line) > limits.max_line:
            reply = front_replies.LINE_TOO_LONG
        elif size > limits.max_size:
            reply = front_replies.MESSAGE_TOO_BIG
        elif in_header:
            if line == b"\r\n":
                in_header = False
            else:
                header_size += len(line)
                if header_size > limits.max_header:
                    reply = front_replies.HEADER_TOO_BIG
        if reply is not None:
            refusal = reply
            lines.clear()
            await refuse(reply)
            continue
        lines.append(line[1:] if line[:1] == b"." else line)  # RFC 5321 4.5.2
    if refusal is not None:
        return DataResult(None, refusal)
    return DataResult(b"".join(lines))
