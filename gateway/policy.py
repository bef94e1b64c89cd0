"""Admin policy: rules/*.toml -> an immutable `RuleSet`.

rules/ holds what admins tune: the score of every symbol (scores.toml), the thresholds and the
forced actions (actions.toml), and allow/block lists (lists.toml). Loading validates everything
and reports each problem with file, key and line; a reload builds a new RuleSet and swaps it in
whole, so a transaction never sees half of an edit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.auth.policy import AuthPolicy, load_auth_policy
from gateway.domains import domain_matches
from gateway.mime.policy import AttachmentPolicy, load_attachment_policy
from gateway.tomlfile import ConfigError, ConfigErrors, TomlFile
from gateway.verdict import Action, Finding, ForcedAction, SmtpReply, Verdict, combine

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# tls.toml is optional (no file: nothing required), so a rules/ written before it still loads;
# so is auth.toml (no file: no trusted ARC sealers), and attachments.toml (no file: defaults).
RULE_FILES = (
    "scores.toml",
    "actions.toml",
    "lists.toml",
    "tls.toml",
    "auth.toml",
    "attachments.toml",
)
_OPTIONAL_RULE_FILES = frozenset({"tls.toml", "auth.toml", "attachments.toml"})
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")
_REPLY = re.compile(r"^([245]\d\d) ([245]\.\d{1,3}\.\d{1,3}) (\S.{0,300})$")


@dataclass(frozen=True)
class AddressList:
    """Sender addresses and domains: `user@dom` exact, `dom` or `@dom` the domain, `.dom` below."""

    addresses: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    parents: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: list[str]) -> AddressList:
        addresses, domains, parents = set(), set(), []
        for raw in entries:
            entry = raw.strip().lower()
            if entry.startswith("."):
                parents.append(entry)
            elif entry.startswith("@"):
                domains.add(entry[1:])
            elif "@" in entry:
                addresses.add(entry)
            else:
                domains.add(entry)
        return cls(frozenset(addresses), frozenset(domains), tuple(parents))

    def matches(self, address: str) -> bool:
        # A trailing dot names the same domain (DNS root): it must not slip past the list.
        address = address.lower().rstrip(".")
        if address in self.addresses:
            return True
        domain = address.rpartition("@")[2]
        if domain in self.domains:
            return True
        return domain_matches(domain, self.parents)


@dataclass(frozen=True)
class NetworkList:
    networks: tuple[Network, ...] = ()

    def matches(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)


@dataclass(frozen=True)
class Lists:
    client_allow: NetworkList = NetworkList()
    client_block: NetworkList = NetworkList()
    sender_allow: AddressList = AddressList()
    sender_block: AddressList = AddressList()


TLS_REFUSALS = {
    "tempfail": SmtpReply(451, "4.7.1", "TLS required: use STARTTLS, then try again"),
    "reject": SmtpReply(550, "5.7.1", "TLS required: use STARTTLS"),
}


@dataclass(frozen=True)
class TlsPolicy:
    """rules/tls.toml: who must use STARTTLS, and what refusing them at MAIL or RCPT answers.

    A client network (or `all`) is known at connect, so RFC 3207's `530 5.7.0` answers every
    command but EHLO, STARTTLS, NOOP and QUIT; a sender or recipient domain is only known at MAIL
    or RCPT, where `refusal` (451 4.7.1 by default, or 550 5.7.1) is given.
    """

    require_all: bool = False
    client_networks: NetworkList = NetworkList()
    sender_domains: AddressList = AddressList()
    recipient_domains: AddressList = AddressList()
    refusal: SmtpReply = TLS_REFUSALS["tempfail"]

    @property
    def requires_anything(self) -> bool:
        return bool(
            self.require_all
            or self.client_networks.networks
            or self.sender_domains != AddressList()
            or self.recipient_domains != AddressList()
        )

    def required_for_client(self, ip: str) -> bool:
        return self.require_all or self.client_networks.matches(ip)

    def required_for_sender(self, address: str) -> bool:
        return "@" in address and self.sender_domains.matches(address)

    def required_for_recipient(self, address: str) -> bool:
        return self.recipient_domains.matches(address)


@dataclass(frozen=True)
class RuleSet:
    """One consistent version of the policy. Never mutated: reloads replace it."""

    scores: Mapping[str, float]
    forced: Mapping[str, ForcedAction]
    quarantine_at: float
    reject_at: float
    lists: Lists
    version: str
    loaded_at: float
    directory: Path | None = None
    _where: Mapping[str, str] = field(default_factory=dict)
    tls: TlsPolicy = TlsPolicy()
    attachments: AttachmentPolicy = field(default_factory=AttachmentPolicy)  # attachments.toml
    auth: AuthPolicy = field(default_factory=AuthPolicy)

    def decide(self, findings: list[Finding]) -> Verdict:
        return combine(findings, self.scores, self.forced, self.quarantine_at, self.reject_at)

    def forced_now(self, findings: list[Finding]) -> Verdict | None:
        """For early phases: a verdict only if a finding forces reject or tempfail."""
        verdict = self.decide(findings)
        if verdict.forced_by and verdict.action in (Action.REJECT, Action.TEMPFAIL):
            return verdict
        return None

    def source_of(self, what: str) -> str:
        name = f"{what}.toml"
        return str(self.directory / name) if self.directory else name

    def where(self, symbol: str) -> str:
        return self._where.get(symbol, "rules")


def _number(value: Any) -> float:
    # TOML has nan and inf; a nan threshold or total compares false with everything, so every
    # message would relay whatever its score (and inf - inf is nan): refuse them at load.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError
    return float(value)


def _parse_reply(text: str) -> SmtpReply:
    match = _REPLY.match(text)
    if not match:
        raise ValueError
    return SmtpReply(int(match.group(1)), match.group(2), match.group(3))


def _forced(doc: TomlFile, symbol: str, value: Any, errors: list[ConfigError]) -> ForcedAction:
    key = f"forced.{symbol}"
    reply_text: Any = None
    if isinstance(value, dict):
        unknown = set(value) - {"action", "reply"}
        if unknown:
            errors.append(doc.error(key, f"unknown keys {sorted(unknown)} (known: action, reply)"))
        action_name, reply_text = value.get("action"), value.get("reply")
    else:
        action_name = value
    try:
        action = Action(action_name)
    except ValueError:
        choices = ", ".join(a.value for a in Action)
        errors.append(doc.error(key, f"action must be one of {choices}, got {action_name!r}"))
        return ForcedAction(Action.TEMPFAIL)
    reply = None
    if reply_text is not None:
        try:
            reply = _parse_reply(str(reply_text))
        except ValueError:
            errors.append(
                doc.error(key, 'reply must look like "550 5.7.1 text" (code, enhanced status)')
            )
            return ForcedAction(action)
        wanted = {Action.REJECT: 5, Action.TEMPFAIL: 4}.get(action)
        if wanted is None or reply.code // 100 != wanted:
            errors.append(
                doc.error(key, f"a reply for '{action.value}' must be a {wanted or '-'}xx code")
                if wanted
                else doc.error(key, f"'{action.value}' takes no custom reply")
            )
            reply = None
    return ForcedAction(action, reply)


def _table(doc: TomlFile, name: str, errors: list[ConfigError]) -> dict[str, Any]:
    value = doc.data.get(name, {})
    if not isinstance(value, dict):
        errors.append(doc.error(name, "must be a table"))
        return {}
    return value


def _unknown_tables(doc: TomlFile, known: set[str], errors: list[ConfigError]) -> None:
    for key in doc.data:
        if key not in known:
            errors.append(doc.error(key, f"unknown table (known: {', '.join(sorted(known))})"))


def _string_list(
    doc: TomlFile, table: dict[str, Any], dotted: str, errors: list[ConfigError]
) -> list[str]:
    value = table.get(dotted.rpartition(".")[2], [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        errors.append(doc.error(dotted, "must be a list of non-empty strings"))
        return []
    return value


def _networks(
    doc: TomlFile, entries: list[str], dotted: str, errors: list[ConfigError]
) -> NetworkList:
    nets: list[Network] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            errors.append(doc.error(dotted, f"{entry!r} is not an IP address or network"))
    return NetworkList(tuple(nets))


def load_rules(directory: Path) -> RuleSet:
    """Load and validate rules/; raises ConfigErrors listing every problem found."""
    errors: list[ConfigError] = []
    docs: dict[str, TomlFile] = {}
    digest = hashlib.sha256()
    for name in RULE_FILES:
        path = directory / name
        if name in _OPTIONAL_RULE_FILES and not path.exists():
            continue
        try:
            docs[name] = TomlFile.load(path)
            digest.update(path.read_bytes())
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise ConfigErrors(errors)
    where: dict[str, str] = {}

    scores_doc = docs["scores.toml"]
    _unknown_tables(scores_doc, {"scores"}, errors)
    scores: dict[str, float] = {}
    for symbol, value in _table(scores_doc, "scores", errors).items():
        key = f"scores.{symbol}"
        where[symbol] = f"{scores_doc.path}:{scores_doc.line_of(key) or '?'}"
        if not _SYMBOL.match(symbol):
            errors.append(scores_doc.error(key, "a symbol is UPPER_CASE letters, digits and _"))
            continue
        try:
            scores[symbol] = _number(value)
        except ValueError:
            errors.append(scores_doc.error(key, f"score must be a finite number, got {value!r}"))

    actions_doc = docs["actions.toml"]
    _unknown_tables(actions_doc, {"thresholds", "forced"}, errors)
    thresholds = _table(actions_doc, "thresholds", errors)
    for key in thresholds:
        if key not in ("quarantine", "reject"):
            errors.append(actions_doc.error(f"thresholds.{key}", "known: quarantine, reject"))
    limits: dict[str, float] = {}
    for key, default in (("quarantine", 6.0), ("reject", 15.0)):
        try:
            limits[key] = _number(thresholds.get(key, default))
        except ValueError:
            errors.append(actions_doc.error(f"thresholds.{key}", "must be a finite number"))
            limits[key] = default
    if limits["quarantine"] > limits["reject"]:
        errors.append(
            actions_doc.error("thresholds.quarantine", "must not be above thresholds.reject")
        )
    forced: dict[str, ForcedAction] = {}
    for symbol, value in _table(actions_doc, "forced", errors).items():
        where.setdefault(
            symbol, f"{actions_doc.path}:{actions_doc.line_of(f'forced.{symbol}') or '?'}"
        )
        if symbol not in scores and _SYMBOL.match(symbol):
            errors.append(
                actions_doc.error(
                    f"forced.{symbol}", f"symbol has no score in {scores_doc.path.name}"
                )
            )
        forced[symbol] = _forced(actions_doc, symbol, value, errors)

    lists_doc = docs["lists.toml"]
    _unknown_tables(lists_doc, {"client_ip", "sender"}, errors)
    client = _table(lists_doc, "client_ip", errors)
    sender = _table(lists_doc, "sender", errors)
    for table_name, table in (("client_ip", client), ("sender", sender)):
        for key in table:
            if key not in ("allow", "block"):
                errors.append(lists_doc.error(f"{table_name}.{key}", "known: allow, block"))
    lists = Lists(
        client_allow=_networks(
            lists_doc,
            _string_list(lists_doc, client, "client_ip.allow", errors),
            "client_ip.allow",
            errors,
        ),
        client_block=_networks(
            lists_doc,
            _string_list(lists_doc, client, "client_ip.block", errors),
            "client_ip.block",
            errors,
        ),
        sender_allow=AddressList.parse(_string_list(lists_doc, sender, "sender.allow", errors)),
        sender_block=AddressList.parse(_string_list(lists_doc, sender, "sender.block", errors)),
    )
    tls = _tls_policy(docs["tls.toml"], errors) if "tls.toml" in docs else TlsPolicy()
    attachments = AttachmentPolicy()
    if "attachments.toml" in docs:
        attachments = load_attachment_policy(docs["attachments.toml"], errors)
    auth = load_auth_policy(docs["auth.toml"], errors) if "auth.toml" in docs else AuthPolicy()
    if errors:
        raise ConfigErrors(errors)
    return RuleSet(
        scores=scores,
        forced=forced,
        quarantine_at=limits["quarantine"],
        reject_at=limits["reject"],
        lists=lists,
        version=digest.hexdigest()[:12],
        loaded_at=time.time(),
        directory=directory,
        _where=where,
        tls=tls,
        attachments=attachments,
        auth=auth,
    )


def _domains(
    doc: TomlFile, table: dict[str, Any], dotted: str, errors: list[ConfigError]
) -> AddressList:
    entries = _string_list(doc, table, dotted, errors)
    for entry in entries:
        bare = entry.strip().removeprefix(".")
        if not bare or "@" in bare or any(c.isspace() for c in bare):
            errors.append(doc.error(dotted, f"{entry!r} is not a domain (or .domain)"))
    return AddressList.parse([e.rstrip(".") for e in entries])


def _tls_policy(doc: TomlFile, errors: list[ConfigError]) -> TlsPolicy:
    _unknown_tables(doc, {"require_tls"}, errors)
    table = _table(doc, "require_tls", errors)
    known = {"all", "client_networks", "sender_domains", "recipient_domains", "action"}
    for key in table:
        if key not in known:
            errors.append(doc.error(f"require_tls.{key}", f"known: {', '.join(sorted(known))}"))
    require_all = table.get("all", False)
    if not isinstance(require_all, bool):
        errors.append(doc.error("require_tls.all", "must be true or false"))
        require_all = False
    action = table.get("action", "tempfail")
    if action not in TLS_REFUSALS:
        errors.append(
            doc.error("require_tls.action", f'must be "tempfail" or "reject", got {action!r}')
        )
        action = "tempfail"
    return TlsPolicy(
        require_all=require_all,
        client_networks=_networks(
            doc,
            _string_list(doc, table, "require_tls.client_networks", errors),
            "require_tls.client_networks",
            errors,
        ),
        sender_domains=_domains(doc, table, "require_tls.sender_domains", errors),
        recipient_domains=_domains(doc, table, "require_tls.recipient_domains", errors),
        refusal=TLS_REFUSALS[action],
    )
