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
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.config import Settings
from gateway.plugin import ClientInfo
from gateway.quarantine.model import NotFound, ReleaseRefused, Store
from gateway.quarantine.store import StoreError
from gateway.relay import deliver
from gateway.verdict import SmtpReply

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
        raw = await asyncio.to_thread(_read, store, entry.id)
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
    if not delivered:
        return ReleaseResult(entry.id, FAILED, detail, recipients)
    outcome = PARTIAL if refused else RELEASED
    return ReleaseResult(
        entry.id, outcome, detail, recipients, {k: str(v) for k, v in refused.items()}
    )


def _describe(reply: SmtpReply, refused: dict[str, SmtpReply], recipients: Sequence[str]) -> str:
    if not reply.is_positive:
        return f"release failed, still in quarantine: delivery server said {reply}"
    accepted = len(recipients) - len(refused)
    text = f"delivered to {accepted} of {len(recipients)} recipients: {reply}"
    if refused:
        text += "; refused: " + ", ".join(f"<{r}> {answer}" for r, answer in refused.items())
    return text
