"""The one adapter over aiosmtpd: everything that touches its internals lives here.

aiosmtpd parses the protocol; `gateway.session.Session` decides. Each connection gets one
`GatewaySMTP` (aiosmtpd's protocol object, subclassed) and one `SessionHooks` (aiosmtpd's event
handler), and every hook is a one-liner into the Session. What we rely on of aiosmtpd, and
tests/test_aiosmtpd_contract.py pins (pyproject.toml pins the 1.4 series it was checked on):
the greeting is the first `push` (we intercept it to run the CONNECT phase first),
`_reset_timeout(seconds)`, `_getparams` (REQUIRETLS is ours, SIZE must be ASCII digits),
`_getaddr` (its parser raises more than HeaderParseError), `command_size_limits` (grown at
every EHLO: reset first) and `line_length_limit` read per instance, the `_smtp_methods` table
that dispatches commands (each wrapped: argument syntax, junk commands), `_reader` (the
StreamReader DATA is read from, by gateway.data_reader), `_call_handler_hook("DATA")`,
`_set_post_data_state` (a fresh envelope), `check_helo_needed`/`check_auth_needed`,
`envelope.smtp_utf8`, `_tls_protocol` (STARTTLS only once), `connection_made` called again
after STARTTLS, `handle_exception`, `session.ssl` (the TLS transport's extra info),
`require_starttls` and its 530 text, handle_PROXY's `proxy_data`, `eof_received` (it cancels
the handler but leaves the transport open while a PROXY header is awaited), and the `handle_*`
hook signatures.

What the adapter adds: enhanced status codes on aiosmtpd's own replies, no AUTH, a 451 (never
aiosmtpd's "500 Error: (Exception) text") when anything unexpected happens, with aiosmtpd's
envelope reset so both agree there is no transaction; DATA read with every buffer bounded and
refusals answered at once, ending only on CRLF.CRLF (lines are read up to CRLF, so a bare LF or
CR can never end it); 5xx for malformed arguments (gateway.smtp_syntax); Postfix's error and
junk-command limits (gateway.session); connections counted before their PROXY header; every
refusal, connection and TLS session counted for gateway.metrics (`push` counts each 4xx and 5xx
once, with the reason the Session named or aiosmtpd's reply classified); and every
4xx/5xx line sent, whoever composed it, naming the session's or transaction's id
(`Session.stamp_refusal`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
import ssl
from collections.abc import Sequence
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, TLSSetupException
from aiosmtpd.smtp import Session as SmtpSession

from gateway import front_replies, metrics
from gateway.app import Gateway
from gateway.config import Settings
from gateway.data_reader import DataLimits, read_data
from gateway.delivery import DeliveryTransport
from gateway.logcontext import bind_qid
from gateway.metrics import Closed, Phase, Reason
from gateway.plugin import TlsInfo
from gateway.relay import Downstream
from gateway.session import Session
from gateway.smtp_syntax import argument_problem, path_problem, size_problem
from gateway.verdict import Replies, SmtpReply

log = logging.getLogger("mailgate.smtp")

# Postfix's junk commands (smtpd_junk_command_limit), HELP with them.
_JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP"})
_REPLY = re.compile(r"^(\d{3})([ -])(.*)$", re.DOTALL)
_HAS_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(\s|$)")
# RFC 3463 codes for the replies aiosmtpd composes itself without one.
_DEFAULT_STATUS = {
    211: "2.0.0", 214: "2.0.0", 221: "2.0.0", 220: "2.0.0", 250: "2.0.0", 252: "2.5.0",
    421: "4.3.0", 451: "4.3.0", 454: "4.7.0",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
    530: "5.7.0", 550: "5.0.0", 552: "5.3.4", 553: "5.1.3", 554: "5.7.0", 555: "5.5.4",
}  # fmt: skip


# `<local@domain>` with a dot-atom local part and a host name: what nearly every MAIL and RCPT
# carries. The email package's address parser (aiosmtpd's) is pure Python and was a tenth of
# the front's CPU; for these it returns exactly this match (tests/test_front_hardening.py
# compares the two), and everything else still goes to it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_PATH = re.compile(rf"<({_ATEXT}+(?:\.{_ATEXT}+)*@{_LABEL}(?:\.{_LABEL})*)>[ \t]*", re.ASCII)


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, rest) of a plain `<local@domain> params`, as get_angle_addr reads it, or None
    for anything else (comments after it, quoting, literals, UTF-8: the full parser's)."""
    match = _PLAIN_PATH.match(arg)
    if match is None:
        return None
    rest = arg[match.end() :]
    if rest.startswith("("):
        return None  # a comment, which the full parser reads as white space
    return match.group(1), rest


def with_status(reply: str) -> str:
    """Add an enhanced status code (RFC 2034) to a reply that lacks one."""
    match = _REPLY.match(reply)
    if not match:
        return reply
    code, sep, text = int(match.group(1)), match.group(2), match.group(3)
    if _HAS_STATUS.match(text) or code == 354 or code not in _DEFAULT_STATUS:
        return reply
    return f"{code}{sep}{_DEFAULT_STATUS[code]} {text}"


# aiosmtpd's reply while require_starttls holds (RFC 3207 4); policy gives ours instead.
STARTTLS_FIRST = "530 Must issue a STARTTLS command first"


def tls_info(extra: object) -> TlsInfo | None:
    """What was negotiated, from aiosmtpd's `session.ssl` (the TLS transport's extra info)."""
    ssl_object = extra.get("ssl_object") if isinstance(extra, dict) else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    cipher = ssl_object.cipher()
    return TlsInfo(
        version=ssl_object.version() or "unknown",
        cipher=cipher[0] if cipher else "unknown",
        bits=cipher[2] if cipher else 0,
    )


def _address(peer: Any) -> tuple[str, int]:
    return str(peer[0]), int(peer[1])


def _lines(code: int, lines: Sequence[str]) -> list[str]:
    """A multi-line reply as aiosmtpd pushes it: `250-a`, ..., `250 z`."""
    return [f"{code}-{line}" for line in lines[:-1]] + [f"{code} {lines[-1]}"]


def downstream_for(settings: Settings) -> Downstream:
    """The real delivery transport for `settings` [delivery]."""
    return Downstream(settings.delivery, settings.listen.hostname)


class SessionHooks:
    """aiosmtpd's event handler: each hook hands the event to the Session, returns its reply."""

    def __init__(self, session: Session, hostname: str) -> None:
        self.session = session
        self.hostname = hostname

    async def handle_PROXY(
        self, server: SMTP, session: SmtpSession, envelope: Envelope, proxy: Any
    ) -> bool:
        source = None
        if proxy.src_addr is not None and proxy.src_port is not None:
            source = _address((proxy.src_addr, proxy.src_port))
        return self.session.on_proxy(_address(session.peer), source)

    def handle_STARTTLS(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> bool:
        self.session.on_starttls(tls_info(session.ssl or {}))
        return True

    async def handle_HELO(
        self, server: SMTP, session: SmtpSession, envelope: Envelope, hostname: str
    ) -> str:
        refusal = await self.session.on_helo(hostname, esmtp=False)
        if refusal is not None:
            return str(refusal)
        session.host_name = hostname
        return f"250 {self.hostname}"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        refusal = await self.session.on_helo(hostname, esmtp=True)
        if refusal is not None:
            return [str(refusal)]
        session.host_name = hostname
        return _lines(250, self.session.ehlo_keywords([r[4:] for r in responses]))

    async def handle_MAIL(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        reply = await self.session.on_mail(address, mail_options)
        if reply.is_positive:  # aiosmtpd's own checks (503 need MAIL) read its envelope
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return str(reply)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = await self.session.on_rcpt(address, rcpt_options)
        if reply.is_positive:  # aiosmtpd's DATA checks its envelope for a recipient
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return str(reply)

    async def handle_RSET(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        return str(await self.session.on_rset())

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        # The message is in; the client now waits for us: plugins, then the delivery server.
        if isinstance(server, GatewaySMTP):
            server._reset_timeout(self.session.processing_time())
        return str(await self.session.on_data(bytes(envelope.original_content or b"")))

    async def handle_exception(self, error: Exception) -> str:
        # A failed handshake: aiosmtpd closes the connection; anything else: a 451.
        if isinstance(error, TLSSetupException):
            return str(self.session.on_tls_handshake_failed(error))
        return str(self.session.on_error(error))


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP protocol with our limits, greeting, reply codes and cleanup."""

    def __init__(
        self,
        gateway: Gateway,
        tls_context: ssl.SSLContext | None,
        loop: asyncio.AbstractEventLoop | None = None,
        delivery: DeliveryTransport | None = None,
    ) -> None:
        limits = gateway.settings.limits
        listen = gateway.settings.listen
        # aiosmtpd reads these at construction; set per instance before it does.
        self.line_length_limit = limits.max_line_length + 3  # CRLF and a stuffed dot
        self.command_size_limit = limits.max_command_length
        self.command_size_limits = collections.defaultdict(lambda: limits.max_command_length)
        self.gateway = gateway
        new_delivery = None
        if delivery is None:  # ours, not a test's: a reload that moves the server makes anew
            new_delivery = downstream_for
            delivery = downstream_for(gateway.settings)
        self.connection = Session(gateway, delivery, new_delivery)
        self.hooks = SessionHooks(self.connection, listen.hostname)
        self._greeted = False
        self._in_helo = False
        self._in_mail = False
        super().__init__(
            self.hooks,
            data_size_limit=limits.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=listen.hostname,
            ident="ESMTP mailgate",
            tls_context=tls_context,
            timeout=limits.idle_timeout,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            command_call_limit={"NOOP": 100, "VRFY": 10, "EXPN": 10, "HELP": 10, "*": 100000},
            proxy_protocol_timeout=limits.idle_timeout if listen.proxy_protocol else None,
            loop=loop,
        )
        # Every command goes through `_checked`: the argument's syntax first, and the junk
        # commands counted (aiosmtpd dispatches from this table, built in its __init__).
        self._smtp_methods = {
            name: self._checked(name, method) for name, method in self._smtp_methods.items()
        }
        self._closing = False  # a 421 was sent: say nothing more
        # The command the next reply answers: its log line and its gateway.metrics phase.
        self._command = "CONNECT"
        self._in_data = False  # DATA streaming in or being concluded: a timeout refuses it
        self._closed_by: Closed | None = None  # why we closed (None at the end: the client did)
        self._open = False  # counted in gateway.metrics as accepted, not yet as closed

    def _checked(self, name: str, method: Any) -> Any:
        @functools.wraps(method)  # HELP reads the @syntax attributes of the table's entries
        async def checked(arg: str | None) -> None:
            self._command = name
            problem = argument_problem(arg)
            if problem is not None:
                await self.push(str(problem))
                return
            if name in _JUNK_COMMANDS:
                closing = self.connection.on_junk_command()
                if closing is not None:
                    await self._close_with(closing, Closed.ERROR_LIMIT)
                    return
            try:
                await method(arg)
            finally:
                # The log lines' qid (gateway.logcontext), set at MAIL, lasts as long as the
                # transaction: after a refused MAIL, DATA, RSET or a new EHLO it is gone.
                ctx = self.connection.ctx
                bind_qid(ctx.queue_id if ctx is not None else None)

        return checked

    async def _close_with(self, reply: SmtpReply, why: Closed = Closed.SHUTDOWN) -> None:
        self._closed_by = self._closed_by or why
        if why is Closed.ERROR_LIMIT:
            metrics.refused(metrics.phase_of(self._command), Reason.ERROR_LIMIT, reply.code)
        if not self._closing:
            self._closing = True
            await super().push(self._stamped(str(reply)))
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # aiosmtpd calls it again after STARTTLS
        super().connection_made(transport)
        if not first or self.session is None:
            return
        self._open = True
        metrics.connection_accepted()
        refusal = self.connection.on_transport(_address(self.session.peer))
        if refusal is not None:
            self._greeted = True  # nothing more is said: the greeting is not sent
            self._closing = True
            self._writer.write(self._stamped(str(refusal)).encode("ascii") + b"\r\n")
            self._refused_at_connect(refusal)
            transport.close()

    def _refused_at_connect(self, refusal: SmtpReply) -> None:
        self._closed_by = Closed.REFUSED
        metrics.refused(Phase.CONNECT, self.connection.take_reason() or Reason.OTHER, refusal.code)

    def _count_refusal(self, status: str) -> None:
        """Count a 4xx or 5xx about to be sent, once: the Session's reason, else classified."""
        reason = self.connection.take_reason()
        if status[:1] not in ("4", "5"):
            return
        if status == STARTTLS_FIRST:  # push sends the policy's reply instead, if it has one
            required = self.connection.starttls_refusal
            code = required.code if required is not None else 530
            metrics.refused(Phase.STARTTLS, Reason.TLS_REQUIRED, code)
            return
        phase = metrics.phase_of(self._command)
        if reason is None:
            phase, reason = metrics.classify(status, self._command)
            if status.startswith(("421", "502")):  # aiosmtpd closes after these
                self._closed_by = Closed.PROTOCOL
        metrics.refused(phase, reason, int(status[:3]))

    def _reset_envelope(self) -> None:
        """aiosmtpd's fresh envelope, as after RSET or the end of DATA."""
        self._set_post_data_state()  # type: ignore[no-untyped-call]

    async def handle_exception(self, error: Exception) -> str:
        status: str = await super().handle_exception(error)
        if isinstance(error, TLSSetupException):
            self._closed_by = Closed.TLS_FAILED
        else:
            # The session dropped its transaction (on_error): aiosmtpd's envelope goes with it,
            # or RCPT said "need MAIL" while MAIL said "nested MAIL" and DATA took a message.
            self._reset_envelope()
        return status

    async def push(self, status: Any) -> None:
        if self._closing:
            return
        if self._greeted and isinstance(status, str):
            self._count_refusal(status)
        if not self._greeted:  # aiosmtpd's first push is the greeting: CONNECT runs first
            self._greeted = True
            if not await self._connect():
                return
        elif status == STARTTLS_FIRST and self.connection.starttls_refusal is not None:
            status = str(self.connection.starttls_refusal)
        elif isinstance(status, str) and not self._in_helo:
            status = with_status(status)
        answered = self._command
        if isinstance(status, str):
            status = self._stamped(status)
            if status[3:4] == " " and not status.startswith("354"):
                self._command = "-"  # answered: a line refused unread answers no command
        await super().push(status)
        if isinstance(status, str) and self.connection.counts_as_error(status):
            closing = self.connection.on_error_reply()
            if closing is not None:
                self._command = answered  # the limit is reached at that command
                await self._close_with(closing, Closed.ERROR_LIMIT)

    def _stamped(self, status: str) -> str:
        return self.connection.stamp_refusal(status, self._command)

    async def _connect(self) -> bool:
        """The CONNECT phase before the greeting; False: refused, the connection is closing."""
        assert self.session is not None
        try:
            refusal = await self.connection.on_connect(_address(self.session.peer))
        except Exception as error:
            # The greeting is sent before aiosmtpd's command loop, whose handler would catch
            # this: the client got no reply and hung until the idle timeout. Log it as
            # handle_exception does and refuse for now (RFC 5321 3.1: 421 at the greeting).
            refusal = SmtpReply(421, "4.3.0", self.connection.on_error(error).text)
        if refusal is not None:
            self._writer.write(self._stamped(str(refusal)).encode("ascii") + b"\r\n")
            self._refused_at_connect(refusal)
            if self.transport is not None:
                self.transport.close()
            return False
        # RFC 3207 4: aiosmtpd then answers every command but EHLO, STARTTLS, NOOP and QUIT
        # with STARTTLS_FIRST, which push replaces with the policy's reply, until TLS is active.
        self.require_starttls = self.connection.tls_required
        return True

    async def smtp_EHLO(self, hostname: str) -> None:
        # aiosmtpd adds SIZE's 26 and SMTPUTF8's 10 bytes to the MAIL limit at every EHLO,
        # never taking them back: start from the configured limit each time.
        self.command_size_limits["MAIL"] = self.gateway.settings.limits.max_command_length
        self._in_helo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_helo = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_helo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_helo = False

    async def smtp_AUTH(self, arg: str) -> None:
        self.connection.reason = Reason.NOT_SUPPORTED
        await self.push(str(Replies.AUTH_NOT_ENABLED))

    async def smtp_QUIT(self, arg: str) -> None:
        if not arg:
            self._closed_by = Closed.QUIT
        await super().smtp_QUIT(arg)

    def _timeout_cb(self) -> None:
        # aiosmtpd closes without a reply. Mid-DATA (or while concluding it) or before the
        # greeting (a PROXY header that never came) that refuses; between commands it only ends.
        self._closed_by = self._closed_by or Closed.TIMEOUT
        if self._in_data or not self._greeted:
            metrics.refused(Phase.DATA if self._in_data else Phase.CONNECT, Reason.TIMEOUT, None)
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:  # RFC 3207: once only (Postfix: 554 5.5.1)
            self.connection.reason = Reason.TLS_ALREADY_ACTIVE
            await self.push(str(front_replies.TLS_ALREADY_ACTIVE))
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        smtputf8 = bool(self.envelope is not None and self.envelope.smtp_utf8)
        problem = path_problem(arg, "TO:", smtputf8)
        if problem is not None and self.envelope is not None and self.envelope.mail_from:
            await self.push(str(problem))
            return
        await super().smtp_RCPT(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        problem = path_problem(arg, "FROM:", None)
        if problem is not None and self.session is not None and self.session.host_name:
            await self.push(str(problem))
            return
        self._in_mail = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._in_mail = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd catches only HeaderParseError from the email package's address parser, which
        # also raises IndexError (`MAIL FROM:"`, `VRFY <`): a 451 and a traceback each time.
        # Any failure to parse is a malformed address (553 5.1.3), as aiosmtpd means it to be.
        plain = plain_path(arg)
        if plain is not None:
            local_part = plain[0].rpartition("@")[0]
            if self.local_part_limit and len(local_part) > self.local_part_limit:
                return None, None  # as aiosmtpd checks it
            return plain
        try:
            address: tuple[str | None, str | None] = super()._getaddr(arg)
        except Exception:
            return None, None
        return address

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        # aiosmtpd answers 555 to a MAIL parameter it does not know. REQUIRETLS (RFC 8689) is
        # ours: take it out of what aiosmtpd checks; it stays in the mail_options handle_MAIL
        # gets, which refuses or honours it.
        result: dict[str, str | bool] | None = super()._getparams(params)
        if result is None or not self._in_mail:
            return result
        if "SIZE" in result and size_problem(result["SIZE"]):
            return None  # SIZE=² passed str.isdigit, then int() raised: a 501 syntax error
        if result.pop("REQUIRETLS", True) is not True:
            return None  # REQUIRETLS=value: 501 syntax error
        return result

    async def smtp_DATA(self, arg: str) -> None:
        # The idle timer is not reset while DATA streams in: the whole transfer gets
        # limits.data_timeout, and handle_DATA (allow_processing_time) then gives inspection and
        # the delivery server their time. One timer of data_timeout + delivery.data_timeout + 60 s
        # for both let a client stall mid-DATA for minutes whatever data_timeout said.
        self._reset_timeout(self.gateway.settings.limits.data_timeout)
        self._in_data = True
        try:
            closing = await self._data(arg)
        finally:
            self._in_data = False
        self._reset_timeout()
        if self.envelope is None or self.envelope.mail_from is None:
            # aiosmtpd's envelope was reset: after handle_DATA, or after the message was
            # refused here (too much data, a line too long) without calling it.
            await self.connection.on_data_refused()
        closing = closing or self.connection.after_data()
        if closing is not None:
            await self._close_with(closing)

    async def _data(self, arg: str | None) -> SmtpReply | None:
        """aiosmtpd's smtp_DATA with our reader (gateway.data_reader); a reply: close after it."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return None
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(str(self.connection.no_recipients_reply()))
            return None
        if arg:
            await self.push("501 Syntax: DATA")
            return None
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limits = self.connection.runtime.settings.limits  # the transaction's generation
        bounds = DataLimits(
            max_size=limits.max_message_size,
            max_line=self.line_length_limit,
            max_header=limits.max_header_size,
            drain_limit=limits.max_message_size,
        )

        async def refuse(reply: SmtpReply) -> None:
            # At once, not after the end of DATA: the client may read it when it is done.
            self.connection.reason = metrics.data_reason(reply)
            await self.push(str(reply))

        result = await read_data(self._reader, bounds, refuse)
        if result.content is None:
            self._reset_envelope()
            if result.closed and result.refusal is not None:
                self._closed_by = Closed.PROTOCOL
                metrics.refused(Phase.DATA, Reason.DATA_AFTER_REFUSAL, 421)
                return front_replies.DATA_AFTER_REFUSAL
            if result.closed and self.transport is not None:
                self.transport.close()
            return None
        self.envelope.content = result.content
        self.envelope.original_content = result.content
        status = await self._call_handler_hook("DATA")
        self._reset_envelope()
        await self.push(status)
        return None

    def eof_received(self) -> bool | None:
        # aiosmtpd cancels its handler at the client's EOF. In the command loop that closes the
        # transport; while it waits for a PROXY header it does not, and the connection stayed
        # half-open, counted against its IP, until the idle timeout. The client is gone and no
        # reply will be written: close now.
        super().eof_received()
        if self.transport is not None:
            self.transport.close()
        return False

    def connection_lost(self, error: Exception | None) -> None:
        self.connection.on_disconnect()
        self._count_closed()
        super().connection_lost(error)

    def _count_closed(self) -> None:
        """Once per connection (aiosmtpd may call connection_lost twice after a failed TLS
        handshake): why it ended."""
        if not self._open:
            return
        self._open = False
        if not self._greeted and self._closed_by is None and self.session is not None:
            proxy = self.session.proxy_data
            if proxy is not None:  # aiosmtpd read a PROXY header, then closed: refused
                self._closed_by = Closed.REFUSED
                if not proxy:  # it could not parse it (untrusted: counted by on_proxy)
                    metrics.refused(Phase.CONNECT, Reason.PROXY_INVALID, None)
        if self._closed_by is None and self.gateway.shutting_down:
            self._closed_by = Closed.SHUTDOWN
        metrics.connection_closed(self._closed_by or Closed.CLIENT_GONE)

    @property
    def idle(self) -> bool:
        """Between transactions: safe to close at shutdown with a 421."""
        return self.connection.idle
