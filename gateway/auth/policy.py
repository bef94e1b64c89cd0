"""rules/auth.toml: sender-authentication policy that is not a score or a forced action.

Two tables: `[arc] trusted_sealers`, the ARC sealers (RFC 8617) whose valid chain may override a
DMARC failure caused by forwarding (mailing lists, forwarding services); `[spf]
distrust_includes`, shared sending services whose SPF pass gives no DMARC credit (see
`AuthPolicy.distrusted_include`). Validated like the rest of rules/: every problem names the file,
the key and the line.

What a DMARC result *does* (reject, quarantine, nothing) is not here: it is the forced actions and
scores of the DMARC_* symbols in actions.toml and scores.toml, where admins soften it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.domains import domain_matches
from gateway.tomlfile import ConfigError, TomlFile

_LDH = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
)
# SPF include targets are DNS names, not host names: "_spf.shared.example" is the usual form.
_DNS_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)+"
)


@dataclass(frozen=True)
class AuthPolicy:
    """`trusted_sealers`: "lists.example.org" (that domain) or ".example.org" (every domain
    below example.org, not example.org itself: gateway.domains), lower case, no final dot."""

    trusted_sealers: tuple[str, ...] = ()
    distrust_includes: tuple[str, ...] = ()

    def trusts_sealer(self, domain: str) -> bool:
        return domain_matches(domain, self.trusted_sealers)

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


def load_auth_policy(doc: TomlFile, errors: list[ConfigError]) -> AuthPolicy:
    """Parse and validate rules/auth.toml; problems are appended to `errors`."""
    known = {"arc": "trusted_sealers", "spf": "distrust_includes"}
    for key in doc.data:
        if key not in known:
            errors.append(doc.error(key, "unknown table (known: arc, spf)"))
    lists: dict[str, tuple[str, ...]] = {}
    for name, list_key in known.items():
        table: Any = doc.data.get(name, {})
        if not isinstance(table, dict):
            errors.append(doc.error(name, "must be a table"))
            continue
        for key in table:
            if key != list_key:
                errors.append(doc.error(f"{name}.{key}", f"unknown key (known: {list_key})"))
        entries = table.get(list_key, [])
        where = f"{name}.{list_key}"
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            errors.append(doc.error(where, "must be a list of domain names"))
            continue
        pattern = _DNS_NAME if name == "spf" else _LDH
        lists[list_key] = _domains(doc, where, entries, errors, pattern)
    return AuthPolicy(
        trusted_sealers=lists.get("trusted_sealers", ()),
        distrust_includes=lists.get("distrust_includes", ()),
    )


def _domains(
    doc: TomlFile,
    where: str,
    entries: Sequence[str],
    errors: list[ConfigError],
    pattern: re.Pattern[str],
) -> tuple[str, ...]:
    out: list[str] = []
    for raw in entries:
        entry = raw.strip().lower().rstrip(".")
        bare = entry.removeprefix(".")
        if not pattern.fullmatch(bare):
            errors.append(
                doc.error(
                    where, f"{raw!r} is not a domain name (or .domain for every domain below it)"
                )
            )
            continue
        out.append(entry)
    return tuple(out)
