"""A built-in delivery server for trying mailgate with no mail server installed.

`mailgate serve --dev` starts it on the configured delivery address; every message the gateway
relays lands in a Maildir (var/maildir by default), one file per message, exactly as received.
It runs in its own thread and event loop so its file writes never block the gateway's loop.
It is a development aid, not a mail store: production deployments point [delivery] at Postfix,
Exchange or Dovecot LMTP.
"""

from __future__ import annotations

import logging
import mailbox
from pathlib import Path
from typing import Any

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


class _LongLineSMTP(SMTP):
    # The gateway accepts lines up to limits.max_line_length; the sink must not be stricter.
    line_length_limit = 1 << 20


class _SinkController(Controller):
    def factory(self) -> SMTP:
        return _LongLineSMTP(self.handler, **self.SMTP_kwargs)


def start_dev_sink(host: str, port: int, maildir: Path) -> tuple[Controller, MaildirSink]:
    """Start the sink in a background thread; stop it with `controller.stop()`."""
    sink = MaildirSink(maildir)
    controller: Any = _SinkController(
        sink,
        hostname=host,
        port=port,
        server_hostname="mailgate-devsink",
        enable_SMTPUTF8=True,
        data_size_limit=None,
    )
    controller.start()
    return controller, sink
