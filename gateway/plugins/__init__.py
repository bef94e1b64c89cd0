"""Built-in plugins and the registry that knows them by name."""

from __future__ import annotations

from gateway.plugin import PluginClass, Registry
from gateway.plugins.headers import HeaderSanity
from gateway.plugins.limits import MessageLimits
from gateway.plugins.lists import AllowBlockLists


def builtin_registry() -> Registry:
    """A fresh registry of every plugin shipped with mailgate."""
    registry = Registry()
    builtins: tuple[PluginClass, ...] = (AllowBlockLists, HeaderSanity, MessageLimits)
    for plugin in builtins:
        registry.register(plugin)
    return registry
