"""The seam between a transaction and the delivery server: one protocol and a scripted double.

The session and the acting part of DATA (gateway.transaction) need five things of the delivery
server and nothing else, so they take a `DeliveryTransport`, not a socket: `relay.Downstream`
implements it over aiosmtplib for real, and `MockDelivery` answers as a test scripts it, in
memory, recording what it was asked (after httpx's BaseTransport and MockTransport). That is how
every refusal path and the "250 only after the delivery server's 250" rule are tested without a
socket, while the socket tests (tests/test_relay_*.py) keep testing Downstream itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.plugin import ClientInfo
from gateway.verdict import Replies, SmtpReply


class DeliveryTransport(Protocol):
    """One connection's way to the delivery server, driven transaction by transaction."""

    async def begin(
        self, client: ClientInfo, queue_id: str, mail_from: str, options: Sequence[str]
    ) -> SmtpReply:
        """Open (or reuse) the connection and send MAIL FROM; the reply to give the client."""
        ...

    async def rcpt(self, address: str) -> SmtpReply:
        """Mirror one RCPT TO; the delivery server's own answer, mapped."""
        ...

    async def data(self, message: bytes) -> SmtpReply:
        """Send the message; positive only when the delivery server said 250."""
        ...

    async def reset(self) -> None:
        """Abandon the open transaction (refused, quarantined, client RSET); never raises."""
        ...

    def abort(self) -> None:
        """Drop the connection at once (client gone, internal error)."""
        ...

    async def close(self) -> None:
        """Say goodbye and drop the connection (a reload moved the delivery server)."""
        ...


@dataclass(frozen=True, slots=True)
class DeliveryCall:
    """One request a MockDelivery received: the command and its argument."""

    command: str  # MAIL, RCPT, DATA, RSET, ABORT, QUIT
    argument: str = ""
    message: bytes = b""


DeliveryHandler = Callable[[DeliveryCall], SmtpReply | None]

MAIL_OK = SmtpReply(250, "2.1.0", "delivery server: Ok")
RCPT_OK = SmtpReply(250, "2.1.5", "delivery server: Ok")
DATA_OK = SmtpReply(250, "2.0.0", "delivery server: Ok: queued")


def _accept_all(call: DeliveryCall) -> SmtpReply | None:
    return None


@dataclass
class MockDelivery:
    """A delivery server in memory: `handler` scripts the replies (None: the usual 250).

    Like a real server it answers RCPT and DATA only inside a transaction (else 451 4.4.1, as
    Downstream does), and RSET is sent only when one is open.
    """

    handler: DeliveryHandler = _accept_all
    calls: list[DeliveryCall] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)
    in_transaction: bool = False

    def _answer(self, call: DeliveryCall, default: SmtpReply) -> SmtpReply:
        self.calls.append(call)
        return self.handler(call) or default

    @property
    def commands(self) -> list[str]:
        """`MAIL a@b`, `RCPT c@d`, `DATA`, `RSET`, `ABORT`: what was asked, in order."""
        return [f"{c.command} {c.argument}".rstrip() for c in self.calls]

    async def begin(
        self, client: ClientInfo, queue_id: str, mail_from: str, options: Sequence[str]
    ) -> SmtpReply:
        if self.in_transaction:
            await self.reset()
        reply = self._answer(DeliveryCall("MAIL", mail_from), MAIL_OK)
        self.in_transaction = reply.code == 250
        return reply

    async def rcpt(self, address: str) -> SmtpReply:
        if not self.in_transaction:
            return Replies.DOWNSTREAM_UNAVAILABLE
        return self._answer(DeliveryCall("RCPT", address), RCPT_OK)

    async def data(self, message: bytes) -> SmtpReply:
        if not self.in_transaction:
            return Replies.DOWNSTREAM_UNAVAILABLE
        self.in_transaction = False
        reply = self._answer(DeliveryCall("DATA", message=message), DATA_OK)
        if reply.code == 250:
            self.delivered.append(message)
        return reply

    async def reset(self) -> None:
        if self.in_transaction:
            self.in_transaction = False
            self._answer(DeliveryCall("RSET"), Replies.OK)

    def abort(self) -> None:
        self.in_transaction = False
        self.calls.append(DeliveryCall("ABORT"))

    async def close(self) -> None:
        self.in_transaction = False
        self.calls.append(DeliveryCall("QUIT"))


# mypy checks here that the double keeps up with the protocol (relay.Downstream is checked where
# gateway.smtp builds one).
_MOCK_IS_A_TRANSPORT: type[DeliveryTransport] = MockDelivery
