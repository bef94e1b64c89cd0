"""What the gateway decides about a transaction, and the SMTP reply that carries the decision.

Plugins emit `Finding`s (a symbol and a weight); `combine` turns them into one `Verdict` using the
policy's scores, thresholds and forced actions. Nothing here talks to the network.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.text import ascii_printable


class Action(enum.Enum):
    """What happens to a message, from the mildest to the most severe outcome."""

    RELAY = "relay"
    TAG = "tag"  # relayed, marked as spam (X-Spam-Flag: YES) for the user's Junk folder
    QUARANTINE = "quarantine"
    TEMPFAIL = "tempfail"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {
    Action.RELAY: 0,
    Action.TAG: 1,
    Action.QUARANTINE: 2,
    Action.TEMPFAIL: 3,
    Action.REJECT: 4,
}

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """One SMTP reply: basic code (RFC 5321), enhanced status code (RFC 3463) and text."""

    code: int
    status: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        if not _ENHANCED.match(self.status) or self.status[0] != str(self.code)[0]:
            raise ValueError(f"enhanced status {self.status!r} does not fit code {self.code}")

    def __str__(self) -> str:
        # Replies go on the wire: one line, printable ASCII, bounded length.
        text = ascii_printable(self.text, 400)
        return f"{self.code} {self.status} {text}"

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    def with_text(self, text: str) -> SmtpReply:
        return SmtpReply(self.code, self.status, text)

    def with_id(self, ident: str) -> SmtpReply:
        """The reply naming the session or transaction it concerns, as its log line does."""
        return self.with_text(f"{self.text} (id={ident})")


class Replies:
    """The replies the gateway gives of its own, named; RFC 3463 and RFC 7372 codes.

    Refusals that policy decides (TLS requirements, bare line endings, blocked clients) are not
    here: their replies are forced actions in rules/actions.toml.
    """

    OK = SmtpReply(250, "2.0.0", "OK")
    SENDER_OK = SmtpReply(250, "2.1.0", "Sender OK")
    RECIPIENT_OK = SmtpReply(250, "2.1.5", "Recipient OK")
    # Rejections (5xx)
    POLICY_REJECT = SmtpReply(550, "5.7.1", "Message rejected by policy")
    RELAY_DENIED = SmtpReply(550, "5.7.1", "Relaying denied: recipient domain not served here")
    BAD_RECIPIENT_SYNTAX = SmtpReply(
        550, "5.1.3", "Recipient address with routing characters refused"
    )
    TOO_MANY_RECIPIENTS = SmtpReply(452, "4.5.3", "Too many recipients")
    NEED_MAIL = SmtpReply(503, "5.5.1", "Error: need MAIL command")
    AUTH_NOT_ENABLED = SmtpReply(503, "5.5.1", "Error: authentication not enabled")
    SMTPUTF8_UNSUPPORTED = SmtpReply(
        550, "5.6.7", "SMTPUTF8 message cannot be delivered: delivery server lacks SMTPUTF8"
    )
    # Temporary failures (4xx)
    TEMPFAIL = SmtpReply(451, "4.7.1", "Message deferred by policy, try again later")
    INTERNAL_ERROR = SmtpReply(451, "4.3.0", "Internal error, try again later")
    DOWNSTREAM_UNAVAILABLE = SmtpReply(451, "4.4.1", "Delivery server unavailable, try again later")
    DOWNSTREAM_TIMEOUT = SmtpReply(451, "4.4.2", "Delivery server timed out, try again later")
    QUARANTINE_FAILED = SmtpReply(451, "4.3.0", "Could not store message, try again later")
    TOO_MANY_CONNECTIONS = SmtpReply(421, "4.7.0", "Too many connections from your address")
    SHUTTING_DOWN = SmtpReply(421, "4.3.2", "Service shutting down, try again later")
    QUARANTINED = SmtpReply(250, "2.0.0", "Message accepted")


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation by a plugin: a declared symbol, a weight (multiplies its score), a detail."""

    symbol: str
    weight: float = 1.0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ScoredFinding:
    """A finding with the score the policy gave it (rules score x finding weight)."""

    finding: Finding
    score: float

    @property
    def symbol(self) -> str:
        return self.finding.symbol


@dataclass(frozen=True, slots=True)
class ForcedAction:
    """A policy rule: when a symbol is present, take this action whatever the score is."""

    action: Action
    reply: SmtpReply | None = None


@dataclass(frozen=True)
class Verdict:
    """The decision: the action, the total score, every scored finding, the reply and why."""

    action: Action
    score: float
    findings: tuple[ScoredFinding, ...]
    reply: SmtpReply
    reason: str
    forced_by: str | None = None

    def symbols_text(self) -> str:
        """`SYMBOL(score)` pairs, highest score first: the form headers and logs use."""
        ordered = sorted(self.findings, key=lambda f: (-abs(f.score), f.symbol))
        return ",".join(f"{f.symbol}({f.score:g})" for f in ordered)


def default_reply(action: Action) -> SmtpReply:
    """The reply for an action when no forced rule names its own."""
    return {
        Action.RELAY: Replies.OK,
        Action.TAG: Replies.OK,
        Action.QUARANTINE: Replies.QUARANTINED,
        Action.TEMPFAIL: Replies.TEMPFAIL,
        Action.REJECT: Replies.POLICY_REJECT,
    }[action]


def combine(
    findings: Iterable[Finding],
    scores: Mapping[str, float],
    forced: Mapping[str, ForcedAction],
    quarantine_at: float,
    reject_at: float,
    tag_at: float | None = None,
) -> Verdict:
    """Score every finding and pick one action.

    A forced action beats any score; among several forced actions the most severe wins
    (reject > tempfail > quarantine > tag > relay), so an allow-list entry can never hide a hard
    failure that policy says to refuse. Otherwise the total score is compared with the
    thresholds: the verdict ladder relay < tag < quarantine < reject. `tag_at` None (or not below
    `quarantine_at`) means no tag step.
    """
    scored = tuple(
        ScoredFinding(f, round(scores.get(f.symbol, 0.0) * f.weight, 3)) for f in findings
    )
    total = round(sum(f.score for f in scored), 3)
    strongest: tuple[str, ForcedAction] | None = None
    for item in scored:
        rule = forced.get(item.symbol)
        if rule is not None and (
            strongest is None or rule.action.severity > strongest[1].action.severity
        ):
            strongest = (item.symbol, rule)
    if strongest is not None:
        symbol, rule = strongest
        return Verdict(
            action=rule.action,
            score=total,
            findings=scored,
            reply=rule.reply or default_reply(rule.action),
            reason=f"forced by {symbol}",
            forced_by=symbol,
        )
    if total >= reject_at:
        action, reason = Action.REJECT, f"score {total:g} >= reject threshold {reject_at:g}"
    elif total >= quarantine_at:
        action, reason = (
            Action.QUARANTINE,
            f"score {total:g} >= quarantine threshold {quarantine_at:g}",
        )
    elif tag_at is not None and tag_at < quarantine_at and total >= tag_at:
        action, reason = Action.TAG, f"score {total:g} >= tag threshold {tag_at:g}"
    else:
        action, reason = Action.RELAY, f"score {total:g} below thresholds"
    return Verdict(
        action=action, score=total, findings=scored, reply=default_reply(action), reason=reason
    )
