"""What gateway/smtp.py relies on from aiosmtpd, pinned on plain aiosmtpd over a real socket.

The adapter uses a few internals that aiosmtpd does not promise to keep (pyproject.toml pins
the versions checked: 1.4.x). If an upgrade breaks one, this file says which, before the
behaviour tests fail in ways that are harder to read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.metadata
import inspect
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from gateway.smtp import STARTTLS_FIRST, GatewaySMTP, tls_info

LOOPBACK = "127.0.0.1"
WAIT = 10.0  # against a hang only: every read below is answered at once


class Hooks:
    """Records what aiosmtpd hands to the hooks the adapter implements."""

    def __init__(self) -> None:
        self.ehlo_responses: list[str] = []
        self.content: bytes | None = None
        self.mail_options: list[str] = []

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # a new-style hook must, as the adapter's does
        self.ehlo_responses = list(responses)
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mail_options = list(options)
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.content = envelope.original_content
        return "250 OK"


class Probe(SMTP):
    """Plain aiosmtpd, recording every push."""

    instances: ClassVar[list[Probe]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.line_length_limit = 77  # set per instance before aiosmtpd's __init__ reads it
        self.command_size_limits = collections.defaultdict(lambda: 300)
        super().__init__(*args, **kwargs)
        self.pushed: list[str] = []
        Probe.instances.append(self)

    async def push(self, status: Any) -> None:
        self.pushed.append(status if isinstance(status, str) else status.decode())
        await super().push(status)

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        if isinstance(result, dict):
            result.pop("REQUIRETLS", None)  # as the adapter does: ours, not aiosmtpd's
        return result


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> list[str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), WAIT)).decode().rstrip()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    async def command(self, text: str) -> list[str]:
        self.writer.write(text.encode() + b"\r\n")
        return await self.reply()


@pytest.fixture
async def probe() -> AsyncIterator[tuple[Probe, Hooks, Client]]:
    hooks = Hooks()
    Probe.instances.clear()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Probe(hooks, hostname="probe.test", data_size_limit=1000, enable_SMTPUTF8=True),
        LOOPBACK,
        0,
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    client = Client(reader, writer)
    greeting = await client.reply()
    assert greeting[0].startswith("220 probe.test")
    try:
        yield Probe.instances[0], hooks, client
    finally:
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()


def test_the_pinned_version_is_the_installed_one() -> None:
    version = tuple(int(p) for p in importlib.metadata.version("aiosmtpd").split(".")[:2])
    assert version == (1, 4), "re-check this contract, then move the pin in pyproject.toml"


async def test_the_greeting_is_the_first_push(probe: tuple[Probe, Hooks, Client]) -> None:
    smtp, _, _ = probe
    assert smtp.pushed[0].startswith("220 probe.test")  # the adapter runs CONNECT on it


async def test_per_instance_limits_are_read(probe: tuple[Probe, Hooks, Client]) -> None:
    smtp, _, client = probe
    assert smtp._reader._limit == 77  # line_length_limit: the StreamReader's limit
    assert smtp.command_size_limits["MAIL"] == 300  # the default factory survives __init__
    assert (await client.command("EHLO c.test"))[-1].startswith("250 ")
    assert (await client.command("NOOP " + "x" * 100))[0].startswith("500 ")  # over 77


async def test_ehlo_hook_gets_the_offered_keywords(probe: tuple[Probe, Hooks, Client]) -> None:
    _, hooks, client = probe
    await client.command("EHLO c.test")
    assert hooks.ehlo_responses[0] == "250-probe.test"
    assert {r[4:] for r in hooks.ehlo_responses} >= {"SIZE 1000", "8BITMIME", "SMTPUTF8"}


async def test_getparams_returns_a_dict_and_the_hook_gets_raw_options(
    probe: tuple[Probe, Hooks, Client],
) -> None:
    smtp, hooks, client = probe
    assert smtp._getparams(["SIZE=10", "BODY=8BITMIME"]) == {"SIZE": "10", "BODY": "8BITMIME"}
    assert smtp._getparams(["SIZE="]) is None
    await client.command("EHLO c.test")
    assert (await client.command("MAIL FROM:<a@b.test> REQUIRETLS"))[0] == "250 OK"
    assert hooks.mail_options == ["REQUIRETLS"]


async def test_original_content_is_the_unstuffed_data(probe: tuple[Probe, Hooks, Client]) -> None:
    _, hooks, client = probe
    await client.command("EHLO c.test")
    await client.command("MAIL FROM:<a@b.test>")
    await client.command("RCPT TO:<c@d.test>")
    assert (await client.command("DATA"))[0].startswith("354")
    assert (await client.command("a\r\n..b\r\n.")) == ["250 OK"]
    assert hooks.content == b"a\r\n.b\r\n"


async def test_require_starttls_answers_with_the_text_the_adapter_replaces(
    probe: tuple[Probe, Hooks, Client],
) -> None:
    smtp, _, client = probe
    smtp.require_starttls = True
    assert (await client.command("MAIL FROM:<a@b.test>")) == [STARTTLS_FIRST]
    assert (await client.command("NOOP"))[0] == "250 OK"  # allowed before STARTTLS


async def test_reset_timeout_replaces_the_timer(probe: tuple[Probe, Hooks, Client]) -> None:
    smtp, _, _ = probe
    loop = asyncio.get_running_loop()
    before = smtp._timeout_handle
    smtp._reset_timeout(1000)
    after = smtp._timeout_handle
    assert before is not None and before.cancelled()
    assert after is not None and not after.cancelled() and after is not before
    assert 900 < after.when() - loop.time() <= 1000


def test_the_rest_of_what_the_adapter_touches_exists() -> None:
    assert issubclass(TLSSetupException, Exception)
    session = Session(asyncio.new_event_loop())
    try:
        assert session.ssl is None and hasattr(session, "proxy_data")
        assert hasattr(session, "peer") and hasattr(session, "host_name")
    finally:
        session.loop.close()
    assert Envelope().original_content is None
    assert tls_info({}) is None and tls_info(None) is None
    for name in (
        "smtp_EHLO", "smtp_HELO", "smtp_MAIL", "smtp_RCPT", "smtp_DATA", "smtp_AUTH",
        "smtp_STARTTLS", "push", "connection_made", "handle_exception",
    ):  # fmt: skip
        assert callable(getattr(GatewaySMTP, name))


# -- what the hardening of issue 13 relies on -----------------------------------------------------


async def test_the_command_table_is_what_dispatches(probe: tuple[Probe, Hooks, Client]) -> None:
    """The adapter wraps every entry of `_smtp_methods` (argument syntax, junk commands)."""
    smtp, _, client = probe
    assert set(smtp._smtp_methods) >= {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP"}

    async def replaced(arg: str | None) -> None:
        await smtp.push(f"250 replaced {arg}")

    smtp._smtp_methods["NOOP"] = replaced
    assert (await client.command("NOOP x")) == ["250 replaced x"]


async def test_ehlo_grows_the_mail_limit_every_time(probe: tuple[Probe, Hooks, Client]) -> None:
    """The adapter resets command_size_limits["MAIL"] before each EHLO because of this."""
    smtp, _, client = probe
    await client.command("EHLO c.test")
    await client.command("EHLO c.test")
    assert smtp.command_size_limits["MAIL"] == 300 + 2 * 36


async def test_the_state_helpers_the_adapter_calls(probe: tuple[Probe, Hooks, Client]) -> None:
    smtp, hooks, client = probe
    assert isinstance(smtp._reader, asyncio.StreamReader)  # read by gateway.data_reader
    assert smtp._tls_protocol is None  # STARTTLS inside TLS is refused on it
    assert await smtp.check_helo_needed() is True  # pushes "503 ... send HELO first"
    assert (await client.reply())[0].startswith("503 ")
    await client.command("EHLO c.test")
    assert await smtp.check_helo_needed() is False
    assert await smtp.check_auth_needed("DATA") is False
    assert (await client.command("MAIL FROM:<a@b.test> SMTPUTF8"))[0] == "250 OK"
    assert smtp.envelope is not None and smtp.envelope.smtp_utf8 is True  # read at RCPT
    before = smtp.envelope
    smtp._set_rset_state()
    assert smtp.envelope is not before and smtp.envelope.mail_from is None
    smtp._set_post_data_state()
    assert smtp.envelope.rcpt_tos == []
    hooks.content = None
    smtp.envelope.original_content = b"x"
    assert await smtp._call_handler_hook("DATA") == "250 OK"
    assert hooks.content == b"x"


async def test_a_handler_exception_reaches_handle_exception(
    probe: tuple[Probe, Hooks, Client],
) -> None:
    """SMTP.handle_exception asks the handler's; the adapter resets the envelope after it."""
    smtp, hooks, client = probe
    seen: list[Exception] = []

    async def handle_exception(error: Exception) -> str:
        seen.append(error)
        return "451 oops"

    async def failing(*args: Any) -> str:
        raise RuntimeError("boom")

    hooks.handle_exception = handle_exception  # type: ignore[attr-defined]
    smtp._handle_hooks["RCPT"] = failing
    await client.command("EHLO c.test")
    await client.command("MAIL FROM:<a@b.test>")
    assert (await client.command("RCPT TO:<c@d.test>")) == ["451 oops"]
    assert [type(e) for e in seen] == [RuntimeError]


def test_connection_made_runs_again_after_starttls() -> None:
    """The adapter counts a connection on the first call only (transport still None)."""
    source = inspect.getsource(SMTP.connection_made)
    assert "seen_starttls" in source and "_buffer.clear()" in source
    assert inspect.signature(SMTP.handle_exception).parameters.keys() == {"self", "error"}


async def test_eof_while_waiting_for_proxy_leaves_the_transport_open() -> None:
    """Why the adapter's eof_received closes: plain aiosmtpd cancels its PROXY wait at the
    client's EOF and keeps the half-open transport until the timeout (ours: until idle_timeout,
    counted against the client's IP). If this starts failing, aiosmtpd closes it itself."""
    loop = asyncio.get_running_loop()
    made: list[SMTP] = []
    started = asyncio.Event()

    class Started(SMTP):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            made.append(self)
            started.set()

    server = await loop.create_server(
        lambda: Started(Hooks(), hostname="probe.test", proxy_protocol_timeout=60), LOOPBACK, 0
    )
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        await asyncio.wait_for(started.wait(), WAIT)
        handler = made[0]._handler_coroutine
        assert handler is not None
        writer.write_eof()
        with contextlib.suppress(asyncio.CancelledError):  # aiosmtpd cancels it at the EOF
            await asyncio.wait_for(asyncio.shield(handler), WAIT)
        assert handler.cancelled()
        assert made[0].transport is not None and not made[0].transport.is_closing()
    finally:
        writer.close()
        if made and made[0].transport is not None:
            made[0].transport.close()
        server.close()
        await server.wait_closed()


def test_the_plain_path_fast_reading_is_the_email_parsers_reading() -> None:
    """gateway.smtp.plain_path skips the email package's parser for `<local@domain> ...`; where
    it answers at all, it must answer exactly as get_angle_addr (aiosmtpd's _getaddr) does."""
    import random
    from email._header_value_parser import get_angle_addr
    from email.errors import HeaderParseError

    from gateway.smtp import plain_path

    rng = random.Random(20261203)
    pieces = ["a", "a.b", "x+y", "A_B", "o'n", "-", ".", "@", "<", ">", " ", "\t", "(c)", '"', "9"]
    tails = ["", "x", " SIZE=1", "  BODY=8BITMIME ", "\tA", " (c) S", "(", " \u00e9"]
    answered = 0
    for _ in range(20000):
        local = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
        host = "".join(rng.choice(["b", "b.c", "x-y", "-x", "x-", ".", "9", "[1.2.3.4]"]))
        arg = f"<{local}@{host}>{rng.choice(tails)}"
        fast = plain_path(arg)
        if fast is None:
            continue
        answered += 1
        try:
            address, rest = get_angle_addr(arg)
            assert (address.addr_spec, rest) == fast, arg
        except (HeaderParseError, IndexError):
            raise AssertionError(f"the full parser refuses {arg!r}") from None
    assert answered > 1000
    assert plain_path("<alice@example.net> SIZE=12") == ("alice@example.net", "SIZE=12")
    assert plain_path("<alice@example.net> (comment) SIZE=12") is None
    assert plain_path('<"quoted"@example.net>') is None
