"""rules/attachments.toml: which attachments policy refuses or quarantines, and for whom not.

The content scan states facts (this member is an executable, this archive is encrypted, this
document has macros); this policy turns them into `ATT_POLICY_REJECT` / `ATT_POLICY_QUARANTINE`
findings, which rules/actions.toml forces to reject / quarantine. "score" leaves the decision to
the detection symbols' scores. Exceptions relax the policy for listed sender domains, or when
every recipient is in a listed domain. Loaded by gateway.policy.load_rules, with the same
file/key/line errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, PlainValidator

from gateway.domains import domain_matches
from gateway.mime.filetypes import (
    DISK_IMAGE_EXTENSIONS,
    EXECUTABLE_EXTENSIONS,
    SCRIPT_EXTENSIONS,
    FileFacts,
)
from gateway.schema import TABLE_CONFIG, Array, Count, DomainName, Flag, WordSet, validate_table
from gateway.tomlfile import ConfigError, TomlFile
from gateway.verdict import Finding

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


def _family(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a list of file families (got {value!r})")
    family = value.strip().lower().lstrip(".")
    if family not in FAMILIES:
        raise ValueError(f"unknown {value!r} (known: {', '.join(sorted(FAMILIES))})")
    return family


def _extension(value: Any) -> str:
    if not isinstance(value, str) or not value.strip().lstrip("."):
        raise ValueError(f"must be a list of file extensions (got {value!r})")
    return value.strip().lower().lstrip(".")


Family = Annotated[str, PlainValidator(_family)]
Extension = Annotated[str, PlainValidator(_extension)]
PolicyAction = Literal["score", "quarantine", "reject"]


@dataclass(frozen=True)
class AttachmentException:
    """Relaxations for some senders (envelope domain) or recipients (all of them must match)."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    senders: Array[DomainName] = ()
    recipients: Array[DomainName] = ()
    allow_families: WordSet[Family] = frozenset()
    allow_extensions: WordSet[Extension] = frozenset()
    allow_encrypted: Flag = False
    allow_macros: Flag = False
    max_attachment_bytes: Count | None = None

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
    encrypted_documents: str = "quarantine"
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


# -- rules/attachments.toml as written ------------------------------------------------------------

_DEFAULT = AttachmentPolicy()


@dataclass(frozen=True)
class BlockTable:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    families: WordSet[Family] = _DEFAULT.block_families
    extensions: WordSet[Extension] = _DEFAULT.block_extensions
    action: PolicyAction = "reject"


@dataclass(frozen=True)
class EncryptedTable:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    archives: PolicyAction = "quarantine"
    documents: PolicyAction = "quarantine"


@dataclass(frozen=True)
class MacrosTable:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    action: PolicyAction = "quarantine"


@dataclass(frozen=True)
class SizesTable:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    max_attachment_bytes: Count = _DEFAULT.max_attachment_bytes
    action: PolicyAction = "reject"


def _names_someone(exception: AttachmentException) -> AttachmentException:
    if not exception.senders and not exception.recipients:
        raise ValueError("names no senders and no recipients: it would apply to none")
    return exception


@dataclass(frozen=True)
class AttachmentsFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    block: BlockTable = field(default_factory=BlockTable)
    encrypted: EncryptedTable = field(default_factory=EncryptedTable)
    macros: MacrosTable = field(default_factory=MacrosTable)
    sizes: SizesTable = field(default_factory=SizesTable)
    exceptions: Array[Annotated[AttachmentException, AfterValidator(_names_someone)]] = ()


def load_attachment_policy(doc: TomlFile, errors: list[ConfigError]) -> AttachmentPolicy:
    """rules/attachments.toml as an AttachmentPolicy; its problems are appended to `errors`."""
    written = validate_table(doc, "", AttachmentsFile, doc.data, errors) or AttachmentsFile()
    return AttachmentPolicy(
        block_families=written.block.families,
        block_extensions=written.block.extensions,
        block_action=written.block.action,
        encrypted_archives=written.encrypted.archives,
        encrypted_documents=written.encrypted.documents,
        macros=written.macros.action,
        max_attachment_bytes=written.sizes.max_attachment_bytes,
        size_action=written.sizes.action,
        exceptions=written.exceptions,
    )
