"""A built-in delivery server for trying mailgate with no mail server installed.

`mailgate serve --dev` starts it on the configured delivery address; every message the gateway
relays lands in a Maildir (var/maildir by default), one file per message, exactly as received.
It runs in its own thread and event loop so its file writes never block the gateway's loop.
It is a development aid, not a mail store: production deployments point [delivery] at Postfix,
Exchange or Dovecot LMTP.

The pieces every sink shares live here too, so the test downstream (tests/harness.py), the TLS
one (tests/tls_helpers.py) and the bench's discarding sink (bench/sink.py) do not each carry a
copy: `SinkSMTP` (lines as long as the gateway accepts, XFORWARD accepted), `SinkController`
(aiosmtpd's thread and loop around it), and `EhloOffers` (one rewrite of aiosmtpd's EHLO reply).
"""

from __future__ import annotations

import logging
import mailbox
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, ClassVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("mailgate.devsink")


class MaildirSink:
    """aiosmtpd handler that accepts everything and files it into a Maildir."""

    def __init__(self, maildir: Path) -> None:
        maildir.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(maildir, create=True)
        self.path = maildir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = bytes(envelope.original_content or b"")
        key = self.maildir.add(content)
        log.info(
            "devsink delivered %s from=%r rcpt=%r bytes=%d",
            key,
            envelope.mail_from,
            envelope.rcpt_tos,
            len(content),
        )
        return f"250 2.0.0 Delivered to Maildir as {key}"

    def new_files(self) -> list[Path]:
        return sorted((self.path / "new").iterdir(), key=lambda p: p.stat().st_mtime)


# What Postfix offers a trusted client (smtpd_authorized_xforward_hosts): the gateway's relay
# passes the real client on with it.
XFORWARD_KEYWORD = "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT"


def ehlo_response(
    responses: Sequence[str], add: Sequence[str] = (), drop: Collection[str] = ()
) -> list[str]:
    """aiosmtpd's EHLO lines ("250-SIZE", ..., "250 HELP") with keywords dropped (by their
    first word, any case) and others added, re-joined as one multi-line 250 reply."""
    dropped = {word.upper() for word in drop}
    lines = [r[4:] for r in responses if r[4:].split(" ", 1)[0].upper() not in dropped]
    lines += add
    return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]


class EhloOffers:
    """aiosmtpd handler base: EHLO answered with aiosmtpd's keywords, changed by `ehlo_changes`."""

    def ehlo_changes(self, session: Session) -> tuple[Sequence[str], Collection[str]]:
        """The keywords to add and the ones to drop for this session (default: none)."""
        return (), ()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        add, drop = self.ehlo_changes(session)
        return ehlo_response(responses, add, drop)


def parse_xforward(arg: str | None) -> dict[str, str]:
    """XFORWARD NAME=x ADDR=y ... as a dict with upper-case attribute names."""
    out: dict[str, str] = {}
    for item in (arg or "").split():
        key, _, value = item.partition("=")
        out[key.upper()] = value
    return out


class SinkSMTP(SMTP):
    """A sink's protocol: never stricter than the gateway in front of it, XFORWARD accepted.

    The gateway accepts lines up to limits.max_line_length, so the sink takes very long ones.
    A handler with `record_xforward(attributes)` gets each XFORWARD's attributes.
    """

    line_length_limit = 1 << 20

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        record = getattr(self.event_handler, "record_xforward", None)
        if record is not None:
            record(parse_xforward(arg))
        await self.push("250 2.0.0 Ok")


class SinkController(Controller):
    """aiosmtpd's controller (own thread, own loop) serving `protocol` (default SinkSMTP)."""

    protocol: ClassVar[type[SMTP]] = SinkSMTP

    def factory(self) -> SMTP:
        return self.protocol(self.handler, **self.SMTP_kwargs)


def start_dev_sink(host: str, port: int, maildir: Path) -> tuple[Controller, MaildirSink]:
    """Start the sink in a background thread; stop it with `controller.stop()`."""
    sink = MaildirSink(maildir)
    controller: Any = SinkController(
        sink,
        hostname=host,
        port=port,
        server_hostname="mailgate-devsink",
        enable_SMTPUTF8=True,
        data_size_limit=None,
    )
    controller.start()
    return controller, sink
