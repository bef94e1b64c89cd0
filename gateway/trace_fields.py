"""The header fields the gateway writes on top of a message: Received, Authentication-Results
with Received-SPF, the X-Mailgate-* verdict fields and the X-Spam-* fields of the tag step
(gateway.header_edit strips forged ones).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.auth.arc import ArcResult
from gateway.auth.dkim import DkimResult
from gateway.auth.dmarc import DmarcResult
from gateway.auth.results import authentication_results
from gateway.auth.spf import SpfResult, received_spf
from gateway.folding import fold_items
from gateway.plugin import ClientInfo, MessageContext
from gateway.text import ascii_printable
from gateway.verdict import Action, Verdict

if TYPE_CHECKING:
    from gateway.policy import RuleSet


def auth_fields(ctx: MessageContext, authserv_id: str) -> bytes:
    """Authentication-Results with our authserv-id (always), and Received-SPF when SPF ran."""
    results = ctx.results
    spf = results.get(SpfResult)
    fields = authentication_results(
        authserv_id,
        spf=spf,
        dkim=results.get(DkimResult),
        arc=results.get(ArcResult),
        dmarc=results.get(DmarcResult),
    )
    if spf is not None:
        fields += received_spf(spf.mailfrom, authserv_id)
    return fields


# What a HELO name may show in Received: a domain's characters, or one address literal.
_HELO_CHAR = re.compile(r"[^A-Za-z0-9.\-_]")
_ADDRESS_LITERAL = re.compile(r"\[(?:IPv6:)?[0-9A-Fa-f.:]{2,45}\]")


def helo_token(helo: str | None) -> str:
    """The client's HELO name as one token a reader of Received cannot misread: a space, a
    bracket or a parenthesis would let it write "from x ([192.0.2.1]) by trusted.host" of its
    own. Every other character becomes "?" (as Postfix's printable()); an address literal
    ("[192.0.2.1]", RFC 5321 4.1.3) is kept as it is. Cut to 100 characters."""
    if not helo:
        return "unknown"
    if _ADDRESS_LITERAL.fullmatch(helo):
        return helo
    return _HELO_CHAR.sub("?", helo[:100])


def received_field(
    client: ClientInfo, hostname: str, queue_id: str, recipients: Sequence[str]
) -> bytes:
    """RFC 5321 4.4 trace field; protocol per RFC 3848 (ESMTPS when TLS was used)."""
    helo = helo_token(client.helo)
    protocol = ("ESMTP" if client.esmtp else "SMTP") + ("S" if client.tls else "")
    literal = f"IPv6:{client.ip}" if ":" in client.ip else client.ip  # RFC 5321 4.1.3
    items = [f"from {helo} ([{literal}])", f"by {hostname} (mailgate {__version__})"]
    if client.tls:
        items.append(f"({client.tls.version}:{client.tls.cipher}:{client.tls.bits})")
    items += [f"with {protocol}", f"id {queue_id}"]
    if len(recipients) == 1:
        items.append(f"for <{ascii_printable(recipients[0], 200)}>")
    items[-1] += ";"
    items.append(format_datetime(datetime.now(UTC)))
    return fold_items("Received", items)


def verdict_fields(verdict: Verdict, queue_id: str) -> bytes:
    """X-Mailgate-* fields: what we decided and why, for the delivery server and the user."""
    symbols = verdict.symbols_text().split(",") if verdict.findings else ["none"]
    return (
        f"X-Mailgate-ID: {queue_id}\r\n"
        f"X-Mailgate-Action: {verdict.action.value}\r\n"
        f"X-Mailgate-Score: {verdict.score:g}\r\n"
    ).encode("ascii") + fold_items("X-Mailgate-Symbols", symbols)


def spam_fields(verdict: Verdict, rules: RuleSet) -> bytes:
    """X-Spam-Flag and X-Spam-Status as SpamAssassin writes them, for Sieve rules and junk
    filters that already know these names: YES on a tagged message, NO on every other relayed
    one (so a missing field is never read as "not spam" after a forged one was removed).

    `tests=` lists the symbols that moved the score (score not 0), by name, like SpamAssassin."""
    if not rules.tag.add_headers:
        return b""
    tagged = verdict.action is Action.TAG
    tests = sorted({f.symbol for f in verdict.findings if f.score != 0.0})
    names = [f"{name}," for name in tests[:-1]] + tests[-1:] or ["none"]
    items = [
        "Yes," if tagged else "No,",
        f"score={verdict.score:g}",
        f"tag={rules.tag_threshold:g}",
        f"quarantine={rules.quarantine_at:g}",
        f"reject={rules.reject_at:g}",
        f"tests={names[0]}",
        *names[1:],
    ]
    flag = b"X-Spam-Flag: YES\r\n" if tagged else b"X-Spam-Flag: NO\r\n"
    return flag + fold_items("X-Spam-Status", items)
