"""The seam between the gateway and its inspections: phases, the message context, plugins.

A plugin detects and never decides: it returns `Finding`s with the symbols it declared, and the
policy in rules/ turns them into an action. Plugins talk to each other only through typed results
(`ctx.results`, one per result class), never by parsing each other's symbols: a plugin declares the
result types it `provides` and `requires`, and the registry checks `plugins.order` against them.

Everything else a plugin needs to say about itself is declared on its class too, so a new plugin
is one module (plus its scores in rules/scores.d/NAME.toml and its corpus file): its own
`[plugins.NAME]` table (`config`, a `gateway.schema.Table` model), and what its failure means
(`on_error`: the default forced action of `<NAME>_ERROR` / `<NAME>_TIMEOUT`, which rules/ may
still override).
"""

from __future__ import annotations

import enum
import logging
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from gateway.config import Settings
from gateway.cputime import CpuMeter
from gateway.dns import Resolver
from gateway.message import ParsedMessage
from gateway.policy import RuleSet
from gateway.schema import Table, validate_table
from gateway.tomlfile import ConfigError, ConfigErrors, TomlFile
from gateway.verdict import Action, Finding, ForcedAction

log = logging.getLogger("mailgate.plugins")

R = TypeVar("R")
M = TypeVar("M", bound=Table)


class Phase(enum.Enum):
    """The SMTP moment a check runs at; early phases know less but can refuse sooner."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What was negotiated on the client connection, for trace headers and TLS policy."""

    version: str
    cipher: str
    bits: int


@dataclass(slots=True)
class ClientInfo:
    """Who is talking to us: the real client (after PROXY protocol), its HELO and TLS state."""

    ip: str
    port: int
    helo: str | None = None
    tls: TlsInfo | None = None
    esmtp: bool = False
    proxied_by: str | None = None


class Results:
    """What plugins hand each other, one result per type (SpfResult, DkimResult...).

    Keyed by the result's class, so a consumer asks for the type it understands and gets it
    typed, and two plugins can never quietly share a field of the context by name.
    """

    __slots__ = ("_by_type",)

    def __init__(self) -> None:
        self._by_type: dict[type[Any], object] = {}

    def put(self, result: object) -> None:
        """Record `result` under its own class (a second put of the same type replaces it)."""
        self._by_type[type(result)] = result

    def get(self, kind: type[R]) -> R | None:
        found = self._by_type.get(kind)
        return found if isinstance(found, kind) else None

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_type

    def types(self) -> frozenset[type[Any]]:
        return frozenset(self._by_type)


def new_queue_id() -> str:
    """A short random id that names one transaction in replies, headers, logs and quarantine."""
    return secrets.token_hex(6).upper()


@dataclass
class MessageContext:
    """Everything known about one transaction, growing phase by phase.

    `findings` accumulates across phases (CONNECT and HELO findings are copied into every
    transaction of the connection) so the verdict at end of DATA sees every reason.
    """

    client: ClientInfo
    rules: RuleSet
    settings: Settings
    queue_id: str = field(default_factory=new_queue_id)
    mail_from: str | None = None
    mail_options: list[str] = field(default_factory=list)
    rcpt_tos: list[str] = field(default_factory=list)
    raw: bytes = b""
    findings: list[Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, CpuMeter] = field(default_factory=dict)  # CPU per plugin / stage (cputime)
    # typed results of the plugins (SpfResult at MAIL; DkimResult, ArcResult, DmarcResult at
    # DATA): what each provides, the ones after it read, and the trace fields report
    results: Results = field(default_factory=Results)
    _message: ParsedMessage | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def message(self) -> ParsedMessage:
        """The one parse of `raw` (gateway.message) that every plugin, the log line, the
        quarantine record and the classifier read; made again only when `raw` is replaced
        (line endings normalised, forged fields stripped), so it always reads the final bytes."""
        found = self._message
        if found is None or found.raw is not self.raw:
            found = self._message = ParsedMessage(self.raw, self.settings.mime)
        return found

    def meter(self, stage: str) -> CpuMeter:
        """The CPU meter of one plugin or stage ("relay", "quarantine") of this message."""
        found = self.cpu.get(stage)
        if found is None:
            found = self.cpu[stage] = CpuMeter()
        return found


class Services:
    """Shared, long-lived things a plugin may need: settings, the one DNS resolver, and each
    plugin's validated `[plugins.NAME]` table (filled by `Chain.build` before plugins are made)."""

    def __init__(self, settings: Settings, resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.resolver = resolver or Resolver.from_settings(settings.dns)
        self.tables: dict[str, Table] = {}

    def config_for(self, plugin_name: str, model: type[M]) -> M | None:
        """The plugin's validated table, or None when config/gateway.toml has none for it."""
        found = self.tables.get(plugin_name)
        return found if isinstance(found, model) else None


class Plugin(Protocol):
    """One inspection, and everything the gateway must know about it, declared on the class.

    - `symbols`: every symbol `check` may return, with a description (each needs a score in
      rules/, except `<NAME>_ERROR` / `<NAME>_TIMEOUT`, which the registry scores 0 by default);
    - `config`: the model of its own `[plugins.NAME]` table, or None when it takes no settings;
    - `provides` / `requires`: result types it puts in `ctx.results` / needs there from a plugin
      that runs before it; `optional_requires`: read when present (a provider must then run
      before it, or the reading would be silently missed);
    - `on_error`: the forced action of its `_ERROR` / `_TIMEOUT` symbols (None: no effect, for
      advisory plugins); rules/actions.toml may override it;
    - optionally `rule_symbols(rules)`, a classmethod: symbols it emits for rules an admin wrote
      in rules/ (the content plugin's), with their descriptions, declared by that RuleSet (see
      `symbols_from_rules`).

    `PluginBase` gives the defaults; a class that does not inherit it is read the same way.
    """

    name: ClassVar[str]
    phases: ClassVar[frozenset[Phase]]
    symbols: ClassVar[Mapping[str, str]]
    config: ClassVar[type[Table] | None]
    provides: ClassVar[frozenset[type[Any]]]
    requires: ClassVar[frozenset[type[Any]]]
    optional_requires: ClassVar[frozenset[type[Any]]]
    on_error: ClassVar[Action | None]

    def __init__(self, services: Services) -> None: ...

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]: ...


class PluginBase:
    """Defaults of every declaration but name, phases, symbols and check: no settings, no
    results, and a failure that defers the message (fail closed)."""

    name: ClassVar[str]
    phases: ClassVar[frozenset[Phase]]
    symbols: ClassVar[Mapping[str, str]]
    config: ClassVar[type[Table] | None] = None
    provides: ClassVar[frozenset[type[Any]]] = frozenset()
    requires: ClassVar[frozenset[type[Any]]] = frozenset()
    optional_requires: ClassVar[frozenset[type[Any]]] = frozenset()
    on_error: ClassVar[Action | None] = Action.TEMPFAIL
    # older top-level tables this plugin's `[plugins.NAME]` table replaces: still read by
    # config.py for existing configs, with a warning naming the new place
    replaces_tables: ClassVar[tuple[str, ...]] = ()

    def __init__(self, services: Services) -> None:
        self.services = services


PluginClass = type[Plugin]

_PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def error_symbol(plugin_name: str) -> str:
    return f"{plugin_name.upper()}_ERROR"


def timeout_symbol(plugin_name: str) -> str:
    return f"{plugin_name.upper()}_TIMEOUT"


def failure_symbols(plugin_name: str) -> tuple[str, str]:
    """The two symbols the chain emits for a plugin that raises or overruns its time."""
    return error_symbol(plugin_name), timeout_symbol(plugin_name)


def declared_symbols(plugin: PluginClass) -> dict[str, str]:
    """A plugin's own symbols plus the two the chain emits for it when it fails."""
    symbols = dict(plugin.symbols)
    symbols[error_symbol(plugin.name)] = f"the {plugin.name} plugin raised an error"
    symbols[timeout_symbol(plugin.name)] = f"the {plugin.name} plugin did not answer in time"
    return symbols


def symbols_from_rules(plugin: object, rules: RuleSet) -> Mapping[str, str]:
    """The symbols a plugin (class or instance) takes from `rules`: those of admin-written
    rules, which change with each reload, so they cannot be class constants ({} for most)."""
    reader = getattr(plugin, "rule_symbols", None)
    if reader is None:
        return {}
    found: Mapping[str, str] = reader(rules)
    return found


def looks_like_plugin(candidate: object) -> bool:
    """A class with the shape of `Plugin` (how package scanning tells plugins from helpers)."""
    return (
        isinstance(candidate, type)
        and isinstance(getattr(candidate, "name", None), str)
        and isinstance(getattr(candidate, "phases", None), frozenset)
        and isinstance(getattr(candidate, "symbols", None), Mapping)
        and callable(getattr(candidate, "check", None))
    )


@dataclass(frozen=True)
class Declaration:
    """What a plugin class declares, with `PluginBase`'s defaults for what it leaves out."""

    name: str
    phases: frozenset[Phase]
    config: type[Table] | None
    provides: frozenset[type[Any]]
    requires: frozenset[type[Any]]
    optional_requires: frozenset[type[Any]]
    on_error: Action | None
    replaces_tables: tuple[str, ...]

    @classmethod
    def of(cls, plugin: PluginClass) -> Declaration:
        return cls(
            name=plugin.name,
            phases=plugin.phases,
            config=getattr(plugin, "config", None),
            provides=frozenset(getattr(plugin, "provides", ())),
            requires=frozenset(getattr(plugin, "requires", ())),
            optional_requires=frozenset(getattr(plugin, "optional_requires", ())),
            on_error=getattr(plugin, "on_error", Action.TEMPFAIL),
            replaces_tables=tuple(getattr(plugin, "replaces_tables", ())),
        )

    def problems(self) -> list[str]:
        """Declarations the registry cannot honour (checked once, when the class registers)."""
        where = f"plugin {self.name!r}"
        found: list[str] = []
        if not _PLUGIN_NAME.match(self.name):
            found.append(f"{where}: a name is lower-case letters, digits and _ (<= 32)")
        if not self.phases or not all(isinstance(p, Phase) for p in self.phases):
            found.append(f"{where}: phases must be a non-empty set of gateway.plugin.Phase")
        if self.config is not None and not (
            isinstance(self.config, type) and issubclass(self.config, Table)
        ):
            found.append(f"{where}: config must be a gateway.schema.Table model (or None)")
        for label in ("provides", "requires", "optional_requires"):
            if not all(isinstance(t, type) for t in getattr(self, label)):
                found.append(f"{where}: {label} must be a set of result classes")
        if self.on_error is not None and not isinstance(self.on_error, Action):
            found.append(f"{where}: on_error must be a gateway.verdict.Action or None")
        elif self.on_error is Action.RELAY:
            # a forced relay outranks every score: a failing plugin would wave mail through
            found.append(
                f"{where}: on_error 'relay' would let a failure override the score; "
                "use None for an advisory plugin"
            )
        return found


def _type_name(kind: type[Any]) -> str:
    return kind.__name__


def _runs_before(provider: Declaration, provider_at: int, phase: Phase, consumer_at: int) -> bool:
    """Whether `provider` (at index `provider_at` of the order) has run by the time the consumer
    (at `consumer_at`) runs at `phase`: in an earlier phase, or earlier in the same phase."""
    phases = list(Phase)
    return any(
        phases.index(p) < phases.index(phase) or (p is phase and provider_at < consumer_at)
        for p in provider.phases
    )


class RegistryError(Exception):
    """A plugin set that cannot run: duplicate names or symbols, or a symbol rules/ lacks."""


class Registry:
    """Every known plugin class by name; refuses duplicates so symbols stay unambiguous."""

    def __init__(self) -> None:
        self._plugins: dict[str, PluginClass] = {}
        self._declarations: dict[str, Declaration] = {}
        self._symbol_owner: dict[str, str] = {}
        self._own_symbols: dict[str, str] = {}  # found by the gateway itself (declare)
        self._origin: dict[str, str] = {}

    def register(self, plugin: PluginClass, origin: str = "") -> PluginClass:
        """Add a plugin class; `origin` (its module or distribution) goes into the errors."""
        origin = origin or f"{plugin.__module__}.{plugin.__qualname__}"
        if plugin.name in self._plugins:
            raise RegistryError(
                f"plugin name {plugin.name!r} registered twice "
                f"({self._origin[plugin.name]} and {origin})"
            )
        declaration = Declaration.of(plugin)
        problems = declaration.problems()
        if problems:
            raise RegistryError(f"{origin}: " + "; ".join(problems))
        symbols = declared_symbols(plugin)
        for symbol in symbols:
            owner = self._symbol_owner.get(symbol)
            if owner is not None:
                raise RegistryError(
                    f"symbol {symbol} of plugin {plugin.name!r} is already declared by {owner!r}"
                )
        self._plugins[plugin.name] = plugin
        self._declarations[plugin.name] = declaration
        self._origin[plugin.name] = origin
        for symbol in symbols:
            self._symbol_owner[symbol] = plugin.name
        return plugin

    def declare(self, owner: str, symbols: Mapping[str, str]) -> None:
        """Symbols the gateway finds itself (the SMTP front's): always active, so always scored."""
        for symbol in symbols:
            found = self._symbol_owner.get(symbol)
            if found is not None:
                raise RegistryError(
                    f"symbol {symbol} of {owner!r} is already declared by {found!r}"
                )
        for symbol in symbols:
            self._symbol_owner[symbol] = owner
        self._own_symbols.update(symbols)

    def get(self, name: str) -> PluginClass:
        try:
            return self._plugins[name]
        except KeyError:
            known = ", ".join(sorted(self._plugins))
            raise RegistryError(f"unknown plugin {name!r} (known: {known})") from None

    def declaration(self, name: str) -> Declaration:
        self.get(name)
        return self._declarations[name]

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def all_symbols(self, rules: RuleSet | None = None) -> dict[str, str]:
        """Every symbol any registered plugin may emit, with its description; given `rules`,
        those its admin rules declare too (content rules, composites)."""
        out = dict(self._own_symbols)
        for plugin in self._plugins.values():
            out.update(declared_symbols(plugin))
        if rules is not None:
            for plugin in self._plugins.values():
                out.update(symbols_from_rules(plugin, rules))
            out.update(rules.content.composite_symbols)
            out.update(rules.content.part_symbols)  # never findings, but composites name them
        return out

    def _rule_symbol_problems(self, rules: RuleSet) -> list[str]:
        """Symbols of admin rules that clash with a plugin's, and composites naming a symbol
        nothing declares (a typo there would make `A && !B` quietly always or never hold)."""
        problems: list[str] = []
        written: dict[str, str] = {}
        for name, plugin in self._plugins.items():
            for symbol in symbols_from_rules(plugin, rules):
                written[symbol] = name
        for symbol in (*rules.content.composite_symbols, *rules.content.part_symbols):
            written[symbol] = "content rules"
        for symbol in sorted(written):
            owner = self._symbol_owner.get(symbol)
            if owner is not None:
                problems.append(
                    f"{rules.where(symbol)}: rule {symbol}: the symbol is already declared by "
                    f"{owner!r}: name the rule differently"
                )
        known = self.all_symbols(rules)
        for composite in rules.content.composites:
            for symbol in sorted(composite.expression.symbols() - set(known)):
                problems.append(
                    f"{rules.where(composite.symbol)}: rule {composite.symbol}: {symbol} is not "
                    "declared by any plugin or rule"
                )
        return problems

    def symbols_of(self, names: Sequence[str], rules: RuleSet | None = None) -> dict[str, str]:
        """The symbols these plugins may emit; given `rules`, with those of its admin rules
        (content rules of these plugins, and the composites, which the chain evaluates)."""
        out: dict[str, str] = {}
        for name in names:
            out.update(declared_symbols(self.get(name)))
            if rules is not None:
                out.update(symbols_from_rules(self.get(name), rules))
        if rules is not None:
            out.update(rules.content.composite_symbols)
        return out

    def policy_defaults(
        self, order: Iterable[str]
    ) -> tuple[dict[str, float], dict[str, ForcedAction]]:
        """Scores and forced actions of `<NAME>_ERROR` / `<NAME>_TIMEOUT` for the plugins of
        `order`: score 0, forced to the plugin's `on_error` (rules/ entries win over these)."""
        scores: dict[str, float] = {}
        forced: dict[str, ForcedAction] = {}
        for name in order:
            declaration = self._declarations.get(name)
            if declaration is None:
                continue
            for symbol in failure_symbols(name):
                scores[symbol] = 0.0
                if declaration.on_error is not None:
                    forced[symbol] = ForcedAction(declaration.on_error)
        return scores, forced

    def order_problems(self, order: Sequence[str]) -> list[str]:
        """Plugins of `order` whose required results no earlier plugin provides.

        Order is per phase (the chain runs CONNECT plugins, then HELO...), so a MAIL-phase
        provider listed after a DATA-phase consumer still runs first.
        """
        problems: list[str] = []
        known = [(i, self._declarations[n]) for i, n in enumerate(order) if n in self._plugins]
        for at, consumer in known:
            needs = [(t, True) for t in consumer.requires]
            needs += [(t, False) for t in consumer.optional_requires - consumer.requires]
            for kind, required in sorted(needs, key=lambda item: _type_name(item[0])):
                providers = [(i, d) for i, d in known if kind in d.provides and d is not consumer]
                if not providers:
                    if required:
                        offer = [n for n, d in self._declarations.items() if kind in d.provides]
                        hint = f" (add {' or '.join(map(repr, offer))})" if offer else ""
                        problems.append(
                            f"plugins.order: plugin {consumer.name!r} requires "
                            f"{_type_name(kind)}, which no plugin in the order provides{hint}"
                        )
                    continue
                for phase in sorted(consumer.phases, key=list(Phase).index):
                    if not any(_runs_before(d, i, phase, at) for i, d in providers):
                        late = ", ".join(repr(d.name) for _i, d in providers)
                        problems.append(
                            f"plugins.order: plugin {consumer.name!r} "
                            f"{'requires' if required else 'reads'} {_type_name(kind)} at "
                            f"{phase.value.upper()}, but its provider {late} runs after it: "
                            f"put {late} before {consumer.name!r}"
                        )
        return problems

    def check_policy(self, order: Sequence[str], rules: RuleSet) -> list[str]:
        """Problems that stop the gateway from running this plugin order under these rules."""
        problems: list[str] = []
        seen: set[str] = set()
        for name in order:
            if name in seen:
                problems.append(f"plugin {name!r} appears twice in plugins.order")
            seen.add(name)
            try:
                self.get(name)
            except RegistryError as exc:
                problems.append(str(exc))
        problems += self.order_problems(order)
        problems += self._rule_symbol_problems(rules)
        known = self.all_symbols(rules)
        for name in order:
            if name not in self._plugins:
                continue
            defaulted = set(failure_symbols(name))
            for symbol in sorted(declared_symbols(self._plugins[name])):
                if symbol not in rules.scores and symbol not in defaulted:
                    problems.append(
                        f"symbol {symbol} (plugin {name!r}) has no score in "
                        f"{rules.source_of('scores')} or scores.d/{name}.toml: "
                        f"add '{symbol} = 0.0' or a real score"
                    )
        for symbol in sorted(self._own_symbols):
            if symbol not in rules.scores:
                problems.append(
                    f"symbol {symbol} ({self._symbol_owner[symbol]}) has no score in "
                    f"{rules.source_of('scores')}: add '{symbol} = 0.0' or a real score"
                )
        for symbol in sorted(set(rules.scores) | set(rules.forced)):
            if symbol not in known:
                problems.append(
                    f"{rules.where(symbol)}: symbol {symbol} is not declared by any plugin"
                )
        return problems

    def validate_tables(self, settings: Settings) -> dict[str, Table]:
        """Each `[plugins.NAME]` table of `settings` checked against its plugin's `config`.

        Raises ConfigErrors naming file:line and key (the TOML file is read again from
        `settings.source` for the line numbers). A table for an unknown plugin, or for one
        that takes no settings, is an error; one for a plugin not in `plugins.order` is only a
        warning, so an operator can keep the settings of a plugin switched off for a while.
        """
        raw_tables: Mapping[str, Mapping[str, Any]] = settings.plugins.tables
        order = settings.plugins.order
        doc = _source_document(settings)
        base = settings.source.parent if settings.source is not None else Path.cwd()
        errors: list[ConfigError] = []
        validated: dict[str, Table] = {}
        for name, data in raw_tables.items():
            dotted = f"plugins.{name}"
            if name not in self._plugins:
                known = ", ".join(sorted(self._plugins))
                errors.append(doc.error(dotted, f"no plugin is named {name!r} (known: {known})"))
                continue
            model = self._declarations[name].config
            if model is None:
                errors.append(doc.error(dotted, f"the {name} plugin takes no settings"))
                continue
            if name not in order:
                where = doc.error(dotted, "")
                log.warning(
                    "%s: [%s] is set, but %r is not in plugins.order: ignored",
                    where.path if where.line is None else f"{where.path}:{where.line}",
                    dotted,
                    name,
                )
            table = validate_table(doc, dotted, model, dict(data), errors, {"base": base})
            if table is not None:
                validated[name] = table
        for name in order:
            declaration = self._declarations.get(name)
            if declaration is None:
                continue
            for old in declaration.replaces_tables:
                if old in doc.data:
                    found = doc.error(old, "")
                    place = found.path if found.line is None else f"{found.path}:{found.line}"
                    which = "ignored: " if name in raw_tables else ""
                    log.warning(
                        "%s: [%s] is deprecated, %smove its settings to [plugins.%s]",
                        place,
                        old,
                        which,
                        name,
                    )
        if errors:
            raise ConfigErrors(errors)
        return validated


def _source_document(settings: Settings) -> TomlFile:
    """config/gateway.toml as parsed for positions; settings built in code have no file."""
    if settings.source is not None:
        try:
            return TomlFile.load(settings.source)
        except ConfigError:
            pass  # already loaded once by load_settings: changed since, so no line numbers
    path = settings.source or Path("<settings>")
    return TomlFile(path, {}, {})
