"""SIGHUP: read gateway.toml, rules/ and the TLS files again; build everything, then swap at once.

As `postfix reload` and Rspamd's reload do, the running process keeps serving while the new
configuration is read, and only a configuration that loads whole replaces the old one: the file
is validated, the policy loaded and checked, the plugins built (with their tables and the model),
the DNS resolver and the TLS contexts made, all in a worker thread, before anything is swapped.
A broken file is refused as a whole, named in the log, and the running set stays. The swap itself
is a few assignments on the event loop: a transaction in flight ends on the set it began with
(gateway.app.Runtime), the next one takes the new set.

What a running process cannot apply (the listening socket, the worker count, the open quarantine
store...) is not silently ignored: it is logged as needing a restart, and the old value stays in
force, so the running process never claims a setting it does not have.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from gateway import metrics
from gateway.app import Gateway, PolicyError, Runtime
from gateway.config import HostPort, Settings, load_settings
from gateway.tls import ServerTls, delivery_tls, server_context
from gateway.tomlfile import ConfigError, ConfigErrors

log = logging.getLogger("mailgate")

# Settings fields that are not tables of their own, and where the file writes them.
_TOP_LEVEL = {
    "rules_dir": ("paths", "rules"),
    "quarantine_dir": ("paths", "quarantine"),
    "dev_maildir": ("paths", "dev_maildir"),
}
# A field the file spells otherwise.
_SPELLED = {("listen", "host"): "address"}

# What needs a restart, as (Settings field, its field or None for the field itself): read once,
# when the socket is bound, the workers forked, the store opened or the dev sink started.
RESTART_NEEDED = (
    ("listen", "host"),
    ("listen", "port"),
    ("listen", "workers"),
    ("listen", "proxy_protocol"),
    ("metrics", "address"),
    ("quarantine_dir", None),
    ("dev_maildir", None),
    # the log handlers are made once at start (the level alone is applied live)
    ("logging", "format"),
    ("logging", "destination"),
    ("logging", "file"),
    ("logging", "syslog_address"),
    ("logging", "facility"),
)


@dataclass(frozen=True)
class Change:
    """One setting that differs between the running configuration and the file."""

    table: str
    key: str
    old: Any
    new: Any
    restart: bool = False

    @property
    def name(self) -> str:
        return f"[{self.table}] {self.key}"

    def restart_line(self) -> str:
        return (
            f"restart needed: {self.name} changed {shown(self.old)} -> {shown(self.new)}; "
            "running with the old value"
        )


def shown(value: Any) -> str:
    """A setting's value as the admin wrote it, near enough to recognise."""
    if value is None:
        return "(unset)"
    if isinstance(value, HostPort):
        return f"{value.host}:{value.port}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return str(value)


def setting_changes(old: Settings, new: Settings) -> list[Change]:
    """Every setting that differs, table by table, in the order of Settings."""
    changes: list[Change] = []
    restart = {(name, sub) for name, sub in RESTART_NEEDED}
    for item in fields(Settings):
        if item.name == "source":
            continue
        before, after = getattr(old, item.name), getattr(new, item.name)
        if before == after:
            continue
        if item.name in _TOP_LEVEL:
            table, key = _TOP_LEVEL[item.name]
            changes.append(Change(table, key, before, after, (item.name, None) in restart))
            continue
        if not (is_dataclass(before) and is_dataclass(after)):
            changes.append(Change(item.name, "*", before, after))
            continue
        for sub in fields(before):
            a, b = getattr(before, sub.name), getattr(after, sub.name)
            if a == b:
                continue
            if item.name == "plugins" and sub.name == "tables":
                changes += _plugin_tables(a, b)
                continue
            key = _SPELLED.get((item.name, sub.name), sub.name)
            changes.append(Change(item.name, key, a, b, (item.name, sub.name) in restart))
    return changes


def _plugin_tables(
    old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]
) -> list[Change]:
    """[plugins.NAME] tables, one change per table that differs."""
    return [
        Change(f"plugins.{name}", "*", old.get(name), new.get(name))
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]


def with_running_values(new: Settings, running: Settings) -> Settings:
    """`new` with what needs a restart as it runs now: the process must not claim otherwise."""
    kept = new
    for name, sub in RESTART_NEEDED:
        if sub is None:
            kept = replace(kept, **{name: getattr(running, name)})
        else:
            table = replace(getattr(kept, name), **{sub: getattr(getattr(running, name), sub)})
            kept = replace(kept, **{name: table})
    return kept


def summary(source: str, changes: list[Change], old_policy: str, new_policy: str) -> str:
    """The one INFO line of a successful reload: what changed, and the policy now in force."""
    live = [c.name for c in changes if not c.restart]
    what = ", ".join(dict.fromkeys(live)) if live else "no setting changed"
    policy = f"policy {new_policy}"
    if new_policy != old_policy:
        policy += f" (was {old_policy})"
    return f"reloaded {source}: {what}; {policy}"


class ReloadRefused(Exception):
    """The new configuration cannot run; the message names the file, the line and the key."""


@dataclass
class Built:
    """Everything a reload swaps in, made before the swap."""

    runtime: Runtime
    tls: ssl.SSLContext | None
    changes: list[Change]


class Reloader:
    """Reloads one gateway process from the file it was started with (`Settings.source`).

    `adjust` re-applies what the command line changed after loading (`serve --dev` points DNS
    at the demo server), so a reload does not undo it.
    """

    def __init__(
        self,
        gateway: Gateway,
        tls: ServerTls | None = None,
        adjust: Callable[[Settings], Settings] | None = None,
    ) -> None:
        self.gateway = gateway
        self.tls = tls
        self.adjust = adjust
        self.source = gateway.settings.source
        self._lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return str(self.source) if self.source is not None else "(embedded defaults)"

    async def reload(self) -> bool:
        """Build the new set off the loop, swap it in at once; False: refused, nothing changed."""
        async with self._lock:  # SIGHUPs in a row: one reload after another, never two at once
            running = self.gateway.runtime
            try:
                built = await asyncio.to_thread(self._build, running)
            except ReloadRefused as exc:
                log.error(
                    "reload of %s refused, keeping the running configuration and policy %s:\n%s",
                    self.where,
                    running.rules.version,
                    exc,
                )
                metrics.count_reload("refused")
                return False
            self._swap(built)
            for change in built.changes:
                if change.restart:
                    log.warning(change.restart_line())
            log.info(
                summary(
                    self.where, built.changes, running.rules.version, self.gateway.rules.version
                )
            )
            metrics.count_reload("done")
            return True

    def _build(self, running: Runtime) -> Built:
        """In a worker thread: read, validate and build everything, or raise ReloadRefused."""
        try:
            settings = load_settings(self.source)
        except (ConfigError, ConfigErrors) as exc:
            raise ReloadRefused(str(exc)) from None
        if self.adjust is not None:
            settings = self.adjust(settings)
        changes = setting_changes(running.settings, settings)
        settings = with_running_values(settings, running.settings)
        try:
            runtime = Runtime.build(settings, self.gateway.registry, previous=running)
        except (PolicyError, ConfigError, ConfigErrors) as exc:
            raise ReloadRefused(str(exc)) from None
        try:
            context = server_context(settings.tls)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ReloadRefused(
                f"TLS certificate reload refused, keeping the running certificate: "
                f"{settings.tls.cert_file}: {exc} ({type(exc).__name__})"
            ) from None
        try:
            delivery_tls(settings.delivery)  # the CA file is read once, here, not per message
        except (OSError, ValueError) as exc:
            raise ReloadRefused(
                f"[delivery] tls_ca_file unusable: {settings.delivery.tls_ca_file}: {exc}"
            ) from None
        return Built(runtime, context, changes)

    def _swap(self, built: Built) -> None:
        """On the loop, with no await: no connection can see half of it."""
        old = self.gateway.settings
        self.gateway.adopt(built.runtime)
        new = built.runtime.settings
        if self.tls is not None:
            self.tls.install(new.tls, built.tls)
        if new.logging.level != old.logging.level:
            logging.getLogger().setLevel(new.logging.level.upper())
