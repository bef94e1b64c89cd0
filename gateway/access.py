"""Relay control: which recipients this gateway accepts mail for. It must never be an open relay.

A recipient is accepted when its domain is one the config says we serve, or when the client is in
a configured relay network. Local parts that carry routing (`%`, `!`, a second `@`) are refused:
a delivery server behind us that trusts our address could otherwise be made to relay them.
"""

from __future__ import annotations

from gateway.config import RelaySettings
from gateway.domains import domain_matches
from gateway.policy import NetworkList
from gateway.verdict import Replies, SmtpReply


def domain_served(domain: str, served: tuple[str, ...]) -> bool:
    """`domain` is served: listed exactly, or below a ".parent" entry (gateway.domains)."""
    return domain_matches(domain, served)


def check_recipient(settings: RelaySettings, client_ip: str, address: str) -> SmtpReply | None:
    """None when the recipient may be accepted, else the refusal to give."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return Replies.RELAY_DENIED
    unquoted = local[1:-1] if local.startswith('"') and local.endswith('"') else local
    if any(c in unquoted for c in "%!@"):
        return Replies.BAD_RECIPIENT_SYNTAX
    if domain_served(domain, settings.domains):
        return None
    if NetworkList(settings.relay_networks).matches(client_ip):
        return None
    return Replies.RELAY_DENIED
