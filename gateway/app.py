"""The gateway's long-lived state shared by every connection: settings, chain, policy, storage.

Policy is swapped whole on reload (`reload_rules`), so each transaction takes one snapshot of it at
MAIL and keeps it to the end; a broken edit is refused and the running policy stays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

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


@dataclass
class Gateway:
    settings: Settings
    registry: Registry
    chain: Chain
    rules: RuleSet
    store: QuarantineStore
    connections: dict[str, int] = field(default_factory=dict)
    total_connections: int = 0
    shutting_down: bool = False
    # What the plugins share (the DNS resolver): closed at shutdown, read by metrics.
    services: Services | None = None

    @classmethod
    def create(
        cls, settings: Settings, registry: Registry | None = None, resolver: Resolver | None = None
    ) -> Gateway:
        """`resolver`: instead of the one [dns] describes (`mailgate scan --dns-off`)."""
        try:
            registry = registry or plugin_registry()
        except RegistryError as exc:  # a broken or clashing third-party plugin
            raise PolicyError(str(exc)) from exc
        rules = load_checked_rules(settings, registry)
        services = Services(settings, resolver)
        try:
            chain = Chain.build(registry, services)
        except RegistryError as exc:
            raise PolicyError(str(exc)) from exc
        return cls(
            settings=settings,
            registry=registry,
            chain=chain,
            rules=rules,
            store=QuarantineStore(settings.quarantine_dir),
            services=services,
        )

    async def aclose(self) -> None:
        """Release shared services at shutdown: DNS lookups still in flight are cancelled, so
        no task or UDP/TCP socket outlives the server (and no ResourceWarning is raised)."""
        if self.services is not None:
            close = getattr(self.services.resolver, "aclose", None)
            if close is not None:
                await close()

    def reload_rules(self) -> bool:
        """Swap in a fresh policy; on any problem keep the running one and say why."""
        try:
            rules = load_checked_rules(self.settings, self.registry)
        except PolicyError as exc:
            log.error("rules reload refused, keeping policy %s:\n%s", self.rules.version, exc)
            return False
        self.rules = rules
        log.info("rules reloaded: policy %s", rules.version)
        return True
