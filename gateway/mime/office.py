"""Office documents in memory: VBA and Excel 4 macros, DDE, embedded OLE, links, encryption.

oletools does the format work (olevba, msodde, oleobj; msoffcrypto for encryption) on bytes: no
document is written to disk. Documents encrypted with Excel's well-known default password
("VelvetSweatshop", which opens without a prompt) are decrypted in memory and inspected too.
oletools is imported with its import-time deprecation warnings silenced; its loggers stay quiet.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import msoffcrypto
    import olefile
    from oletools import msodde, oleobj, olevba, rtfobj

for _name in ("olevba", "msodde", "oleobj", "ooxml", "xls_parser", "rtfobj", "crypto", "olefile"):
    logging.getLogger(_name).setLevel(logging.CRITICAL + 1)

_EXCEL_DEFAULT_PASSWORD = "VelvetSweatshop"
_VBA_TYPES = frozenset({"OLE", "OpenXML", "Word2003_XML", "FlatOPC_XML", "MHTML", "SLK", "PPT"})
_DDE_FIELD = re.compile(r"DDE(?:AUTO)?\b", re.I)
_XML_OBJECT = re.compile(rb"<o:OLEObject\b|/embeddings/|<w:binData\b[^>]*\.bin", re.I)
_DDE_FORMULA = re.compile(rb"""(?:^|[\s,;"'>=])[=+\-@]\s*[\w.]+\s*\|\s*['"]""", re.M)
_XML_DDE = re.compile(
    rb"""instrText[^>]*>\s*(?:&quot;|")?\s*DDE(?:AUTO)?\b|instr=["']\s*DDE(?:AUTO)?\b|ddeLink""",
    re.I,
)
_REL = re.compile(rb"<Relationship\b[^>]*>", re.I)
_REL_TYPE = re.compile(rb"""Type=["'][^"']*/([A-Za-z]+)["']""")
_EXTERNAL_TYPES = frozenset(
    {"attachedTemplate", "oleObject", "frame", "subDocument", "externalLinkPath", "package"}
)
# relationships Word follows when the document opens: a remote target is a loader (template
# injection: APT28, Gamaredon, Follina's mhtml: objects)
_LOADER_TYPES = frozenset({"attachedTemplate", "oleObject", "frame", "subDocument"})
_REL_TARGET = re.compile(rb"""Target\s*=\s*["']([^"']*)["']""")
# a template on this computer (Word writes the user's Normal.dotm as file:///C:\...): no loader
_RTF_TEMPLATE = re.compile(rb"\{\\\*\\template\s*([^}]{1,300})\}", re.I)
_LOCAL_TARGET = re.compile(r"^(?:file:/{3})?[a-z]:[\\/]", re.I)
_MAX_TEXT_SCAN = 8 * 1024 * 1024
_MAX_RTF_PARSE = 1024 * 1024
_RTF_DDE = re.compile(rb"(?<!\\)\\fldinst[^}]{0,200}?DDE(?:AUTO)?\b", re.I)
_RTF_OBJECT = re.compile(rb"(?<!\\)\\obj(?:data|emb|link|autlink|ocx)\b", re.I)


_MAX_PACKAGES = 16  # embedded files taken out of one document
_MAX_PACKAGE_BYTES = 32 * 1024 * 1024  # of all of them together


@dataclass
class OfficeResult:
    findings: list[tuple[str, str]] = field(default_factory=list)
    encrypted: bool = False
    macros: bool = False
    # files embedded as objects (OLE Package, a document in /embeddings/): (name, content),
    # opened by a double click on their icon, so scanned like archive members
    files: list[tuple[str | None, bytes]] = field(default_factory=list)

    def add(self, symbol: str, detail: str) -> None:
        if (symbol, detail) not in self.findings:
            self.findings.append((symbol, detail))


def is_office(data: bytes) -> bool:
    return _is_ole(data) or data.startswith((b"{\\rt", b"ID;P")) or _is_ooxml(data)


_OFFICE_TEXT_EXTENSIONS = frozenset({"csv", "xml", "slk", "iqy", "dif", "mht", "mhtml"})
_OFFICE_XML = re.compile(
    rb"<\?mso-application|schemas-microsoft-com:office|schemas\.microsoft\.com/office", re.I
)


def is_office_text(data: bytes, extension: str) -> bool:
    """Text formats Office opens (CSV, SYLK, Office XML, MHT): they carry DDE and macros too."""
    return extension in _OFFICE_TEXT_EXTENSIONS or bool(_OFFICE_XML.search(data[:65536]))


def _is_ole(data: bytes) -> bool:
    # olefile.isOleFile treats short bytes as a file name: never hand it bytes
    return len(data) >= 1536 and data.startswith(olefile.MAGIC)


def _is_ooxml(data: bytes) -> bool:
    if not data.startswith(b"PK"):
        return False
    head = data[:65536]
    return b"[Content_Types].xml" in head or b"mimetypeapplication/vnd.oasis" in head


def inspect(data: bytes, name: str, depth: int = 0) -> OfficeResult:
    """Everything oletools can tell about one document; exceptions mean 'cannot tell'."""
    result = OfficeResult()
    _inspect(data, name, result, depth)
    return result


def _inspect(data: bytes, name: str, result: OfficeResult, depth: int) -> None:
    decrypted = _encryption(data, name, result)
    if decrypted is not None and depth == 0:
        _inspect(decrypted, name, result, depth + 1)
        return
    if result.encrypted:
        return
    _macros(data, name, result)
    _dde(data, result)
    _embedded(data, name, result)
    _packages(data, name, result)


def _packages(data: bytes, name: str, result: OfficeResult) -> None:
    """Files embedded in the document: OLE Package objects (a file with its name, as Word,
    Excel, PowerPoint and RTF carry them) and whole documents under /embeddings/."""
    budget = _MAX_PACKAGE_BYTES

    def keep(file_name: str | None, content: bytes) -> bool:
        nonlocal budget
        if len(result.files) >= _MAX_PACKAGES or len(content) > budget:
            return False
        budget -= len(content)
        result.files.append((file_name, content))
        return True

    with contextlib.suppress(Exception):
        if data.startswith(b"{\\rt"):
            if len(data) > _MAX_RTF_PARSE and _RTF_OBJECT.search(data):
                # too large to parse for its objects: what they hold is unknown
                result.add("ATT_UNSCANNABLE", f"{name}: RTF objects past {_MAX_RTF_PARSE} bytes")
            if len(data) <= _MAX_RTF_PARSE:
                parser = rtfobj.RtfObjParser(data)
                parser.parse()
                for obj in parser.objects:
                    package = bytes(obj.olepkgdata or b"") if obj.is_package else b""
                    if package and not keep(obj.filename or None, package):
                        return
            return
        for ole in oleobj.find_ole(name or "doc", data):
            if ole is None:
                continue
            for path in ole.listdir()[:1000]:
                if path[-1] != "\x01Ole10Native":
                    continue
                native = oleobj.OleNativeStream(ole.openstream(path).read(), package=False)
                content = native.data or b""
                if content and not keep(native.filename or None, bytes(content)):
                    return
        if _is_ooxml(data):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in archive.infolist()[:10000]:
                    lower = info.filename.lower()
                    if "/embeddings/" not in lower or lower.endswith(".bin"):
                        continue  # OLE objects (.bin) were read above
                    if info.file_size > budget:
                        return
                    with archive.open(info) as member:
                        content = member.read(budget + 1)
                    if not keep(info.filename.rsplit("/", 1)[-1], content):
                        return


def _encryption(data: bytes, name: str, result: OfficeResult) -> bytes | None:
    if not (_is_ole(data) or _is_ooxml(data)):
        return None
    try:
        office = msoffcrypto.OfficeFile(io.BytesIO(data))
        encrypted = bool(office.is_encrypted())
    except Exception:
        return None
    if not encrypted:
        return None
    result.encrypted = True
    result.add("DOC_ENCRYPTED", name)
    try:
        office.load_key(password=_EXCEL_DEFAULT_PASSWORD)
        out = io.BytesIO()
        office.decrypt(out)
    except Exception:
        return None
    result.encrypted = False  # opens without a password: the content is inspected
    return out.getvalue()


def _macros(data: bytes, name: str, result: OfficeResult) -> None:
    parser: Any = None
    try:
        parser = olevba.VBA_Parser(name or "attachment", data=data, relaxed=True)
        if parser.type not in _VBA_TYPES:
            return
        if parser.detect_vba_macros():
            result.macros = True
            result.add("DOC_VBA_MACRO", name)
            for kind, keyword, _description in parser.analyze_macros() or []:
                if kind == "AutoExec":
                    result.add("DOC_VBA_AUTOEXEC", f"{name}: {keyword}"[:120])
                    break
        if parser.detect_xlm_macros():
            result.macros = True
            result.add("DOC_XLM_MACRO", name)
    except Exception:
        pass
    finally:
        if parser is not None:
            with contextlib.suppress(Exception):
                parser.close()
    names = _zip_names(data)
    if any(n.lower().startswith("xl/macrosheets/") for n in names):
        result.macros = True
        result.add("DOC_XLM_MACRO", name)


def _zip_names(data: bytes) -> list[str]:
    if not _is_ooxml(data):
        return []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.namelist()[:10000]
    except Exception:
        return []


def _zip_texts(data: bytes, pattern: str) -> Iterator[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            budget = _MAX_TEXT_SCAN
            for info in archive.infolist()[:10000]:
                if budget <= 0:
                    return
                if re.search(pattern, info.filename, re.I) and info.file_size <= budget:
                    with archive.open(info) as member:
                        text = member.read(budget)
                    budget -= len(text)
                    yield info.filename, text
    except Exception:
        return


def _dde(data: bytes, result: OfficeResult) -> None:
    text = ""
    excel = False
    try:
        if _is_ole(data):
            with olefile.OleFileIO(data) as ole:
                text = msodde.process_doc(ole)
            if not text:
                text, excel = msodde.process_xls(data), True
        elif data.startswith(b"{\\rt"):
            if len(data) > _MAX_RTF_PARSE:  # oletools' RTF parser is pure Python: ~1 s/MiB
                if _RTF_DDE.search(data):
                    result.add("DOC_DDE", "RTF field")
                return
            text = msodde.process_rtf(io.BytesIO(data))
        elif _is_ooxml(data):
            for _name, xml in _zip_texts(data, r"\.xml$"):
                if _XML_DDE.search(xml):
                    result.add("DOC_DDE", _name)
                    return
            text, excel = msodde.process_xlsx(io.BytesIO(data)), True
        else:
            head = data[:_MAX_TEXT_SCAN]
            if _XML_DDE.search(head) or _DDE_FORMULA.search(head):
                result.add("DOC_DDE", "field or formula")
            return
    except Exception:
        return
    cleaned = text.replace("\x00", "") if isinstance(text, str) else ""
    for line in cleaned.splitlines():
        # Word fields: only DDE and DDEAUTO run commands; Excel SupBook links are DDE/OLE links
        if _DDE_FIELD.match(line.strip()) or (excel and line.strip()):
            result.add("DOC_DDE", line.strip()[:100])
            return


def _relationship(rel: bytes, result: OfficeResult) -> None:
    """An external relationship: DOC_REMOTE_TEMPLATE when Word loads it from afar on open,
    DOC_EXTERNAL_LINK for other links (a workbook's external references, packages)."""
    kind_match = _REL_TYPE.search(rel)
    if b"External" not in rel or not kind_match:
        return
    kind = kind_match.group(1).decode()
    if kind not in _EXTERNAL_TYPES:
        return
    target_match = _REL_TARGET.search(rel)
    target = target_match.group(1).decode("utf-8", "replace") if target_match else ""
    target = target.replace("&amp;", "&").strip()
    if _LOCAL_TARGET.match(target):
        return  # the author's own template or file, never fetched from elsewhere
    if kind in _LOADER_TYPES and target:
        result.add("DOC_REMOTE_TEMPLATE", f"{kind} {target[:80]}")
    else:
        result.add("DOC_EXTERNAL_LINK", kind)


def _embedded(data: bytes, name: str, result: OfficeResult) -> None:
    try:
        if _is_ole(data):
            with olefile.OleFileIO(data) as ole:
                for path in ole.listdir(streams=True, storages=True):
                    if path[-1] == "\x01Ole10Native" or (path[0] == "ObjectPool" and len(path) > 1):
                        result.add("DOC_OLE_EMBEDDED", "/".join(path[:2]).strip("\x01"))
                        return
            found = sum(
                1
                for ole in oleobj.find_ole(name or "doc", data)
                if ole is not None and not ole.exists("PROJECT") and not ole.exists("VBA")
            )
            if found > 1:
                result.add("DOC_OLE_EMBEDDED", "PowerPoint object")
            return
        if data.startswith(b"{\\rt"):
            # the whole file (a literal test first): padding must not hide the template
            templates = _RTF_TEMPLATE.finditer(data) if b"\\template" in data else iter(())
            for match in templates:
                target = match.group(1).decode("latin-1").strip()
                if target and not _LOCAL_TARGET.match(target):
                    result.add("DOC_REMOTE_TEMPLATE", f"RTF template {target[:80]}")
                    break
            if len(data) > _MAX_RTF_PARSE:
                if _RTF_OBJECT.search(data):
                    result.add("DOC_OLE_EMBEDDED", "RTF object")
                return
            parser = rtfobj.RtfObjParser(data)
            parser.parse()
            if parser.objects:
                result.add("DOC_OLE_EMBEDDED", f"{len(parser.objects)} RTF objects")
            return
        if not _is_ooxml(data):
            if _XML_OBJECT.search(data[:_MAX_TEXT_SCAN]):
                result.add("DOC_OLE_EMBEDDED", "object in Office XML")
            return
        names = _zip_names(data)
        for member in names:
            lower = member.lower()
            if "/embeddings/" in lower or (lower.startswith("object ") and "/" not in lower):
                result.add("DOC_OLE_EMBEDDED", member[:100])
                break
        for _name, xml in _zip_texts(data, r"\.rels$"):
            for rel in _REL.findall(xml):
                _relationship(rel, result)
    except Exception:
        return
