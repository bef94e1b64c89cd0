"""rules/auth.toml: sender-authentication policy that is not a score or a forced action.

Three tables: `[dmarc] known_senders`, the well-known senders whose aligned DKIM pass earns the
only authentication credit (DMARC_KNOWN_SENDER); `[arc] trusted_sealers`, the ARC sealers (RFC
8617) whose valid chain may override a DMARC failure caused by forwarding (mailing lists,
forwarding services); `[spf] distrust_includes`, shared sending services whose SPF pass gives no
DMARC credit (see `AuthPolicy.distrusted_include`). Validated like the rest of rules/: every
problem names the file, the key and the line.

What a DMARC result *does* (reject, quarantine, nothing) is not here: it is the forced actions and
scores of the DMARC_* symbols in actions.toml and scores.toml, where admins soften it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import ConfigDict

from gateway.domains import domain_matches
from gateway.schema import TABLE_CONFIG, Array, DnsName, HostName, validate_table
from gateway.tomlfile import ConfigError, TomlFile


@dataclass(frozen=True)
class AuthPolicy:
    """`trusted_sealers`: "lists.example.org" (that domain) or ".example.org" (every domain
    below example.org, not example.org itself: gateway.domains), lower case, no final dot."""

    trusted_sealers: tuple[str, ...] = ()
    distrust_includes: tuple[str, ...] = ()
    known_senders: tuple[str, ...] = ()

    def trusts_sealer(self, domain: str) -> bool:
        return domain_matches(domain, self.trusted_sealers)

    def known_sender(self, domain: str) -> bool:
        """A From domain whose aligned DKIM pass earns DMARC_KNOWN_SENDER (`[dmarc]`)."""
        return domain_matches(domain.lower().rstrip("."), self.known_senders)

    def distrusted_include(self, mechanism: str) -> str:
        """The include's domain when an SPF pass came through a distrusted include, else "".

        The forwarder attack (Shen et al., "Weak Links in Authentication Chains", USENIX
        Security 2021): bank.example's SPF record says "include:_spf.shared.example" because the
        bank sends through a shared hosting, relay or forwarding service; any other customer of
        that service can send "MAIL FROM:<x@bank.example>" with "From: x@bank.example" from the
        service's IPs, SPF passes and aligns, and DMARC passes. A receiving gateway cannot tell
        that customer from the bank: the SPF pass is genuine by the bank's own record. All it
        can do is give such a pass no weight: strict alignment, and DKIM first (the shared
        service cannot sign as bank.example without the bank's key). `mechanism` is the
        top-level mechanism that matched (pyspf reports "include:<domain>" for a pass via an
        include, whatever nesting lies below it), so entries name the domains bank records
        include, e.g. "_spf.shared.example" (that domain) or ".shared.example" (any below it).
        """
        term = mechanism.strip().lower().lstrip("+")
        if not term.startswith("include:"):
            return ""
        domain = term.removeprefix("include:")
        return domain if domain_matches(domain, self.distrust_includes) else ""


@dataclass(frozen=True)
class ArcTable:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    trusted_sealers: Array[HostName] = ()


@dataclass(frozen=True)
class SpfTable:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    distrust_includes: Array[DnsName] = ()


@dataclass(frozen=True)
class DmarcTable:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    known_senders: Array[HostName] = ()


@dataclass(frozen=True)
class AuthFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    arc: ArcTable = field(default_factory=ArcTable)
    spf: SpfTable = field(default_factory=SpfTable)
    dmarc: DmarcTable = field(default_factory=DmarcTable)


def load_auth_policy(doc: TomlFile, errors: list[ConfigError]) -> AuthPolicy:
    """rules/auth.toml as an AuthPolicy; its problems are appended to `errors`."""
    written = validate_table(doc, "", AuthFile, doc.data, errors) or AuthFile()
    return AuthPolicy(
        trusted_sealers=written.arc.trusted_sealers,
        distrust_includes=written.spf.distrust_includes,
        known_senders=written.dmarc.known_senders,
    )
