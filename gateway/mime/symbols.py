"""Every symbol of the MIME, attachment and antivirus stages, with its description.

Plugins declare these (the registry refuses duplicates and rules/ must score each one); the
analysis code asserts it only emits symbols listed here.
"""

from __future__ import annotations

MIME_SYMBOLS: dict[str, str] = {
    "MIME_UNSCANNABLE": "part of the message could not be parsed or decoded (scanned as raw bytes)",
    "MIME_AMBIGUOUS": "the message reads differently to different clients; every reading scanned",
    "MIME_MISSING_BOUNDARY": "a multipart without a boundary, or whose boundary never appears",
    "MIME_UNTERMINATED_MULTIPART": "a multipart whose closing boundary is missing",
    "MIME_DUPLICATE_BOUNDARY": "a Content-Type with two boundary parameters (CVE-2024-28054)",
    "MIME_BOUNDARY_CONFLICT": "a nested boundary equal to, or a prefix of, an enclosing one",
    "MIME_DUPLICATE_CONTENT_TYPE": "an entity with two Content-Type fields",
    "MIME_DUPLICATE_CTE": "an entity with two Content-Transfer-Encoding fields",
    "MIME_DUPLICATE_DISPOSITION": "an entity with two Content-Disposition fields",
    "MIME_BAD_CTE": "a Content-Transfer-Encoding RFC 2045 does not define, or not allowed there",
    "MIME_BAD_BASE64": "base64 with invalid characters, padding or length",
    "MIME_UUENCODED": "uuencoded content inside a text part (clients show it as an attachment)",
    "MIME_HEADER_FOLDED_HIDE": "a header folded to hide a field or to end the header early",
    "MIME_HEADER_MALFORMED": "a malformed header section (continuation first, no separator...)",
    "MIME_DEFECT": "another structural defect recorded by the parser",
    "MIME_NUL_BYTE": "NUL bytes in the message",
    "MIME_8BIT_IN_7BIT": "8-bit data in a part declared 7bit, quoted-printable or base64",
    "MIME_LIMIT_HEADERS": "too many header fields, or a header section too large",
    "MIME_LIMIT_PARTS": "more MIME parts than the budget",
    "MIME_LIMIT_DEPTH": "MIME nesting deeper than the budget",
    "MIME_LIMIT_PARAMS": "a Content-Type or Content-Disposition field over the parameter budget",
    "MIME_LIMIT_DECODED": "more decoded content than the budget",
    "MIME_LIMIT_TIME": "parsing took longer than the time budget",
}

ATTACHMENT_SYMBOLS: dict[str, str] = {
    # names and types
    "ATT_EXECUTABLE": "an executable program (by content, or by an executable name extension)",
    "ATT_SCRIPT": "a script a double-click runs (js, vbs, wsf, hta, ps1, bat, cmd...)",
    "ATT_DISK_IMAGE": "a disk image (iso, img, vhd) that Windows mounts on a double-click",
    "ATT_DOUBLE_EXTENSION": "a file name with a harmless extension before a dangerous one",
    "ATT_RTLO": "bidirectional control characters in a file name (hide the real extension)",
    "ATT_NAME_MISMATCH": "the file name's extension disagrees with what the content is",
    "ATT_CTYPE_MISMATCH": "the declared Content-Type lies about what the content is",
    "ATT_NAME_AMBIGUOUS": "an attachment with several different file names",
    "ATT_EICAR_TEST": "the EICAR anti-virus test file (harmless; proves scanning works)",
    "ATT_UNSCANNABLE": "an attachment whose content could not be inspected",
    "ATT_LIMIT_TIME": "the attachment scan took longer than its time budget",
    # archives
    "ARCHIVE_ENCRYPTED": (
        "an encrypted archive or member (its content cannot be scanned); a 7z or RAR with"
        " encrypted headers hides even its member names"
    ),
    "ARCHIVE_PASSWORD_IN_BODY": "an encrypted archive whose password is in the message text",
    "ARCHIVE_BOMB": (
        "an archive member that expands past the ratio or size limits (zip bomb), or declares"
        " a size past them (7z and RAR: the sizes in the listing)"
    ),
    "ARCHIVE_TOO_DEEP": "archives nested deeper than the limit",
    "ARCHIVE_TOO_MANY_MEMBERS": "more archive members than the limit",
    "ARCHIVE_PATH_TRAVERSAL": "an archive member with an absolute path or '..' component",
    "ARCHIVE_SYMLINK": "an archive member that is a symbolic or hard link",
    "ARCHIVE_UNSUPPORTED": (
        "an archive format that is not opened here (cab, arj, lzh...); RAR is listed (names,"
        " declared sizes, encryption) but never extracted, so its members' content is unknown"
    ),
    "ARCHIVE_CORRUPT": "an archive that cannot be read",
    # documents
    "DOC_VBA_MACRO": "an Office document with VBA macros",
    "DOC_VBA_AUTOEXEC": "VBA macros that run on open or close (AutoOpen, Document_Open...)",
    "DOC_XLM_MACRO": "an Excel 4 (XLM) macro sheet",
    "DOC_DDE": "a DDE field or link (runs a command when the document updates links)",
    "DOC_OLE_EMBEDDED": "an Office document with an embedded OLE object or package",
    "DOC_EXTERNAL_LINK": "an Office document that loads a template or object from outside",
    "DOC_ENCRYPTED": "an encrypted Office document (its content cannot be scanned)",
    "PDF_JAVASCRIPT": "a PDF with JavaScript",
    "PDF_OPENACTION": "a PDF with an action run on open (OpenAction, AA)",
    "PDF_LAUNCH": "a PDF with a Launch action (runs a program)",
    "PDF_EMBEDDED_FILE": "a PDF with an embedded file",
    "HTML_SCRIPT": "HTML with script",
    "HTML_FORM": "HTML with a form (credential phishing)",
    "HTML_IFRAME": "HTML with an iframe, object or embed",
    "HTML_LAUNCH_URI": (
        "HTML that links or redirects to a Windows protocol handler that opens a program or a"
        " remote share (search-ms:, ms-msdt:, ms-appinstaller:, ms-officecmd:...)"
    ),
    "HTML_FRAME_REMOTE": (
        "HTML that shows a page from the web in a frame (iframe, frame, object, embed): an"
        " attachment that is only a window on a credential page"
    ),
    "HTML_HIDDEN_TEXT": "HTML text hidden from the reader (display:none, zero size...)",
    "HTML_PREHEADER": (
        "HTML whose only hidden text is a line or two (a newsletter's preheader for the inbox"
        " list, a notification's markup for mail clients): no evidence either way"
    ),
    "HTML_PASSWORD_FIELD": "HTML with a password field (a credential phishing page)",
    "HTML_SCRIPT_DECODE": (
        "script that decodes a payload in the browser (atob, unescape, fromCharCode, a Blob"
        " saved or opened): HTML smuggling"
    ),
    "HTML_SCRIPT_REDIRECT": "script that sends the reader to another address (location = ...)",
    "HTML_META_REFRESH": "a meta refresh that sends the reader to a web address",
    # -- containers, active HTML, documents (issue 13, mimeb) ---------------------------------
    "ATT_POLYGLOT": (
        "a file that is also an archive (zip readers open it from its end, 7-Zip and WinRAR"
        " find theirs inside), or zips one after another that readers open differently"
    ),
    "ATT_HTML_ACTIVE": (
        "an HTML or SVG attachment with script, a form or a redirect: a page opened from disk"
        " (credential phishing, HTML smuggling)"
    ),
    "ARCHIVE_MEMBER_UNREAD": (
        "an archive member whose content cannot be read here (a compressed RAR member: unrar"
        " is never run)"
    ),
    "PDF_ENCRYPTED": "a PDF that needs a password to open (its content cannot be scanned)",
    "DOC_REMOTE_TEMPLATE": (
        "an Office document that loads a template, frame or object from a remote address"
        " when opened (attachedTemplate: a known malware loader)"
    ),
    "HTML_ZERO_FONT": "HTML text in a zero-size font (hidden from the reader, read by filters)",
    "HTML_MANY_INVISIBLE": "HTML with many separate invisible pieces of text (word salting)",
    # -- end of the mimeb block -------------------------------------------------------------
    # policy (rules/attachments.toml)
    "ATT_POLICY_REJECT": "an attachment rules/attachments.toml refuses",
    "ATT_POLICY_QUARANTINE": "an attachment rules/attachments.toml sends to quarantine",
}

CLAMAV_SYMBOLS: dict[str, str] = {
    "CLAMAV_VIRUS": "ClamAV found malware (the detail names the signature)",
    "CLAMAV_UNAVAILABLE": "clamd could not be reached or did not answer in time",
    "CLAMAV_UNSCANNED": "clamd refused to scan the message (size limit or scan error)",
}
