"""rules/auth.toml: sender-authentication policy that is not a score or a forced action.

Today one table: `[arc] trusted_sealers`, the ARC sealers (RFC 8617) whose valid chain may
override a DMARC failure caused by forwarding (mailing lists, forwarding services). Validated like
the rest of rules/: every problem names the file, the key and the line.

What a DMARC result *does* (reject, quarantine, nothing) is not here: it is the forced actions and
scores of the DMARC_* symbols in actions.toml and scores.toml, where admins soften it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.tomlfile import ConfigError, TomlFile

_LDH = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
)


@dataclass(frozen=True)
class AuthPolicy:
    """`trusted_sealers`: "lists.example.org" (that domain) or ".example.org" (every domain
    below example.org, and example.org itself), lower case, no final dot."""

    trusted_sealers: tuple[str, ...] = ()

    def trusts_sealer(self, domain: str) -> bool:
        name = domain.lower().rstrip(".")
        for entry in self.trusted_sealers:
            if entry.startswith("."):
                if name == entry[1:] or name.endswith(entry):
                    return True
            elif name == entry:
                return True
        return False


def load_auth_policy(doc: TomlFile, errors: list[ConfigError]) -> AuthPolicy:
    """Parse and validate rules/auth.toml; problems are appended to `errors`."""
    for key in doc.data:
        if key != "arc":
            errors.append(doc.error(key, "unknown table (known: arc)"))
    table: Any = doc.data.get("arc", {})
    if not isinstance(table, dict):
        errors.append(doc.error("arc", "must be a table"))
        return AuthPolicy()
    for key in table:
        if key != "trusted_sealers":
            errors.append(doc.error(f"arc.{key}", "unknown key (known: trusted_sealers)"))
    entries = table.get("trusted_sealers", [])
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        errors.append(doc.error("arc.trusted_sealers", "must be a list of domain names"))
        return AuthPolicy()
    return AuthPolicy(trusted_sealers=_sealers(doc, entries, errors))


def _sealers(doc: TomlFile, entries: Sequence[str], errors: list[ConfigError]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in entries:
        entry = raw.strip().lower().rstrip(".")
        bare = entry.removeprefix(".")
        if not _LDH.fullmatch(bare):
            errors.append(
                doc.error(
                    "arc.trusted_sealers",
                    f"{raw!r} is not a domain name (or .domain for every domain below it)",
                )
            )
            continue
        out.append(entry)
    return tuple(out)
