"""What TLS the client used, as symbols: TLS_NONE, TLS_V1_0 ... TLS_V1_3, TLS_WEAK_CIPHER.

The SMTP front records the negotiated protocol and cipher on `ctx.client.tls` when STARTTLS
completes; this plugin only names it, at MAIL (the last moment a client can start TLS before a
transaction), so scores in rules/ can use it. Requiring TLS is not done here but by
rules/tls.toml, answered by the front at the SMTP phase where the requirement is known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from gateway.plugin import MessageContext, Phase, PluginBase
from gateway.tls import weak_cipher
from gateway.verdict import Action, Finding

# ssl.SSLObject.version() -> symbol; anything older than TLS 1.0 counts as TLS 1.0.
_VERSION_SYMBOLS = {
    "TLSv1": "TLS_V1_0",
    "TLSv1.1": "TLS_V1_1",
    "TLSv1.2": "TLS_V1_2",
    "TLSv1.3": "TLS_V1_3",
    "SSLv3": "TLS_V1_0",
    "SSLv2": "TLS_V1_0",
}


class TlsSymbols(PluginBase):
    name: ClassVar[str] = "tls"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.MAIL})
    symbols: ClassVar[Mapping[str, str]] = {
        "TLS_NONE": "the client did not use STARTTLS: the message crossed the network in clear",
        "TLS_V1_0": "the client used TLS 1.0 (deprecated, RFC 8996)",
        "TLS_V1_1": "the client used TLS 1.1 (deprecated, RFC 8996)",
        "TLS_V1_2": "the client used TLS 1.2",
        "TLS_V1_3": "the client used TLS 1.3",
        "TLS_WEAK_CIPHER": "the negotiated cipher is weak (under 128 bits, or RC4, DES, NULL...)",
    }

    on_error: ClassVar[Action | None] = None  # names what happened: no reason to defer

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        tls = ctx.client.tls
        if tls is None:
            return [Finding("TLS_NONE")]
        found = []
        symbol = _VERSION_SYMBOLS.get(tls.version)
        if symbol is not None:
            found.append(Finding(symbol, detail=tls.version))
        if weak_cipher(tls.cipher, tls.bits):
            found.append(Finding("TLS_WEAK_CIPHER", detail=f"{tls.cipher} ({tls.bits} bits)"))
        return found
