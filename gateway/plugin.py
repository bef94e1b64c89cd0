"""The seam between the gateway and its inspections: phases, the message context, plugins.

A plugin detects and never decides: it returns `Finding`s with the symbols it declared, and the
policy in rules/ turns them into an action. Plugins talk to each other only through typed fields of
`MessageContext`, never by parsing each other's symbols.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from gateway.auth.arc import ArcResult
from gateway.auth.dkim import DkimResult
from gateway.auth.dmarc import DmarcResult
from gateway.auth.spf import SpfResult
from gateway.config import Settings
from gateway.cputime import CpuMeter
from gateway.dns import Resolver
from gateway.message import ParsedMessage
from gateway.policy import RuleSet
from gateway.verdict import Finding


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
    spf: SpfResult | None = None  # set by the spf plugin at MAIL; DMARC reads it
    dkim: DkimResult | None = None  # set by the dkim plugin at DATA; DMARC reads it
    arc: ArcResult | None = None  # set by the arc plugin at DATA; DMARC may use it to override
    dmarc: DmarcResult | None = None  # set by the dmarc plugin at DATA
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
    """Shared, long-lived things a plugin may need: settings, the one DNS resolver."""

    def __init__(self, settings: Settings, resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.resolver = resolver or Resolver.from_settings(settings.dns)


class Plugin(Protocol):
    """One inspection. `symbols` declares every symbol `check` may return, with a description."""

    name: ClassVar[str]
    phases: ClassVar[frozenset[Phase]]
    symbols: ClassVar[Mapping[str, str]]

    def __init__(self, services: Services) -> None: ...

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]: ...


PluginClass = type[Plugin]


def error_symbol(plugin_name: str) -> str:
    return f"{plugin_name.upper()}_ERROR"


def timeout_symbol(plugin_name: str) -> str:
    return f"{plugin_name.upper()}_TIMEOUT"


def declared_symbols(plugin: PluginClass) -> dict[str, str]:
    """A plugin's own symbols plus the two the chain emits for it when it fails."""
    symbols = dict(plugin.symbols)
    symbols[error_symbol(plugin.name)] = f"the {plugin.name} plugin raised an error"
    symbols[timeout_symbol(plugin.name)] = f"the {plugin.name} plugin did not answer in time"
    return symbols


class RegistryError(Exception):
    """A plugin set that cannot run: duplicate names or symbols, or a symbol rules/ lacks."""


class Registry:
    """Every known plugin class by name; refuses duplicates so symbols stay unambiguous."""

    def __init__(self) -> None:
        self._plugins: dict[str, PluginClass] = {}
        self._symbol_owner: dict[str, str] = {}

    def register(self, plugin: PluginClass) -> PluginClass:
        if plugin.name in self._plugins:
            raise RegistryError(f"plugin name {plugin.name!r} registered twice")
        symbols = declared_symbols(plugin)
        for symbol in symbols:
            owner = self._symbol_owner.get(symbol)
            if owner is not None:
                raise RegistryError(
                    f"symbol {symbol} of plugin {plugin.name!r} is already declared by {owner!r}"
                )
        self._plugins[plugin.name] = plugin
        for symbol in symbols:
            self._symbol_owner[symbol] = plugin.name
        return plugin

    def get(self, name: str) -> PluginClass:
        try:
            return self._plugins[name]
        except KeyError:
            known = ", ".join(sorted(self._plugins))
            raise RegistryError(f"unknown plugin {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def all_symbols(self) -> dict[str, str]:
        """Every symbol any registered plugin may emit, with its description."""
        out: dict[str, str] = {}
        for plugin in self._plugins.values():
            out.update(declared_symbols(plugin))
        return out

    def symbols_of(self, names: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in names:
            out.update(declared_symbols(self.get(name)))
        return out

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
        known = self.all_symbols()
        for name in order:
            if name not in self._plugins:
                continue
            for symbol in sorted(declared_symbols(self._plugins[name])):
                if symbol not in rules.scores:
                    problems.append(
                        f"symbol {symbol} (plugin {name!r}) has no score in "
                        f"{rules.source_of('scores')}: add '{symbol} = 0.0' or a real score"
                    )
        for symbol in sorted(set(rules.scores) | set(rules.forced)):
            if symbol not in known:
                problems.append(
                    f"{rules.where(symbol)}: symbol {symbol} is not declared by any plugin"
                )
        return problems
