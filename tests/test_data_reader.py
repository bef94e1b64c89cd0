"""gateway.data_reader on a StreamReader fed by the test: what it keeps, when it answers."""

from __future__ import annotations

import asyncio

from gateway import front_replies
from gateway.data_reader import DataLimits, DataResult, read_data
from gateway.verdict import SmtpReply

LIMITS = DataLimits(max_size=10_000, max_line=1003, max_header=2_000, drain_limit=10_000)


async def _read(chunks: list[bytes], limits: DataLimits = LIMITS) -> tuple[DataResult, list[str]]:
    reader = asyncio.StreamReader(limit=limits.max_line)
    refused: list[str] = []

    async def refuse(reply: SmtpReply) -> None:
        refused.append(str(reply))

    task = asyncio.create_task(read_data(reader, limits, refuse))
    for chunk in chunks:
        reader.feed_data(chunk)
        await asyncio.sleep(0)  # let the reader take it: the buffer never holds it all
        if task.done():
            break
    reader.feed_eof()
    return await task, refused


async def test_the_message_is_dot_unstuffed_and_ends_only_on_crlf_dot_crlf() -> None:
    result, refused = await _read([b"Subject: x\r\n\r\n..a\r\nb\n.\nc\r.\r\n", b".\r\n"])
    assert result == DataResult(b"Subject: x\r\n\r\n.a\r\nb\n.\nc\r.\r\n")
    assert refused == []


async def test_the_pieces_of_a_line_without_crlf_are_not_kept() -> None:
    reader = asyncio.StreamReader(limit=LIMITS.max_line)
    refused: list[str] = []

    async def refuse(reply: SmtpReply) -> None:
        refused.append(str(reply))

    task = asyncio.create_task(read_data(reader, LIMITS, refuse))
    sent, answered_at = 0, 0
    while not task.done():
        reader.feed_data(b"x" * 4096)
        sent += 4096
        await asyncio.sleep(0)
        # Taken as it comes: the stream's buffer stays within a few pieces, nothing else grows.
        assert len(reader._buffer) <= 2 * 4096 + LIMITS.max_line  # type: ignore[attr-defined]
        if refused and not answered_at:
            answered_at = sent
    result = await task
    assert 0 < answered_at <= 8192 + LIMITS.max_line  # answered on the first over-long piece
    assert refused == [str(front_replies.LINE_TOO_LONG)]
    assert result.content is None and result.closed  # drained past drain_limit: close
    assert sent <= LIMITS.max_line + LIMITS.drain_limit + 3 * 4096


async def test_the_end_of_an_over_long_line_is_not_the_end_of_data() -> None:
    result, refused = await _read([b"a" * 2000, b".\r\n", b"more\r\n", b".\r\n"])
    assert refused == [str(front_replies.LINE_TOO_LONG)]
    assert result == DataResult(None, front_replies.LINE_TOO_LONG)  # ended by the later dot


async def test_too_much_data_is_refused_on_the_line_that_passes_the_limit() -> None:
    line = b"y" * 98 + b"\r\n"
    result, refused = await _read([b"\r\n" + line * 100, line, b".\r\n"])
    assert refused == [str(front_replies.MESSAGE_TOO_BIG)]
    assert result.content is None and not result.closed


async def test_the_header_section_is_bounded_but_not_the_body() -> None:
    field = b"X-F: " + b"f" * 93 + b"\r\n"
    result, refused = await _read([field * 25, b".\r\n"])
    assert refused == [str(front_replies.HEADER_TOO_BIG)]
    body = b"Subject: x\r\n\r\n" + field * 25 + b".\r\n"
    result, refused = await _read([body])
    assert refused == [] and result.content == body[:-3]
