"""Release: send a quarantined message to the delivery server, as the gateway would have.

The stored .eml (the client's message with our trace fields on top) goes out unchanged, with the
original envelope (or other recipients an admin names), the original client named by XFORWARD or
XCLIENT, and the queue id as its identity, through the same client code as live mail
(gateway.relay.deliver).

One release at a time per entry: the store's claim (`begin_release`) makes a second, concurrent
or repeated, release a no-op that says so. The entry is marked released only after the delivery
server said 250; any other answer puts it back in quarantine with the reason recorded. If the
process dies between that 250 and the mark, the next release sends it again: a duplicate, never
a loss, as with SMTP itself (RFC 5321 6.1).

What leaves is marked released (gateway.header_edit.mark_released: `X-Mailgate-Action:
release`, and when and by whom in `X-Mailgate-Released`), and every release is logged (logger
`mailgate.quarantine`): the queue id, the recipients, the unix user who ran it, and the answer.
A failure says whose answer it was: the delivery server's refusal, or mailgate's own reply
when the delivery server could not be asked (down, timed out, TLS, no SMTPUTF8).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate

from gateway.config import Settings
from gateway.header_edit import mark_released
from gateway.plugin import ClientInfo
from gateway.quarantine.model import NotFound, ReleaseRefused, Store
from gateway.quarantine.store import StoreError
from gateway.relay import DELIVERY_SERVER_SAID, deliver
from gateway.text import ascii_printable, quoted
from gateway.verdict import SmtpReply

log = logging.getLogger("mailgate.quarantine")

RELEASED = "released"
PARTIAL = "partial"  # delivered, but the delivery server refused some recipients
FAILED = "failed"  # not delivered; still in quarantine
SKIPPED = "skipped"  # released before, or being released by another process


@dataclass(frozen=True)
class ReleaseResult:
    id: str
    outcome: str
    detail: str
    recipients: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome in (RELEASED, SKIPPED)


def releasing_user() -> str:
    """The unix user running the release (and who became it with sudo): for the header and
    the log line."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER", "")
    if sudo and sudo != name:
        name = f"{name} (sudo by {sudo})"
    return ascii_printable(name, 100)


def _read(store: Store, entry_id: str) -> bytes:
    with store.open_message(entry_id) as handle:
        return handle.read()


async def release(
    store: Store,
    settings: Settings,
    entry_id: str,
    to: Sequence[str] = (),
    again: bool = False,
) -> ReleaseResult:
    try:
        entry = await asyncio.to_thread(store.begin_release, entry_id, again=again)
    except ReleaseRefused as exc:
        return ReleaseResult(entry_id, SKIPPED, str(exc))
    except NotFound as exc:
        return ReleaseResult(entry_id, FAILED, str(exc))
    recipients = tuple(to) if to else tuple(entry.rcpt_tos)
    reply: SmtpReply | None = None
    refused: dict[str, SmtpReply] = {}
    try:
        user = releasing_user()
        stored = await asyncio.to_thread(_read, store, entry.id)
        raw = mark_released(stored, f"{formatdate(time.time(), usegmt=True)} by {user}")
        client = ClientInfo(
            ip=entry.client_ip or "127.0.0.1",
            port=entry.client_port,
            helo=entry.helo,
            esmtp=True,
        )
        # SIZE declared the message without our trace fields: leave it out, the rest is kept.
        options = [o for o in entry.mail_options if not o.upper().startswith("SIZE=")]
        reply, refused = await deliver(
            settings.delivery,
            settings.listen.hostname,
            client,
            entry.id,
            entry.mail_from,
            recipients,
            raw,
            options,
        )
    except (StoreError, OSError) as exc:
        detail = f"release failed, still in quarantine: {exc}"
    except BaseException:
        await asyncio.to_thread(
            store.end_release, entry.id, delivered=False, note="release interrupted"
        )
        raise
    else:
        detail = _describe(reply, refused, recipients)
    delivered = reply is not None and reply.is_positive
    await asyncio.to_thread(store.end_release, entry.id, delivered=delivered, note=detail)
    outcome = FAILED if not delivered else PARTIAL if refused else RELEASED
    _log_release(entry.id, recipients, outcome, detail)
    if not delivered:
        return ReleaseResult(entry.id, FAILED, detail, recipients)
    return ReleaseResult(
        entry.id, outcome, detail, recipients, {k: str(v) for k, v in refused.items()}
    )


def _log_release(qid: str, recipients: Sequence[str], outcome: str, detail: str) -> None:
    level = logging.INFO if outcome == RELEASED else logging.WARNING
    log.log(
        level,
        "qid=%s release by=%s rcpt=%s outcome=%s detail=%s",
        qid,
        quoted(releasing_user()),
        quoted(",".join(recipients), 400),
        outcome,
        quoted(detail, 600),
    )


def _describe(reply: SmtpReply, refused: dict[str, SmtpReply], recipients: Sequence[str]) -> str:
    if not reply.is_positive:
        return f"release failed, still in quarantine: {whose(reply)}"
    accepted = len(recipients) - len(refused)
    text = f"delivered to {accepted} of {len(recipients)} recipients: {reply}"
    if refused:
        text += "; refused: " + ", ".join(f"<{r}> {answer}" for r, answer in refused.items())
    return text


def whose(reply: SmtpReply) -> str:
    """A refusal, saying whose it was: the delivery server's own text, or mailgate's reply
    when the delivery server gave none (its text is escaped: gateway.relay)."""
    if reply.text.startswith(DELIVERY_SERVER_SAID):
        text = reply.text.removeprefix(DELIVERY_SERVER_SAID)
        return f"the delivery server refused it: {reply.code} {reply.status} {text}"
    return f"mailgate could not hand it over: {reply}"
