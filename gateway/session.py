"""One client connection, as state and decisions, with no I/O of its own.

`Session` owns what is known about the connection (the client, its HELO and TLS, the findings
of CONNECT and HELO, the open transaction's MessageContext, whether it must use STARTTLS, whether
a message is being concluded) and answers each SMTP event with the reply to give. It never
touches a socket: aiosmtpd stays behind gateway.smtp (the adapter, whose hooks are one-liners
into this class), delivery goes through a `DeliveryTransport`, inspections through the chain.
So the whole conversation can be driven from a test with `MockDelivery` and no network.

Refusals are decided in one place. What the session finds itself (a TLS requirement not met,
REQUIRETLS it cannot honour) is a finding with a front symbol (gateway.front_symbols), and
policy (`RuleSet.forced_now`, over rules/actions.toml and tls.toml) turns findings into the
refusal, exactly as for a plugin's. What is not policy stays here as a fixed reply: connection
limits, shutdown, relay control, the recipient limit, and the order of SMTP commands.

Every refusal names an id the admin can grep: the queue id inside a transaction (MAIL accepted
until the reply to DATA), the session id before it. A refusal decided here is logged here with
that id and its reason; any other 4xx/5xx (a syntax error from aiosmtpd, a limit of the adapter)
gets the id and a log line in `stamp_refusal`, which the adapter calls for every reply it sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from gateway import front_replies, metrics
from gateway.access import check_recipient
from gateway.app import Gateway
from gateway.config import Settings
from gateway.cputime import metered
from gateway.delivery import DeliveryTransport
from gateway.front_symbols import (
    REQUIRETLS_UNVERIFIED_DELIVERY,
    REQUIRETLS_WITHOUT_TLS,
    TLS_REQUIRED_CLIENT,
    TLS_REQUIRED_RECIPIENT,
    TLS_REQUIRED_SENDER,
)
from gateway.logcontext import bind_qid
from gateway.metrics import Reason
from gateway.plugin import ClientInfo, MessageContext, Phase, TlsInfo, new_queue_id
from gateway.policy import NetworkList
from gateway.text import printable, quoted
from gateway.transaction import conclude
from gateway.verdict import Finding, Replies, SmtpReply, Verdict

log = logging.getLogger("mailgate.smtp")

# Postfix's smtpd_hard_error_limit: a client making this many errors (4xx and 5xx replies)
# without delivering mail is disconnected with a 421.
ERROR_LIMIT = 20
# Postfix's smtpd_junk_command_limit: past this many NOOP, RSET, VRFY, EXPN or HELP without
# delivering mail, each one counts as an error too.
JUNK_LIMIT = 100
# Postfix's smtpd_recipient_overshoot_limit: "too many recipients" is no error of the client
# (it sends the rest in the next transaction) until this many past the limit in one transaction.
OVERSHOOT_LIMIT = 1000


class Session:
    """The state of one client connection and the reply to each of its SMTP events."""

    def __init__(
        self,
        gateway: Gateway,
        delivery: DeliveryTransport,
        new_delivery: Callable[[Settings], DeliveryTransport] | None = None,
    ) -> None:
        self.gateway = gateway
        # The generation of settings, policy and chain this connection's transaction uses:
        # taken now, moved to the current one between transactions (`_take_current`).
        self.runtime = gateway.acquire()
        self._released = False
        self.delivery = delivery
        # How to reach a delivery server a reload moved (None: `delivery` stays, as in tests).
        self._new_delivery = new_delivery
        self.id = new_queue_id()  # names the session in replies and log lines before MAIL
        self.last_queue_id = ""  # the latest transaction's: its DATA reply arrives after it ends
        self.client = ClientInfo(ip="", port=0)
        self.connect_findings: list[Finding] = []
        self.helo_findings: list[Finding] = []
        self.ctx: MessageContext | None = None  # the open transaction: MAIL accepted, no DATA yet
        # Policy says this client must use STARTTLS first: the reply to every other command.
        self.starttls_refusal: SmtpReply | None = None
        self.busy = False  # concluding a message: the client waits for our answer
        self._counted_ip: str | None = None  # counted in gateway.connections under this IP
        self._counted_total = False  # counted in gateway.total_connections
        self.errors = 0  # 4xx/5xx replies since the last delivered message
        self.junk = 0  # NOOP, RSET, VRFY, EXPN, HELP since the last delivered message
        self.overshoot = 0  # recipients refused as too many in this transaction
        # Why the refusal being returned refuses (gateway.metrics); the adapter counts it when
        # it sends the reply (take_reason), and classifies the replies no one named.
        self.reason: Reason | None = None

    def take_reason(self) -> Reason | None:
        reason, self.reason = self.reason, None
        return reason

    @property
    def tls_required(self) -> bool:
        return self.starttls_refusal is not None and self.client.tls is None

    @property
    def idle(self) -> bool:
        """Between transactions: safe to close at shutdown with a 421."""
        return self.ctx is None and not self.busy

    # -- connection ---------------------------------------------------------------------------

    def on_transport(self, peer: tuple[str, int]) -> SmtpReply | None:
        """A new TCP connection, before a PROXY header: counted now, or a client could hold any
        number of connections that never send one. A trusted load balancer's connections count
        in the total only (all of them share its address); the client's address is counted
        once the header names it (on_connect). A reply: refused, close."""
        settings = self.runtime.settings
        if not settings.listen.proxy_protocol:
            return None  # on_connect counts, at the greeting
        gateway, limits = self.gateway, settings.limits
        if gateway.total_connections >= limits.max_connections:
            self.reason = Reason.MAX_CONNECTIONS
            return Replies.TOO_MANY_CONNECTIONS.with_text("Too many connections, try again later")
        trusted = NetworkList(settings.listen.proxy_trusted).matches(peer[0])
        if not trusted:
            if gateway.connections.get(peer[0], 0) >= limits.max_connections_per_ip:
                self.reason = Reason.PER_IP_LIMIT
                return Replies.TOO_MANY_CONNECTIONS
            gateway.connections[peer[0]] = gateway.connections.get(peer[0], 0) + 1
            self._counted_ip = peer[0]
        gateway.total_connections += 1
        self._counted_total = True
        return None

    def on_proxy(self, peer: tuple[str, int], source: tuple[str, int] | None) -> bool:
        """A PROXY header: trusted only from a configured load balancer; `source` is its client
        (None for PROXY LOCAL, a health check: the peer is the client)."""
        if not NetworkList(self.runtime.settings.listen.proxy_trusted).matches(peer[0]):
            log.warning("PROXY header from untrusted peer %s refused", peer[0])
            metrics.refused(metrics.Phase.CONNECT, Reason.PROXY_UNTRUSTED, None)
            return False
        if source is not None:
            self.client.ip, self.client.port = source
            self.client.proxied_by = peer[0]
        else:
            self.client.ip, self.client.port = peer
        return True

    async def on_connect(self, peer: tuple[str, int]) -> SmtpReply | None:
        """Limits and the CONNECT phase, before the greeting; a reply here refuses the client."""
        gateway = self.gateway
        if not self.client.ip:
            self.client.ip, self.client.port = peer
        limits = self.runtime.settings.limits
        if gateway.shutting_down:
            self.reason = Reason.SHUTTING_DOWN
            return Replies.SHUTTING_DOWN
        if not self._counted_total and gateway.total_connections >= limits.max_connections:
            self.reason = Reason.MAX_CONNECTIONS
            return Replies.TOO_MANY_CONNECTIONS.with_text("Too many connections, try again later")
        if self._counted_ip is None:  # not yet counted by its address (on_transport)
            if gateway.connections.get(self.client.ip, 0) >= limits.max_connections_per_ip:
                self.reason = Reason.PER_IP_LIMIT
                return Replies.TOO_MANY_CONNECTIONS
            gateway.connections[self.client.ip] = gateway.connections.get(self.client.ip, 0) + 1
            self._counted_ip = self.client.ip
        if not self._counted_total:
            gateway.total_connections += 1
            self._counted_total = True
        ctx = self._context()
        self.connect_findings = await self.runtime.chain.run(Phase.CONNECT, ctx)
        verdict = ctx.rules.forced_now(ctx.findings)
        if verdict is not None:
            self._log_refusal(ctx, Phase.CONNECT, verdict)
            # RFC 5321 3.1: a refusing greeting is 554 (permanent) or 421 (temporary).
            code = 554 if verdict.reply.code >= 500 else 421
            return SmtpReply(code, verdict.reply.status, verdict.reply.text).with_id(self.id)
        if ctx.rules.tls.required_for_client(self.client.ip):
            finding = Finding(TLS_REQUIRED_CLIENT, detail=self.client.ip)
            required = ctx.rules.forced_now([finding])
            if required is not None:
                self.starttls_refusal = required.reply
                log.info("client=%s must use STARTTLS (rules/tls.toml)", self.client.ip)
        return None

    def on_disconnect(self) -> None:
        self.delivery.abort()
        self.ctx = None
        if not self._released:
            self._released = True
            self.gateway.release(self.runtime)
        if self._counted_ip is not None:
            gateway = self.gateway
            left = gateway.connections.get(self._counted_ip, 1) - 1
            if left > 0:
                gateway.connections[self._counted_ip] = left
            else:
                gateway.connections.pop(self._counted_ip, None)
            self._counted_ip = None
        if self._counted_total:
            self.gateway.total_connections -= 1
            self._counted_total = False

    def on_starttls(self, tls: TlsInfo | None) -> None:
        """RFC 3207 4.2: after the handshake the client starts over: forget HELO and MAIL."""
        self.client.tls = tls
        metrics.tls_session("inbound", tls.version if tls else None)
        self.client.helo = None
        self.helo_findings = []
        self.ctx = None

    # -- HELO / EHLO --------------------------------------------------------------------------

    async def on_helo(self, hostname: str, esmtp: bool) -> SmtpReply | None:
        """The HELO phase; None: go on (the adapter sends the greeting or the EHLO keywords)."""
        self.ctx = None
        self.client.helo, self.helo_findings = None, []
        await self._take_current()
        self.client.helo = hostname
        self.client.esmtp = esmtp
        ctx = self._context()
        self.helo_findings = await self.runtime.chain.run(Phase.HELO, ctx)
        verdict = ctx.rules.forced_now(ctx.findings)
        if verdict is None:
            return None
        self._log_refusal(ctx, Phase.HELO, verdict)
        return verdict.reply.with_id(self.id)

    def ehlo_keywords(self, offered: Sequence[str]) -> list[str]:
        """The EHLO keywords we announce, from what aiosmtpd offers (SIZE, 8BITMIME, ...)."""
        # Add what we implement end to end (PIPELINING: aiosmtpd's reader is sequential;
        # ENHANCEDSTATUSCODES: every reply has one) and drop AUTH: an MX is no submission server.
        keywords = [k for k in offered if not k.upper().startswith(("AUTH", "HELP"))]
        keywords += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        # RFC 8689: offered only inside TLS, and only when we can keep the promise: verified TLS
        # to the delivery server (which must offer REQUIRETLS too; checked at MAIL).
        if self.client.tls is not None and self.runtime.settings.delivery.tls_verified:
            keywords.append("REQUIRETLS")
        return keywords

    # -- transaction --------------------------------------------------------------------------

    async def on_mail(self, address: str, options: Sequence[str]) -> SmtpReply:
        if self.gateway.shutting_down:
            self.reason = Reason.SHUTTING_DOWN
            return Replies.SHUTTING_DOWN
        await self._take_current()
        self.overshoot = 0
        ctx = self._context()
        ctx.queue_id = self.last_queue_id = new_queue_id()
        bind_qid(ctx.queue_id)  # every line until the transaction ends carries it (smtp.py)
        ctx.mail_from = address
        ctx.mail_options = list(options)
        # TLS requirements first: a client that must not send without TLS is not inspected.
        verdict = self._refused_for_tls(ctx, self._tls_findings_at_mail(ctx))
        if verdict is None:
            await self.runtime.chain.run(Phase.MAIL, ctx)
            verdict = ctx.rules.forced_now(ctx.findings)
        if verdict is not None:
            return self._refusal(ctx, Phase.MAIL, verdict)
        begin = self.delivery.begin(self.client, ctx.queue_id, address, options)
        reply = await metered(begin, ctx.meter("relay"))
        if not reply.is_positive:
            # The delivery server's own refusal ("delivery server: ...") or ours when it could
            # not be asked (451 4.4.x, 4.7.x): the reply text says which.
            reply = reply.with_id(ctx.queue_id)
            log.info(
                "qid=%s session=%s client=%s from=%s phase=MAIL refused: reply=%s",
                ctx.queue_id,
                self.id,
                ctx.client.ip,
                quoted(address),
                quoted(str(reply)),
            )
            self.reason = metrics.downstream_reason(reply)
            return reply
        self.ctx = ctx
        return Replies.SENDER_OK

    def _tls_findings_at_mail(self, ctx: MessageContext) -> list[Finding]:
        """REQUIRETLS (RFC 8689) and rules/tls.toml sender domains, known at MAIL."""
        found: list[Finding] = []
        if "REQUIRETLS" in (o.upper() for o in ctx.mail_options):
            if self.client.tls is None:
                found.append(Finding(REQUIRETLS_WITHOUT_TLS, detail="REQUIRETLS without TLS"))
            elif not self.runtime.settings.delivery.tls_verified:
                found.append(
                    Finding(
                        REQUIRETLS_UNVERIFIED_DELIVERY,
                        detail="[delivery] TLS is not verified (no tls_ca_file or fingerprints)",
                    )
                )
        if self.client.tls is None and ctx.rules.tls.required_for_sender(ctx.mail_from or ""):
            found.append(Finding(TLS_REQUIRED_SENDER, detail="TLS required for sender domain"))
        return found

    def _refused_for_tls(self, ctx: MessageContext, found: list[Finding]) -> Verdict | None:
        if not found:
            return None
        ctx.findings.extend(found)
        return ctx.rules.forced_now(ctx.findings)

    async def on_rcpt(self, address: str, options: Sequence[str]) -> SmtpReply:
        ctx = self.ctx
        if ctx is None:
            return Replies.NEED_MAIL
        settings = self.runtime.settings
        if address.lower() == "postmaster":
            # RFC 5321 4.5.1: <postmaster> without a domain MUST be accepted; it is the
            # postmaster of the domains we serve (the first one listed).
            domain = self.postmaster_domain()
            if domain is None:
                self.reason = Reason.NO_POSTMASTER_DOMAIN
                return front_replies.NO_POSTMASTER_DOMAIN
            address = f"postmaster@{domain}"
        if len(ctx.rcpt_tos) >= settings.limits.max_recipients:
            self.overshoot += 1
            self.reason = Reason.TOO_MANY_RECIPIENTS
            return Replies.TOO_MANY_RECIPIENTS
        refusal = check_recipient(settings.relay, self.client.ip, address)
        if refusal is not None:
            self.reason = metrics.relay_reason(refusal)  # before the id makes it our own text
            refusal = refusal.with_id(ctx.queue_id)
            log.info(
                "qid=%s session=%s client=%s from=%s rcpt=%s phase=RCPT refused: reply=%s",
                ctx.queue_id,
                self.id,
                ctx.client.ip,
                quoted(ctx.mail_from or ""),
                quoted(address),
                quoted(str(refusal)),
            )
            return refusal
        before = len(ctx.findings)
        tls_findings: list[Finding] = []
        if self.client.tls is None and ctx.rules.tls.required_for_recipient(address):
            detail = f"TLS required for recipient {address}"
            tls_findings.append(Finding(TLS_REQUIRED_RECIPIENT, detail=detail))
        verdict = self._refused_for_tls(ctx, tls_findings)
        if verdict is None:
            ctx.rcpt_tos.append(address)
            await self.runtime.chain.run(Phase.RCPT, ctx)
            ctx.rcpt_tos.pop()
            verdict = ctx.rules.forced_now(ctx.findings)
        if verdict is not None:
            del ctx.findings[before:]  # this recipient is refused; its findings go with it
            return self._refusal(ctx, Phase.RCPT, verdict)
        reply = await metered(self.delivery.rcpt(address), ctx.meter("relay"))
        if not reply.is_positive:
            del ctx.findings[before:]
            reply = reply.with_id(ctx.queue_id)
            log.info(
                "qid=%s session=%s client=%s rcpt=%s phase=RCPT refused: reply=%s",
                ctx.queue_id,
                self.id,
                ctx.client.ip,
                quoted(address),
                quoted(str(reply)),
            )
            self.reason = metrics.downstream_reason(reply)
            return reply
        ctx.rcpt_tos.append(address)
        return Replies.RECIPIENT_OK

    def postmaster_domain(self) -> str | None:
        """The first domain of [relay] domains that is a domain, not ".parent" (subdomains)."""
        return next((d for d in self.runtime.settings.relay.domains if not d.startswith(".")), None)

    def no_recipients_reply(self) -> SmtpReply:
        """DATA before any accepted RCPT: which command is missing, from our own state."""
        if self.ctx is None:
            return Replies.NEED_MAIL
        return SmtpReply(503, "5.5.1", "Error: need RCPT command")

    async def on_rset(self) -> SmtpReply:
        self.ctx = None
        await self.delivery.reset()
        return Replies.OK

    def processing_time(self) -> float:
        """Seconds the client may wait after DATA: every plugin's limit, then the delivery."""
        settings = self.runtime.settings
        plugins = sum(settings.plugins.timeout_for(p.name) for p in self.runtime.chain.plugins)
        return plugins + settings.delivery.data_timeout + 60

    async def on_data(self, raw: bytes) -> SmtpReply:
        """The complete message (dot-unstuffed): inspect, decide, act; the reply to DATA."""
        ctx, self.ctx = self.ctx, None
        if ctx is None:
            return Replies.NEED_MAIL
        self.busy = True
        try:
            ctx.raw = raw
            outcome = await conclude(self.gateway, self.runtime.chain, ctx, self.delivery)
            reply, self.reason = outcome.reply, metrics.outcome_reason(outcome)
            if reply.is_positive:  # delivered (or quarantined): the client starts afresh
                self.errors = self.junk = 0
            return reply
        except Exception:
            log.exception("qid=%s failed while concluding; client told to retry", ctx.queue_id)
            self.reason = Reason.INTERNAL_ERROR
            self.delivery.abort()
            return Replies.INTERNAL_ERROR.with_id(ctx.queue_id)
        finally:
            self.busy = False

    async def on_data_refused(self) -> None:
        """The SMTP layer refused DATA itself (too much data, a line too long) and reset its
        envelope: end our transaction too, or the connection looks busy to shutdown and the
        delivery server is left mid-transaction."""
        if self.ctx is not None:
            self.ctx = None
            await self.delivery.reset()

    def after_data(self) -> SmtpReply | None:
        """After a DATA reply: a 421 when shutting down (the adapter then closes)."""
        return Replies.SHUTTING_DOWN if self.gateway.shutting_down else None

    # -- failures -----------------------------------------------------------------------------

    def counts_as_error(self, reply: str) -> bool:
        """A 4xx or 5xx counts towards the error limit; not the 421 we close with, and not
        "too many recipients" until OVERSHOOT_LIMIT of them in one transaction (without that
        bound a client could send RCPT after refused RCPT for ever)."""
        if reply.startswith("452 4.5.3"):
            return self.overshoot > OVERSHOOT_LIMIT
        return reply[:1] in ("4", "5") and not reply.startswith("421")

    def on_error_reply(self) -> SmtpReply | None:
        """A 4xx or 5xx was given; at ERROR_LIMIT the reply to close with (Postfix's 421)."""
        self.errors += 1
        if self.errors < ERROR_LIMIT:
            return None
        reply = front_replies.TOO_MANY_ERRORS.with_id(self.id)
        log.info(
            "session=%s client=%s disconnected after %d errors: reply=%s",
            self.id,
            self.client.ip,
            self.errors,
            quoted(str(reply)),
        )
        return reply

    def on_junk_command(self) -> SmtpReply | None:
        """NOOP, RSET, VRFY, EXPN, HELP: past JUNK_LIMIT each one is an error too."""
        self.junk += 1
        return self.on_error_reply() if self.junk > JUNK_LIMIT else None

    def on_error(self, error: BaseException) -> SmtpReply:
        """Anything unexpected: log it whole, tell the client only to retry (451 4.3.0)."""
        reply = Replies.INTERNAL_ERROR.with_id(self.reply_id)
        log.error(
            "%s client=%s unexpected %s: %s; reply=%s",
            self._id_fields(),
            self.client.ip,
            type(error).__name__,
            printable(str(error)),
            quoted(str(reply)),
            exc_info=error,
        )
        self.delivery.abort()
        self.ctx = None
        self.reason = Reason.INTERNAL_ERROR
        return reply

    def on_tls_handshake_failed(self, error: BaseException) -> SmtpReply:
        """No common protocol or cipher, a client that gave up: its business, not our error."""
        log.info(
            "session=%s client=%s TLS handshake failed: %s",
            self.id,
            self.client.ip,
            printable(str(error.__cause__ or error)),
        )
        metrics.refused(metrics.Phase.STARTTLS, Reason.HANDSHAKE_FAILED, None)  # no reply: closed
        self.delivery.abort()
        self.ctx = None
        return Replies.INTERNAL_ERROR

    # -- ids ----------------------------------------------------------------------------------

    @property
    def reply_id(self) -> str:
        """The id a reply names now: the open transaction's queue id, else the session's."""
        return self.ctx.queue_id if self.ctx is not None else self.id

    def _id_fields(self) -> str:
        if self.ctx is None:
            return f"session={self.id}"
        return f"qid={self.ctx.queue_id} session={self.id}"

    def stamp_refusal(self, reply: str, command: str) -> str:
        """A 4xx/5xx line the adapter sends that names no id yet (aiosmtpd's own, a limit):
        the line with the id, logged with it. Others pass unchanged."""
        if reply[:1] not in ("4", "5") or reply[3:4] != " ":
            return reply  # positive, or not the last line of a multi-line reply
        if any(f"id={i})" in reply for i in (self.id, self.last_queue_id) if i):
            return reply  # decided and logged where it was made
        ident = self.reply_id
        stamped = f"{reply} (id={ident})"
        log.info(
            "%s client=%s command=%s refused: reply=%s",
            self._id_fields(),
            self.client.ip or "-",
            command,
            quoted(stamped),
        )
        return stamped

    # -- helpers ------------------------------------------------------------------------------

    async def _take_current(self) -> None:
        """Between transactions, move to the generation a reload made: its chain finds the
        connection's CONNECT (and HELO) findings again, so the next transaction is judged on the
        new set alone; a moved delivery server is reached anew, the old connection closed."""
        current = self.gateway.runtime
        if current is self.runtime:
            return
        old, self.runtime = self.runtime, self.gateway.acquire()
        self.gateway.release(old)
        before, after = old.settings, current.settings
        moved = (after.delivery, after.listen.hostname) != (before.delivery, before.listen.hostname)
        if self._new_delivery is not None and moved:
            stale, self.delivery = self.delivery, self._new_delivery(after)
            self.gateway.close_later(stale.close())
        self.connect_findings, self.helo_findings = [], []
        self.connect_findings = await current.chain.run(Phase.CONNECT, self._context())
        if self.client.helo is not None:
            self.helo_findings = await current.chain.run(Phase.HELO, self._context())

    def _context(self) -> MessageContext:
        """A fresh context with the connection's findings; the policy snapshot taken now."""
        return MessageContext(
            client=self.client,
            rules=self.runtime.rules,
            settings=self.runtime.settings,
            queue_id="-",
            findings=[*self.connect_findings, *self.helo_findings],
        )

    def _refusal(self, ctx: MessageContext, phase: Phase, verdict: Verdict) -> SmtpReply:
        self._log_refusal(ctx, phase, verdict)
        return verdict.reply.with_id(ctx.queue_id)

    def _log_refusal(self, ctx: MessageContext, phase: Phase, verdict: Verdict) -> None:
        self.reason = metrics.verdict_reason(verdict)
        # Before MAIL there is no queue id: the line names the session, as the reply does.
        ident = f"session={self.id}" if ctx.queue_id == "-" else f"qid={ctx.queue_id}"
        log.info(
            "%s client=%s helo=%s from=%s phase=%s action=%s score=%g reason=%s symbols=%s "
            "reply=%s",
            ident,
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
