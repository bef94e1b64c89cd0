"""The oletools samples in ../shared/mime/oletools give the expected symbols, as mail attachments.

Each sample is attached to a message (base64) and goes through the whole stage: the MIME parse,
then the content scan. The encrypted .zip samples (password `infected-test`) are opened by the
test to get the document inside, and also sent as they are, with and without the password in
the message text: the gateway notices the password and scans what it protects.
"""

from __future__ import annotations

import pytest
from mime_samples import OLETOOLS, inspect, oletools_sample, with_attachment

pytestmark = pytest.mark.skipif(not OLETOOLS.is_dir(), reason="../shared/mime is not here")

DOC = {"DOC_VBA_MACRO", "DOC_VBA_AUTOEXEC", "DOC_XLM_MACRO", "DOC_DDE", "DOC_OLE_EMBEDDED"}
DOC |= {"DOC_EXTERNAL_LINK", "DOC_REMOTE_TEMPLATE", "DOC_ENCRYPTED"}

EXPECTED: dict[str, set[str]] = {
    "olevba/sample_with_vba.ppt": {"DOC_VBA_MACRO", "DOC_VBA_AUTOEXEC"},
    "oleform/oleform-PR314.docm": {"DOC_VBA_MACRO", "DOC_VBA_AUTOEXEC"},
    "excel4-macros/excel4_sample_macro.xls": {"DOC_XLM_MACRO"},
    "excel4-macros/excel4_sample_macro.xlsm": {"DOC_XLM_MACRO"},
    "excel4-macros/excel4_sample_macro.xlsb": {"DOC_XLM_MACRO"},
    "excel4-macros/excel4_sample_macro.xlt": {"DOC_XLM_MACRO"},
    "excel4-macros/excel4_sample_macro.xltm": {"DOC_XLM_MACRO"},
    "excel4-macros/excel4_sample_macro.slk": {"DOC_XLM_MACRO"},
    "excel4-macros/excel4_sample_macro_excel5_format.xls": {"DOC_XLM_MACRO"},
    "msodde/dde-test.docx": {"DOC_DDE"},
    "msodde/dde-test.docm": {"DOC_DDE"},
    "msodde/dde-test.xlsx": {"DOC_DDE"},
    "msodde/dde-test.xlsm": {"DOC_DDE"},
    "msodde/dde-test.xlsb": {"DOC_DDE"},
    "msodde/dde-in-csv.csv": {"DOC_DDE"},
    "msodde/dde-in-excel2003.xml": {"DOC_DDE"},
    "msodde/dde-in-word2003.xml.zip": {"DOC_DDE"},
    "msodde/dde-in-word2007.xml.zip": {"DOC_DDE"},
    "msodde/dde-test-from-office2003.doc.zip": {"DOC_DDE"},
    "msodde/dde-test-from-office2016.doc.zip": {"DOC_DDE"},
    "msodde/dde-test-from-office2013-utf_16le-korean.doc.zip": {"DOC_DDE"},
    "oleobj/embedded-simple-2007.doc": {"DOC_OLE_EMBEDDED"},
    "oleobj/embedded-simple-2007.docx": {"DOC_OLE_EMBEDDED"},
    "oleobj/embedded-simple-2007.xls": {"DOC_OLE_EMBEDDED"},
    "oleobj/embedded-simple-2007.xlsx": {"DOC_OLE_EMBEDDED"},
    "oleobj/embedded-simple-2007.ppt": {"DOC_OLE_EMBEDDED"},
    "oleobj/embedded-simple-2007.pptx": {"DOC_OLE_EMBEDDED"},
    "oleobj/embedded-simple-2007.odt": {"DOC_OLE_EMBEDDED"},
    "oleobj/embedded-simple-2007-as2003.xml": {"DOC_OLE_EMBEDDED"},
    "oleobj/sample_with_calc_embedded.doc": {"DOC_OLE_EMBEDDED"},
    "oleobj/sample_with_lnk_file.ppt": {"DOC_OLE_EMBEDDED"},
    "rtfobj/issue_251.rtf": {"DOC_OLE_EMBEDDED"},
    "rtfobj/issue_185.rtf.zip": {"DOC_OLE_EMBEDDED"},
    "oleobj/external_link/sample_with_external_link_to_doc.docx": {"DOC_REMOTE_TEMPLATE"},
    "oleobj/external_link/sample_with_external_link_to_doc.xlsx": {"DOC_REMOTE_TEMPLATE"},
    "oleobj/external_link/sample_with_external_link_to_doc.pptx": {"DOC_REMOTE_TEMPLATE"},
    "encrypted/encrypted.docx": {"DOC_ENCRYPTED"},
    "encrypted/encrypted.doc": {"DOC_ENCRYPTED"},
    "encrypted/encrypted.xls": {"DOC_ENCRYPTED"},
    "encrypted/encrypted.pptx": {"DOC_ENCRYPTED"},
    "basic/encrypted.docx": {"DOC_ENCRYPTED"},
    # Excel's default password opens these without a prompt: decrypted and inspected
    "encrypted/autostart-encrypt-standardpassword.xls": {
        "DOC_ENCRYPTED",
        "DOC_VBA_MACRO",
        "DOC_VBA_AUTOEXEC",
    },
    "encrypted/autostart-encrypt-standardpassword.xlsm": {
        "DOC_ENCRYPTED",
        "DOC_VBA_MACRO",
        "DOC_VBA_AUTOEXEC",
    },
    "encrypted/dde-test-encrypt-standardpassword.xlsx": {"DOC_ENCRYPTED", "DOC_DDE"},
    "encrypted/dde-test-encrypt-standardpassword.xls": {"DOC_ENCRYPTED", "DOC_DDE"},
    # clean documents: no DOC_* symbol at all
    "msodde/harmless-clean.doc": set(),
    "msodde/harmless-clean.docx": set(),
    "msodde/harmless-clean.docm": set(),
    "msodde/harmless-clean-2003.xml": set(),
    "msodde/harmless-clean.xml": set(),
}


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_sample_gives_expected_symbols(sample: str) -> None:
    data = oletools_sample(sample)
    name = sample.rsplit("/", 1)[-1].removesuffix(".zip")
    _report, content, symbols = inspect(with_attachment(data, name))
    assert symbols & DOC == EXPECTED[sample], sorted(symbols)
    assert content.complete


def test_every_sample_goes_through_without_error() -> None:
    for path in sorted(p for p in OLETOOLS.rglob("*") if p.is_file()):
        _report, content, symbols = inspect(with_attachment(path.read_bytes(), path.name))
        assert "ATT_UNSCANNABLE" not in symbols, path
        assert content.complete, path


def test_encrypted_zip_is_flagged_and_the_password_in_the_text_is_used() -> None:
    sample = (OLETOOLS / "msodde" / "dde-test-from-office2016.doc.zip").read_bytes()
    symbols = inspect(with_attachment(sample, "invoice.zip"))[2]
    assert "ARCHIVE_ENCRYPTED" in symbols
    assert "DOC_DDE" not in symbols  # cannot be seen without the password
    body = "Your invoice is attached. The password is infected-test"
    symbols = inspect(with_attachment(sample, "invoice.zip", body=body))[2]
    assert {"ARCHIVE_ENCRYPTED", "ARCHIVE_PASSWORD_IN_BODY", "DOC_DDE"} <= symbols
