"""The SMTP front: aiosmtpd, hardened and wired to the chain, the policy and the relay.

One `GatewaySMTP` protocol object and one `ConnectionHandler` per client connection. aiosmtpd does
the protocol parsing; we add what a gateway on the internet needs: connection limits, the CONNECT
phase before the greeting, enhanced status codes on every reply, no AUTH, a 451 (never aiosmtpd's
"500 Error: (Exception) text") when anything unexpected happens, and DATA that only ends on
CRLF.CRLF (aiosmtpd reads DATA lines up to CRLF, so a bare LF or CR can never end it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
from collections.abc import Sequence
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from gateway.access import check_recipient
from gateway.app import Gateway
from gateway.cputime import metered
from gateway.plugin import ClientInfo, MessageContext, Phase, TlsInfo, new_queue_id
from gateway.policy import NetworkList
from gateway.relay import Downstream
from gateway.text import printable, quoted
from gateway.tls import TlsReplies
from gateway.transaction import conclude
from gateway.verdict import Action, Finding, Replies, SmtpReply, Verdict

log = logging.getLogger("mailgate.smtp")

_REPLY = re.compile(r"^(\d{3})([ -])(.*)$", re.DOTALL)
_HAS_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(\s|$)")
# RFC 3463 codes for the replies aiosmtpd composes itself without one.
_DEFAULT_STATUS = {
    211: "2.0.0", 214: "2.0.0", 221: "2.0.0", 220: "2.0.0", 250: "2.0.0", 252: "2.5.0",
    421: "4.3.0", 451: "4.3.0", 454: "4.7.0",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
    530: "5.7.0", 550: "5.0.0", 552: "5.3.4", 553: "5.1.3", 554: "5.7.0", 555: "5.5.4",
}  # fmt: skip


def with_status(reply: str) -> str:
    """Add an enhanced status code (RFC 2034) to a reply that lacks one."""
    match = _REPLY.match(reply)
    if not match:
        return reply
    code, sep, text = int(match.group(1)), match.group(2), match.group(3)
    if _HAS_STATUS.match(text) or code == 354 or code not in _DEFAULT_STATUS:
        return reply
    return f"{code}{sep}{_DEFAULT_STATUS[code]} {text}"


def tls_info(session: Session) -> TlsInfo | None:
    extra = session.ssl or {}
    ssl_object = extra.get("ssl_object") if isinstance(extra, dict) else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    cipher = ssl_object.cipher()
    return TlsInfo(
        version=ssl_object.version() or "unknown",
        cipher=cipher[0] if cipher else "unknown",
        bits=cipher[2] if cipher else 0,
    )


class ConnectionHandler:
    """aiosmtpd hooks for one client connection: phases, relay control, downstream, verdict."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        settings = gateway.settings
        self.downstream = Downstream(settings.delivery, settings.listen.hostname)
        self.client = ClientInfo(ip="", port=0)
        self.connect_findings: list[Finding] = []
        self.helo_findings: list[Finding] = []
        self.ctx: MessageContext | None = None
        self.counted_ip: str | None = None
        self.busy = False
        self.tls_required = False  # rules/tls.toml names this client: 530 until STARTTLS

    # -- connection ---------------------------------------------------------------------------

    def _session_ctx(self) -> MessageContext:
        return MessageContext(
            client=self.client,
            rules=self.gateway.rules,
            settings=self.gateway.settings,
            queue_id="-",
            findings=[*self.connect_findings, *self.helo_findings],
        )

    async def on_connect(self, session: Session | None) -> SmtpReply | None:
        """Limits and the CONNECT phase, before the greeting; a reply here refuses the client."""
        gateway = self.gateway
        if not self.client.ip and session is not None:
            peer: Any = session.peer
            self.client.ip, self.client.port = str(peer[0]), int(peer[1])
        limits = gateway.settings.limits
        if gateway.shutting_down:
            return Replies.SHUTTING_DOWN
        if gateway.total_connections >= limits.max_connections:
            return Replies.TOO_MANY_CONNECTIONS.with_text("Too many connections, try again later")
        if gateway.connections.get(self.client.ip, 0) >= limits.max_connections_per_ip:
            return Replies.TOO_MANY_CONNECTIONS
        gateway.connections[self.client.ip] = gateway.connections.get(self.client.ip, 0) + 1
        gateway.total_connections += 1
        self.counted_ip = self.client.ip
        ctx = self._session_ctx()
        self.connect_findings = await gateway.chain.run(Phase.CONNECT, ctx)
        verdict = ctx.rules.forced_now(ctx.findings)
        if verdict is None:
            self.tls_required = ctx.rules.tls.required_for_client(self.client.ip)
            return None
        self._log_refusal(ctx, Phase.CONNECT, verdict)
        # RFC 5321 3.1: a refusing greeting is 554 (permanent) or 421 (temporary).
        code = 554 if verdict.reply.code >= 500 else 421
        return SmtpReply(code, verdict.reply.status, verdict.reply.text)

    def on_disconnect(self) -> None:
        self.downstream.abort()
        self.ctx = None
        if self.counted_ip is not None:
            gateway = self.gateway
            left = gateway.connections.get(self.counted_ip, 1) - 1
            if left > 0:
                gateway.connections[self.counted_ip] = left
            else:
                gateway.connections.pop(self.counted_ip, None)
            gateway.total_connections -= 1
            self.counted_ip = None

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy: Any
    ) -> bool:
        """Accept a PROXY header only from a configured load balancer; take its client address."""
        settings = self.gateway.settings.listen
        peer_address: Any = session.peer
        peer = str(peer_address[0])
        if not NetworkList(settings.proxy_trusted).matches(peer):
            log.warning("PROXY header from untrusted peer %s refused", peer)
            return False
        if proxy.src_addr is not None and proxy.src_port is not None:
            self.client.ip, self.client.port = str(proxy.src_addr), int(proxy.src_port)
            self.client.proxied_by = peer
        else:  # PROXY LOCAL (a health check): the peer is the client
            self.client.ip, self.client.port = peer, int(peer_address[1])
        return True

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        # RFC 3207 4.2: the client must start over, so forget HELO and any transaction.
        self.client.tls = tls_info(session)
        self.client.helo = None
        self.helo_findings = []
        self.ctx = None
        return True

    # -- HELO / EHLO ----------------------------------------------------------------------------

    async def _helo_phase(self, session: Session, hostname: str, esmtp: bool) -> str | None:
        self.client.helo = hostname
        self.client.esmtp = esmtp
        self.ctx = None
        self.helo_findings = []
        ctx = self._session_ctx()
        self.helo_findings = await self.gateway.chain.run(Phase.HELO, ctx)
        verdict = ctx.rules.forced_now(ctx.findings)
        if verdict is not None:
            self._log_refusal(ctx, Phase.HELO, verdict)
            return str(verdict.reply)
        session.host_name = hostname
        return None

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        refusal = await self._helo_phase(session, hostname, esmtp=False)
        return refusal or f"250 {self.gateway.settings.listen.hostname}"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        refusal = await self._helo_phase(session, hostname, esmtp=True)
        if refusal:
            return [refusal]
        # aiosmtpd offers SIZE, 8BITMIME, SMTPUTF8, STARTTLS; add what we implement end to end
        # (PIPELINING: its reader is sequential; ENHANCEDSTATUSCODES: see with_status) and drop
        # AUTH: this is an MX, not a submission server.
        lines = [r[4:] for r in responses if not r[4:].upper().startswith(("AUTH", "HELP"))]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        # RFC 8689: offered only inside TLS, and only when we can keep the promise: verified TLS
        # to the delivery server (which must offer REQUIRETLS too; checked at MAIL).
        if self.client.tls is not None and self.gateway.settings.delivery.tls_verified:
            lines.append("REQUIRETLS")
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    # -- transaction --------------------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.gateway.shutting_down:
            return str(Replies.SHUTTING_DOWN)
        ctx = self._session_ctx()
        ctx.queue_id = new_queue_id()
        ctx.mail_from = address
        ctx.mail_options = list(mail_options)
        refusal = self._tls_refusal_at_mail(ctx)
        if refusal is not None:
            return refusal
        await self.gateway.chain.run(Phase.MAIL, ctx)
        verdict = ctx.rules.forced_now(ctx.findings)
        if verdict is not None:
            self._log_refusal(ctx, Phase.MAIL, verdict)
            return str(verdict.reply.with_text(f"{verdict.reply.text} (id={ctx.queue_id})"))
        begin = self.downstream.begin(self.client, ctx.queue_id, address, mail_options)
        reply = await metered(begin, ctx.meter("relay"))
        if not reply.is_positive:
            log.info(
                "qid=%s client=%s from=%s refused at MAIL by delivery server: %s",
                ctx.queue_id,
                ctx.client.ip,
                quoted(address),
                quoted(str(reply)),
            )
            return str(reply)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.ctx = ctx
        return str(Replies.SENDER_OK)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        ctx = self.ctx
        if ctx is None:
            return "503 5.5.1 Error: need MAIL command"
        settings = self.gateway.settings
        if len(envelope.rcpt_tos) >= settings.limits.max_recipients:
            return str(Replies.TOO_MANY_RECIPIENTS)
        refusal = check_recipient(settings.relay, self.client.ip, address)
        if refusal is not None:
            log.info(
                "qid=%s client=%s from=%s rcpt=%s refused: %s",
                ctx.queue_id,
                ctx.client.ip,
                quoted(ctx.mail_from or ""),
                quoted(address),
                refusal.text,
            )
            return str(refusal)
        if self.client.tls is None and ctx.rules.tls.required_for_recipient(address):
            return self._refuse_for_tls(
                ctx, Phase.RCPT, ctx.rules.tls.refusal, f"TLS required for recipient {address}"
            )
        before = len(ctx.findings)
        ctx.rcpt_tos.append(address)
        await self.gateway.chain.run(Phase.RCPT, ctx)
        ctx.rcpt_tos.pop()
        verdict = ctx.rules.forced_now(ctx.findings)
        if verdict is not None:
            del ctx.findings[before:]  # this recipient is refused; its findings go with it
            self._log_refusal(ctx, Phase.RCPT, verdict)
            return str(verdict.reply.with_text(f"{verdict.reply.text} (id={ctx.queue_id})"))
        reply = await metered(self.downstream.rcpt(address), ctx.meter("relay"))
        if not reply.is_positive:
            del ctx.findings[before:]
            log.info(
                "qid=%s rcpt=%s refused by delivery server: %s",
                ctx.queue_id,
                quoted(address),
                quoted(str(reply)),
            )
            return str(reply)
        ctx.rcpt_tos.append(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(Replies.RECIPIENT_OK)

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.ctx = None
        await self.downstream.reset()
        return str(Replies.OK)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        ctx, self.ctx = self.ctx, None
        if ctx is None:
            return "503 5.5.1 Error: need MAIL command"
        self.busy = True
        if isinstance(server, GatewaySMTP):
            server.allow_processing_time()
        try:
            ctx.raw = bytes(envelope.original_content or b"")
            return str(await conclude(self.gateway, ctx, self.downstream))
        except Exception:
            log.exception("qid=%s failed while concluding; client told to retry", ctx.queue_id)
            self.downstream.abort()
            return str(
                Replies.INTERNAL_ERROR.with_text(
                    f"Internal error, try again later (id={ctx.queue_id})"
                )
            )
        finally:
            self.busy = False

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A failed handshake (no common protocol or cipher, a client that gave up): aiosmtpd
            # closes the connection. The client's business, not an error of ours.
            log.info(
                "client=%s TLS handshake failed: %s",
                self.client.ip,
                printable(str(error.__cause__ or error)),
            )
            self.downstream.abort()
            self.ctx = None
            return str(Replies.INTERNAL_ERROR)
        log.error(
            "client=%s unexpected %s: %s",
            self.client.ip,
            type(error).__name__,
            printable(str(error)),
            exc_info=error,
        )
        self.downstream.abort()
        self.ctx = None
        return str(Replies.INTERNAL_ERROR)

    def _tls_refusal_at_mail(self, ctx: MessageContext) -> str | None:
        """REQUIRETLS (RFC 8689) and rules/tls.toml sender domains, before anything else."""
        sender = ctx.mail_from or ""
        if "REQUIRETLS" in (o.upper() for o in ctx.mail_options):
            if self.client.tls is None:
                return self._refuse_for_tls(
                    ctx, Phase.MAIL, TlsReplies.REQUIRETLS_NEEDS_TLS, "REQUIRETLS without TLS"
                )
            if not self.gateway.settings.delivery.tls_verified:
                return self._refuse_for_tls(
                    ctx,
                    Phase.MAIL,
                    TlsReplies.REQUIRETLS_UNSUPPORTED,
                    "REQUIRETLS: [delivery] TLS is not verified (no tls_ca_file or fingerprints)",
                )
        if self.client.tls is None and ctx.rules.tls.required_for_sender(sender):
            return self._refuse_for_tls(
                ctx, Phase.MAIL, ctx.rules.tls.refusal, "TLS required for sender domain"
            )
        return None

    def _refuse_for_tls(
        self, ctx: MessageContext, phase: Phase, reply: SmtpReply, reason: str
    ) -> str:
        action = Action.REJECT if reply.code >= 500 else Action.TEMPFAIL
        verdict = Verdict(action=action, score=0.0, findings=(), reply=reply, reason=reason)
        self._log_refusal(ctx, phase, verdict)
        return str(reply.with_text(f"{reply.text} (id={ctx.queue_id})"))

    def _log_refusal(self, ctx: MessageContext, phase: Phase, verdict: Verdict) -> None:
        log.info(
            "qid=%s client=%s helo=%s from=%s phase=%s action=%s score=%g reason=%s symbols=%s "
            "reply=%s",
            ctx.queue_id,
            ctx.client.ip,
            quoted(ctx.client.helo or ""),
            quoted(ctx.mail_from or ""),
            phase.value,
            verdict.action.value,
            verdict.score,
            quoted(verdict.reason),
            verdict.symbols_text() or "-",
            quoted(str(verdict.reply)),
        )


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP protocol with our limits, greeting, reply codes and cleanup."""

    def __init__(
        self,
        gateway: Gateway,
        tls_context: ssl.SSLContext | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        limits = gateway.settings.limits
        listen = gateway.settings.listen
        # aiosmtpd reads these at construction; set per instance before it does.
        self.line_length_limit = limits.max_line_length + 3  # CRLF and a stuffed dot
        self.command_size_limit = limits.max_command_length
        self.command_size_limits = collections.defaultdict(lambda: limits.max_command_length)
        self.gateway = gateway
        self.handler = ConnectionHandler(gateway)
        self._greeted = False
        self._in_helo = False
        self._in_mail = False
        super().__init__(
            self.handler,
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

    async def push(self, status: Any) -> None:
        if not self._greeted:
            self._greeted = True
            try:
                refusal = await self.handler.on_connect(self.session)
            except Exception as error:
                # The greeting is sent before aiosmtpd's command loop, whose handler would catch
                # this: the client got no reply and hung until the idle timeout. Log it as
                # handle_exception does and refuse for now (RFC 5321 3.1: 421 at the greeting).
                await self.handler.handle_exception(error)
                refusal = SmtpReply(421, "4.3.0", Replies.INTERNAL_ERROR.text)
            if refusal is not None:
                self._writer.write(str(refusal).encode("ascii") + b"\r\n")
                if self.transport is not None:
                    self.transport.close()
                return
            if self.handler.tls_required:
                # RFC 3207 4: aiosmtpd then answers every command but EHLO, STARTTLS, NOOP and
                # QUIT with 530 (5.7.0 added by with_status) until TLS is active.
                self.require_starttls = True
                log.info("client=%s must use STARTTLS (rules/tls.toml)", self.handler.client.ip)
        elif isinstance(status, str) and not self._in_helo:
            status = with_status(status)
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
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
        await self.push("503 5.5.1 Error: authentication not enabled")

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._in_mail = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._in_mail = False

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        # aiosmtpd answers 555 to a MAIL parameter it does not know. REQUIRETLS (RFC 8689) is
        # ours: take it out of what aiosmtpd checks; it stays in the mail_options handle_MAIL
        # gets, which refuses or honours it.
        result: dict[str, str | bool] | None = super()._getparams(params)
        if result is None or not self._in_mail:
            return result
        if result.pop("REQUIRETLS", True) is not True:
            return None  # REQUIRETLS=value: 501 syntax error
        return result

    async def smtp_DATA(self, arg: str) -> None:
        # The idle timer is not reset while DATA streams in: the whole transfer gets
        # limits.data_timeout, and handle_DATA (allow_processing_time) then gives inspection and
        # the delivery server their time. One timer of data_timeout + delivery.data_timeout + 60 s
        # for both let a client stall mid-DATA for minutes whatever data_timeout said.
        self._reset_timeout(self.gateway.settings.limits.data_timeout)
        await super().smtp_DATA(arg)
        self._reset_timeout()
        handler = self.handler
        if handler.ctx is not None and (self.envelope is None or self.envelope.mail_from is None):
            # aiosmtpd refused the message itself (552 too much mail data, 500 line too long) and
            # reset its envelope without calling handle_DATA: end our transaction as well, or the
            # connection looks busy to shutdown and the delivery server is left mid-transaction.
            handler.ctx = None
            await handler.downstream.reset()
        if self.gateway.shutting_down and self.transport is not None:
            await super().push(str(Replies.SHUTTING_DOWN))
            self.transport.close()

    def allow_processing_time(self) -> None:
        """The message is in; the client now waits for us: plugins, then the delivery server."""
        settings = self.gateway.settings
        plugins = sum(settings.plugins.timeout_for(p.name) for p in self.gateway.chain.plugins)
        self._reset_timeout(plugins + settings.delivery.data_timeout + 60)

    def connection_lost(self, error: Exception | None) -> None:
        self.handler.on_disconnect()
        super().connection_lost(error)

    @property
    def idle(self) -> bool:
        """Between transactions: safe to close at shutdown with a 421."""
        return self.handler.ctx is None and not self.handler.busy
