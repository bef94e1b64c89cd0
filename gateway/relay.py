"""The client side toward the delivery server (aiosmtplib), and the mapping of its replies.

Design decision: the downstream connection opens when the client's MAIL is accepted, and every
RCPT is mirrored to the delivery server at once, so RCPT answers are the delivery server's own
(unknown users are refused while the sender is still connected: no backscatter, no per-recipient
loss after DATA). The message itself is sent only after the verdict, and the client hears 250 only
after the delivery server said 250. One downstream connection follows one client connection and is
reused for its later transactions (RSET between them).

Reply mapping: the delivery server's 5xx is passed back as 5xx and its 4xx as 4xx (text cleaned);
a 421, a refused connection, a timeout or a dropped connection become 451 4.4.x.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Sequence

import aiosmtplib

from gateway import metrics
from gateway.config import DeliverySettings
from gateway.plugin import ClientInfo
from gateway.text import ascii_printable, printable
from gateway.tls import TlsReplies, delivery_tls
from gateway.verdict import Replies, SmtpReply

log = logging.getLogger("mailgate.relay")

# The enhanced code may end the reply ("553 5.1.8"): keep it then too.
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
# MAIL parameters passed on only when the delivery server offers the extension behind them.
_PASSED_IF_OFFERED = {"SIZE": "size", "BODY": "8bitmime"}
_XTEXT_SAFE = {c for c in range(33, 127) if c not in (ord("+"), ord("="))}
# How a reply the delivery server gave starts (all others are mailgate's own).
DELIVERY_SERVER_SAID = "delivery server: "


def xtext(value: str) -> str:
    """RFC 3461 xtext, as XFORWARD and XCLIENT values require."""
    data = value.encode("utf-8", errors="surrogateescape")
    return "".join(chr(b) if b in _XTEXT_SAFE else f"+{b:02X}" for b in data)


def reply_from_downstream(code: int, message: str) -> SmtpReply:
    """Turn a delivery server reply into ours: keep code and status, clean the text."""
    text = message.replace("\r", " ").replace("\n", " ").strip()
    match = _STATUS.match(text)
    if match and match.group(1) == str(code)[0]:
        status = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
        text = text[match.end() :]
    else:
        status = f"{str(code)[0]}.0.0"
    if code == 421:  # the delivery server is closing; our client's connection is not
        return Replies.DOWNSTREAM_UNAVAILABLE
    # 2xx, 4xx, 5xx only: a 1xx/3xx here (e.g. "354" to MAIL) is a broken server; it must be
    # a retry-later, neither a "positive" (code < 400) nor a ValueError from SmtpReply.
    if code // 100 not in (2, 4, 5):
        return Replies.DOWNSTREAM_UNAVAILABLE
    return SmtpReply(code, status, f"{DELIVERY_SERVER_SAID}{ascii_printable(text, 300)}")


class DownstreamFailure(Exception):
    """The delivery server could not be asked or did not answer; `reply` is what to tell."""

    def __init__(self, reply: SmtpReply, detail: str) -> None:
        super().__init__(detail)
        self.reply = reply


class Downstream:
    """One SMTP client connection to the delivery server, driven transaction by transaction.

    The real `gateway.delivery.DeliveryTransport`; tests of the session use MockDelivery.
    """

    def __init__(self, settings: DeliverySettings, local_hostname: str) -> None:
        self.settings = settings
        self.local_hostname = settings.helo_name or local_hostname
        self._client: aiosmtplib.SMTP | None = None
        self._in_transaction = False
        self.tls = delivery_tls(settings)
        self.tls_version: str | None = None  # of the open connection; None: plaintext
        self.tls_verified = False  # the open connection authenticated the server (CA or pin)
        self._waited = 0.0  # seconds spent on the delivery server in this transaction (metrics)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def _connect(self, client: ClientInfo) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=self.settings.host,
            port=self.settings.port,
            local_hostname=self.local_hostname,
            timeout=self.settings.command_timeout,
            start_tls=False,
            use_tls=False,
        )
        try:
            await smtp.connect(timeout=self.settings.connect_timeout)
            await smtp.ehlo()
            await self._starttls(smtp)
            if self.settings.client_identity == "xclient" and smtp.supports_extension("xclient"):
                await self._xclient(smtp, client)
        except BaseException:
            smtp.close()
            raise
        self._client = smtp
        return smtp

    async def _starttls(self, smtp: aiosmtplib.SMTP) -> None:
        """STARTTLS as [delivery] tls says; DownstreamFailure (a 4xx) rather than a downgrade."""
        self.tls_version, self.tls_verified = None, False
        tls = self.tls
        if tls.context is None:
            return
        where = f"{self.settings.host}:{self.settings.port}"
        if not smtp.supports_extension("starttls"):
            if tls.mode == "required":
                log.warning("delivery server %s does not offer STARTTLS (tls = required)", where)
                raise DownstreamFailure(TlsReplies.DOWNSTREAM_NO_STARTTLS, "no STARTTLS")
            return  # opportunistic: plaintext, as the server offers nothing else
        try:
            await smtp.starttls(tls_context=tls.context, server_hostname=tls.server_name)
        except aiosmtplib.SMTPResponseException as exc:
            # It offered STARTTLS, then refused it (454): nothing was encrypted yet.
            log.warning("delivery server %s refused STARTTLS: %s", where, printable(str(exc)))
            raise DownstreamFailure(TlsReplies.DOWNSTREAM_TLS_FAILED, str(exc)) from exc
        except ssl.SSLCertVerificationError as exc:
            log.warning("delivery server %s certificate not verified: %s", where, exc)
            raise DownstreamFailure(TlsReplies.DOWNSTREAM_NOT_VERIFIED, str(exc)) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("delivery server %s TLS handshake failed: %s", where, printable(str(exc)))
            raise DownstreamFailure(TlsReplies.DOWNSTREAM_TLS_FAILED, str(exc)) from exc
        ssl_object = smtp.get_transport_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        problem = tls.check_peer(der)
        if problem is not None:
            log.warning("delivery server %s: %s", where, problem)
            raise DownstreamFailure(TlsReplies.DOWNSTREAM_NOT_VERIFIED, problem)
        self.tls_version = ssl_object.version() if ssl_object is not None else "unknown"
        self.tls_verified = tls.verified
        metrics.tls_session("outbound", self.tls_version)
        await smtp.ehlo()  # RFC 3207 4.2: forget what was said in plaintext, ask again

    async def _xclient(self, smtp: aiosmtplib.SMTP, client: ClientInfo) -> None:
        """XCLIENT makes the delivery server treat the session as the real client's."""
        offered = set(smtp.esmtp_extensions.get("xclient", "").upper().split())
        attrs = self._identity(client, offered, queue_id=None)
        if not attrs:
            return
        response = await smtp.execute_command(b"XCLIENT", *[a.encode() for a in attrs])
        if response.code != 220:
            raise aiosmtplib.SMTPResponseException(response.code, response.message)
        # The EHLO that must follow XCLIENT sets the HELO name again: repeat the client's own
        # (when it is a plain ASCII token), or the delivery server would log ours.
        helo = client.helo or ""
        plain = helo.isascii() and helo.isprintable() and helo and " " not in helo
        await smtp.ehlo(hostname=helo if plain else None)

    @staticmethod
    def _identity(client: ClientInfo, offered: set[str], queue_id: str | None) -> list[str]:
        values = {
            "NAME": "[UNAVAILABLE]",
            "ADDR": client.ip,
            "PORT": str(client.port),
            "PROTO": "ESMTP" if client.esmtp else "SMTP",
            "HELO": client.helo or "[UNAVAILABLE]",
            "SOURCE": "REMOTE",
        }
        if queue_id:
            values["IDENT"] = queue_id
        return [f"{k}={xtext(v)}" for k, v in values.items() if k in offered]

    async def _xforward(self, smtp: aiosmtplib.SMTP, client: ClientInfo, queue_id: str) -> None:
        """XFORWARD tells the delivery server who the real client was, for its logs and checks."""
        offered = set(smtp.esmtp_extensions.get("xforward", "").upper().split())
        attrs = self._identity(client, offered, queue_id)
        # Postfix limits a command line; send the attributes in short commands.
        batch: list[str] = []
        for attr in [*attrs, ""]:
            if attr and sum(len(a) + 1 for a in batch) + len(attr) < 400:
                batch.append(attr)
                continue
            if batch:
                response = await smtp.execute_command(b"XFORWARD", *[a.encode() for a in batch])
                if response.code != 250:
                    log.warning("delivery server refused XFORWARD: %s", printable(response.message))
                    return
            batch = [attr] if attr else []

    async def begin(
        self, client: ClientInfo, queue_id: str, mail_from: str, options: Sequence[str]
    ) -> SmtpReply:
        """Open (or reuse) the connection and send MAIL FROM; returns the reply to give."""
        started = time.perf_counter()
        try:
            reply = await self._begin(client, queue_id, mail_from, options, retry=True)
        except DownstreamFailure as failure:
            await self.close()
            reply = failure.reply
        self._waited = time.perf_counter() - started
        if not reply.is_positive:  # the transaction ends here
            metrics.delivery_ended(reply, self._waited)
        return reply

    async def _begin(
        self,
        client: ClientInfo,
        queue_id: str,
        mail_from: str,
        options: Sequence[str],
        retry: bool,
    ) -> SmtpReply:
        reused = self.connected
        try:
            smtp = self._client if reused and self._client else await self._connect(client)
            if self._in_transaction:
                await smtp.execute_command(b"RSET")
                self._in_transaction = False
            if self.settings.client_identity == "xforward" and smtp.supports_extension("xforward"):
                await self._xforward(smtp, client, queue_id)
            if "REQUIRETLS" in (o.upper() for o in options):
                refusal = self._requiretls_refusal(smtp)
                if refusal is not None:
                    return refusal
            params = self._mail_params(smtp, options)
            if params is None:
                return Replies.SMTPUTF8_UNSUPPORTED
            sender = "" if mail_from == "<>" else mail_from
            response = await smtp.execute_command(
                b"MAIL", f"FROM:<{sender}>".encode("utf-8", "surrogateescape"), *params
            )
        except aiosmtplib.SMTPServerDisconnected as exc:
            if reused and retry:  # an idle pooled connection the server closed: once more
                await self.close()
                return await self._begin(client, queue_id, mail_from, options, retry=False)
            raise self._failure(exc) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._failure(exc) from exc
        reply = reply_from_downstream(response.code, response.message)
        if response.code == 250:
            self._in_transaction = True
        elif response.code == 421:
            await self.close()
        return reply

    def _mail_params(self, smtp: aiosmtplib.SMTP, options: Sequence[str]) -> list[bytes] | None:
        params: list[bytes] = []
        for option in options:
            name = option.partition("=")[0].upper()
            if name in _PASSED_IF_OFFERED:
                if smtp.supports_extension(_PASSED_IF_OFFERED[name]):
                    params.append(option.encode())
            elif name == "SMTPUTF8":
                if not smtp.supports_extension("smtputf8"):
                    return None
                params.append(b"SMTPUTF8")
            elif name == "REQUIRETLS":  # only reached over verified TLS that offers it
                params.append(b"REQUIRETLS")
        return params

    def _requiretls_refusal(self, smtp: aiosmtplib.SMTP) -> SmtpReply | None:
        """RFC 8689 4.2.1: relay only over verified TLS to a server that offers REQUIRETLS."""
        if not self.tls_verified:
            problem = "the connection is not verified TLS"
        elif not smtp.supports_extension("requiretls"):
            problem = "it does not offer REQUIRETLS"
        else:
            return None
        log.info(
            "REQUIRETLS message refused: delivery server %s:%d: %s",
            self.settings.host,
            self.settings.port,
            problem,
        )
        return TlsReplies.REQUIRETLS_UNSUPPORTED

    async def rcpt(self, address: str) -> SmtpReply:
        started = time.perf_counter()
        try:
            return await self._rcpt(address)
        finally:
            self._waited += time.perf_counter() - started

    async def _rcpt(self, address: str) -> SmtpReply:
        smtp = self._client
        if smtp is None or not self._in_transaction:
            return Replies.DOWNSTREAM_UNAVAILABLE
        try:
            response = await smtp.execute_command(
                b"RCPT", f"TO:<{address}>".encode("utf-8", "surrogateescape")
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return self._failure(exc).reply
        if response.code == 421:
            await self.close()
        return reply_from_downstream(response.code, response.message)

    async def data(self, message: bytes) -> SmtpReply:
        """Send the message; the reply is 250 only if the delivery server said 250."""
        started = time.perf_counter()
        reply = await self._data(message)
        metrics.delivery_ended(reply, self._waited + time.perf_counter() - started)
        return reply

    async def _data(self, message: bytes) -> SmtpReply:
        smtp = self._client
        if smtp is None or not self._in_transaction:
            return Replies.DOWNSTREAM_UNAVAILABLE
        self._in_transaction = False
        try:
            response = await smtp.data(message, timeout=self.settings.data_timeout)
        except aiosmtplib.SMTPDataError as exc:
            if exc.code == 421:
                await self.close()
            return reply_from_downstream(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return self._failure(exc).reply
        return reply_from_downstream(response.code, response.message)

    async def reset(self) -> None:
        """Abandon the current transaction (message quarantined, refused, or client RSET)."""
        if not self._in_transaction or self._client is None:
            return
        self._in_transaction = False
        try:
            response = await self._client.execute_command(b"RSET")
            if response.code != 250:
                await self.close()
        except (aiosmtplib.SMTPException, OSError):
            await self.close()

    async def close(self) -> None:
        """Say QUIT if we still can, and drop the connection whatever happens."""
        smtp, self._client = self._client, None
        self._in_transaction = False
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await asyncio.wait_for(smtp.quit(), timeout=5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            smtp.close()

    def abort(self) -> None:
        """Drop the connection without a word: the client vanished and we must not linger."""
        smtp, self._client = self._client, None
        self._in_transaction = False
        if smtp is not None:
            smtp.close()

    def _failure(self, exc: BaseException) -> DownstreamFailure:
        where = f"{self.settings.host}:{self.settings.port}"
        if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
            reply = Replies.DOWNSTREAM_TIMEOUT
        elif isinstance(exc, aiosmtplib.SMTPResponseException):
            reply = reply_from_downstream(exc.code, exc.message)
            if reply.is_positive:
                reply = Replies.DOWNSTREAM_UNAVAILABLE
        else:
            reply = Replies.DOWNSTREAM_UNAVAILABLE
        log.warning("delivery server %s: %s: %s", where, type(exc).__name__, printable(str(exc)))
        return DownstreamFailure(reply, str(exc))


async def deliver(
    settings: DeliverySettings,
    local_hostname: str,
    client: ClientInfo,
    queue_id: str,
    mail_from: str,
    recipients: Sequence[str],
    message: bytes,
    mail_options: Sequence[str] = (),
) -> tuple[SmtpReply, dict[str, SmtpReply]]:
    """One whole transaction (release from quarantine, the demo): final reply, refused rcpts.

    `mail_options` are the client's MAIL parameters (SMTPUTF8, BODY=8BITMIME), passed on as in
    a live transaction.
    """
    downstream = Downstream(settings, local_hostname)
    refused: dict[str, SmtpReply] = {}
    try:
        reply = await downstream.begin(client, queue_id, mail_from, mail_options)
        if not reply.is_positive:
            return reply, refused
        for rcpt in recipients:
            answer = await downstream.rcpt(rcpt)
            if not answer.is_positive:
                refused[rcpt] = answer
        if len(refused) == len(recipients):
            await downstream.reset()
            return next(iter(refused.values()), Replies.DOWNSTREAM_UNAVAILABLE), refused
        return await downstream.data(message), refused
    finally:
        await downstream.close()
