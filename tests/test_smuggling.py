"""SMTP smuggling (SEC Consult, Dec 2023; Postfix CVE-2023-51764 and its family) over real sockets.

The attack: one DATA carries a message, a sequence some server reads as end-of-data (`\\n.\\n`,
`\\r.\\r`, ...), and a whole second transaction. A server that ends DATA at the real CRLF.CRLF sees
one message; a server behind it that ends DATA at the fake sequence sees two, the second from a
sender the first never checked. The gateway must end DATA only at CRLF.CRLF, and what it relays
must leave the delivery server no other reading: with `bare_line_endings = "reject"` nothing is
relayed at all; with `"normalize"` exactly one message, CRLF only, every line "." dot-stuffed on
the wire (the recording sink is aiosmtpd, which ends DATA at CRLF.CRLF: an unstuffed "." line
would end its DATA early and the smuggled MAIL would show in `sink.commands`).

A raw client (`Wire`) writes every byte itself: smtplib and aiosmtplib would "fix" the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import pytest
from harness import GatewayFactory, RecordingSink, RunningGateway, message

SENDER = "alice@example.net"
RECIPIENT = "bob@example.com"
SMUGGLED_SENDER = "smuggler@evil.example"
SMUGGLED_RECIPIENT = "victim@example.com"
SMUGGLED_TRANSACTION = (
    f"MAIL FROM:<{SMUGGLED_SENDER}>\r\n"
    f"RCPT TO:<{SMUGGLED_RECIPIENT}>\r\n"
    "DATA\r\n"
    "From: The CEO <ceo@example.com>\r\n"
    f"To: <{SMUGGLED_RECIPIENT}>\r\n"
    "Subject: smuggled\r\n"
    "\r\n"
    "Please pay the attached invoice today.\r\n"
).encode()
BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")


# How long a reply may take before a test fails: generous, because a loaded 2-core CI machine
# can be slow, and it only matters when the reply never comes.
REPLY_WAIT = 30.0


class Wire:
    """A raw SMTP client on asyncio streams: we write every byte, and read replies as sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = ""

    @classmethod
    async def connect(cls, gw: RunningGateway, within: float = REPLY_WAIT) -> Wire:
        reader, writer = await asyncio.open_connection(gw.host, gw.port)
        wire = cls(reader, writer)
        wire.greeting = await wire.reply(within)
        return wire

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, within: float = REPLY_WAIT) -> str:
        """One whole reply; the lines of a multi-line reply are joined with "\\n"."""
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), within)
            text = line[:-2].decode("ascii")
            lines.append(text)
            if text[3:4] != "-":
                return "\n".join(lines)

    async def command(self, line: str | bytes, within: float = REPLY_WAIT) -> str:
        data = line.encode() if isinstance(line, str) else line
        await self.send(data + b"\r\n")
        return await self.reply(within)

    async def replies_until_closed(self, within: float = REPLY_WAIT) -> list[str]:
        """Every reply until the server closes the connection (after QUIT, a 421, a timeout)."""
        replies: list[str] = []
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            try:
                replies.append(await self.reply(max(remaining, 0.01)))
            except asyncio.IncompleteReadError as eof:
                assert eof.partial == b"", f"half a reply before EOF: {eof.partial!r}"
                return replies

    async def begin_data(self, sender: str = SENDER, recipient: str = RECIPIENT) -> None:
        """EHLO, MAIL, RCPT, DATA, each answered as a well-behaved server would."""
        assert (await self.command("EHLO client.example.net")).startswith("250")
        assert (await self.command(f"MAIL FROM:<{sender}>")).startswith("250 2.1.0")
        assert (await self.command(f"RCPT TO:<{recipient}>")).startswith("250 2.1.5")
        assert (await self.command("DATA")).startswith("354")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def outer_message() -> bytes:
    """The visible message, its body deliberately left without a final line ending."""
    return message(subject="outer", body=b"Hello Bob.")


def smuggling_payload(sequence: bytes) -> bytes:
    """Message, fake end-of-data, a whole second transaction, then the real CRLF.CRLF."""
    return outer_message() + sequence + SMUGGLED_TRANSACTION + b".\r\n"


# What each smuggling sequence becomes in the one message the delivery server records, between
# "Hello Bob." and the smuggled "MAIL FROM" text, in `normalize` mode. The gateway reads DATA in
# CRLF-delimited lines (RFC 5321 2.3.8), so:
# - a "." after a bare CR/LF is mid-line text; normalising makes it a line "." of the body, which
#   must travel dot-stuffed (the sink un-stuffs it back to ".");
# - a "." right after a CRLF starts a line, and is a transparency dot (RFC 5321 4.5.2): it is
#   removed, and what follows it (the bare CR or LF) becomes an empty line;
# - a NUL is never legal in SMTP content (RFC 5321 2.3.8: US-ASCII text; RFC 6152: 8BITMIME has
#   no NUL) and is dropped; the CRLF "." CRLF it hid is then a body line ".", stuffed on the wire.
SEQUENCES = {
    b"\n.\n": b"\r\n.\r\n",
    b"\n.\r\n": b"\r\n.\r\n",
    b"\r.\r": b"\r\n.\r\n",
    b"\r.\n": b"\r\n.\r\n",
    b"\r\n.\n": b"\r\n\r\n",
    b"\n.\r": b"\r\n.\r\n",
    b"\r\n.\r": b"\r\n\r\n",
    b"\r\n\x00.\r\n": b"\r\n.\r\n",
}
SEQUENCE_IDS = [seq.decode().encode("unicode_escape").decode() for seq in SEQUENCES]


async def smuggle(gw: RunningGateway, sequence: bytes) -> list[str]:
    """One DATA with the smuggling payload and QUIT right behind it; every reply after the 354."""
    wire = await Wire.connect(gw)
    try:
        await wire.begin_data()
        await wire.send(smuggling_payload(sequence) + b"QUIT\r\n")
        return await wire.replies_until_closed()
    finally:
        await wire.close()


def assert_no_smuggled_transaction(sink: RecordingSink) -> None:
    assert f"MAIL {SMUGGLED_SENDER}" not in sink.commands
    assert f"RCPT {SMUGGLED_RECIPIENT}" not in sink.commands
    assert sink.commands.count("DATA") <= 1
    assert all(SMUGGLED_RECIPIENT not in d.rcpt_tos for d in sink.delivered)


@pytest.mark.parametrize("sequence", list(SEQUENCES), ids=SEQUENCE_IDS)
async def test_smuggling_sequence_is_refused_and_nothing_reaches_downstream(
    gw: RunningGateway, sink: RecordingSink, sequence: bytes
) -> None:
    replies = await smuggle(gw, sequence)
    # One answer for the whole DATA (so it ended at the real CRLF.CRLF only: the smuggled
    # MAIL/RCPT/DATA were never read as commands), then QUIT's.
    assert len(replies) == 2, replies
    assert replies[0].startswith("550 5.6.0 "), replies
    assert ("NUL" in replies[0]) == (b"\x00" in sequence), replies
    assert replies[1].startswith("221 2.0.0"), replies
    assert sink.delivered == []
    # The delivery server saw the mirrored envelope, then the transaction abandoned: no DATA.
    assert sink.commands == [f"MAIL {SENDER}", f"RCPT {RECIPIENT}", "RSET"]
    assert_no_smuggled_transaction(sink)


@pytest.mark.parametrize(("sequence", "becomes"), list(SEQUENCES.items()), ids=SEQUENCE_IDS)
async def test_smuggling_sequence_normalized_reaches_downstream_as_one_message(
    start_gateway: GatewayFactory, sink: RecordingSink, sequence: bytes, becomes: bytes
) -> None:
    gw: RunningGateway = await start_gateway(limits={"bare_line_endings": "normalize"})
    replies = await smuggle(gw, sequence)
    assert len(replies) == 2, replies
    assert replies[0].startswith("250 2.0.0 OK id="), replies
    assert replies[1].startswith("221 2.0.0"), replies

    [delivered] = await sink.arrived(1)
    assert sink.commands == [f"MAIL {SENDER}", f"RCPT {RECIPIENT}", "DATA"]
    assert_no_smuggled_transaction(sink)
    assert delivered.mail_from == SENDER
    assert delivered.rcpt_tos == [RECIPIENT]

    content = delivered.content
    assert BARE_EOL.search(content) is None, "a bare CR or LF reached the delivery server"
    assert b"\x00" not in content
    # The smuggled transaction is plain body text of the one message, up to the real end.
    assert content.endswith(b"Hello Bob." + becomes + SMUGGLED_TRANSACTION)
    # The sink un-stuffed the wire: a line "." it recorded was ".." on the wire, or its DATA
    # would have ended there (and the smuggled MAIL would be in sink.commands, checked above).
    lines = content.split(b"\r\n")
    assert lines.count(b".") == becomes.count(b"\r\n.\r\n")


async def test_control_real_terminator_ends_data_and_the_rest_are_commands(
    gw: RunningGateway, sink: RecordingSink
) -> None:
    """The legal CRLF.CRLF: two transactions, as the protocol says. Shows the checks above bite."""
    replies = await smuggle(gw, b"\r\n.\r\n")
    codes = [reply[:3] for reply in replies]
    assert codes == ["250", "250", "250", "354", "250", "221"], replies
    delivered = await sink.arrived(2)
    assert [d.mail_from for d in delivered] == [SENDER, SMUGGLED_SENDER]
    assert delivered[1].rcpt_tos == [SMUGGLED_RECIPIENT]
    assert delivered[0].content.endswith(outer_message() + b"\r\n")


@pytest.mark.parametrize(
    ("mode", "answer"), [("reject", "550 5.6.0 "), ("normalize", "250 2.0.0 OK id=")]
)
async def test_bare_lf_dot_lf_does_not_end_data(
    start_gateway: GatewayFactory, sink: RecordingSink, mode: str, answer: str
) -> None:
    """A message "ending" in LF.LF is still in DATA: no answer, nothing relayed till CRLF.CRLF."""
    gw: RunningGateway = await start_gateway(limits={"bare_line_endings": mode})
    wire = await Wire.connect(gw)
    try:
        await wire.begin_data()
        await wire.send(outer_message() + b"\n.\n")
        with pytest.raises(TimeoutError):
            await wire.reply(within=1.0)
        assert sink.delivered == []
        assert "DATA" not in sink.commands

        await wire.send(b"\r\n.\r\n")
        assert (await wire.reply()).startswith(answer)
        assert (await wire.command("QUIT")).startswith("221 2.0.0")
    finally:
        await wire.close()
    if mode == "reject":
        assert sink.delivered == []
        assert "DATA" not in sink.commands
    else:
        [delivered] = await sink.arrived(1)
        assert delivered.content.endswith(b"Hello Bob.\r\n.\r\n\r\n")
