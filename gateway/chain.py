"""Runs the configured plugins phase by phase, with a time limit each, and records what they found.

The chain fails closed on purpose: a plugin that raises or overruns its time yields
`<NAME>_ERROR` / `<NAME>_TIMEOUT`, and rules/ says what that means (by default the plugin's own
`on_error`). A plugin that returns a symbol it did not declare is treated as an error too, so
policy never meets a symbol it cannot score. So is a plugin whose required result is missing
because its provider failed: it is not run on half the evidence (DMARC without DKIM would
reject a signed message) but yields its `_ERROR` symbol.

After the last DATA plugin, the policy's composite rules (rules/content.toml `meta` rules, e.g.
`A && !B`) are evaluated over every symbol found, so they may name any plugin's symbols.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from gateway.config import PluginSettings
from gateway.content_rules import PartHits
from gateway.cputime import metered
from gateway.plugin import (
    MessageContext,
    Phase,
    Plugin,
    Registry,
    RegistryError,
    Services,
    error_symbol,
    symbols_from_rules,
    timeout_symbol,
)
from gateway.text import printable
from gateway.verdict import Finding

log = logging.getLogger("mailgate.chain")


class Chain:
    """The ordered plugins of one gateway; order is data (config), not code."""

    def __init__(self, plugins: Sequence[Plugin], settings: PluginSettings) -> None:
        self.plugins = tuple(plugins)
        self._timeouts = {p.name: settings.timeout_for(p.name) for p in self.plugins}
        self._by_phase = {
            phase: tuple(p for p in self.plugins if phase in p.phases) for phase in Phase
        }
        self._requires = {p.name: tuple(getattr(p, "requires", ())) for p in self.plugins}

    @classmethod
    def build(cls, registry: Registry, services: Services) -> Chain:
        """The plugins of `plugins.order`, each given its validated `[plugins.NAME]` table.

        Raises ConfigErrors (file:line) for a bad table, RegistryError for an unknown plugin or
        an order that runs a plugin before the provider of a result it requires.
        """
        settings = services.settings.plugins
        for name in settings.order:
            registry.get(name)
        problems = registry.order_problems(settings.order)
        if problems:
            raise RegistryError("\n".join(problems))
        services.tables = registry.validate_tables(services.settings)
        plugins = [registry.get(name)(services) for name in settings.order]
        return cls(plugins, settings)

    async def run(self, phase: Phase, ctx: MessageContext) -> list[Finding]:
        """Run every plugin of `phase` in order; findings are added to ctx and returned."""
        found: list[Finding] = []
        for plugin in self._by_phase[phase]:
            started = time.perf_counter()
            findings = await self._run_one(plugin, phase, ctx)
            elapsed = time.perf_counter() - started
            ctx.timings[plugin.name] = ctx.timings.get(plugin.name, 0.0) + elapsed
            ctx.findings.extend(findings)
            found.extend(findings)
        if phase is Phase.DATA:
            parts = ctx.results.get(PartHits)  # content rules that only feed composites
            composites = ctx.rules.content.composite_findings(ctx.findings, parts)
            ctx.findings.extend(composites)
            found.extend(composites)
        return found

    async def _run_one(self, plugin: Plugin, phase: Phase, ctx: MessageContext) -> list[Finding]:
        missing = [kind.__name__ for kind in self._requires[plugin.name] if kind not in ctx.results]
        if missing:
            log.warning(
                "qid=%s plugin=%s phase=%s not run: no %s (its provider failed)",
                ctx.queue_id,
                plugin.name,
                phase.value,
                ", ".join(missing),
            )
            return [Finding(error_symbol(plugin.name), detail=f"no {', '.join(missing)}")]
        timeout = self._timeouts[plugin.name]
        try:
            # asyncio.timeout, not wait_for: no task per plugin call (half the overhead)
            async with asyncio.timeout(timeout):
                results = await metered(plugin.check(phase, ctx), ctx.meter(plugin.name))
        except TimeoutError:
            log.warning(
                "qid=%s plugin=%s phase=%s timed out after %gs",
                ctx.queue_id,
                plugin.name,
                phase.value,
                timeout,
            )
            return [Finding(timeout_symbol(plugin.name), detail=f"no answer in {timeout:g}s")]
        except Exception as exc:  # a plugin bug must not become an accept or a 500
            log.exception(
                "qid=%s plugin=%s phase=%s raised", ctx.queue_id, plugin.name, phase.value
            )
            return [Finding(error_symbol(plugin.name), detail=printable(type(exc).__name__))]
        checked: list[Finding] = []
        # A plugin bug may also return something that is not a sequence of Findings (None, a
        # bare string): that must become <NAME>_ERROR too, not an exception out of the chain.
        if isinstance(results, str | bytes) or not isinstance(results, Sequence):
            log.error("qid=%s plugin=%s returned %s", ctx.queue_id, plugin.name, type(results))
            return [Finding(error_symbol(plugin.name), detail="malformed result")]
        for finding in results:
            if isinstance(finding, Finding) and (
                finding.symbol in plugin.symbols
                or finding.symbol in symbols_from_rules(plugin, ctx.rules)
            ):
                checked.append(finding)
            else:
                log.error(
                    "qid=%s plugin=%s emitted undeclared symbol %s",
                    ctx.queue_id,
                    plugin.name,
                    printable(str(getattr(finding, "symbol", type(finding).__name__))),
                )
                checked.append(Finding(error_symbol(plugin.name), detail="undeclared symbol"))
        return checked
