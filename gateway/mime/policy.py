"""rules/attachments.toml: which attachments policy refuses or quarantines, and for whom not.

The content scan states facts (this member is an executable, this archive is encrypted, this
document has macros); this policy turns them into `ATT_POLICY_REJECT` / `ATT_POLICY_QUARANTINE`
findings, which rules/actions.toml forces to reject / quarantine. "score" leaves the decision to
the detection symbols' scores. Exceptions relax the policy for listed sender domains, or when
every recipient is in a listed domain. Loaded by gateway.policy.load_rules, with the same
file/key/line errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.domains import domain_matches
from gateway.mime.filetypes import (
    DISK_IMAGE_EXTENSIONS,
    EXECUTABLE_EXTENSIONS,
    SCRIPT_EXTENSIONS,
    FileFacts,
)
from gateway.tomlfile import ConfigError, TomlFile
from gateway.verdict import Finding

ACTIONS = ("score", "quarantine", "reject")
FAMILIES = frozenset(
    {
        "executable",
        "script",
        "disk_image",
        "archive",
        "office",
        "pdf",
        "html",
        "image",
        "audio",
        "video",
        "text",
        "other",
    }
)
_ACTION_SYMBOL = {"quarantine": "ATT_POLICY_QUARANTINE", "reject": "ATT_POLICY_REJECT"}


def _domain_match(address: str, domains: Sequence[str]) -> bool:
    return domain_matches(address.rpartition("@")[2], domains)


@dataclass(frozen=True)
class AttachmentException:
    """Relaxations for some senders (envelope domain) or recipients (all of them must match)."""

    senders: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    allow_families: frozenset[str] = frozenset()
    allow_extensions: frozenset[str] = frozenset()
    allow_encrypted: bool = False
    allow_macros: bool = False
    max_attachment_bytes: int | None = None

    def applies(self, sender: str | None, recipients: Sequence[str]) -> bool:
        if sender and _domain_match(sender, self.senders):
            return True
        return bool(recipients) and all(_domain_match(r, self.recipients) for r in recipients)


@dataclass(frozen=True)
class AttachmentPolicy:
    block_families: frozenset[str] = frozenset({"executable", "script", "disk_image"})
    block_extensions: frozenset[str] = frozenset(
        EXECUTABLE_EXTENSIONS | SCRIPT_EXTENSIONS | DISK_IMAGE_EXTENSIONS
    )
    block_action: str = "reject"
    encrypted_archives: str = "quarantine"
    encrypted_documents: str = "score"
    macros: str = "quarantine"
    max_attachment_bytes: int = 25 * 1024 * 1024
    size_action: str = "reject"
    exceptions: tuple[AttachmentException, ...] = field(default_factory=tuple)

    def decide(
        self, files: Sequence[FileFacts], sender: str | None, recipients: Sequence[str]
    ) -> list[Finding]:
        """ATT_POLICY_* findings for these files in this envelope (at most one per action)."""
        relax = [e for e in self.exceptions if e.applies(sender, recipients)]
        allow_families = frozenset().union(*(e.allow_families for e in relax))
        allow_extensions = frozenset().union(*(e.allow_extensions for e in relax))
        allow_encrypted = any(e.allow_encrypted for e in relax)
        allow_macros = any(e.allow_macros for e in relax)
        max_size = max(
            [self.max_attachment_bytes]
            + [e.max_attachment_bytes for e in relax if e.max_attachment_bytes]
        )
        reasons: dict[str, list[str]] = {}

        def hit(action: str, reason: str) -> None:
            if action in _ACTION_SYMBOL:
                reasons.setdefault(action, []).append(reason)

        for item in files:
            label = item.name or item.origin
            if item.family in self.block_families and item.family not in allow_families:
                hit(self.block_action, f"{label}: {item.family}")
            else:
                for ext in {item.extension, *item.extensions} - {""}:
                    if ext in self.block_extensions and ext not in allow_extensions:
                        hit(self.block_action, f"{label}: .{ext}")
                        break
            if item.encrypted and not allow_encrypted:
                action = self.encrypted_archives
                if item.family == "office":
                    action = self.encrypted_documents
                hit(action, f"{label}: encrypted")
            if item.macros and not allow_macros:
                hit(self.macros, f"{label}: macros")
            if item.archive_depth == 0 and item.size > max_size:
                hit(self.size_action, f"{label}: {item.size} bytes")
        return [
            Finding(_ACTION_SYMBOL[action], detail="; ".join(items[:5])[:300])
            for action, items in sorted(reasons.items())
        ]

    def encrypted_archive_files(self, files: Sequence[FileFacts]) -> list[FileFacts]:
        return [f for f in files if f.encrypted and f.family != "office"]


def _exception_lines(doc: TomlFile) -> list[int]:
    try:
        text = doc.path.read_text(encoding="utf-8")
    except OSError:
        return []
    return [
        n for n, line in enumerate(text.splitlines(), 1) if re.match(r"\s*\[\[\s*exceptions", line)
    ]


def load_attachment_policy(doc: TomlFile, errors: list[ConfigError]) -> AttachmentPolicy:
    """Validate rules/attachments.toml; problems go to `errors` with file, key and line."""
    default = AttachmentPolicy()
    known = {"block", "encrypted", "macros", "sizes", "exceptions"}
    for key in doc.data:
        if key not in known:
            errors.append(doc.error(key, f"unknown table (known: {', '.join(sorted(known))})"))

    def table(name: str, keys: set[str]) -> dict[str, Any]:
        value = doc.data.get(name, {})
        if not isinstance(value, dict):
            errors.append(doc.error(name, "must be a table"))
            return {}
        for key in value:
            if key not in keys:
                errors.append(doc.error(f"{name}.{key}", f"known: {', '.join(sorted(keys))}"))
        return value

    def action(tab: dict[str, Any], dotted: str, fallback: str, line_error: Any = None) -> str:
        value = tab.get(dotted.rpartition(".")[2], fallback)
        if value not in ACTIONS:
            errors.append((line_error or doc.error)(dotted, f"must be one of {', '.join(ACTIONS)}"))
            return fallback
        return str(value)

    def words(tab: dict[str, Any], dotted: str, fallback: frozenset[str]) -> frozenset[str]:
        value = tab.get(dotted.rpartition(".")[2])
        if value is None:
            return fallback
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            errors.append(doc.error(dotted, "must be a list of non-empty strings"))
            return fallback
        return frozenset(v.strip().lower().lstrip(".") for v in value)

    def families(tab: dict[str, Any], dotted: str, fallback: frozenset[str]) -> frozenset[str]:
        out = words(tab, dotted, fallback)
        unknown = sorted(out - FAMILIES)
        if unknown:
            errors.append(
                doc.error(dotted, f"unknown {unknown} (known: {', '.join(sorted(FAMILIES))})")
            )
        return out & FAMILIES

    def size(tab: dict[str, Any], dotted: str, fallback: int | None) -> int | None:
        value = tab.get(dotted.rpartition(".")[2], fallback)
        if value is not fallback and (
            isinstance(value, bool) or not isinstance(value, int) or value <= 0
        ):
            errors.append(doc.error(dotted, "must be a number of bytes (> 0)"))
            return fallback
        return value if isinstance(value, int) else fallback

    block = table("block", {"families", "extensions", "action"})
    encrypted = table("encrypted", {"archives", "documents"})
    macros = table("macros", {"action"})
    sizes = table("sizes", {"max_attachment_bytes", "action"})
    exceptions: list[AttachmentException] = []
    raw_exceptions = doc.data.get("exceptions", [])
    lines = _exception_lines(doc)
    if not isinstance(raw_exceptions, list):
        errors.append(doc.error("exceptions", "must be [[exceptions]] tables"))
        raw_exceptions = []
    keys = {
        "senders",
        "recipients",
        "allow_families",
        "allow_extensions",
        "allow_encrypted",
        "allow_macros",
        "max_attachment_bytes",
    }
    for index, entry in enumerate(raw_exceptions):
        line = lines[index] if index < len(lines) else doc.line_of("exceptions")
        where = f"exceptions[{index}]"

        def err(dotted: str, problem: str, _line: int | None = line) -> ConfigError:
            return ConfigError(doc.path, dotted, _line, problem)

        if not isinstance(entry, dict):
            errors.append(err(where, "must be a table"))
            continue
        for key in entry:
            if key not in keys:
                errors.append(err(f"{where}.{key}", f"known: {', '.join(sorted(keys))}"))
        domains: dict[str, tuple[str, ...]] = {}
        for key in ("senders", "recipients"):
            value = entry.get(key, [])
            if not isinstance(value, list) or not all(
                isinstance(v, str) and v.strip() and "@" not in v and " " not in v.strip()
                for v in value
            ):
                errors.append(err(f"{where}.{key}", 'must be a list of domains ("example.org")'))
                value = []
            domains[key] = tuple(v.strip().lower().lstrip("@").rstrip(".") for v in value)
        if not domains["senders"] and not domains["recipients"]:
            errors.append(err(where, "names no senders and no recipients: it would apply to none"))
        flags: dict[str, bool] = {}
        for key in ("allow_encrypted", "allow_macros"):
            value = entry.get(key, False)
            if not isinstance(value, bool):
                errors.append(err(f"{where}.{key}", "must be true or false"))
                value = False
            flags[key] = value
        allowed = entry.get("allow_families", [])
        if not isinstance(allowed, list) or not set(allowed) <= FAMILIES:
            errors.append(err(f"{where}.allow_families", f"known: {', '.join(sorted(FAMILIES))}"))
            allowed = []
        extensions = entry.get("allow_extensions", [])
        if not isinstance(extensions, list) or not all(isinstance(v, str) for v in extensions):
            errors.append(err(f"{where}.allow_extensions", "must be a list of extensions"))
            extensions = []
        max_bytes = entry.get("max_attachment_bytes")
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0
        ):
            errors.append(err(f"{where}.max_attachment_bytes", "must be a number of bytes (> 0)"))
            max_bytes = None
        exceptions.append(
            AttachmentException(
                senders=domains["senders"],
                recipients=domains["recipients"],
                allow_families=frozenset(allowed),
                allow_extensions=frozenset(e.lower().lstrip(".") for e in extensions),
                allow_encrypted=flags["allow_encrypted"],
                allow_macros=flags["allow_macros"],
                max_attachment_bytes=max_bytes,
            )
        )
    max_attachment = size(sizes, "sizes.max_attachment_bytes", default.max_attachment_bytes)
    return AttachmentPolicy(
        block_families=families(block, "block.families", default.block_families),
        block_extensions=words(block, "block.extensions", default.block_extensions),
        block_action=action(block, "block.action", default.block_action),
        encrypted_archives=action(encrypted, "encrypted.archives", default.encrypted_archives),
        encrypted_documents=action(encrypted, "encrypted.documents", default.encrypted_documents),
        macros=action(macros, "macros.action", default.macros),
        max_attachment_bytes=max_attachment or default.max_attachment_bytes,
        size_action=action(sizes, "sizes.action", default.size_action),
        exceptions=tuple(exceptions),
    )
