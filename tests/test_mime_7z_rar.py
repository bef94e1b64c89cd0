"""7z and RAR attachments: 7z decoded in memory within the budgets, RAR listed only.

7z archives are built here with py7zr. RAR has no pure-Python writer, and neither ../shared nor
the rarfile package ships a .rar, so the RAR archives are RAR5 byte strings written from the
format description (`rar5_of` in mime_samples); rarfile reading a stored member back, CRC
checked, shows they are well formed.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import pytest
import rarfile
from mime_samples import (
    inspect,
    rar5_member,
    rar5_of,
    sevenzip_of,
    tiny_pe,
    with_attachment,
    zip_of,
)

from gateway.mime.budgets import DEFAULT_LIMITS
from gateway.mime.policy import AttachmentPolicy
from gateway.policy import load_rules
from gateway.verdict import Action

RULES = Path(__file__).resolve().parents[1] / "rules"

PASSWORD = "s3cret-Pw"
WITH_PASSWORD = f"The file is protected. Password: {PASSWORD}"


def _archive_symbols(symbols: set[str]) -> set[str]:
    return {s for s in symbols if s.startswith(("ARCHIVE_", "ATT_"))}


# -- 7z --------------------------------------------------------------------------------------


def test_a_plain_7z_is_opened_and_its_members_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # anything written to disk would land here
    harmless = sevenzip_of({"readme.txt": b"hello\n", "notes/plan.txt": b"a plan\n"})
    _, content, symbols = inspect(with_attachment(harmless, "docs.7z"))
    assert _archive_symbols(symbols) == set()
    assert {(f.name, f.family, f.archive_depth) for f in content.files} >= {
        ("readme.txt", "text", 1),
        ("notes/plan.txt", "text", 1),
    }
    archive = sevenzip_of({"readme.txt": b"hello\n", "docs/report.pdf.exe": tiny_pe()})
    _, content, symbols = inspect(with_attachment(archive, "docs.7z"))
    assert {"ATT_EXECUTABLE", "ATT_DOUBLE_EXTENSION"} <= symbols
    assert "ARCHIVE_UNSUPPORTED" not in symbols
    member = next(f for f in content.files if f.name == "docs/report.pdf.exe")
    assert (member.family, member.archive_depth) == ("executable", 1)  # by content, decoded
    assert list(tmp_path.iterdir()) == []


def test_true_type_of_a_7z_member_is_checked_not_only_its_name() -> None:
    archive = sevenzip_of({"photo.jpg": tiny_pe()})
    symbols = inspect(with_attachment(archive, "photos.7z"))[2]
    assert {"ATT_EXECUTABLE", "ATT_NAME_MISMATCH"} <= symbols


def test_bidi_control_in_a_7z_member_name() -> None:
    archive = sevenzip_of({"invoice\u202etxt.exe": b"MZ"})
    symbols = inspect(with_attachment(archive, "a.7z"))[2]
    assert {"ATT_RTLO", "ATT_EXECUTABLE"} <= symbols


def test_encrypted_7z_content_names_still_checked() -> None:
    archive = sevenzip_of({"setup.exe": tiny_pe()}, password=PASSWORD)
    _, content, symbols = inspect(with_attachment(archive, "a.7z"))
    assert {"ARCHIVE_ENCRYPTED", "ATT_EXECUTABLE"} <= symbols
    assert "ARCHIVE_PASSWORD_IN_BODY" not in symbols
    outer = next(f for f in content.files if f.name == "a.7z")
    assert outer.encrypted  # rules/attachments.toml [encrypted] archives applies
    # the password in the text opens it: the member is decoded and its true type seen
    _, content, symbols = inspect(with_attachment(archive, "a.7z", body=WITH_PASSWORD))
    assert {"ARCHIVE_ENCRYPTED", "ARCHIVE_PASSWORD_IN_BODY"} <= symbols
    member = next(f for f in content.files if f.name == "setup.exe")
    assert member.family == "executable"


def test_header_encrypted_7z_hides_names_until_the_password_is_found() -> None:
    archive = sevenzip_of({"setup.exe": tiny_pe()}, password=PASSWORD, header_encryption=True)
    _, content, symbols = inspect(with_attachment(archive, "a.7z"))
    assert "ARCHIVE_ENCRYPTED" in symbols
    assert "ATT_EXECUTABLE" not in symbols  # nothing to see: names are encrypted too
    assert "ARCHIVE_CORRUPT" not in symbols
    assert next(f for f in content.files if f.name == "a.7z").encrypted
    wrong = "The password: not-the-one"
    symbols = inspect(with_attachment(archive, "a.7z", body=wrong))[2]
    assert {"ARCHIVE_ENCRYPTED", "ARCHIVE_PASSWORD_IN_BODY"} <= symbols
    assert "ATT_EXECUTABLE" not in symbols
    symbols = inspect(with_attachment(archive, "a.7z", body=WITH_PASSWORD))[2]
    assert {"ARCHIVE_ENCRYPTED", "ARCHIVE_PASSWORD_IN_BODY", "ATT_EXECUTABLE"} <= symbols


def test_zip_inside_7z_is_opened_too() -> None:
    archive = sevenzip_of({"inner.zip": zip_of({"run.exe": tiny_pe()})})
    _, content, symbols = inspect(with_attachment(archive, "a.7z"))
    assert "ATT_EXECUTABLE" in symbols
    member = next(f for f in content.files if f.name == "run.exe")
    assert (member.family, member.archive_depth) == ("executable", 2)
    # and a 7z inside a zip
    outer = zip_of({"in.7z": sevenzip_of({"x.exe": b"MZ"})})
    symbols = inspect(with_attachment(outer, "a.zip"))[2]
    assert "ATT_EXECUTABLE" in symbols


def test_7z_nesting_depth() -> None:
    data = tiny_pe()
    for level in range(6):
        data = sevenzip_of({f"level{level}.7z" if level else "x.exe": data})
    symbols = inspect(with_attachment(data, "deep.7z"))[2]
    assert "ARCHIVE_TOO_DEEP" in symbols


def test_7z_bomb_is_refused_by_declared_size_before_decoding() -> None:
    bomb = sevenzip_of({"zeros.txt": b"\x00" * (20 * 1024 * 1024), "readme.txt": b"hi"})
    assert len(bomb) < 100_000
    started = time.monotonic()
    _, content, symbols = inspect(with_attachment(bomb, "bomb.7z"))
    assert "ARCHIVE_BOMB" in symbols
    assert time.monotonic() - started < 5
    assert all(f.size < 1024 * 1024 for f in content.files)  # zeros.txt was never decoded


def test_7z_members_share_the_expanded_bytes_budget() -> None:
    # every member alone is within its limit, together they are past the archive's budget
    limits = dataclasses.replace(DEFAULT_LIMITS, max_archive_bytes=3 * 1024 * 1024)
    members = {f"part{i}.txt": bytes([65 + i]) * (1024 * 1024) for i in range(5)}
    _, content, symbols = inspect(with_attachment(sevenzip_of(members), "parts.7z"), limits)
    assert "ARCHIVE_BOMB" in symbols
    assert sum(f.size for f in content.files if f.archive_depth == 1) <= 3 * 1024 * 1024


def test_7z_member_budget() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, max_archive_members=10)
    archive = sevenzip_of({f"f{i}.txt": b"x" for i in range(30)})
    symbols = inspect(with_attachment(archive, "many.7z"), limits)[2]
    assert "ARCHIVE_TOO_MANY_MEMBERS" in symbols


def test_corrupt_7z() -> None:
    seven = b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 64
    symbols = inspect(with_attachment(seven, "a.7z"))[2]
    assert "ARCHIVE_CORRUPT" in symbols
    assert "ARCHIVE_UNSUPPORTED" not in symbols


# -- RAR (listed, never extracted) -----------------------------------------------------------


def test_the_hand_written_rar5_is_well_formed() -> None:
    archive = rar5_of(rar5_member("readme.txt", b"hello"), rar5_member("a/b.txt", b"world"))
    with rarfile.RarFile(io.BytesIO(archive)) as rar:
        assert rar.namelist() == ["readme.txt", "a/b.txt"]
        assert rar.read("a/b.txt") == b"world"  # stored member: rarfile checks its CRC32
        assert rar.strerror() is None


def test_rar_member_names_are_checked_and_stored_members_read() -> None:
    harmless = rar5_of(rar5_member("readme.txt", b"hello"))
    _, content, symbols = inspect(with_attachment(harmless, "docs.rar"))
    assert _archive_symbols(symbols) == set()
    archive = rar5_of(
        rar5_member("readme.txt", b"hello"),
        rar5_member("docs/invoice.pdf.exe", tiny_pe()),
        rar5_member("scan\u202efdp.js", b"x"),
    )
    _, content, symbols = inspect(with_attachment(archive, "docs.rar"))
    assert {"ATT_EXECUTABLE", "ATT_SCRIPT", "ATT_DOUBLE_EXTENSION", "ATT_RTLO"} <= symbols
    assert "ARCHIVE_UNSUPPORTED" not in symbols
    member = next(f for f in content.files if f.name == "docs/invoice.pdf.exe")
    # stored (rar -m0): read in pure Python, so its true type is known
    assert (member.family, member.extension, member.size, member.archive_depth) == (
        "executable",
        "exe",
        len(tiny_pe()),
        1,
    )
    decided = AttachmentPolicy().decide(content.files, "a@example.net", ["b@example.com"])
    assert "ATT_POLICY_REJECT" in {f.symbol for f in decided}


def test_compressed_rar_members_are_never_extracted_and_quarantined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compressed member would need unrar: its content is unknown, so the message waits in
    quarantine (issue 13: it was scored and relayed)."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("compressed RAR content must not be extracted")

    archive = rar5_of(rar5_member("report.txt", b"packed bytes", declared_size=12))
    monkeypatch.setattr(rarfile.RarFile, "read", never)
    _, content, symbols = inspect(with_attachment(archive, "docs.rar"))
    assert "ARCHIVE_MEMBER_UNREAD" in symbols and "ARCHIVE_CORRUPT" not in symbols
    member = next(f for f in content.files if f.name == "report.txt")
    assert member.family == "other"
    verdict = load_rules(RULES).decide(list(content.findings))
    assert verdict.action is Action.QUARANTINE


def test_encrypted_rar_members_and_headers() -> None:
    archive = rar5_of(rar5_member("setup.exe", b"ciphertext", encrypted=True))
    _, content, symbols = inspect(with_attachment(archive, "a.rar"))
    assert {"ARCHIVE_ENCRYPTED", "ATT_EXECUTABLE"} <= symbols
    assert next(f for f in content.files if f.name == "a.rar").encrypted
    symbols = inspect(with_attachment(archive, "a.rar", body=WITH_PASSWORD))[2]
    assert "ARCHIVE_PASSWORD_IN_BODY" in symbols
    hidden = rar5_of(header_encryption=True)
    _, content, symbols = inspect(with_attachment(hidden, "a.rar"))
    assert "ARCHIVE_ENCRYPTED" in symbols
    assert "ARCHIVE_CORRUPT" not in symbols
    assert next(f for f in content.files if f.name == "a.rar").encrypted


def test_rar_bomb_by_declared_size() -> None:
    archive = rar5_of(rar5_member("zeros.bin", b"\x00" * 100, declared_size=10 * 1024**3))
    symbols = inspect(with_attachment(archive, "a.rar"))[2]
    assert "ARCHIVE_BOMB" in symbols


def test_rar_paths_depth_and_budget() -> None:
    archive = rar5_of(rar5_member("../../startup/x.bat", b"@echo off"))
    symbols = inspect(with_attachment(archive, "a.rar"))[2]
    assert {"ARCHIVE_PATH_TRAVERSAL", "ATT_SCRIPT"} <= symbols
    data = rar5_of(rar5_member("x.exe", b"MZ"))
    for level in range(5):
        data = zip_of({f"level{level}.{'rar' if level == 0 else 'zip'}": data})
    symbols = inspect(with_attachment(data, "deep.zip"))[2]
    assert "ARCHIVE_TOO_DEEP" in symbols
    limits = dataclasses.replace(DEFAULT_LIMITS, max_archive_members=10)
    many = rar5_of(*(rar5_member(f"f{i}.txt", b"x") for i in range(30)))
    symbols = inspect(with_attachment(many, "many.rar"), limits)[2]
    assert "ARCHIVE_TOO_MANY_MEMBERS" in symbols


def test_corrupt_rar() -> None:
    broken = rar5_of(rar5_member("a.txt", b"hello"))
    broken = broken[:12] + bytes([broken[12] ^ 0xFF]) + broken[13:]  # the main header's size field
    symbols = inspect(with_attachment(broken, "a.rar"))[2]
    assert "ARCHIVE_CORRUPT" in symbols
