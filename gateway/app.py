"""The gateway's long-lived state shared by every connection: settings, chain, policy, storage.

What a reload may change (settings, policy, plugin chain, DNS resolver) is one `Runtime`, swapped
whole (`Gateway.adopt`): a connection takes the current one for each transaction (at HELO and
MAIL) and keeps it to the end, so no transaction runs half on the old set and half on the new.
A broken edit is refused before anything is swapped and the running set stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.chain import Chain
from gateway.config import Settings
from gateway.dns import Resolver
from gateway.plugin import Registry, RegistryError, Services
from gateway.plugins import plugin_registry
from gateway.policy import RuleSet, load_rules
from gateway.quarantine import QuarantineStore
from gateway.tomlfile import ConfigError, ConfigErrors

log = logging.getLogger("mailgate")


class PolicyError(Exception):
    """Rules that cannot run with this configuration; the message lists every problem."""


def load_checked_rules(settings: Settings, registry: Registry) -> RuleSet:
    """Load rules/ and check them against the configured plugins; raise PolicyError if unfit."""
    try:
        rules = load_rules(settings.rules_dir)
    except (ConfigError, ConfigErrors) as exc:
        raise PolicyError(str(exc)) from exc
    # <NAME>_ERROR / <NAME>_TIMEOUT: score 0 and the plugin's on_error unless rules/ say otherwise
    rules = rules.with_defaults(*registry.policy_defaults(settings.plugins.order))
    problems = registry.check_policy(settings.plugins.order, rules)
    for name in settings.plugins.timeouts:
        if name not in settings.plugins.order:
            problems.append(f"plugins.timeouts names {name!r}, which is not in plugins.order")
    if rules.tls.requires_anything and settings.tls.cert_file is None:
        problems.append(
            f"{rules.source_of('tls')}: requires TLS of some clients, but [tls] has no "
            "cert_file and key_file: STARTTLS is not offered, so they could never comply"
        )
    if problems:
        raise PolicyError("\n".join(problems))
    return rules


@dataclass(eq=False)
class Runtime:
    """One generation of everything a reload may change, built whole before it is used.

    `users` counts the connections holding it: a replaced generation's own resources (a
    resolver the new one does not share) are closed once the last of them lets go.
    """

    settings: Settings
    rules: RuleSet
    chain: Chain
    services: Services | None
    users: int = 0

    @classmethod
    def build(
        cls,
        settings: Settings,
        registry: Registry,
        resolver: Resolver | None = None,
        previous: Runtime | None = None,
    ) -> Runtime:
        """Rules, resolver and plugins for `settings`; PolicyError or ConfigErrors if unfit.

        Blocking (files, the model): a reload runs it in a thread. The previous generation's
        resolver (and its cache) is kept when [dns] did not change.
        """
        rules = load_checked_rules(settings, registry)
        kept = previous.resolver if previous is not None else None
        if resolver is None and previous is not None and previous.settings.dns == settings.dns:
            resolver = kept
        services = Services(settings, resolver)
        try:
            chain = Chain.build(registry, services)
        except RegistryError as exc:
            raise PolicyError(str(exc)) from exc
        return cls(settings, rules, chain, services)

    @property
    def resolver(self) -> Resolver | None:
        return self.services.resolver if self.services is not None else None


@dataclass
class Gateway:
    runtime: Runtime
    registry: Registry
    store: QuarantineStore
    connections: dict[str, int] = field(default_factory=dict)
    total_connections: int = 0
    shutting_down: bool = False
    # replaced generations still held by a connection (their resources are closed after)
    _retired: list[Runtime] = field(default_factory=list)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def create(
        cls, settings: Settings, registry: Registry | None = None, resolver: Resolver | None = None
    ) -> Gateway:
        """`resolver`: instead of the one [dns] describes (`mailgate scan --dns-off`)."""
        try:
            registry = registry or plugin_registry()
        except RegistryError as exc:  # a broken or clashing third-party plugin
            raise PolicyError(str(exc)) from exc
        runtime = Runtime.build(settings, registry, resolver)
        return cls(
            runtime=runtime, registry=registry, store=QuarantineStore(settings.quarantine_dir)
        )

    # The current generation's parts, for whoever serves no transaction (CLI, metrics, start).
    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def rules(self) -> RuleSet:
        return self.runtime.rules

    @property
    def chain(self) -> Chain:
        return self.runtime.chain

    @property
    def services(self) -> Services | None:
        """What the plugins share (the DNS resolver): closed at shutdown, read by metrics."""
        return self.runtime.services

    @services.setter
    def services(self, services: Services | None) -> None:
        self.runtime.services = services

    # -- generations ---------------------------------------------------------------------------

    def acquire(self) -> Runtime:
        """The current generation, counted as used until `release`."""
        self.runtime.users += 1
        return self.runtime

    def release(self, runtime: Runtime) -> None:
        runtime.users -= 1
        if runtime.users <= 0 and runtime in self._retired:
            self._retired.remove(runtime)
            self._close_unshared(runtime)

    def adopt(self, runtime: Runtime) -> None:
        """Swap in a generation built whole; connections take it at their next HELO or MAIL."""
        old, self.runtime = self.runtime, runtime
        if old.users > 0:
            self._retired.append(old)
        else:
            self._close_unshared(old)

    def _close_unshared(self, runtime: Runtime) -> None:
        """Close the resolver of a generation no one uses, unless a live one shares it."""
        resolver = runtime.resolver
        live = [self.runtime, *self._retired]
        if resolver is None or any(r.resolver is resolver for r in live):
            return
        close = getattr(resolver, "aclose", None)
        if close is not None:
            self.close_later(close())

    def close_later(self, closing: Coroutine[Any, Any, None]) -> None:
        """Run a cleanup (an old resolver, an old delivery connection) without waiting for it."""
        try:
            task = asyncio.get_running_loop().create_task(closing)
        except RuntimeError:  # no loop (a CLI command): nothing can be in flight
            closing.close()
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Release shared services at shutdown: DNS lookups still in flight are cancelled, so
        no task or UDP/TCP socket outlives the server (and no ResourceWarning is raised)."""
        for runtime in [self.runtime, *self._retired]:
            close = getattr(runtime.resolver, "aclose", None)
            if close is not None:
                await close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def reload_rules(self) -> bool:
        """Swap in a fresh policy; on any problem keep the running one and say why."""
        try:
            rules = load_checked_rules(self.settings, self.registry)
        except PolicyError as exc:
            log.error("rules reload refused, keeping policy %s:\n%s", self.rules.version, exc)
            return False
        self.adopt(replace(self.runtime, rules=rules, users=0))
        log.info("rules reloaded: policy %s", rules.version)
        return True
