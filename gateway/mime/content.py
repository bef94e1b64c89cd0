"""What each attachment really is: names, true type, archives opened in memory, documents.

Input is the `MimeReport` (every leaf of every reading). For each leaf and, recursively, each
archive member: every name a client may show is checked (executable and script extensions,
double extensions, bidi controls), the content's true type comes from libmagic (python-magic),
and the two are compared with each other and with the declared Content-Type. Archives (zip, tar,
gzip, bzip2, xz, 7z) are opened in memory only, with limits on depth, members, expanded bytes and
compression ratio; RAR archives are only listed (names, declared sizes, encryption: rarfile
parses the headers in pure Python, and extracting RAR would need an external unrar tool, which
is never run), so their members' content is not inspected. Documents go to `office`, `pdf` and
`html`. Findings are facts; what policy
does with them (rules/attachments.toml) is the attachments plugin's job.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import io
import lzma
import re
import struct
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass

import magic
import py7zr
import py7zr.exceptions
import py7zr.io
import rarfile

from gateway.mime import carriers, html, office, pdf
from gateway.mime.budgets import DEFAULT_LIMITS, MimeSettings
from gateway.mime.filetypes import (
    DISK_IMAGE_EXTENSIONS,
    EXECUTABLE_EXTENSIONS,
    SCRIPT_EXTENSIONS,
    FileFacts,
)
from gateway.mime.model import BudgetExceeded, Deadline, Leaf, MimeReport
from gateway.mime.parse import analyze
from gateway.mime.symbols import ATTACHMENT_SYMBOLS
from gateway.verdict import Finding

_DANGEROUS_EXTENSIONS = EXECUTABLE_EXTENSIONS | SCRIPT_EXTENSIONS | DISK_IMAGE_EXTENSIONS

_EXTENSION_FAMILY: dict[str, str] = {
    **{e: "executable" for e in EXECUTABLE_EXTENSIONS},
    **{e: "script" for e in SCRIPT_EXTENSIONS},
    **{e: "disk_image" for e in DISK_IMAGE_EXTENSIONS},
    **{
        e: "office"
        for e in [
            "doc",
            "docx",
            "docm",
            "dot",
            "dotx",
            "dotm",
            "xls",
            "xlsx",
            "xlsm",
            "xlsb",
            "xlt",
            "xltx",
            "xltm",
            "xla",
            "xlam",
            "ppt",
            "pptx",
            "pptm",
            "pps",
            "ppsx",
            "ppsm",
            "pot",
            "potx",
            "potm",
            "rtf",
            "odt",
            "ods",
            "odp",
            "slk",
        ]
    },
    **{
        e: "image"
        for e in ["jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "ico", "heic"]
    },
    **{
        e: "archive"
        for e in ["zip", "tar", "gz", "tgz", "bz2", "xz", "zst", "tzst", "7z", "rar", "cab"]
    },
    **{e: "html" for e in ["html", "htm", "shtml", "xhtml", "svg"]},
    **{e: "audio" for e in ["mp3", "wav", "ogg", "m4a"]},
    **{e: "video" for e in ["mp4", "avi", "mov", "mkv", "webm"]},
    "pdf": "pdf",
    "txt": "text",
}
_MIME_FAMILY: dict[str, str] = {
    "application/vnd.microsoft.portable-executable": "executable",
    "application/x-dosexec": "executable",
    "application/x-msdownload": "executable",
    "application/x-executable": "executable",
    "application/x-sharedlib": "executable",
    "application/x-pie-executable": "executable",
    "application/x-mach-binary": "executable",
    "application/x-msi": "executable",
    "application/x-ms-shortcut": "executable",
    "application/java-archive": "executable",
    # A Unix shell script runs only when a user saves it and runs it from a shell, as a .sh name
    # (not in SCRIPT_EXTENSIONS) does: mailing lists send them daily, and blocking them by
    # content lost 13 of 11,000 held-out list messages. Windows script types stay "script".
    "text/x-shellscript": "text",
    "text/x-msdos-batch": "script",
    "application/javascript": "script",
    "text/javascript": "script",
    "application/x-iso9660-image": "disk_image",
    "application/x-virtualbox-vhd": "disk_image",
    "application/x-virtualbox-vhdx": "disk_image",
    "application/x-qemu-disk": "disk_image",
    "application/x-apple-diskimage": "disk_image",
    "application/zip": "archive",
    "application/x-zip-compressed": "archive",
    "application/x-tar": "archive",
    "application/gzip": "archive",
    "application/x-gzip": "archive",
    "application/x-bzip2": "archive",
    "application/x-xz": "archive",
    "application/x-7z-compressed": "archive",
    "application/x-rar": "archive",
    "application/vnd.rar": "archive",
    "application/x-rar-compressed": "archive",
    "application/vnd.ms-cab-compressed": "archive",
    "application/x-lzh-compressed": "archive",
    "application/x-arj": "archive",
    "application/zstd": "archive",
    "application/x-lzma": "archive",  # .lzma (LZMA alone), decoded like xz
    # archives 7-Zip or WinRAR open and nothing here reads: ARCHIVE_UNSUPPORTED (quarantined)
    # rather than "other" (relayed unread)
    "application/x-ace-compressed": "archive",
    "application/x-lz4": "archive",
    "application/x-lzip": "archive",
    "application/x-compress": "archive",
    "application/x-cpio": "archive",
    "application/x-arc": "archive",
    "application/x-zoo": "archive",
    "application/x-xar": "archive",
    "application/x-ms-wim": "archive",
    "application/x-archive": "archive",
    "application/vnd.debian.binary-package": "archive",
    "application/x-rpm": "archive",
    "application/x-stuffit": "archive",
    "application/vnd.ms-tnef": "archive",  # winmail.dat: Outlook unpacks its attachments
    "application/pdf": "pdf",
    "text/html": "html",
    "image/svg+xml": "html",
    "text/rtf": "office",
    "application/rtf": "office",
    "application/x-sylk": "office",
    "application/msword": "office",
    "application/encrypted": "office",
    "application/x-ole-storage": "office",
    "application/cdfv2": "office",
}
_OFFICE_PREFIXES = (
    "application/vnd.openxmlformats-officedocument",
    "application/vnd.ms-",
    "application/vnd.oasis.opendocument",
)
# (name family, content family) pairs that are normal: OOXML is zip, old Word saved HTML...
_COMPATIBLE = frozenset(
    {
        ("office", "archive"),
        ("office", "html"),
        ("office", "text"),
        ("text", "html"),
        ("text", "script"),
        ("html", "text"),
        ("archive", "office"),
        ("executable", "archive"),  # jar, appx, msix are zips
        ("script", "text"),
        ("script", "html"),  # hta
    }
)
_BENIGN_DECLARED = frozenset({"image", "audio", "video", "text", "pdf"})
_DANGEROUS_CONTENT = frozenset({"executable", "disk_image", "archive", "office", "script"})
_RISKY_FAMILIES = {
    "ATT_EXECUTABLE": "executable",
    "ATT_SCRIPT": "script",
    "ATT_DISK_IMAGE": "disk_image",
}
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]")
_PASSWORD_HINT = re.compile(
    r"\b(?:password|passwort|passcode|pass|pwd|pw|mot de passe|contraseña|senha|пароль|密码)\b"
    r"\s*(?:is|ist|:|=|-)?\s*[:=]?\s*[\"'“«]?([^\s\"'”»<>]{3,32})",
    re.I,
)
_MAGIC_BYTES = 1024 * 1024
_MIN_BOMB_BYTES = 1024 * 1024
_MAX_PASSWORDS = 8
_MAX_7Z_PASSWORDS = 3  # each 7z try derives an AES key (2^19 SHA-256 rounds)
_7Z_MAGIC = b"7z\xbc\xaf\x27\x1c"
_RAR_MAGIC = b"Rar!\x1a\x07"
_RAR_TYPES = ("application/x-rar", "application/vnd.rar", "application/x-rar-compressed")

# libmagic costs ~0.3-0.6 ms a call even on a short text (its text tests are regexes). One
# handle for the process: each loads its own copy of the database (about 8 MB of RSS), so a
# handle per thread cost 40+ MB across the executor's threads; python-magic locks the shared one,
# and since small messages are scanned on the event loop, threads rarely wait for it. (Answers
# remembered by content digest saved ~7% of calls on a real mix but turned the bench's repeating
# corpus sample into 100% hits, flattering every figure: not kept.)
_MAGIC = magic.Magic(mime=True)


def _magic() -> magic.Magic:
    return _MAGIC


def _eicar() -> bytes:
    # built from two halves so this source file is not itself a signature hit
    return b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


EICAR = _eicar()


def true_type(data: bytes) -> str:
    """libmagic's MIME type of the content ("application/x-empty" for nothing)."""
    try:
        return str(_magic().from_buffer(data[:_MAGIC_BYTES])).lower()
    except Exception:  # libmagic refuses some inputs; unknown is not an error
        return "application/octet-stream"


def leaf_type(report: MimeReport, data: bytes) -> str:
    """`true_type` of a leaf's content, asked of libmagic once per message (see leaf_types)."""
    known = report.leaf_types.get(id(data))
    if known is not None and known[0] is data:
        return known[1]
    mime_type = true_type(data)
    report.leaf_types[id(data)] = (data, mime_type)
    return mime_type


def family_of(mime_type: str) -> str:
    mime_type = mime_type.lower()
    family = _MIME_FAMILY.get(mime_type)
    if family:
        return family
    if mime_type.startswith(_OFFICE_PREFIXES):
        return "office"
    for prefix in ("image", "audio", "video", "text"):
        if mime_type.startswith(prefix + "/"):
            return prefix
    return "other"


_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml"})
# An HTML or SVG file with these is a page that acts when opened (issue 13): ATT_HTML_ACTIVE
_ACTIVE_HTML = frozenset(
    {
        "HTML_SCRIPT",
        "HTML_FORM",
        "HTML_PASSWORD_FIELD",
        "HTML_SCRIPT_DECODE",
        "HTML_SCRIPT_REDIRECT",
        "HTML_META_REFRESH",
        "HTML_FRAME_REMOTE",
        "HTML_LAUNCH_URI",
    }
)
# Declared types a client names an unnamed part after when it saves it (Windows maps each to
# an extension that runs: application/javascript is .js): a script's text has no magic
_DECLARED_RUNNABLE = {
    **dict.fromkeys(
        (
            "application/javascript",
            "application/x-javascript",
            "application/ecmascript",
            "text/javascript",
            "text/jscript",
            "text/vbscript",
            "application/x-vbscript",
            "application/hta",
            "application/x-bat",
            "application/x-powershell",
        ),
        "ATT_SCRIPT",
    ),
    **dict.fromkeys(
        (
            "application/x-msdownload",
            "application/x-msdos-program",
            "application/x-ms-shortcut",
            "application/x-ms-application",
            "application/x-msi",
        ),
        "ATT_EXECUTABLE",
    ),
}
# Declared types whose content may be a whole MIME entity (base64 or not)
_ENTITY_TYPES = frozenset(
    {
        "message/rfc822",
        "message/global",
        "multipart/mixed",
        "multipart/alternative",
        "multipart/related",
        "multipart/signed",
        "multipart/report",
    }
)


def name_family(extension: str) -> str | None:
    """The family a file name's last extension claims ("html" for .htm, .svg...), or None."""
    return _EXTENSION_FAMILY.get(extension)


def is_html(family: str, declared: str | None, name_family: str | None) -> bool:
    """Whether a file is read as HTML: by its content, its declared type (a browser renders
    text/html and SVG whatever libmagic says), or its name (a saved "invoice.htm" opens in a
    browser even when declared text/plain). The message's URL list asks the same question."""
    return (
        family == "html"
        or (declared in _HTML_TYPES and family in ("text", "html", "other"))
        or (name_family == "html" and family in ("text", "other"))
    )


def extensions(name: str) -> list[str]:
    """Extensions as Windows sees them: after a NUL the name ends; trailing dots, spaces go."""
    name = name.split("\x00")[0].strip().rstrip(". ")
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    parts = [p.strip().lower() for p in base.split(".")[1:]]
    return [p for p in parts if p]


@dataclass(frozen=True)
class ContentReport:
    findings: tuple[Finding, ...]
    files: tuple[FileFacts, ...]
    complete: bool
    elapsed: float

    def symbols(self) -> set[str]:
        return {f.symbol for f in self.findings}


class _Scanner:
    def __init__(self, report: MimeReport, limits: MimeSettings) -> None:
        self.report = report
        self.limits = limits
        self.deadline = Deadline(limits.scan_time_budget, "ATT_LIMIT_TIME")
        self.details: dict[str, list[str]] = {}
        self.files: list[FileFacts] = []
        self.members = 0
        self.expanded = 0
        self._passwords: list[str] | None = None
        self.seen: set[bytes] = set()
        self.light_only = False  # stop at the first archive or document (scan_light)

    def add(self, symbol: str, detail: str = "") -> None:
        assert symbol in ATTACHMENT_SYMBOLS, symbol
        details = self.details.setdefault(symbol, [])
        if detail and detail not in details and len(details) < 5:
            details.append(detail[:120])

    def findings(self) -> tuple[Finding, ...]:
        return tuple(
            Finding(symbol, detail="; ".join(details)[:300])
            for symbol, details in self.details.items()
        )

    @property
    def passwords(self) -> list[str]:
        if self._passwords is None:
            text = self.report.body_text(256 * 1024)
            text = re.sub(r"<[^>]{0,500}>", " ", text)
            found: list[str] = []
            for match in _PASSWORD_HINT.finditer(text):
                word = match.group(1).strip(".,;:!?)")
                if word and word not in found:
                    found.append(word)
                if len(found) >= _MAX_PASSWORDS:
                    break
            self._passwords = found
        return self._passwords

    # -- names -----------------------------------------------------------------------------

    def check_names(
        self, names: tuple[str, ...], where: str, variants: tuple[str, ...] = ()
    ) -> None:
        """Name checks on every name and reading of a name; several distinct names (not
        readings of one name) are ambiguous."""
        for name in names + variants:
            if _BIDI.search(name):
                self.add("ATT_RTLO", f"{where}: {name.encode('unicode_escape').decode()[:80]}")
            exts = extensions(_BIDI.sub("", name))
            if len(exts) >= 2 and exts[-1] in _DANGEROUS_EXTENSIONS and _shown_extension(exts[-2]):
                self.add("ATT_DOUBLE_EXTENSION", f"{where}: {name[:80]}")
            if "\x00" in name:
                self.add("ATT_NAME_AMBIGUOUS", f"{where}: NUL in name")
        distinct = _distinct_names(names)
        if len(distinct) > 1:
            self.add("ATT_NAME_AMBIGUOUS", f"{where}: {' | '.join(sorted(distinct))[:100]}")

    # -- files -----------------------------------------------------------------------------

    def scan_leaf(self, leaf: Leaf) -> None:
        where = leaf.path if leaf.reading == 0 else f"{leaf.path} (2nd reading)"
        if leaf.names or leaf.name_variants:
            self.check_names(leaf.names, where, leaf.name_variants)
        if leaf.kind == "raw":
            return  # the unparsed message: nothing a client shows as a file (clamd scans it)
        declared = leaf.content_type if leaf.kind in ("part", "body") else None
        aliases = leaf.names[1:] + leaf.name_variants  # every name the policy must see
        self.scan_file(
            leaf.data, leaf.name, declared, where, 0, leaf.is_attachment, aliases, leaf.charset
        )

    def name_checks(self, name: str, label: str) -> str:
        """Symbols a name alone deserves; returns its last extension as Windows reads it."""
        exts = extensions(_BIDI.sub("", name))
        ext = exts[-1] if exts else ""
        for symbol, ext_set in (
            ("ATT_EXECUTABLE", EXECUTABLE_EXTENSIONS),
            ("ATT_SCRIPT", SCRIPT_EXTENSIONS),
            ("ATT_DISK_IMAGE", DISK_IMAGE_EXTENSIONS),
        ):
            if ext in ext_set:
                self.add(symbol, label)
        return ext

    def scan_file(
        self,
        data: bytes,
        name: str | None,
        declared: str | None,
        where: str,
        depth: int,
        is_file: bool,
        aliases: tuple[str, ...] = (),
        charset: str = "",
    ) -> None:
        """Checks one file or part; `charset`: a part's declared one (files in files have none)."""
        self.deadline.check()
        content_digest = hashlib.sha256(data).digest()
        # the same content under other names (or other readings of its name) is checked again
        named = "\x00".join((name or "", *aliases))
        digest = content_digest + named.encode("utf-8", "replace")
        if digest in self.seen:
            return
        self.seen.add(digest)
        label = f"{where} {name}" if name else where
        if data[:68] == EICAR and not data[68:128].strip(b" \t\r\n\x1a"):
            self.add("ATT_EICAR_TEST", label)
        mime_type = leaf_type(self.report, data) if depth == 0 else true_type(data)
        family = family_of(mime_type)
        exts = extensions(_BIDI.sub("", name)) if name else []
        ext = exts[-1] if exts else ""
        name_family = _EXTENSION_FAMILY.get(ext)
        for symbol, fam in _RISKY_FAMILIES.items():
            if family == fam and (is_file or depth > 0 or fam != "script"):
                self.add(symbol, f"{label} ({mime_type})")
        all_exts = {ext} | {self.name_checks(other, f"{where} {other}") for other in aliases}
        if name:
            self.name_checks(name, label)
        if (
            name_family
            and family in _DANGEROUS_CONTENT | {"pdf", "html"}
            and name_family != family
            and (name_family, family) not in _COMPATIBLE
        ):
            self.add("ATT_NAME_MISMATCH", f"{label}: .{ext} is {mime_type}")
        declared_family = family_of(declared) if declared else ""
        runnable = _DECLARED_RUNNABLE.get((declared or "").lower())
        if runnable and not name and not aliases:
            self.add(runnable, f"{where}: an unnamed part declared {declared}")
        if (
            declared_family in _BENIGN_DECLARED
            and family in _DANGEROUS_CONTENT
            and (declared_family, family) not in _COMPATIBLE
        ):
            self.add("ATT_CTYPE_MISMATCH", f"{label}: declared {declared}, is {mime_type}")
        encrypted = macros = False
        is_archive = (
            family == "archive"
            or (family == "executable" and data[:2] == b"PK")
            or data.startswith((carriers.CAB_MAGIC, carriers.TNEF_MAGIC))  # libmagic may miss
        )
        is_office = not is_archive and (
            family == "office"
            or office.is_office(data)
            or (family in ("text", "other") and office.is_office_text(data, ext))
        )
        # a web archive (.mht) is a MIME message a browser renders: opened like an .eml too
        # so is an Outlook message (.msg): an OLE file whose attachments Outlook opens
        opened = not is_archive and (
            not is_office or ext in ("mht", "mhtml") or carriers.is_outlook_message(data)
        )
        carrier = self.carrier_of(data, declared, family) if opened else None
        if self.light_only and (is_archive or is_office or family == "pdf" or carrier):
            raise _HeavyContent  # archives and documents can take long: not on the event loop
        if is_archive:
            encrypted = self.archive(data, mime_type, name, where, depth)
        elif is_office:
            result = office.inspect(data, name or "document")
            for symbol, detail in result.findings:
                self.add(symbol, f"{label}: {detail}" if detail != name else label)
            encrypted, macros = result.encrypted, result.macros
            if result.files:
                inner = f"{where}/{name}" if name else where
                carried = [carriers.Carried(n, d) for n, d in result.files]
                self.carried(carried, f"{label} (embedded object)", inner, depth)
        elif family == "pdf":
            symbols = pdf.inspect(data)
            for symbol in symbols:
                self.add(symbol, label)
            if "PDF_EMBEDDED_FILE" in symbols and "PDF_ENCRYPTED" not in symbols:
                # a reader opens the files a PDF carries from its attachments pane
                attached = pdf.embedded_files(data)
                if attached is None:
                    self.add("ARCHIVE_CORRUPT", f"{label}: its embedded files cannot be read")
                elif attached:
                    inner = f"{where}/{name}" if name else where
                    carried = [carriers.Carried(n, d) for n, d in attached]
                    self.carried(carried, f"{label} (embedded file)", inner, depth)
        if carrier:
            self.open_carrier(carrier, data, declared, label, where, name, depth)
        if is_html(family, declared, name_family):
            reading = html.read(data, charset, deadline=self.deadline)
            found = reading.found
            for symbol, detail in found.items():
                self.add(symbol, f"{label}: {detail}")
            # an SVG part is never the message text: a client shows it as a file to open
            svg = "svg" in mime_type or declared == "image/svg+xml" or ext in ("svg", "svgz")
            if (is_file or svg) and found.keys() & _ACTIVE_HTML:
                # a page opened from disk runs its script and posts its form from nowhere:
                # credential phishing and HTML smuggling (SVG images included)
                active = ", ".join(sorted(found.keys() & _ACTIVE_HTML))
                self.add("ATT_HTML_ACTIVE", f"{label}: {active}")
            if reading.files:
                # files in data: addresses: a click saves or opens them (smuggling, no script)
                inner = f"{where}/{name}" if name else where
                carried = [carriers.Carried(n, d) for n, d in reading.files]
                self.carried(carried, f"{label} (data: address)", inner, depth)
        if is_file or depth > 0:
            self.files.append(
                FileFacts(
                    origin=where,
                    name=name,
                    extension=ext,
                    family=family,
                    mime_type=mime_type,
                    size=len(data),
                    archive_depth=depth,
                    encrypted=encrypted,
                    macros=macros,
                    extensions=tuple(sorted(all_exts - {""})),
                )
            )

    # -- carriers: formats that hold files but are no archives to libmagic -----------------

    def carrier_of(self, data: bytes, declared: str | None, family: str) -> str | None:
        """Which carrier (gateway.mime.carriers) `data` is, if any: cheap tests only."""
        if carriers.is_cms_signed(data, declared):
            return "smime"
        if carriers.is_outlook_message(data):
            return "msg"
        if family != "office" and carriers.embedded_zip(data) is not None:
            return "polyglot"
        if family not in ("office", "executable") and carriers.embedded_archive(data):
            return "polyglot"
        if family in ("text", "other", "html") or declared in _ENTITY_TYPES:
            if carriers.nested_entity(data, declared) is not None:
                return "entity"
            if carriers.has_text_encoded(data[: self.limits.max_member_bytes]):
                return "text"
        return None

    def open_carrier(
        self,
        kind: str,
        data: bytes,
        declared: str | None,
        label: str,
        where: str,
        name: str | None,
        depth: int,
    ) -> None:
        """Scan what a carrier holds as members one level down (the archive budgets apply)."""
        inner = f"{where}/{name}" if name else where
        if depth >= self.limits.max_archive_depth:
            self.add("ARCHIVE_TOO_DEEP", f"{label}: more than {self.limits.max_archive_depth}")
            return
        limit = self._read_limit(len(data))
        try:
            if kind == "smime":
                content = carriers.cms_signed_content(data)
                if content is not None:
                    self.nested_message(content, f"{label} (signed content)", inner, depth)
            elif kind == "polyglot":
                archive = carriers.embedded_zip(data)
                if archive is not None:
                    self.add("ATT_POLYGLOT", f"{label}: a zip archive at its end")
                    self.zip(archive, label, inner, depth)
                found = carriers.embedded_archive(data)
                if found is not None:
                    kind, archive = found
                    self.add("ATT_POLYGLOT", f"{label}: a {kind} archive inside")
                    if kind == "7z":
                        self.sevenzip(archive, label, inner, depth)
                    else:
                        self.rar(archive, label, inner, depth)
            elif kind == "text":
                files = carriers.text_encoded_files(data[: self.limits.max_member_bytes], limit)
                self.carried(files, label, inner, depth)
            elif kind == "msg":
                self.carried(carriers.msg_files(data, limit), label, inner, depth)
            else:
                entity = carriers.nested_entity(data, declared)
                if entity is not None:
                    # a web archive's parts are the page a browser shows, not a mail's text
                    pages = extensions(name or "")[-1:] in (["mht"], ["mhtml"])
                    self.nested_message(entity, label, inner, depth, pages)
        except Exception as exc:  # a carrier that cannot be read: its content is unknown
            self.unreadable(exc, label, f": {exc}")

    def unreadable(self, exc: Exception, label: str, detail: str = "") -> None:
        """What a container that could not be opened is: a bomb, an unsupported kind, or
        corrupt (all forced to quarantine in rules/actions.toml); a budget stops the scan."""
        if isinstance(exc, BudgetExceeded):
            raise exc
        if isinstance(exc, carriers.CarrierTooLarge):
            self.add("ARCHIVE_BOMB", f"{label}: {exc}")
        elif isinstance(exc, carriers.CarrierUnsupported):
            self.add("ARCHIVE_UNSUPPORTED", f"{label}: {exc}")
        else:
            self.add("ARCHIVE_CORRUPT", f"{label}: {type(exc).__name__}{detail}"[:120])

    def carried(self, files: list[carriers.Carried], label: str, inner: str, depth: int) -> None:
        """Files out of a carrier: names and content through the same checks as members."""
        for item in files:
            self.deadline.check()
            self._member_budget(label)
            if item.name:
                self._path_checks(item.name, label)
                self.check_names((item.name,), label)
            limit = self._read_limit(len(item.data))
            if self._expanded(len(item.data), limit, f"{label}: {(item.name or '')[:60]}"):
                self.scan_file(item.data, item.name, None, inner, depth + 1, not item.body)

    def nested_message(
        self, entity: bytes, label: str, inner: str, depth: int, pages: bool = False
    ) -> None:
        """A MIME entity inside a file: parsed like the message itself, its leaves scanned
        (`pages`: each leaf is a file the browser opens, as in a web archive)."""
        seconds = max(0.05, min(self.limits.time_budget, self.deadline.end - time.monotonic()))
        report = analyze(entity, dataclasses.replace(self.limits, time_budget=seconds))
        if not report.complete:
            problems = ", ".join(sorted(report.symbols()))[:80]
            self.add("ATT_UNSCANNABLE", f"{label}: nested message not parsed whole ({problems})")
        for leaf in report.leaves:
            if leaf.kind == "raw":
                continue
            self._member_budget(label)  # a part of a nested message counts as a member
            path = f"{inner}/{leaf.path}"
            if leaf.names:
                self.check_names(leaf.names, path)
            declared = leaf.content_type if leaf.kind in ("part", "body") else None
            is_file = leaf.is_attachment or pages
            self.scan_file(leaf.data, leaf.name, declared, path, depth + 1, is_file, leaf.names[1:])

    # -- archives --------------------------------------------------------------------------

    def archive(
        self, data: bytes, mime_type: str, name: str | None, where: str, depth: int
    ) -> bool:
        """Open an archive and scan its members; True if some member stayed locked."""
        label = f"{where} {name}" if name else where
        if depth >= self.limits.max_archive_depth:
            self.add(
                "ARCHIVE_TOO_DEEP", f"{label}: more than {self.limits.max_archive_depth} levels"
            )
            return False
        inner = f"{where}/{name}" if name else where
        try:
            if data[:4] == b"PK\x03\x04" or mime_type in ("application/zip",):
                return self.zip(data, label, inner, depth)
            elif mime_type == "application/x-tar":
                self.tar(data, label, inner, depth)
            elif mime_type in ("application/gzip", "application/x-gzip"):
                self.compressed(data, "gzip", name, inner, depth)
            elif mime_type == "application/x-bzip2":
                self.compressed(data, "bzip2", name, inner, depth)
            elif mime_type in ("application/x-xz", "application/x-lzma"):
                self.compressed(data, "xz", name, inner, depth)
            elif mime_type == "application/zstd":
                self.compressed(data, "zstd", name, inner, depth)
            elif data[:4] == carriers.TNEF_MAGIC:
                files = carriers.tnef_files(data, self._read_limit(len(data)))
                self.carried(files, label, inner, depth)
            elif data[:8] == carriers.CAB_MAGIC:
                files = carriers.cab_files(data, self._read_limit(len(data)))
                self.carried(files, label, inner, depth)
            elif data[:6] == _7Z_MAGIC:
                return self.sevenzip(data, label, inner, depth)
            elif data[:6] == _RAR_MAGIC or mime_type in _RAR_TYPES:
                return self.rar(data, label, inner, depth)
            else:
                self.add("ARCHIVE_UNSUPPORTED", f"{label} ({mime_type})")
        except Exception as exc:  # a malformed archive is a finding, never a crash
            self.unreadable(exc, label)
        return False

    def _member_budget(self, label: str) -> None:
        self.members += 1
        if self.members > self.limits.max_archive_members:
            raise BudgetExceeded("ARCHIVE_TOO_MANY_MEMBERS", f"{label}: more than budget")

    def _read_limit(self, compressed: int) -> int:
        ratio_cap = max(_MIN_BOMB_BYTES, compressed * self.limits.max_archive_ratio)
        remaining = self.limits.max_archive_bytes - self.expanded
        return max(0, min(self.limits.max_member_bytes, ratio_cap, remaining))

    def _expanded(self, size: int, limit: int, label: str) -> bool:
        """Account expanded bytes; False (and ARC_BOMB) when a member went past its limit."""
        self.expanded += min(size, limit)
        if size > limit:
            self.add("ARCHIVE_BOMB", f"{label}: expands past {limit} bytes")
            return False
        return True

    def _path_checks(self, member: str, label: str) -> None:
        path = member.replace("\\", "/")
        parts = path.split("/")
        if path.startswith("/") or re.match(r"^[A-Za-z]:", path) or ".." in parts:
            self.add("ARCHIVE_PATH_TRAVERSAL", f"{label}: {member[:80]}")

    def zip(self, data: bytes, label: str, inner: str, depth: int) -> bool:
        locked, start = self._zip_members(data, label, inner, depth)
        # zips one after another: 7-Zip reads the first, zipfile and Explorer the last. An
        # end record before the start of the archive read last ends an earlier one (one
        # inside a member, a stored zip, is no archive of its own)
        for end in reversed(carriers.zip_ends(data)[:-1]):
            if end > start:
                continue
            self.add("ATT_POLYGLOT", f"{label}: another zip archive before this one")
            more, start = self._zip_members(data[:end], label, inner, depth)
            locked = locked or more
        return locked

    def _zip_members(self, data: bytes, label: str, inner: str, depth: int) -> tuple[bool, int]:
        """Scan one zip's members: whether some were locked, and where the archive starts."""
        locked = False
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            start = min((info.header_offset for info in infos), default=archive.start_dir)
            for info in infos:
                self.deadline.check()
                self._member_budget(label)
                self._path_checks(info.filename, label)
                mode = (info.external_attr >> 16) & 0o170000
                if info.create_system == 3 and mode == 0o120000:
                    self.add("ARCHIVE_SYMLINK", f"{label}: {info.filename[:80]}")
                    continue
                if info.is_dir():
                    continue
                # 7-Zip and WinRAR show the Info-ZIP Unicode Path when there is one; zipfile
                # and Windows Explorer the name in the header: both are the member's names
                names = (info.filename, *_zip_unicode_path(info.extra))
                self.check_names(tuple(dict.fromkeys(names)), label)
                limit = self._read_limit(info.compress_size)
                if info.file_size > limit:
                    self.add(
                        "ARCHIVE_BOMB", f"{label}: {info.filename[:60]} declares {info.file_size}"
                    )
                    continue
                content = self._zip_read(archive, info, label, limit)
                if content is None:
                    locked = True
                    continue
                if not self._expanded(len(content), limit, f"{label}: {info.filename[:60]}"):
                    continue
                aliases = tuple(n for n in names[1:] if n != info.filename)
                self.scan_file(content, info.filename, None, inner, depth + 1, True, aliases)
        return locked, start

    def _zip_read(
        self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, limit: int
    ) -> bytes | None:
        if not info.flag_bits & 0x1:
            with archive.open(info) as member:
                return member.read(limit + 1)
        self.add("ARCHIVE_ENCRYPTED", f"{label}: {info.filename[:80]}")
        for password in self.passwords:
            try:
                with archive.open(info, pwd=password.encode("utf-8")) as member:
                    content = member.read(limit + 1)
                if len(content) <= limit and zlib.crc32(content) != info.CRC:
                    continue
            except (RuntimeError, zipfile.BadZipFile, zlib.error, NotImplementedError, ValueError):
                continue
            self.add("ARCHIVE_PASSWORD_IN_BODY", f"{label}: opened with a password from the text")
            return content
        if self.passwords:
            self.add("ARCHIVE_PASSWORD_IN_BODY", f"{label}: the text offers a password")
        return None

    def tar(self, data: bytes, label: str, inner: str, depth: int) -> None:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for info in archive:
                self.deadline.check()
                self._member_budget(label)
                self._path_checks(info.name, label)
                if info.issym() or info.islnk():
                    self.add("ARCHIVE_SYMLINK", f"{label}: {info.name[:80]}")
                    continue
                if not info.isfile():
                    continue
                self.check_names((info.name,), label)
                limit = self._read_limit(len(data))
                handle = archive.extractfile(info)
                if handle is None:
                    continue
                content = handle.read(limit + 1)
                if self._expanded(len(content), limit, f"{label}: {info.name[:60]}"):
                    self.scan_file(content, info.name, None, inner, depth + 1, True)

    def sevenzip(self, data: bytes, label: str, inner: str, depth: int) -> bool:
        """7z: list, then decompress in memory (never to disk) the members the budgets allow.

        py7zr decodes a member to its declared size, so declared sizes are checked first; the
        archive's total is also capped (max_extract_size) because a solid block decodes the
        members before a wanted one too, and every write checks the deadline.
        """
        password: str | None = None
        try:
            archive = py7zr.SevenZipFile(io.BytesIO(data))
        except py7zr.exceptions.PasswordRequired:  # header encryption: even names are hidden
            self.add("ARCHIVE_ENCRYPTED", f"{label}: names encrypted too")
            for password in self._7z_passwords(label):
                try:
                    archive = py7zr.SevenZipFile(io.BytesIO(data), password=password)
                except Exception:  # a wrong key decodes the header into garbage
                    continue
                self._opened(label)
                break
            else:
                return True
        with archive:
            infos = archive.list()
            locked = archive.needs_password() and password is None
        if locked:
            self.add("ARCHIVE_ENCRYPTED", label)
        budget = min(
            self.limits.max_archive_bytes - self.expanded,
            max(_MIN_BOMB_BYTES, len(data) * self.limits.max_archive_ratio),
        )
        wanted: dict[str, int] = {}
        planned = 0
        for info in infos:
            self.deadline.check()
            self._member_budget(label)
            self._path_checks(info.filename, label)
            if info.is_symlink:
                self.add("ARCHIVE_SYMLINK", f"{label}: {info.filename[:80]}")
                continue
            if info.is_directory:
                continue
            self.check_names((info.filename,), label)
            # by name now, as members that stay locked or too big are never decoded
            self.name_checks(info.filename, f"{inner} {info.filename}")
            # solid blocks have no per-member compressed size: the ratio is the whole archive's
            size = int(info.uncompressed or 0)
            limit = max(0, min(self.limits.max_member_bytes, budget - planned))
            if size > limit:
                self.add("ARCHIVE_BOMB", f"{label}: {info.filename[:60]} declares {size}")
                continue
            name = info.filename.replace("\\", "/")
            if name.startswith("/") or ".." in name.split("/"):
                continue  # py7zr refuses such output names; the path finding is enough
            planned += size
            wanted.setdefault(info.filename, size)
        if not wanted:
            return locked
        if not locked:
            contents = self._7z_read(data, password, wanted, budget, label)
        else:
            for password in self._7z_passwords(label):
                try:
                    contents = self._7z_read(data, password, wanted, budget, label)
                except BudgetExceeded:
                    raise
                except Exception:  # wrong password: LZMA, CRC or stream errors
                    continue
                self._opened(label)
                break
            else:
                return True
        if contents is None:
            return False
        for name, content in contents:
            limit = wanted.get(name, max(wanted.values()))
            if self._expanded(len(content), limit, f"{label}: {name[:60]}"):
                self.scan_file(content, name, None, inner, depth + 1, True)
        return False

    def _7z_passwords(self, label: str) -> list[str]:
        """Passwords from the message text to try on a 7z (each try derives an AES key)."""
        if self.passwords:
            self.add("ARCHIVE_PASSWORD_IN_BODY", f"{label}: the text offers a password")
        return self.passwords[:_MAX_7Z_PASSWORDS]

    def _opened(self, label: str) -> None:
        self.add("ARCHIVE_PASSWORD_IN_BODY", f"{label}: opened with a password from the text")

    def _7z_read(
        self, data: bytes, password: str | None, wanted: dict[str, int], budget: int, label: str
    ) -> list[tuple[str, bytes]] | None:
        factory = _MemoryFactory(max(wanted.values(), default=0), self.deadline)
        with py7zr.SevenZipFile(io.BytesIO(data), password=password) as archive:
            archive.max_extract_size = budget
            try:
                archive.extract(targets=list(wanted), factory=factory)
            except py7zr.exceptions.DecompressionBombError:
                self.add("ARCHIVE_BOMB", f"{label}: expands past {budget} bytes")
                return None
        return [(writer.name, bytes(writer.buffer)) for writer in factory.writers]

    def rar(self, data: bytes, label: str, inner: str, depth: int) -> bool:
        """RAR: the listing (names, declared sizes, encryption), and stored members' content.

        rarfile reads the headers in pure Python, and members stored without compression
        (rar -m0) too; compressed members would need the external unrar tool, which is never
        run: their content is unknown, so each is ARCHIVE_MEMBER_UNREAD (quarantined by
        default) and recorded with family "other" so rules/attachments.toml still acts on
        its name.
        """
        with rarfile.RarFile(io.BytesIO(data)) as archive:
            infos: list[rarfile.RarInfo] = archive.infolist()
            if archive.needs_password() and not infos:  # header encryption: names hidden too
                self.add("ARCHIVE_ENCRYPTED", f"{label}: names encrypted too")
                if self.passwords:
                    self.add("ARCHIVE_PASSWORD_IN_BODY", f"{label}: the text offers a password")
                return True
            error = archive.strerror()
            if error:
                self.add("ARCHIVE_CORRUPT", f"{label}: {error}")
            locked = False
            for info in infos:
                self.deadline.check()
                self._member_budget(label)
                member = str(info.filename)
                self._path_checks(member, label)
                if info.is_symlink():
                    self.add("ARCHIVE_SYMLINK", f"{label}: {member[:80]}")
                    continue
                if info.is_dir():
                    continue
                self.check_names((member,), label)
                ext = self.name_checks(member, f"{label} {member}")
                encrypted = bool(info.needs_password())
                if encrypted:
                    self.add("ARCHIVE_ENCRYPTED", f"{label}: {member[:80]}")
                    locked = True
                size = int(info.file_size or 0)
                limit = self._read_limit(int(info.compress_size or 0))
                readable = not encrypted and size <= limit
                if size > limit:
                    self.add("ARCHIVE_BOMB", f"{label}: {member[:60]} declares {size}")
                if readable and info.compress_type == rarfile.RAR_M0:
                    with archive.open(info) as handle:
                        content = handle.read(limit + 1)
                    if self._expanded(len(content), limit, f"{label}: {member[:60]}"):
                        self.scan_file(content, member, None, inner, depth + 1, True)
                    continue
                if readable and size:
                    self.add("ARCHIVE_MEMBER_UNREAD", f"{label}: {member[:80]}")
                self.files.append(
                    FileFacts(
                        origin=inner,
                        name=member,
                        extension=ext,
                        family="other",  # content unknown: compressed RAR members are not read
                        mime_type="application/octet-stream",
                        size=size,
                        archive_depth=depth + 1,
                        encrypted=encrypted,
                        extensions=(ext,) if ext else (),
                    )
                )
        if locked and self.passwords:
            self.add("ARCHIVE_PASSWORD_IN_BODY", f"{label}: the text offers a password")
        return locked

    def compressed(self, data: bytes, kind: str, name: str | None, inner: str, depth: int) -> None:
        label = f"{inner} ({kind})"
        self._member_budget(label)
        limit = self._read_limit(len(data))
        out = bytearray()
        rest = data
        while rest and len(out) <= limit:
            self.deadline.check()
            want = limit + 1 - len(out)
            if kind == "gzip":
                gz = zlib.decompressobj(wbits=47)
                out += gz.decompress(rest, want)
                rest = gz.unused_data if not gz.unconsumed_tail else b""
            elif kind == "bzip2":
                bzd = bz2.BZ2Decompressor()
                out += bzd.decompress(rest, want)
                rest = bzd.unused_data if bzd.eof else b""
            elif kind == "zstd":
                out += carriers.zstd_decompress(rest, want - 1)
                rest = b""
            else:
                xzd = lzma.LZMADecompressor()
                out += xzd.decompress(rest, want)
                rest = xzd.unused_data if xzd.eof else b""
            rest = rest.lstrip(b"\x00")
        if not self._expanded(len(out), limit, label):
            return
        names = _compressed_names(data, kind, name)
        if names:
            self.check_names(names, label)
        inner_name = names[0] if names else None
        self.scan_file(bytes(out), inner_name, None, inner, depth + 1, True, names[1:])


_COMPRESSED_SUFFIXES = (
    (".tgz", ".tar"),
    (".tzst", ".tar"),
    (".gz", ""),
    (".bz2", ""),
    (".xz", ""),
    (".lzma", ""),
    (".zst", ""),
)
_TRAILING_GROUP = re.compile(r"\s*[(\[][^()\[\]]{0,20}[)\]]\s*$")


def _zip_unicode_path(extra: bytes) -> tuple[str, ...]:
    """The Info-ZIP Unicode Path (extra field 0x7075) of a zip member, if it has one."""
    at = 0
    while at + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + size]
        if kind == 0x7075 and len(body) > 5 and body[0] == 1:
            return (body[5:].decode("utf-8", "replace")[:1024],)
        at += 4 + size
    return ()


def _distinct_names(names: tuple[str, ...]) -> set[str]:
    """The names that say different things: base names, case and white space runs aside, and
    not a name another one only lengthens. Thunderbird names its OpenPGP signature
    "OpenPGP_signature" in one field and "OpenPGP_signature.asc" in the other, and a reading
    that cut a long name is the front of it; the longer name is checked like every other, so
    "invoice.pdf" beside "invoice.pdf.exe" is still the executable it is."""
    bases = {" ".join(n.replace("\\", "/").rsplit("/", 1)[-1].split()).lower() for n in names}
    return {b for b in bases if not any(o != b and o.startswith(b) for o in bases)}


def _compressed_names(data: bytes, kind: str, name: str | None) -> tuple[str, ...]:
    """Names of a compressed file's content: the outer name without its suffix (what 7-Zip and
    Windows save it as) and, for gzip, the name stored in the header (what gunzip -N uses)."""
    names: list[str] = []
    if name:
        lower = name.lower()
        for suffix, replacement in _COMPRESSED_SUFFIXES:
            if lower.endswith(suffix):
                names.append(name[: len(name) - len(suffix)] + replacement)
                break
    if kind == "gzip" and len(data) > 10 and data[3] & 0x08:  # FNAME
        at = 10
        if data[3] & 0x04:  # FEXTRA
            at += 2 + int.from_bytes(data[10:12], "little")
        end = data.find(b"\x00", at, at + 1024)
        if end > at:
            stored = data[at:end].decode("latin-1")
            if stored not in names:
                names.append(stored)
    return tuple(names)


def _shown_extension(segment: str) -> bool:
    """Whether the text before a dangerous extension reads as a file type to the user.

    "invoice.pdf.exe" and "invoice.pdf (1).exe" (a browser's second download) do; a version or
    a date in brackets does not: "setup (1.2.3).msi" splits into "2", "3)" and "msi", and
    "3)" names no type."""
    segment = _TRAILING_GROUP.sub("", segment).strip()
    if segment in _EXTENSION_FAMILY:
        return True
    if segment in _BUILD_TOKENS:
        return False
    return 0 < len(segment) <= 5 and segment.isalnum() and segment[0].isalpha()


_BUILD_TOKENS = frozenset({"x86", "x64", "amd64", "arm64", "win32", "win64", "setup"})


class _MemoryWriter(py7zr.io.Py7zIO):
    """One 7z member decoded into memory, kept to `limit` + 1 bytes."""

    def __init__(self, name: str, limit: int, deadline: Deadline) -> None:
        self.name = name
        self.limit = limit
        self.deadline = deadline
        self.buffer = bytearray()

    def write(self, s: bytes | bytearray) -> int:
        self.deadline.check()
        room = self.limit + 1 - len(self.buffer)
        if room > 0:
            self.buffer += s[:room]
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        return bytes(self.buffer if size is None else self.buffer[:size])

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return len(self.buffer)


class _MemoryFactory(py7zr.io.WriterFactory):
    def __init__(self, limit: int, deadline: Deadline) -> None:
        self.limit = limit
        self.deadline = deadline
        self.writers: list[_MemoryWriter] = []

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        writer = _MemoryWriter(filename, self.limit, self.deadline)
        self.writers.append(writer)
        return writer


class _HeavyContent(Exception):
    """A light scan met an archive or a document."""


def scan_light(report: MimeReport, limits: MimeSettings = DEFAULT_LIMITS) -> ContentReport | None:
    """The scan, or None as soon as it meets an archive or a document (whose inspection can
    take up to the time budget) or runs past LIGHT_TIME_BUDGET: then run `scan` where a long
    wait blocks nobody (a thread).
    Text, HTML and images alone are bounded by the message's size and take about a millisecond
    for ordinary mail, which is cheaper on the event loop than a thread hop."""
    return _run(report, limits, light_only=True)


# The light scan's own time budget: past it (hostile HTML, a pathological text), the scan is
# left to a thread with the full budget rather than holding the event loop any longer.
LIGHT_TIME_BUDGET = 0.1


def scan(report: MimeReport, limits: MimeSettings = DEFAULT_LIMITS) -> ContentReport:
    """The content scan of every leaf of `report`; never raises, stops at its budgets."""
    result = _run(report, limits, light_only=False)
    assert result is not None
    return result


def _run(report: MimeReport, limits: MimeSettings, light_only: bool) -> ContentReport | None:
    started = time.monotonic()
    scanner = _Scanner(report, limits)
    scanner.light_only = light_only
    if light_only:
        seconds = min(limits.scan_time_budget, LIGHT_TIME_BUDGET)
        scanner.deadline = Deadline(seconds, "ATT_LIMIT_TIME")
    complete = True
    try:
        for leaf in report.leaves:
            scanner.scan_leaf(leaf)
    except _HeavyContent:
        return None
    except BudgetExceeded as exc:
        if light_only:
            return None
        complete = False
        scanner.add(exc.symbol, exc.detail)
    except Exception as exc:  # a bug on hostile input must not pass the message unscanned
        complete = False
        scanner.add("ATT_UNSCANNABLE", f"scan failed: {type(exc).__name__}")
    return ContentReport(
        findings=scanner.findings(),
        files=tuple(scanner.files),
        complete=complete,
        elapsed=time.monotonic() - started,
    )
