"""UI-renderer and parser-ambiguity From tricks of Shen et al., "Weak Links in Authentication
Chains" (USENIX Security 2021), at a receiving gateway.

Each case says which symbol catches it. Some were already caught before this file existed
(DMARC_FROM_MALFORMED, DMARC_FROM_DISPLAY_ADDRESS); the rest needed DMARC_FROM_INVISIBLE,
DMARC_FROM_HOMOGLYPH, DMARC_FROM_LOCAL_ADDRESS and DMARC_FROM_COMMENT_ADDRESS, and lookalike "@"
signs in display names folded (NFKC) before looking for addresses.
"""

from __future__ import annotations

import aiosmtplib
import pytest
from auth_helpers import RSA1024, field_values, mail, sign
from harness import RecordingSink, RunningGateway
from test_dmarc_gateway import auth_gw, send  # noqa: F401 - the fixture is used by name

from gateway.auth.dmarc import DmarcResult
from gateway.plugins.dmarc import dmarc_findings
from gateway.rfc5322 import author_info, homoglyph_reason

A = b"To: <victim@victim.example>\r\nSubject: test\r\n\r\nbody\r\n"
CYRILLIC_BANK = "b\u0430nk.example"  # a Cyrillic "a"
PUNY_BANK = CYRILLIC_BANK.encode("idna").decode("ascii")


@pytest.mark.parametrize(
    ("head", "domains", "symbols"),
    [
        # -- UI renderer: the display name shows what the address is not -------------------------
        # RTL override: "\u202emoc.knab@eci" renders as "ice@bank.com" reversed
        (
            '"\u202emoc.elpmaxe.knab@nimda" <x@attack.example>',
            ["attack.example"],
            ["DMARC_FROM_INVISIBLE", "DMARC_FROM_DISPLAY_ADDRESS"],
        ),
        (
            "\u202emoc.knab@eci\u202c <x@attack.example>",  # unquoted: not well formed either
            ["eci\u202c", "attack.example"],
            ["DMARC_FROM_MALFORMED", "DMARC_FROM_INVISIBLE"],
        ),
        # a zero-width space splits what would be read as bank.example
        (
            '"admin@bank\u200b.example" <x@attack.example>',
            ["attack.example"],
            ["DMARC_FROM_INVISIBLE", "DMARC_FROM_DISPLAY_ADDRESS"],
        ),
        # lookalike "@" (fullwidth, small) in a display name: was missed, now folded by NFKC
        (
            '"admin\uff20bank.example" <x@attack.example>',
            ["attack.example"],
            ["DMARC_FROM_DISPLAY_ADDRESS"],
        ),
        (
            "admin\ufe6bbank.example <x@attack.example>",
            ["attack.example"],
            ["DMARC_FROM_DISPLAY_ADDRESS"],
        ),
        # fullwidth letters in the shown address
        (
            '"admin@\uff42\uff41\uff4e\uff4b.example" <x@attack.example>',
            ["attack.example"],
            ["DMARC_FROM_DISPLAY_ADDRESS"],
        ),
        # an encoded-word display name holding an address (caught before)
        (
            "=?utf-8?B?YWRtaW5AYmFuay5leGFtcGxl?= <x@attack.example>",
            ["attack.example"],
            ["DMARC_FROM_DISPLAY_ADDRESS"],
        ),
        # a quoted "@" in the display name (caught before)
        (
            '"admin@bank.example" <x@attack.example>',
            ["attack.example"],
            ["DMARC_FROM_DISPLAY_ADDRESS"],
        ),
        # an unquoted address of another domain as display name (caught before: malformed,
        # both domains evaluated)
        (
            "admin@bank.example <x@attack.example>",
            ["bank.example", "attack.example"],
            ["DMARC_FROM_MALFORMED"],
        ),
        # empty addr-spec with a display name (caught before)
        ("Bank <>", [], ["DMARC_BAD_FROM", "DMARC_FROM_MALFORMED"]),
        ("admin@bank.example <>", ["bank.example"], ["DMARC_FROM_MALFORMED"]),
        # homoglyph domains: was missed
        (f"admin@{CYRILLIC_BANK}", [CYRILLIC_BANK], ["DMARC_FROM_HOMOGLYPH"]),
        (f"Bank <admin@{PUNY_BANK}>", [PUNY_BANK], ["DMARC_FROM_HOMOGLYPH"]),
        ("<admin@\u0440\u0430\u0443\u0440\u0430l.example>", None, ["DMARC_FROM_HOMOGLYPH"]),
        # -- parser ambiguity ----------------------------------------------------------------------
        # a quoted local part holding another address: was missed
        (
            '"admin@bank.example"@attack.example',
            ["attack.example", "bank.example"],
            ["DMARC_FROM_LOCAL_ADDRESS"],
        ),
        (
            '<"admin@bank.example\\"<>"@attack.example>',
            ["attack.example", "bank.example"],
            ["DMARC_FROM_LOCAL_ADDRESS"],
        ),
        # comments holding addresses: was missed
        (
            "(admin@bank.example) x@attack.example",
            ["attack.example", "bank.example"],
            ["DMARC_FROM_COMMENT_ADDRESS"],
        ),
        (
            "x@attack.example (admin@bank.example)",
            ["attack.example", "bank.example"],
            ["DMARC_FROM_COMMENT_ADDRESS"],
        ),
        (
            "Bank <x@attack.example(admin@bank.example)>",
            ["attack.example", "bank.example"],
            ["DMARC_FROM_COMMENT_ADDRESS"],
        ),
        # several "@" (caught before: malformed, every domain evaluated)
        (
            "admin@bank.example@attack.example",
            ["bank.example", "attack.example"],
            ["DMARC_FROM_MALFORMED"],
        ),
        (
            "<admin@bank.example@attack.example>",
            ["bank.example", "attack.example"],
            ["DMARC_FROM_MALFORMED"],
        ),
        # -- fine as they are ----------------------------------------------------------------------
        ("Alice <alice@bank.example>", ["bank.example"], []),
        ("alice@bank.example (Alice at the bank)", ["bank.example"], []),
        ("M\u00fcller <m@m\u00fcller.example>", ["m\u00fcller.example"], []),
        ("\u0418\u0432\u0430\u043d <i@\u043f\u0440\u0438\u043c\u0435\u0440.example>", None, []),
        ('"Alice (alice@mail.bank.example)" <alice@bank.example>', ["bank.example"], []),
    ],
)
def test_ui_and_parser_tricks(head: str, domains: list[str] | None, symbols: list[str]) -> None:
    author = author_info(b"From: " + head.encode() + b"\r\n" + A)
    if domains is not None:
        assert list(author.domains) == domains
    found = [f.symbol for f in dmarc_findings(DmarcResult(author))]
    assert found == symbols


@pytest.mark.parametrize(
    ("domain", "imitates"),
    [
        (CYRILLIC_BANK, True),
        (PUNY_BANK, True),
        ("\u0440\u0430\u0443\u0440\u0430l.example", True),  # Cyrillic "payp", "a" + Latin "l"
        ("\u0430\u0440\u0440\u04cf\u0435.example", True),  # Cyrillic only, mixed with U+04CF
        ("g\u03bfogle.example", True),  # a Greek omicron
        ("bank.example", False),
        ("m\u00fcller.example", False),
        ("\u043f\u0440\u0438\u043c\u0435\u0440.example", False),  # real Cyrillic word
        ("xn--broken-.example", False),
        ("\u0432\u043a\u043e\u043d\u0442\u0430\u043a\u0442\u0435.example", False),  # a real word
        ("\u0441\u043e\u0440\u0435.example", True),  # all Cyrillic, renders as "cope"
    ],
)
def test_homoglyph_domains(domain: str, imitates: bool) -> None:
    assert bool(homoglyph_reason(domain)) is imitates


# -- over SMTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "from_field",
    [
        b"From: alice@attack.example (admin@good.example)\r\n",
        b'From: "admin@good.example"@attack.example\r\n',
    ],
)
async def test_addresses_in_comments_and_local_parts_meet_their_policy(
    auth_gw: RunningGateway,  # noqa: F811 - the fixture imported above
    sink: RecordingSink,
    from_field: bytes,
) -> None:
    """attack.example authenticates (SPF and DKIM); good.example's p=reject still applies to
    the address a reader may see in the comment or the quoted local part."""
    spoof = sign(
        mail(from_field=from_field), domain="attack.example", selector="rsa1024", key=RSA1024
    )
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(auth_gw, spoof, sender="bounce@attack.example")
    assert refused.value.code == 550
    assert sink.delivered == []


async def test_invisible_display_characters_are_scored(
    auth_gw: RunningGateway,  # noqa: F811 - the fixture imported above
    sink: RecordingSink,
) -> None:
    from_field = 'From: "\u202eelpmaxe.knab@nimda" <alice@good.example>\r\n'.encode()
    await send(auth_gw, sign(mail(from_field=from_field)))
    [delivered] = await sink.arrived(1)
    [line] = field_values(delivered.content, "X-Mailgate-Symbols")
    assert "DMARC_FROM_INVISIBLE" in line and "DMARC_PASS" in line
