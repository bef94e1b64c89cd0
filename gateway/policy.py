"""Admin policy: rules/*.toml -> an immutable `RuleSet`.

rules/ holds what admins tune: the score of every symbol (scores.toml), the thresholds and the
forced actions (actions.toml), allow/block lists (lists.toml), and the admin's own content
rules and composites (content.toml, content.d/: gateway.content_rules). Loading validates everything
and reports each problem with file, key and line; a reload builds a new RuleSet and swaps it in
whole, so a transaction never sees half of an edit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Strict,
    StringConstraints,
)

from gateway.auth.policy import AuthPolicy, load_auth_policy
from gateway.content_rules import ContentRules, load_content_rules
from gateway.domains import domain_matches
from gateway.front_symbols import TLS_DOMAIN_SYMBOLS
from gateway.identity import IDENTITY_RULE_FILES, IdentityPolicy, load_identity_policy
from gateway.linkcheck import LinkPolicy, load_link_policy
from gateway.mime.policy import AttachmentPolicy, load_attachment_policy
from gateway.reputation import ReputationPolicy, load_reputation_policy
from gateway.schema import (
    SYMBOL_SYNTAX,
    TABLE_CONFIG,
    Array,
    DomainName,
    FiniteNumber,
    Flag,
    KeyProblem,
    Network,
    NetworkEntry,
    Symbol,
    Text,
    validate_table,
)
from gateway.tomlfile import ConfigError, ConfigErrors, TomlFile
from gateway.verdict import Action, Finding, ForcedAction, SmtpReply, Verdict, combine

# tls.toml is optional (no file: nothing required), so a rules/ written before it still loads;
# so is auth.toml (no file: no trusted ARC sealers), attachments.toml (no file: defaults) and
# reputation.toml (no file: no DNS lists are asked).
RULE_FILES = (
    "scores.toml",
    "actions.toml",
    "lists.toml",
    "tls.toml",
    "auth.toml",
    "attachments.toml",
    "reputation.toml",
    "links.toml",
    *IDENTITY_RULE_FILES,
)
_OPTIONAL_RULE_FILES = frozenset(
    {"tls.toml", "auth.toml", "attachments.toml", "reputation.toml", "links.toml"}
    | set(IDENTITY_RULE_FILES)
)
# per-plugin score files (same [scores] format as scores.toml), merged with it: a plugin ships
# its scores as one file, with no edit of scores.toml
SCORES_DIR = "scores.d"
# scores fitted to labelled mail (`mailgate rules fit`): read last, overriding scores.toml and
# scores.d/ for the symbols it names (each must be scored there: a typo is an error)
FITTED_SCORES = "fitted.toml"
# symbols the plugin registry scores by default (0): a forced action may name them unscored
_DEFAULT_SCORED_SUFFIXES = ("_ERROR", "_TIMEOUT")


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
class TagPolicy:
    """What tagging writes: X-Spam-Flag/X-Spam-Status on every relayed message (YES when
    tagged, NO otherwise) when `add_headers`, and `subject_prefix` before a tagged Subject."""

    add_headers: bool = True
    subject_prefix: str = ""


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
    reputation: ReputationPolicy = field(default_factory=ReputationPolicy)  # reputation.toml
    tag_at: float | None = None  # None: no tag step (see Thresholds)
    tag: TagPolicy = TagPolicy()

    @property
    def tag_threshold(self) -> float:
        """The score from which a message is tagged (the quarantine threshold: no tag step)."""
        return self.quarantine_at if self.tag_at is None else self.tag_at

    # content.toml, content.d/*.toml: admin rules (the content plugin) and composites (the chain)
    content: ContentRules = field(default_factory=ContentRules)
    links: LinkPolicy = field(default_factory=LinkPolicy)  # links.toml
    # brands.toml, freemail.toml, identity.toml: who mail may claim to be (gateway.identity)
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)

    def decide(self, findings: list[Finding]) -> Verdict:
        return combine(
            findings, self.scores, self.forced, self.quarantine_at, self.reject_at, self.tag_at
        )

    def with_defaults(
        self, scores: Mapping[str, float], forced: Mapping[str, ForcedAction]
    ) -> RuleSet:
        """This policy with defaults supplied by the plugins (score 0 and the plugin's on_error
        for `<NAME>_ERROR` / `<NAME>_TIMEOUT`): rules/' own entries win."""
        return dataclasses.replace(
            self, scores={**scores, **self.scores}, forced={**forced, **self.forced}
        )

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


# -- the files as written: dataclasses checked by gateway.schema ---------------------------------

_SYMBOL = SYMBOL_SYNTAX
_REPLY = re.compile(r"^([245]\d\d) ([245]\.\d{1,3}\.\d{1,3}) (\S.{0,300})$")


ListEntry = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=1)]


@dataclass(frozen=True)
class ScoresFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    scores: Mapping[Symbol, FiniteNumber] = field(default_factory=dict)


def _ladder_in_order(thresholds: Thresholds) -> Thresholds:
    """tag <= quarantine <= reject: a step equal to the next one is skipped (tag = quarantine:
    no tag step; quarantine = reject: no quarantine step), one out of order is a mistake."""
    if thresholds.quarantine > thresholds.reject:
        raise KeyProblem("quarantine", "must not be above thresholds.reject")
    if thresholds.tag is not None and thresholds.tag > thresholds.quarantine:
        raise KeyProblem("tag", "must not be above thresholds.quarantine")
    return thresholds


@dataclass(frozen=True)
class Thresholds:
    """The verdict ladder: relay below `tag`, tag (relay marked as spam) below `quarantine`,
    quarantine below `reject`. No `tag` (rules/ written before the tag step): no tag step."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    tag: FiniteNumber | None = None
    quarantine: FiniteNumber = 6.0
    reject: FiniteNumber = 15.0


def _prefix_text(value: Any) -> Any:
    if isinstance(value, str) and (
        len(value) > 40 or any(not 0x20 <= ord(c) < 0x7F for c in value)
    ):
        raise ValueError("a Subject prefix is printable ASCII, at most 40 characters")
    return value


@dataclass(frozen=True)
class TagTable:
    """`[tag]`: how a tagged message is marked. The X-Spam-* fields are what Sieve rules (or a
    delivery server's junk filter) route on; the Subject prefix is for users without them."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    add_headers: Flag = True
    subject_prefix: Annotated[str, Strict(), BeforeValidator(_prefix_text)] = ""


def _parse_reply(text: str) -> SmtpReply:
    match = _REPLY.match(text)
    if not match:
        raise ValueError('reply must look like "550 5.7.1 text" (code, enhanced status)')
    return SmtpReply(int(match.group(1)), match.group(2), match.group(3))


@dataclass(frozen=True)
class ForcedEntry:
    """`SYMBOL = "action"` or `SYMBOL = { action = "reject", reply = "550 5.7.1 text" }`."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    action: Action
    reply: Text | None = None

    def forced_action(self) -> ForcedAction:
        return ForcedAction(self.action, _parse_reply(self.reply) if self.reply else None)


def _action_alone(value: Any) -> Any:
    return {"action": value} if isinstance(value, str) else value


def _reply_fits_action(entry: ForcedEntry) -> ForcedEntry:
    if entry.reply is None:
        return entry
    reply = _parse_reply(entry.reply)
    wanted = {Action.REJECT: 5, Action.TEMPFAIL: 4}.get(entry.action)
    if wanted is None:
        raise ValueError(f"'{entry.action.value}' takes no custom reply")
    if reply.code // 100 != wanted:
        raise ValueError(f"a reply for '{entry.action.value}' must be a {wanted}xx code")
    return entry


@dataclass(frozen=True)
class ActionsFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    thresholds: Annotated[Thresholds, AfterValidator(_ladder_in_order)] = field(
        default_factory=Thresholds
    )
    tag: TagTable = field(default_factory=TagTable)
    forced: Mapping[
        Symbol,
        Annotated[ForcedEntry, BeforeValidator(_action_alone), AfterValidator(_reply_fits_action)],
    ] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientLists:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    allow: Array[NetworkEntry] = ()
    block: Array[NetworkEntry] = ()


@dataclass(frozen=True)
class SenderLists:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    allow: Array[ListEntry] = ()
    block: Array[ListEntry] = ()


@dataclass(frozen=True)
class ListsFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    client_ip: ClientLists = field(default_factory=ClientLists)
    sender: SenderLists = field(default_factory=SenderLists)


@dataclass(frozen=True)
class RequireTls:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    all: Flag = False
    client_networks: Array[NetworkEntry] = ()
    sender_domains: Array[DomainName] = ()
    recipient_domains: Array[DomainName] = ()
    action: Literal["tempfail", "reject"] = "tempfail"


@dataclass(frozen=True)
class TlsFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    require_tls: RequireTls = field(default_factory=RequireTls)


def _where_written(doc: TomlFile, table: str) -> dict[str, str]:
    """symbol -> "file:line" of every key of `table`, valid or not (for `RuleSet.where`)."""
    written = doc.data.get(table)
    if not isinstance(written, dict):
        return {}
    return {symbol: f"{doc.path}:{doc.line_of(f'{table}.{symbol}') or '?'}" for symbol in written}


def _overlay_fitted(
    path: Path,
    scored: dict[str, float],
    where: dict[str, str],
    errors: list[ConfigError],
    digest: Any,
) -> bool:
    """rules/fitted.toml over the other score files; False when it is unusable."""
    try:
        doc = TomlFile.load(path)
        digest.update(path.read_bytes())
    except ConfigError as exc:
        errors.append(exc)
        return False
    found = validate_table(doc, "", ScoresFile, doc.data, errors)
    if found is None:
        return False
    places = _where_written(doc, "scores")
    for symbol, score in found.scores.items():
        if symbol not in where:
            errors.append(doc.error(f"scores.{symbol}", "fits a symbol no score file scores"))
            continue
        scored[symbol] = score
        where[symbol] = places[symbol]
    return True


def load_rules(directory: Path, *, fitted: bool = True) -> RuleSet:
    """Load and validate rules/; raises ConfigErrors listing every problem found. `fitted`
    False: without rules/fitted.toml, the hand-set scores a refit starts from (gateway.scorefit),
    so that no fit or held-out figure reads scores an earlier fit made on the same mail."""
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
    score_docs = [docs["scores.toml"]] if "scores.toml" in docs else []
    scores_d = directory / SCORES_DIR
    if scores_d.is_dir():
        for path in sorted(scores_d.glob("*.toml")):
            try:
                score_docs.append(TomlFile.load(path))
                digest.update(path.read_bytes())
            except ConfigError as exc:
                errors.append(exc)
    if errors:
        raise ConfigErrors(errors)

    scores_doc, actions_doc = docs["scores.toml"], docs["actions.toml"]
    scored: dict[str, float] = {}
    where: dict[str, str] = {}
    scores_valid = True
    for doc in score_docs:
        found = validate_table(doc, "", ScoresFile, doc.data, errors)
        scores_valid = scores_valid and found is not None
        for symbol, place in _where_written(doc, "scores").items():
            if symbol in where:
                errors.append(
                    doc.error(f"scores.{symbol}", f"{symbol} is already scored at {where[symbol]}")
                )
                continue
            where[symbol] = place
            if found is not None:
                scored[symbol] = found.scores[symbol]
    content, content_bytes = load_content_rules(directory, errors)
    for data in content_bytes:
        digest.update(data)
    _score_content_rules(content, directory, scored, where, errors)
    # last: fitted.toml overrides any score, a content rule's own included (rules fit fits those)
    fitted_path = directory / FITTED_SCORES
    if fitted and fitted_path.exists():
        scores_valid = _overlay_fitted(fitted_path, scored, where, errors, digest) and scores_valid
    actions = validate_table(actions_doc, "", ActionsFile, actions_doc.data, errors)
    scored_names = set(where)
    for symbol, place in _where_written(actions_doc, "forced").items():
        where.setdefault(symbol, place)
        # a forced symbol without a score is a typo, or a symbol no plugin emits (the registry
        # scores <NAME>_ERROR and <NAME>_TIMEOUT itself)
        if (
            _SYMBOL.match(symbol)
            and symbol not in scored_names
            and not symbol.endswith(_DEFAULT_SCORED_SUFFIXES)
        ):
            errors.append(
                actions_doc.error(
                    f"forced.{symbol}", f"symbol has no score in {scores_doc.path.name}"
                )
            )
    lists_doc = docs["lists.toml"]
    lists = validate_table(lists_doc, "", ListsFile, lists_doc.data, errors)
    tls = TlsFile()
    if "tls.toml" in docs:
        tls = validate_table(docs["tls.toml"], "", TlsFile, docs["tls.toml"].data, errors) or tls
    attachments = AttachmentPolicy()
    if "attachments.toml" in docs:
        attachments = load_attachment_policy(docs["attachments.toml"], errors)
    auth = AuthPolicy()
    if "auth.toml" in docs:
        auth = load_auth_policy(docs["auth.toml"], errors)
    reputation = ReputationPolicy()
    if "reputation.toml" in docs:
        reputation = load_reputation_policy(docs["reputation.toml"], errors)
    links = LinkPolicy()
    if "links.toml" in docs:
        links = load_link_policy(docs["links.toml"], errors)
    identity = load_identity_policy(docs, errors)
    if errors or not scores_valid or actions is None or lists is None:
        raise ConfigErrors(errors)
    require = tls.require_tls
    forced = {symbol: entry.forced_action() for symbol, entry in actions.forced.items()}
    refusal = TLS_REFUSALS[require.action]
    _tls_forced_actions(refusal, actions_doc, forced, errors)
    if errors:
        raise ConfigErrors(errors)
    return RuleSet(
        scores=scored,
        forced=forced,
        quarantine_at=actions.thresholds.quarantine,
        reject_at=actions.thresholds.reject,
        tag_at=actions.thresholds.tag,
        tag=TagPolicy(actions.tag.add_headers, actions.tag.subject_prefix),
        lists=Lists(
            client_allow=NetworkList(lists.client_ip.allow),
            client_block=NetworkList(lists.client_ip.block),
            sender_allow=AddressList.parse(list(lists.sender.allow)),
            sender_block=AddressList.parse(list(lists.sender.block)),
        ),
        version=digest.hexdigest()[:12],
        loaded_at=time.time(),
        directory=directory,
        _where=where,
        tls=TlsPolicy(
            require_all=require.all,
            client_networks=NetworkList(require.client_networks),
            sender_domains=AddressList.parse(list(require.sender_domains)),
            recipient_domains=AddressList.parse(list(require.recipient_domains)),
            refusal=refusal,
        ),
        attachments=attachments,
        auth=auth,
        reputation=reputation,
        content=content,
        links=links,
        identity=identity,
    )


def _score_content_rules(
    content: ContentRules,
    directory: Path,
    scored: dict[str, float],
    where: dict[str, str],
    errors: list[ConfigError],
) -> None:
    """Each content rule and composite carries its own score: one place per symbol, so a rule
    also scored in scores.toml (or scores.d) is an error naming both places."""
    for symbol, score, origin in content.scored():
        if symbol in where:
            errors.append(
                ConfigError(
                    directory / origin.path,
                    None,
                    origin.line,
                    f"rule {symbol}: the symbol is already scored at {where[symbol]}",
                )
            )
            continue
        where[symbol] = f"{directory / origin.path}:{origin.line or '?'}"
        scored[symbol] = score


def _tls_forced_actions(
    refusal: SmtpReply,
    actions_doc: TomlFile,
    forced: dict[str, ForcedAction],
    errors: list[ConfigError],
) -> None:
    """tls.toml `require_tls.action` is the forced action of the front's two domain symbols."""
    action = Action.REJECT if refusal.code >= 500 else Action.TEMPFAIL
    for symbol in TLS_DOMAIN_SYMBOLS:
        if symbol in forced:
            errors.append(
                actions_doc.error(
                    f"forced.{symbol}", "is set by require_tls.action in tls.toml, not here"
                )
            )
        forced[symbol] = ForcedAction(action, refusal)
