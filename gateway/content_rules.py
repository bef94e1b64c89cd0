"""rules/content.toml and rules/content.d/*.toml: the admin's own content rules, compiled.

What SpamAssassin's header/body/uri/rawbody/full and meta rules and Rspamd's multimap and
composites let an admin write, in one format: each `[[rule]]` has a symbol, a description, a
score and a `type`, and is checked when rules/ loads, with file:line and the rule's symbol in
every error. Every regex is compiled by RE2 (google-re2), whose matching time is linear in the
text: no admin pattern can freeze the gateway on a hostile message, and a pattern RE2 cannot
run (backreferences, lookaround) is refused at load rather than run by a backtracking engine.
Each rule sees a bounded text (`TextLimits`).

The rules read a `MessageView` that the content plugin fills from the one parsed message
(gateway.message), so a rule never reads the message differently from the other checks.
Composite (`meta`) rules are evaluated by the chain after every plugin has run at DATA, over
every symbol found (`ContentRules.composite_findings`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol

import re2
from pydantic import AfterValidator, ConfigDict

from gateway.domains import DomainSet, normalized
from gateway.schema import (
    SYMBOL_SYNTAX,
    TABLE_CONFIG,
    Array,
    FiniteNumber,
    Flag,
    KeyProblem,
    Network,
    Symbol,
    Text,
    validate_table,
)
from gateway.text import printable
from gateway.tomlfile import ConfigError, TomlFile
from gateway.verdict import Finding

CONTENT_FILE = "content.toml"
CONTENT_DIR = "content.d"
ALL_FIELDS = "ALL"  # a header rule on the whole header section
EXCERPT_CHARS = 48  # of the matched text, in a finding's detail
MAX_LIST_BYTES = 16 * 1024 * 1024  # one list file; loading stays bounded too
MAX_EXPRESSION_CHARS = 2000
MAX_EXPRESSION_DEPTH = 32
# RE2's memory per compiled pattern (its DFA cache): a huge pattern is refused, not grown into
RE2_MAX_MEM = 8 << 20

RuleType = Literal["header", "body", "rawbody", "full", "uri", "attachment", "list", "meta"]
Identity = Literal["from", "reply_to", "envelope_from", "client_ip", "url"]
_FIELD_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # printable ASCII but ":" (RFC 5322 2.2)


@dataclass(frozen=True)
class TextLimits:
    """How much text each kind of rule sees: the front of it, so a rule's cost is bounded by
    these numbers and not by the message (the plugin's `[plugins.content]` table sets them)."""

    header_chars: int = 8 * 1024  # each field's decoded value
    all_header_chars: int = 64 * 1024  # the whole header section (`fields = ["ALL"]`)
    body_chars: int = 256 * 1024
    rawbody_chars: int = 256 * 1024
    full_bytes: int = 256 * 1024


# -- what a rule reads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageView:
    """One message as content rules read it, taken from the one parse (the content plugin fills
    only what the loaded rules need; the rest stays empty)."""

    # texts as UTF-8 bytes, each encoded once (RE2 reads UTF-8; a str would be encoded again
    # for every rule), each already cut to its TextLimits
    fields: tuple[tuple[str, bytes], ...] = ()  # (lower-case name, decoded value), in order
    all_headers: bytes = b""
    body: bytes = b""
    rawbody: bytes = b""
    full: bytes = b""
    urls: tuple[tuple[bytes, str, str], ...] = ()  # (url, host, registrable domain)
    files: tuple[tuple[bytes, bytes], ...] = ()  # (file name, type)
    from_addresses: tuple[str, ...] = ()
    reply_to_addresses: tuple[str, ...] = ()
    envelope_from: str = ""
    client_ip: str = ""


@dataclass(frozen=True)
class Origin:
    """Where a rule is written, for errors and for the detail of its findings."""

    path: str  # as shown: relative to rules/ ("content.toml", "content.d/phish.toml")
    line: int | None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


def _excerpt(text: str | bytes) -> str:
    return '"' + printable(text, EXCERPT_CHARS) + '"'


def utf8(text: str) -> bytes:
    """Text as RE2 reads it; surrogate escapes (undecodable header bytes) back to those bytes."""
    return text.encode("utf-8", "surrogateescape")


class Pattern:
    """An RE2 regex (UTF-8 mode) over UTF-8 bytes: text, or the raw message for `full`."""

    def __init__(self, source: str) -> None:
        options = re2.Options()
        options.log_errors = False  # RE2 would print each refusal on stderr
        options.max_mem = RE2_MAX_MEM
        options.never_capture = True  # only the whole match is reported
        self.source = source
        self._regex = re2.compile(source.encode("utf-8"), options)

    def search(self, data: bytes) -> bytes | None:
        found = self._regex.search(data)
        return None if found is None else bytes(found.group(0))


# -- lists ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryList:
    """Domains, addresses and IP networks of one list (a file, or `entries` inline).

    "dom" is that domain, ".dom" every domain below it (gateway.domains, as everywhere), "@dom"
    the same as "dom", "user@dom" that address, "192.0.2.0/24" or "2001:db8::1" addresses.
    """

    domains: DomainSet = field(default_factory=DomainSet)
    addresses: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    def matches_address(self, address: str) -> bool:
        address = normalized(address)
        if address in self.addresses:
            return True
        return "@" in address and self.domains.matches(address.rpartition("@")[2])

    def matches_ip(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def matches_host(self, host: str, domain: str) -> bool:
        """A link host: listed itself, its registrable domain listed, or an IP in a network."""
        return self.domains.matches(host) or self.domains.matches(domain) or self.matches_ip(host)


def parse_entry(entry: str) -> tuple[str, str | Network] | None:
    """("network" | "address" | "domain", value) for one list entry, None if it is none."""
    entry = entry.strip()
    try:
        return "network", ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    lowered = normalized(entry)
    if not lowered or any(c.isspace() for c in lowered):
        return None
    if lowered.startswith("@"):
        lowered = lowered[1:]
    elif "@" in lowered:
        local, _, domain = lowered.rpartition("@")
        return ("address", lowered) if local and domain and "@" not in local else None
    bare = lowered.removeprefix(".")
    if not bare or "@" in bare or bare.startswith(".") or ".." in bare:
        return None
    return "domain", lowered


def build_list(entries: Iterable[str]) -> EntryList:
    domains: list[str] = []
    addresses: set[str] = set()
    networks: list[Network] = []
    for entry in entries:
        parsed = parse_entry(entry)
        if parsed is None:
            continue
        kind, value = parsed
        if kind == "network" and not isinstance(value, str):
            networks.append(value)
        elif kind == "address" and isinstance(value, str):
            addresses.add(value)
        elif isinstance(value, str):
            domains.append(value)
    return EntryList(DomainSet.parse(domains), frozenset(addresses), tuple(networks))


# -- rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentRule:
    """One admin rule: `hit` returns the detail of a finding ("on what text"), or None."""

    symbol: str
    description: str
    score: float
    kind: str
    origin: Origin
    matcher: Matcher
    negate: bool = False
    part: bool = False  # only a part of composites: never a finding of its own

    def hit(self, view: MessageView) -> str | None:
        found = self.matcher.match(view)
        if self.negate:
            return None if found is not None else f"{self.origin} {self.kind}: no match"
        return None if found is None else f"{self.origin} {self.kind} {found}"


class Matcher(Protocol):
    """What one kind of rule looks at; `match` says what matched (escaped, short) or None."""

    def match(self, view: MessageView) -> str | None: ...


@dataclass(frozen=True)
class HeaderMatch:
    fields: tuple[str, ...] = ()  # lower-case names, or ("ALL",)
    pattern: Pattern | None = None  # None: the field exists

    def match(self, view: MessageView) -> str | None:
        if self.fields == (ALL_FIELDS,):
            if self.pattern is None:
                return "(header section)" if view.fields else None
            return _search(self.pattern, view.all_headers, "")
        for name, value in view.fields:
            if name not in self.fields:
                continue
            if self.pattern is None:
                return f"{printable(name, 40)} exists"
            found = _search(self.pattern, value, f"{printable(name, 40)}: ")
            if found is not None:
                return found
        return None


@dataclass(frozen=True)
class TextMatch:
    """body (text, HTML as text), rawbody (decoded parts, markup kept), full (raw bytes)."""

    kind: str
    pattern: Pattern

    def match(self, view: MessageView) -> str | None:
        text = {"body": view.body, "rawbody": view.rawbody}.get(self.kind, view.full)
        return _search(self.pattern, text, "")


@dataclass(frozen=True)
class UriMatch:
    pattern: Pattern | None = None
    listed: EntryList | None = None

    def match(self, view: MessageView) -> str | None:
        for url, host, domain in view.urls:
            if self.listed is not None and not self.listed.matches_host(host, domain):
                continue
            if self.pattern is not None and self.pattern.search(url) is None:
                continue
            return _excerpt(url)
        return None


@dataclass(frozen=True)
class AttachmentMatch:
    name: Pattern | None = None
    mime_type: Pattern | None = None

    def match(self, view: MessageView) -> str | None:
        for name, kind in view.files:
            if self.name is not None and self.name.search(name) is None:
                continue
            if self.mime_type is not None and self.mime_type.search(kind) is None:
                continue
            return f"{_excerpt(name)} ({printable(kind, 60)})"
        return None


@dataclass(frozen=True)
class ListMatch:
    listed: EntryList
    identities: tuple[str, ...]

    def match(self, view: MessageView) -> str | None:
        listed = self.listed
        for identity in self.identities:
            if identity == "client_ip":
                if view.client_ip and listed.matches_ip(view.client_ip):
                    return f"client_ip {printable(view.client_ip, 60)}"
            elif identity == "url":
                for url, host, domain in view.urls:
                    if listed.matches_host(host, domain):
                        return f"url {_excerpt(url)}"
            else:
                addresses = {
                    "from": view.from_addresses,
                    "reply_to": view.reply_to_addresses,
                    "envelope_from": (view.envelope_from,) if view.envelope_from else (),
                }[identity]
                for address in addresses:
                    if listed.matches_address(address):
                        return f"{identity} {_excerpt(address)}"
        return None


def _search(pattern: Pattern, text: bytes, label: str) -> str | None:
    found = pattern.search(text)
    return None if found is None else f"{label}{_excerpt(found)}"


# -- composite (meta) rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """A boolean expression over symbols: `op` is "sym", "not", "and" or "or"."""

    op: str
    symbol: str = ""
    items: tuple[Expression, ...] = ()

    def holds(self, present: frozenset[str] | set[str]) -> bool:
        if self.op == "sym":
            return self.symbol in present
        if self.op == "not":
            return not self.items[0].holds(present)
        if self.op == "and":
            return all(item.holds(present) for item in self.items)
        return any(item.holds(present) for item in self.items)

    def symbols(self) -> frozenset[str]:
        if self.op == "sym":
            return frozenset({self.symbol})
        return frozenset().union(*(item.symbols() for item in self.items))


_TOKEN = re.compile(r"\s*(?:(&&)|(\|\|)|(!)|(\()|(\))|([A-Za-z0-9_]+)|(\S))")


class ExpressionError(ValueError):
    pass


def parse_expression(text: str) -> Expression:
    """`A && !(B || C)`: ! binds tightest, then &&, then ||; parentheses group."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        token = next(g for g in match.groups() if g is not None)
        if match.group(7) is not None:
            raise ExpressionError(f"unexpected {token!r} (use &&, ||, !, parentheses, SYMBOLS)")
        if match.group(6) is not None and not SYMBOL_SYNTAX.match(token):
            raise ExpressionError(f"{token!r} is not a symbol (UPPER_CASE letters, digits, _)")
        tokens.append(token)
    if not tokens:
        raise ExpressionError("is empty")
    parser = _ExpressionParser(tokens)
    expression = parser.any_of(0)
    if parser.at < len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.at]!r}")
    return expression


class _ExpressionParser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def any_of(self, depth: int) -> Expression:
        items = [self.all_of(depth)]
        while self.peek() == "||":
            self.at += 1
            items.append(self.all_of(depth))
        return items[0] if len(items) == 1 else Expression("or", items=tuple(items))

    def all_of(self, depth: int) -> Expression:
        items = [self.unary(depth)]
        while self.peek() == "&&":
            self.at += 1
            items.append(self.unary(depth))
        return items[0] if len(items) == 1 else Expression("and", items=tuple(items))

    def unary(self, depth: int) -> Expression:
        if depth > MAX_EXPRESSION_DEPTH:
            raise ExpressionError(f"nested deeper than {MAX_EXPRESSION_DEPTH}")
        token = self.peek()
        if token is None:
            raise ExpressionError("ends too early")
        self.at += 1
        if token == "!":
            return Expression("not", items=(self.unary(depth + 1),))
        if token == "(":
            inner = self.any_of(depth + 1)
            if self.peek() != ")":
                raise ExpressionError("a '(' is not closed")
            self.at += 1
            return inner
        if token in ("&&", "||", ")"):
            raise ExpressionError(f"unexpected {token!r}")
        return Expression("sym", symbol=token)


@dataclass(frozen=True)
class Composite:
    symbol: str
    description: str
    score: float
    expression: Expression
    source: str
    origin: Origin


# -- the compiled set -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentRules:
    """Every content rule and composite of rules/, compiled; composites in evaluation order
    (one that names another comes after it)."""

    rules: tuple[ContentRule, ...] = ()
    composites: tuple[Composite, ...] = ()

    @cached_property
    def rule_symbols(self) -> Mapping[str, str]:
        """Symbol -> description of the rules whose hits the content plugin reports."""
        return {rule.symbol: rule.description for rule in self.rules if not rule.part}

    @cached_property
    def part_symbols(self) -> Mapping[str, str]:
        """Symbol -> description of the rules that are only parts of composites (`part =
        true`): SpamAssassin's `__RULE`s, so that a part hitting most mail (a link) adds no
        finding to every log line, record and X-Spam-Status."""
        return {rule.symbol: rule.description for rule in self.rules if rule.part}

    @cached_property
    def composite_symbols(self) -> Mapping[str, str]:
        return {c.symbol: c.description for c in self.composites}

    @cached_property
    def needs(self) -> frozenset[str]:
        """The parts of a MessageView the rules read (`MessageView` field names): the plugin
        fills only those, so a rules file without body rules costs no body text."""
        found: set[str] = set()
        for rule in self.rules:
            matcher = rule.matcher
            if isinstance(matcher, HeaderMatch):
                found.add("all_headers" if matcher.fields == (ALL_FIELDS,) else "fields")
            elif isinstance(matcher, TextMatch):
                found.add(matcher.kind)
            elif isinstance(matcher, UriMatch):
                found.add("urls")
            elif isinstance(matcher, AttachmentMatch):
                found.add("files")
            elif isinstance(matcher, ListMatch):
                found.update(
                    {"url": "urls", "from": "from_addresses", "reply_to": "reply_to_addresses"}.get(
                        identity, identity
                    )
                    for identity in matcher.identities
                )
        return frozenset(found)

    @cached_property
    def header_names(self) -> frozenset[str]:
        """Lower-case names of the fields header rules read (not ALL)."""
        return frozenset(
            name
            for rule in self.rules
            if isinstance(rule.matcher, HeaderMatch)
            for name in rule.matcher.fields
            if name != ALL_FIELDS
        )

    def scored(self) -> list[tuple[str, float, Origin]]:
        """(symbol, score, where written) of every rule and composite."""
        found = [(r.symbol, r.score, r.origin) for r in self.rules if not r.part]
        return found + [(c.symbol, c.score, c.origin) for c in self.composites]

    def origin_of(self, symbol: str) -> Origin | None:
        for rule in self.rules:
            if rule.symbol == symbol:
                return rule.origin
        for composite in self.composites:
            if composite.symbol == symbol:
                return composite.origin
        return None

    def evaluate(self, view: MessageView) -> tuple[list[Finding], PartHits]:
        """The findings of every rule that hits `view`, and the parts that hit (synchronous:
        RE2 over bounded text)."""
        found: list[Finding] = []
        parts: dict[str, str] = {}
        for rule in self.rules:
            detail = rule.hit(view)
            if detail is None:
                continue
            if rule.part:
                parts[rule.symbol] = detail
            else:
                found.append(Finding(rule.symbol, detail=detail))
        return found, PartHits(parts)

    def composite_findings(
        self, findings: Sequence[Finding], parts: PartHits | None = None
    ) -> list[Finding]:
        """Composites that hold over the symbols of `findings` and the parts that hit (and of
        earlier composites); the detail shows what the parts matched, else the expression."""
        if not self.composites:
            return []
        hits = parts.details if parts is not None else {}
        present = {f.symbol for f in findings} | set(hits)
        found: list[Finding] = []
        for composite in self.composites:
            if composite.symbol not in present and composite.expression.holds(present):
                present.add(composite.symbol)
                named = sorted(composite.expression.symbols(), key=composite.source.find)
                shown = [hits[s] for s in named if s in hits]  # as the expression names them
                detail = "; ".join(shown) if shown else composite.source
                found.append(Finding(composite.symbol, detail=f"{composite.origin} meta: {detail}"))
        return found


@dataclass(frozen=True)
class PartHits:
    """The `part = true` rules that hit, with their details: what the content plugin hands the
    chain's composite step (`ctx.results`), since they are no findings."""

    details: Mapping[str, str] = field(default_factory=dict)


# -- the files as written -------------------------------------------------------------------------

_ONLY_FOR: Mapping[str, frozenset[str]] = {
    "pattern": frozenset({"header", "body", "rawbody", "full", "uri"}),
    "fields": frozenset({"header"}),
    "exists": frozenset({"header"}),
    "negate": frozenset({"header", "body", "rawbody", "full", "uri", "attachment", "list"}),
    "name": frozenset({"attachment"}),
    "mime_type": frozenset({"attachment"}),
    "file": frozenset({"uri", "list"}),
    "entries": frozenset({"uri", "list"}),
    "match": frozenset({"list"}),
    "expression": frozenset({"meta"}),
}


def _fits_type(entry: RuleEntry) -> RuleEntry:
    """The keys a rule of this type needs, and no key meant for another type."""
    written = {f.name for f in dataclasses.fields(entry) if getattr(entry, f.name) != f.default}
    for key, types in _ONLY_FOR.items():
        if key in written and entry.type not in types:
            raise KeyProblem(key, f"is not a setting of a {entry.type!r} rule")
    if entry.part and entry.type == "meta":
        raise KeyProblem("part", "a meta rule cannot be a part (name it in another meta rule)")
    if entry.part and entry.score is not None:
        raise KeyProblem("score", "a part has no score of its own (only composites count it)")
    if not entry.part and entry.score is None:
        raise KeyProblem("score", "is required (or part = true for a part of composites)")
    need = {
        "header": "fields",
        "body": "pattern",
        "rawbody": "pattern",
        "full": "pattern",
        "list": "match",
        "meta": "expression",
    }.get(entry.type)
    if need is not None and need not in written:
        raise KeyProblem(need, f"is required for a {entry.type!r} rule")
    if entry.type == "header" and (entry.pattern is None) == (not entry.exists):
        raise KeyProblem("pattern", "a header rule has either a pattern or exists = true")
    if entry.type == "uri" and not ({"pattern", "file", "entries"} & written):
        raise KeyProblem("pattern", "a uri rule needs a pattern, a file or entries (or both)")
    if entry.type == "attachment" and not ({"name", "mime_type"} & written):
        raise KeyProblem("name", "an attachment rule needs name or mime_type (or both)")
    if entry.type == "list" and not ({"file", "entries"} & written):
        raise KeyProblem("file", "a list rule needs a file or entries")
    for name in entry.fields:
        if name != ALL_FIELDS and not _FIELD_NAME.match(name):
            raise KeyProblem("fields", f"{name!r} is not a header field name (or ALL)")
    if ALL_FIELDS in entry.fields and len(entry.fields) > 1:
        raise KeyProblem("fields", "ALL is the whole header section: list it alone")
    return entry


@dataclass(frozen=True)
class RuleEntry:
    """One `[[rule]]` table as written."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    symbol: Symbol
    description: Text
    type: RuleType
    score: FiniteNumber | None = None  # required, except for a part
    part: Flag = False
    pattern: Text | None = None
    fields: Array[Text] = ()
    exists: Flag = False
    negate: Flag = False
    name: Text | None = None
    mime_type: Text | None = None
    file: Text | None = None
    entries: Array[Text] = ()
    match: Array[Identity] = ()
    expression: Text | None = None


@dataclass(frozen=True)
class ContentFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    rule: Array[Annotated[RuleEntry, AfterValidator(_fits_type)]] = ()


@dataclass
class _Loader:
    """Compiles the rules of several files, collecting every problem with file:line."""

    directory: Path
    errors: list[ConfigError]
    read: list[bytes] = field(default_factory=list)  # every byte read, for the policy version
    rules: list[ContentRule] = field(default_factory=list)
    composites: list[Composite] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)  # symbol -> where first written
    lists: dict[Path, EntryList | None] = field(default_factory=dict)

    def shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.directory))
        except ValueError:
            return str(path)

    def load_file(self, path: Path) -> None:
        try:
            doc = TomlFile.load(path)
            self.read.append(path.read_bytes())
        except ConfigError as exc:
            self.errors.append(exc)
            return
        written = validate_table(doc, "", ContentFile, doc.data, self.errors)
        if written is None:
            return
        for index, entry in enumerate(written.rule):
            self.add(doc, f"rule[{index}]", entry)

    def add(self, doc: TomlFile, key: str, entry: RuleEntry) -> None:
        origin = Origin(self.shown(doc.path), doc.line_of(key))

        def fail(sub: str, problem: str) -> None:
            self.errors.append(
                ConfigError(doc.path, f"{key}.{sub}", doc.line_of(f"{key}.{sub}"), problem)
            )

        symbol = entry.symbol
        if symbol in self.seen:
            fail("symbol", f"rule {symbol} is already written at {self.seen[symbol]}")
            return
        self.seen[symbol] = str(origin)

        def regex(sub: str, source: str | None) -> Pattern | None:
            if source is None:
                return None
            try:
                return Pattern(source)
            except re2.error as exc:
                reason = exc.args[0] if exc.args else exc
                if isinstance(reason, bytes):
                    reason = reason.decode("utf-8", "replace")
                fail(
                    sub,
                    f"rule {symbol}: not an RE2 pattern ({reason}); RE2 runs in linear time "
                    "and so has no backreferences or lookaround",
                )
                raise _Refused from None

        try:
            if entry.type == "meta":
                assert entry.expression is not None
                try:
                    expression = parse_expression(entry.expression)
                except ExpressionError as exc:
                    fail("expression", f"rule {symbol}: {exc}")
                    return
                self.composites.append(
                    Composite(
                        symbol,
                        entry.description,
                        entry.score or 0.0,
                        expression,
                        entry.expression.strip(),
                        origin,
                    )
                )
                return
            matcher: Matcher
            if entry.type == "header":
                names = tuple(n if n == ALL_FIELDS else n.lower() for n in entry.fields)
                matcher = HeaderMatch(names, regex("pattern", entry.pattern))
            elif entry.type in ("body", "rawbody", "full"):
                pattern = regex("pattern", entry.pattern)
                assert pattern is not None  # required for these types (_fits_type)
                matcher = TextMatch(entry.type, pattern)
            elif entry.type == "uri":
                listed = self.entry_list(entry, fail)
                matcher = UriMatch(regex("pattern", entry.pattern), listed)
            elif entry.type == "attachment":
                matcher = AttachmentMatch(
                    regex("name", entry.name), regex("mime_type", entry.mime_type)
                )
            else:
                listed = self.entry_list(entry, fail)
                assert listed is not None  # a file or entries is required (_fits_type)
                matcher = ListMatch(listed, tuple(dict.fromkeys(entry.match)))
        except _Refused:
            return
        self.rules.append(
            ContentRule(
                symbol,
                entry.description,
                entry.score or 0.0,
                entry.type,
                origin,
                matcher,
                entry.negate,
                entry.part,
            )
        )

    def entry_list(self, entry: RuleEntry, fail: Any) -> EntryList | None:
        """The rule's list: `entries` inline and the lines of `file` (relative to rules/)."""
        if entry.file is None and not entry.entries:
            return None
        entries = list(entry.entries)
        for number, item in enumerate(entries, start=1):
            if parse_entry(item) is None:
                fail(
                    "entries",
                    f"rule {entry.symbol}: item {number}: {item!r} is not a "
                    "domain, .domain, address or IP network",
                )
                raise _Refused
        if entry.file is None:
            return build_list(entries)
        path = Path(entry.file)
        if not path.is_absolute():
            path = self.directory / path
        lines = self.list_lines(path, entry.symbol, fail)
        return build_list([*entries, *lines])

    def list_lines(self, path: Path, symbol: str, fail: Any) -> list[str]:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_LIST_BYTES + 1)
        except OSError as exc:
            fail("file", f"rule {symbol}: cannot read {path}: {exc.strerror or exc}")
            raise _Refused from None
        if len(data) > MAX_LIST_BYTES:
            fail("file", f"rule {symbol}: {path} is larger than {MAX_LIST_BYTES} bytes")
            raise _Refused
        self.read.append(data)
        found: list[str] = []
        bad = False
        for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            item = raw.split("#", 1)[0].strip()
            if not item:
                continue
            if parse_entry(item) is None:
                self.errors.append(
                    ConfigError(
                        path,
                        None,
                        number,
                        f"{item!r} is not a domain, .domain, address or IP network "
                        f"(list of rule {symbol})",
                    )
                )
                bad = True
                continue
            found.append(item)
        if bad:
            raise _Refused
        return found

    def ordered_composites(self) -> tuple[Composite, ...]:
        """Composites so that one naming another comes after it; a cycle is an error."""
        by_symbol = {c.symbol: c for c in self.composites}
        done: dict[str, Composite] = {}
        visiting: set[str] = set()

        def visit(composite: Composite, trail: tuple[str, ...]) -> bool:
            if composite.symbol in done:
                return True
            if composite.symbol in visiting:
                cycle = " -> ".join((*trail, composite.symbol))
                self.errors.append(
                    ConfigError(
                        composite.origin.path,
                        None,
                        composite.origin.line,
                        f"rule {composite.symbol}: composites refer to each other in a "
                        f"cycle ({cycle})",
                    )
                )
                return False
            visiting.add(composite.symbol)
            for name in sorted(composite.expression.symbols()):
                inner = by_symbol.get(name)
                if inner is not None and not visit(inner, (*trail, composite.symbol)):
                    return False
            visiting.discard(composite.symbol)
            done[composite.symbol] = composite
            return True

        for composite in self.composites:
            if not visit(composite, ()):
                break
        return tuple(done.values())


class _Refused(Exception):
    """A rule with a problem already recorded: it is left out (the load fails anyway)."""


def content_files(directory: Path) -> list[Path]:
    """rules/content.toml (optional) and rules/content.d/*.toml, in that order."""
    found = [directory / CONTENT_FILE] if (directory / CONTENT_FILE).exists() else []
    extra = directory / CONTENT_DIR
    if extra.is_dir():
        found += sorted(extra.glob("*.toml"))
    return found


def load_content_rules(
    directory: Path, errors: list[ConfigError]
) -> tuple[ContentRules, list[bytes]]:
    """The compiled content rules of rules/, and every byte read (for the policy version);
    problems are appended to `errors` (file:line, key and rule symbol)."""
    loader = _Loader(directory, errors)
    for path in content_files(directory):
        loader.load_file(path)
    composites = loader.ordered_composites()
    return ContentRules(tuple(loader.rules), composites), loader.read
