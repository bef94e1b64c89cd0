"""The plugins mailgate knows: every module of this package, and installed third-party ones.

Nothing lists the built-ins: each module of gateway/plugins is scanned for plugin classes (see
`gateway.plugin.looks_like_plugin`), so a new one is one file here. Third-party plugins are
published under the entry-point group `mailgate.plugins` (`name = "package.module:Class"`, the
name being the plugin's own). The registry refuses a second plugin of a name or a symbol
already taken, wherever either came from, so a symbol in rules/ always means one thing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil

from gateway.front_symbols import FRONT_OWNER, FRONT_SYMBOLS
from gateway.plugin import PluginClass, Registry, RegistryError, looks_like_plugin

ENTRY_POINT_GROUP = "mailgate.plugins"


def builtin_plugins() -> list[PluginClass]:
    """The plugin classes defined in the modules of this package, by module name."""
    found: list[PluginClass] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            # only classes defined here: a module importing another's plugin is not a second one
            if looks_like_plugin(value) and value.__module__ == module.__name__:
                found.append(value)
    return found


def installed_plugins() -> list[tuple[PluginClass, str]]:
    """Third-party plugin classes from the `mailgate.plugins` entry points, with their origin."""
    found: list[tuple[PluginClass, str]] = []
    for entry in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
    ):
        dist = entry.dist.name if entry.dist is not None else "?"
        origin = f"entry point {entry.name!r} = {entry.value!r} of distribution {dist!r}"
        try:
            plugin = entry.load()
        except Exception as exc:  # a broken install must be named, not a traceback
            raise RegistryError(f"{origin}: cannot be loaded: {exc!r}") from exc
        if not looks_like_plugin(plugin):
            raise RegistryError(f"{origin}: is not a plugin class (name, phases, symbols, check)")
        if plugin.name != entry.name:
            raise RegistryError(f"{origin}: names a plugin called {plugin.name!r}")
        found.append((plugin, origin))
    return found


def builtin_registry() -> Registry:
    """A fresh registry of every plugin shipped with mailgate."""
    registry = Registry()
    for plugin in builtin_plugins():
        registry.register(plugin)
    registry.declare(FRONT_OWNER, FRONT_SYMBOLS)
    return registry


def plugin_registry() -> Registry:
    """The shipped plugins and every installed third-party one: what the gateway runs from."""
    registry = builtin_registry()
    for plugin, origin in installed_plugins():
        registry.register(plugin, origin)
    return registry
