"""A small asyncio client for clamd's INSTREAM command (a Unix socket, or host:port over TCP).

Protocol (clamd(8)): send `zINSTREAM\\0`, then chunks as a 4-byte big-endian length followed by
the bytes, then a zero length; clamd answers one NUL-terminated line: `stream: OK`,
`stream: <signature> FOUND`, or `... ERROR` (e.g. `INSTREAM size limit exceeded. ERROR`).
Errors are exceptions here; the clamav plugin turns them into findings.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from dataclasses import dataclass

_MAX_REPLY = 4096
_HOST_PORT = re.compile(r"^\[?([A-Za-z0-9.\-:]+?)\]?:(\d{1,5})$")


class ClamdError(Exception):
    """clamd could not be reached, or it broke the protocol."""


@dataclass(frozen=True, slots=True)
class ClamdReply:
    """clamd's verdict on one stream: `found` with a signature, clean, or an `error` text."""

    found: str | None = None
    error: str | None = None

    @property
    def clean(self) -> bool:
        return self.found is None and self.error is None


async def _connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    match = _HOST_PORT.match(address)
    try:
        if match and "/" not in address:
            return await asyncio.open_connection(match.group(1), int(match.group(2)))
        return await asyncio.open_unix_connection(address)
    except OSError as exc:
        raise ClamdError(f"cannot connect to clamd at {address}: {exc.strerror or exc}") from None


async def _command(address: str, command: bytes, payload: bytes | None, chunk: int) -> bytes:
    reader, writer = await _connect(address)
    try:
        try:
            writer.write(b"z" + command + b"\0")
            if payload is not None:
                for start in range(0, len(payload), chunk):
                    piece = payload[start : start + chunk]
                    writer.write(struct.pack("!L", len(piece)) + piece)
                    await writer.drain()
                writer.write(struct.pack("!L", 0))
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # clamd stops reading past StreamMaxLength, answers, and closes: read that
        try:
            reply = await reader.readuntil(b"\0")
        except asyncio.LimitOverrunError:
            raise ClamdError("clamd reply too long") from None
        except asyncio.IncompleteReadError as exc:
            # clamd closes on a size limit after answering; a reply without NUL still counts
            if not exc.partial:
                raise ClamdError("clamd closed the connection without a reply") from None
            reply = exc.partial
        return reply[:_MAX_REPLY].rstrip(b"\0").strip()
    except (ConnectionError, OSError) as exc:
        raise ClamdError(f"clamd connection failed: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def ping(address: str) -> bool:
    return await _command(address, b"PING", None, 1) == b"PONG"


async def instream(address: str, data: bytes, chunk_size: int = 64 * 1024) -> ClamdReply:
    """Scan `data`; raises ClamdError when clamd is unreachable or answers nonsense."""
    reply = (await _command(address, b"INSTREAM", data, chunk_size)).decode("utf-8", "replace")
    if reply.endswith(" FOUND"):
        signature = reply.removeprefix("stream:").removesuffix(" FOUND").strip()
        return ClamdReply(found=signature[:200] or "unknown")
    if reply.endswith("OK"):
        return ClamdReply()
    if reply.endswith("ERROR"):
        return ClamdReply(error=reply[:200])
    raise ClamdError(f"unexpected clamd reply {reply[:80]!r}")
