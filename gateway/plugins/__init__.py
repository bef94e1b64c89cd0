"""Built-in plugins and the registry that knows them by name."""

from __future__ import annotations

from gateway.front_symbols import FRONT_OWNER, FRONT_SYMBOLS
from gateway.plugin import PluginClass, Registry
from gateway.plugins.arc import ArcCheck
from gateway.plugins.attachments import AttachmentInspection
from gateway.plugins.clamav import ClamavScan
from gateway.plugins.classifier import SpamClassifier
from gateway.plugins.dkim import DkimCheck
from gateway.plugins.dmarc import DmarcCheck
from gateway.plugins.header_sanity import HeaderSanity
from gateway.plugins.lists import AllowBlockLists
from gateway.plugins.message_limits import MessageLimits
from gateway.plugins.mime import MimeStructure
from gateway.plugins.spf import SpfCheck
from gateway.plugins.tls import TlsSymbols


def builtin_registry() -> Registry:
    """A fresh registry of every plugin shipped with mailgate."""
    registry = Registry()
    builtins: tuple[PluginClass, ...] = (
        AllowBlockLists,
        ArcCheck,
        AttachmentInspection,
        ClamavScan,
        SpamClassifier,
        DkimCheck,
        DmarcCheck,
        HeaderSanity,
        MessageLimits,
        MimeStructure,
        SpfCheck,
        TlsSymbols,
    )
    for plugin in builtins:
        registry.register(plugin)
    registry.declare(FRONT_OWNER, FRONT_SYMBOLS)
    return registry
