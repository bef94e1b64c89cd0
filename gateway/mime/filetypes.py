"""File type vocabulary shared by the content scan and the attachment policy (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass

EXECUTABLE_EXTENSIONS = frozenset(
    [
        "exe",
        "dll",
        "scr",
        "com",
        "pif",
        "cpl",
        "msi",
        "msp",
        "mst",
        "lnk",
        "sys",
        "ocx",
        "drv",
        "gadget",
        "application",
        "appx",
        "appxbundle",
        "msix",
        "msixbundle",
        "reg",
        "scf",
        "inf",
        "jar",
        "hlp",
        "chm",
        "msc",
        "url",
        "xll",
        "xbap",
        "website",
        # run or install something when opened, as abused in campaigns: Windows search and
        # library descriptions that point at a remote share, ClickOnce and App Installer
        # references, troubleshooter packs, update packages, sandbox configs, data links,
        # Excel web queries and SYLK (DDE), OneNote notebooks with embedded files, RDP
        # connections to an attacker's host
        "appref-ms",
        "library-ms",
        "search-ms",
        "searchconnector-ms",
        "appinstaller",
        "diagcab",
        "msu",
        "wsb",
        "udl",
        "iqy",
        "slk",
        "one",
        "onepkg",
        "rdp",
    ]
)
SCRIPT_EXTENSIONS = frozenset(
    [
        "js",
        "jse",
        "vbs",
        "vbe",
        "wsf",
        "wsh",
        "wsc",
        "hta",
        "ps1",
        "psm1",
        "psd1",
        "ps1xml",
        "bat",
        "cmd",
        "sct",
        "vb",
        "ws",
        "shs",
        "msh",
        "msh1",
        "msh2",
        "mshxml",
        "settingcontent-ms",
    ]
)
DISK_IMAGE_EXTENSIONS = frozenset(["iso", "img", "vhd", "vhdx", "udf", "dmg"])


@dataclass(frozen=True, slots=True)
class FileFacts:
    """One inspected file: a MIME leaf or an archive member."""

    origin: str
    name: str | None
    extension: str
    family: str
    mime_type: str
    size: int
    archive_depth: int
    encrypted: bool = False
    macros: bool = False
    extensions: tuple[str, ...] = ()  # the last extension of every name the file goes by
