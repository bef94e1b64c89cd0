"""Lookalike domains, display names and the identity rules files (gateway.lookalike,
gateway.identity); the plugin over whole messages is tests/corpus/identity/."""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
from pathlib import Path

import pytest
from harness import REPO, make_settings

from gateway.domains import DomainSet
from gateway.identity import Freemail, domains_shown
from gateway.lookalike import (
    LookalikeIndex,
    Target,
    edit_distance,
    glued_to_lure,
    skeleton,
    unicode_host,
)
from gateway.message import ParsedMessage
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins.identity import IdentityCheck, list_domains, served_index
from gateway.policy import load_rules
from gateway.tomlfile import ConfigErrors


@pytest.fixture(scope="module")
def brands() -> LookalikeIndex:
    return load_rules(REPO / "rules").identity.brands


def kind_of(index: LookalikeIndex, host: str) -> str | None:
    found = index.imitation(host)
    return None if found is None else f"{found.target}:{found.kind}"


# -- the lookalike function -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("paypall.com", "paypal:edit_distance"),  # one letter added
        ("pyapal.com", "paypal:edit_distance"),  # two swapped (Damerau)
        ("micorsoft.com", "microsoft:edit_distance"),
        ("paypa1.com", "paypal:homoglyph"),  # ASCII lookalike digit
        ("rnicrosoft.com", "microsoft:homoglyph"),  # rn reads as m
        ("p\u0430ypal.com", "paypal:homoglyph"),  # Cyrillic a, as Unicode
        ("xn--pypal-4ve.com", "paypal:homoglyph"),  # the same, as punycode
        ("paypal.co", "paypal:tld_swap"),
        ("paypal.net", "paypal:tld_swap"),
        ("paypal-com.net", "paypal:hyphenated"),
        ("paypal-secure-login.com", "paypal:hyphenated"),
        ("secure-dhl.info", "dhl:hyphenated"),  # short names count as whole parts
        ("securepaypal.com", "paypal:embedded_name"),
        ("dhldelivery.com", "dhl:embedded_name"),
        ("login.paypal.com.evil.example", "paypal:embedded_domain"),
        ("www.amazon.co.uk.orders.example", "amazon:embedded_domain"),
    ],
)
def test_lookalikes_of_brands(brands: LookalikeIndex, host: str, expected: str) -> None:
    assert kind_of(brands, host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "paypal.com",
        "www.paypal.com",  # subdomains of a brand's own domains
        "paypalobjects.com",
        "paypal.de",  # country_tlds: its national domains
        "amazon.co.jp",
        "mail.google.com",
        "amazonses.com",  # listed as Amazon's own
        "google.github.io",  # an account on a platform (private suffix), not a registration
        "netflixtechblog.com",  # a name glued to a word that is no lure
        "groups.io",
        "ups.edu.example",  # short names: no fuzzy matching, "ups" only as a whole label
        "apply.com",  # fuzzy = false for dictionary words (apple)
        "mail.ru",  # too short to be one edit from a brand
        "lists.microshaft.org",  # two edits from a 9-letter name: not close enough
        "yahoo.comm",  # an unknown suffix cannot be registered: a typo, not a swap
        "www.linkedin.com%2fin%2fsomeone",  # not a host: what a URL extractor ran on into
        "192.0.2.1",
        "[2001:db8::1]",
        "example.net",
    ],
)
def test_not_lookalikes(brands: LookalikeIndex, host: str) -> None:
    assert brands.imitation(host) is None


def test_a_brand_owns_its_own_national_domains_but_not_generic_country_codes() -> None:
    paypal = Target("paypal", frozenset({"paypal"}), DomainSet.parse(["paypal.com"]), True, True)
    assert paypal.owns("paypal.de") and paypal.owns("paypal.co.uk")
    assert not paypal.owns("paypal.co")  # .co is sold as a generic name
    assert not paypal.owns("paypal.tk")
    assert not paypal.owns("paypal.com.evil.example")


def test_served_domains_are_targets_too() -> None:
    served = served_index(("example.com", ".sub.example.org"))
    assert kind_of(served, "examp1e.com") == "example.com:homoglyph"
    assert kind_of(served, "exarnple.com") == "example.com:homoglyph"
    assert kind_of(served, "example.net") == "example.com:tld_swap"
    assert str(kind_of(served, "exampel.org")).endswith(":edit_distance")
    assert served.imitation("mail.example.com") is None
    assert served.imitation("deep.sub.example.org") is None


def test_skeleton_edit_distance_and_punycode() -> None:
    assert skeleton("p\u0430yp\u0430l") == "paypal"
    assert skeleton("\uff50\uff41\uff59\uff50\uff41\uff4c") == "paypal"  # fullwidth
    assert skeleton("m\u0456crosoft") == "microsoft"  # Ukrainian i
    assert skeleton("go0gle") == "google"
    assert unicode_host("XN--PYPAL-4VE.com.") == "p\u0430ypal.com"
    assert unicode_host("xn--invalid-.com") == "xn--invalid-.com"  # kept as written
    assert edit_distance("paypal", "paypal", 1) == 0
    assert edit_distance("paypal", "pyapal", 1) == 1  # a transposition is one edit
    assert edit_distance("paypal", "pal", 1) == 2  # stops past the limit
    assert edit_distance("a" * 60, "b" * 60, 2) == 3  # the band stops a long label early
    assert glued_to_lure("securepaypallogin", "paypal")
    assert not glued_to_lure("paypalfanclub", "paypal")


def test_the_answer_cache_is_bounded(brands: LookalikeIndex) -> None:
    index = LookalikeIndex(brands.targets)
    for n in range(5000):
        index.imitation(f"host{n}.example.com")
    assert len(index._cache) <= 4096


# -- display names and freemail -------------------------------------------------------------------


def test_domains_shown_in_display_names() -> None:
    assert domains_shown("paypal.com Support") == ([], ["paypal.com"])
    assert domains_shown("ceo@corp.example.com") == (["corp.example.com"], [])
    assert domains_shown("Amazon.co.uk orders") == ([], ["amazon.co.uk"])
    # names with dots that a reader does not take for domains
    assert domains_shown("Node.js team") == ([], [])
    assert domains_shown("r.hughes") == ([], [])  # .hughes is a TLD, but reads as a name
    assert domains_shown("J. R. R. Tolkien") == ([], [])
    # a fullwidth dot renders as a dot
    assert domains_shown("paypal\uff0ecom") == ([], ["paypal.com"])


def test_freemail_entries() -> None:
    freemail = Freemail.parse(["gmail.com", "yahoo.*", ".free.example"])
    assert freemail.matches("gmail.com") and freemail.matches("GMAIL.COM.")
    assert freemail.matches("yahoo.co.uk") and freemail.matches("yahoo.fr")
    assert not freemail.matches("reply.yahoo.com")  # the company's service, not a mailbox
    assert freemail.matches("a.free.example") and not freemail.matches("free.example")
    assert not freemail.matches("notgmail.com")


def test_brand_and_protected_names_are_whole_words(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    policy = load_rules(_rules_copy(rules, 'protected_names = ["Jane Doe"]')).identity
    assert policy.brand_named("PayPal Service") == "paypal"
    assert policy.brand_named("Chase Smith") == ""  # chase alone is a first name
    assert policy.brand_named("Chase Bank Alerts") == "chase"
    assert policy.brand_named("Microsoft 365 team") == "microsoft"
    assert policy.protected_named("Jane Doe") == "Jane Doe"
    assert policy.protected_named("DOE, JANE (CEO)") == "Jane Doe"
    assert policy.protected_named("J\u0430ne Doe") == "Jane Doe"  # Cyrillic a
    assert policy.protected_named("Janet Doe") == ""
    assert policy.protected_named("x" * 100_000) == ""  # read up to MAX_DISPLAY


# -- the rules files ------------------------------------------------------------------------------


def _rules_copy(rules: Path, identity: str | None = None) -> Path:
    if not rules.exists():
        shutil.copytree(REPO / "rules", rules)
    if identity is not None:
        (rules / "identity.toml").write_text(identity)
    return rules


def test_rules_errors_name_file_line_and_key(tmp_path: Path) -> None:
    rules = _rules_copy(tmp_path / "rules", 'protected_names = ["Jane Doe", 5]\nextra = 1\n')
    (rules / "brands.toml").write_text(
        '[brands.acme]\ndomains = ["acme.example"]\n\n[brands.bad]\nnames = ["ok"]\n'
        'domains = ["not a domain"]\nfuzzy = "yes"\n'
    )
    (rules / "freemail.toml").write_text('domains = ["gmail.com", "@bad"]\n')
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    text = str(caught.value)
    assert f"{rules / 'identity.toml'}:1: key 'protected_names'" in text
    assert f"{rules / 'identity.toml'}:2: key 'extra': unknown" in text
    assert f"{rules / 'brands.toml'}:6: key 'brands.bad.domains'" in text
    assert f"{rules / 'brands.toml'}:7: key 'brands.bad.fuzzy': must be true or false" in text
    assert f"{rules / 'freemail.toml'}:1: key 'domains'" in text and "'@bad'" in text


def test_rules_files_are_optional_and_part_of_the_version(tmp_path: Path) -> None:
    rules = _rules_copy(tmp_path / "rules")
    before = load_rules(rules)
    (rules / "brands.toml").write_text('[brands.acme]\ndomains = ["acme.example"]\n')
    after = load_rules(rules)  # what SIGHUP does
    assert after.version != before.version
    assert kind_of(after.identity.brands, "acme-login.example") == "acme:hyphenated"
    for name in ("brands.toml", "freemail.toml", "identity.toml"):
        (rules / name).unlink()
    bare = load_rules(rules)
    assert bare.identity.brands.imitation("paypa1.com") is None


# -- the plugin -----------------------------------------------------------------------------------


def _context(tmp_path: Path, message: bytes, mail_from: str = "") -> MessageContext:
    settings = make_settings(tmp_path, 1)
    ctx = MessageContext(
        client=ClientInfo("192.0.2.10", 25), rules=load_rules(settings.rules_dir), settings=settings
    )
    ctx.raw = message
    ctx.mail_from = mail_from
    return ctx


def test_lists_are_read_from_every_list_field() -> None:
    message = ParsedMessage(
        b"Mailing-List: list zzz@yahoogroups.example; contact zzz-owner@yahoogroups.example\r\n"
        b"List-Unsubscribe: <https://esp.example.net/u/1>, <mailto:u@bounce.example.org>\r\n"
        b"From: a@b.example\r\n\r\nbody\r\n"
    )
    assert list_domains(message) == {"yahoogroups.example", "example.net", "example.org"}


async def test_one_finding_per_symbol_and_bounded_work(tmp_path: Path) -> None:
    links = "".join(f"https://paypal-login{n}.example/ \r\n" for n in range(300))
    raw = (
        f"From: Someone <a@sender.example>\r\nSubject: x\r\n\r\n{links}".encode()
        + b"https://secure-paypal.example/\r\n"
    )
    ctx = _context(tmp_path, raw)
    plugin = IdentityCheck(Services(ctx.settings))
    found = await plugin.check(Phase.DATA, ctx)
    assert [f.symbol for f in found] == ["IDENTITY_LINK_LOOKALIKE"]


async def test_a_relay_network_counts_as_internal(tmp_path: Path) -> None:
    raw = b'From: "Jane Doe" <jane@example.com>\r\nSubject: x\r\n\r\nhello\r\n'
    ctx = _context(tmp_path, raw)
    ctx.rules = dataclasses.replace(
        ctx.rules,
        identity=load_rules(
            _rules_copy(tmp_path / "r2", 'protected_names = ["Jane Doe"]')
        ).identity,
    )
    outside = await IdentityCheck(Services(ctx.settings)).check(Phase.DATA, ctx)
    assert [f.symbol for f in outside] == ["IDENTITY_NAME_PROTECTED"]  # no DMARC result
    relay = dataclasses.replace(
        ctx.settings.relay, relay_networks=(ipaddress.ip_network("192.0.2.0/24"),)
    )
    ctx.settings = dataclasses.replace(ctx.settings, relay=relay)
    inside = await IdentityCheck(Services(ctx.settings)).check(Phase.DATA, ctx)
    assert inside == []


# -- the served domains' TLD swaps and the organisation's own domains ---------------------------


def _identity_rules(tmp_path: Path, text: str) -> Path:
    return _rules_copy(tmp_path / "rules", text)


async def _symbols(tmp_path: Path, raw: bytes, identity: str = "", mail_from: str = "") -> set[str]:
    ctx = _context(tmp_path, raw, mail_from)
    ctx.rules = load_rules(_identity_rules(tmp_path, identity))
    return {f.symbol for f in await IdentityCheck(Services(ctx.settings)).check(Phase.DATA, ctx)}


_SISTER = (
    b'From: "Billing" <billing@example.net>\r\nTo: bob@example.com\r\nSubject: invoice\r\n'
    b"\r\nSee https://portal.example.de/invoice/7 today.\r\n"
)
_SWAP_SYMBOLS = {
    "IDENTITY_FROM_LOOKALIKE_SERVED",
    "IDENTITY_LINK_LOOKALIKE_SERVED",
    "IDENTITY_SENDER_LOOKALIKE_SERVED",
}


async def test_a_served_tld_swap_is_no_lookalike_by_default(tmp_path: Path) -> None:
    found = await _symbols(tmp_path, _SISTER, mail_from="billing@example.net")
    assert not found & _SWAP_SYMBOLS
    # homoglyphs of the served domain still count
    spoof = _SISTER.replace(b"example.net", b"examp1e.com")
    found = await _symbols(tmp_path, spoof, mail_from="billing@examp1e.com")
    assert {"IDENTITY_FROM_LOOKALIKE_SERVED", "IDENTITY_SENDER_LOOKALIKE_SERVED"} <= found


async def test_served_tld_swaps_count_when_the_site_owns_no_sister_domains(
    tmp_path: Path,
) -> None:
    found = await _symbols(
        tmp_path, _SISTER, "served_tld_swaps = true\n", mail_from="billing@example.net"
    )
    assert found >= _SWAP_SYMBOLS
    assert "IDENTITY_FROM_LOOKALIKE" not in found  # a served domain, not a brand


async def test_own_domains_are_never_lookalikes_of_the_served_ones(tmp_path: Path) -> None:
    identity = 'served_tld_swaps = true\nown_domains = ["example.de", "examp1e.com"]\n'
    raw = _SISTER.replace(b"example.net", b"example.de")
    found = await _symbols(tmp_path, raw, identity, mail_from="billing@mail.example.de")
    assert not found & _SWAP_SYMBOLS  # subdomains of an own domain are ours too
    # a defensive registration of a homoglyph, declared as the organisation's own
    raw = _SISTER.replace(b"example.net", b"examp1e.com")
    assert not await _symbols(tmp_path, raw, identity) & _SWAP_SYMBOLS
    # a TLD swap the organisation does not own still counts
    found = await _symbols(tmp_path, _SISTER, identity, mail_from="billing@example.net")
    assert {"IDENTITY_FROM_LOOKALIKE_SERVED", "IDENTITY_SENDER_LOOKALIKE_SERVED"} <= found
    assert "IDENTITY_LINK_LOOKALIKE_SERVED" not in found  # the link is to example.de


async def test_own_domains_are_one_organisation_with_the_served_ones(tmp_path: Path) -> None:
    raw = (
        b'From: "example.com billing" <billing@example.de>\r\nReply-To: <ar@example.com>\r\n'
        b"To: bob@example.com\r\nSubject: invoice\r\n\r\nhello\r\n"
    )
    strangers = await _symbols(tmp_path, raw)
    assert {"IDENTITY_NAME_DOMAIN", "IDENTITY_REPLYTO_UNRELATED"} <= strangers
    ours = await _symbols(tmp_path, raw, 'own_domains = ["example.de"]\n')
    assert not ours & {"IDENTITY_NAME_DOMAIN", "IDENTITY_REPLYTO_UNRELATED"}


@pytest.mark.parametrize("identity", ["", "served_tld_swaps = true\n"])
async def test_brand_tld_swaps_keep_their_own_flag(tmp_path: Path, identity: str) -> None:
    raw = b"From: <service@paypal.co>\r\nSubject: x\r\n\r\nhttps://www.paypal.de/signin\r\n"
    found = await _symbols(tmp_path, raw, identity)
    assert "IDENTITY_FROM_LOOKALIKE" in found  # .co: sold as a generic name
    assert "IDENTITY_LINK_LOOKALIKE" not in found  # paypal.de: country_tlds, its own


def test_own_domains_and_served_tld_swaps_are_validated(tmp_path: Path) -> None:
    rules = _identity_rules(
        tmp_path, 'own_domains = ["example.de", "not a domain"]\nserved_tld_swaps = "yes"\n'
    )
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    text = str(caught.value)
    assert f"{rules / 'identity.toml'}:1: key 'own_domains'" in text
    assert f"{rules / 'identity.toml'}:2: key 'served_tld_swaps': must be true or false" in text


# -- services that write for a person ------------------------------------------------------------

_INVITATION = (
    b'From: "Ann Lee (via Google Calendar)" <calendar-notification@google.com>\r\n'
    b'Reply-To: "Ann Lee" <ann.lee@gmail.com>\r\nTo: bob@example.com\r\n'
    b"Subject: Invitation: planning @ Tue 10:00\r\n\r\nAnn Lee has invited you.\r\n"
)


async def test_a_calendar_invitation_replying_to_its_organiser_is_no_reply_to_trick(
    tmp_path: Path,
) -> None:
    """Google Calendar, Docs, Docusign, PayPal invoices... set Reply-To to the person they
    write for; that read IDENTITY_REPLYTO_FREEMAIL (2.8) on everyday business mail."""
    from gateway.auth.dmarc import DmarcResult, DmarcVerdict, DomainEvaluation
    from gateway.rfc5322 import author_info

    ctx = _context(tmp_path, _INVITATION)
    plugin = IdentityCheck(Services(ctx.settings))
    assert [f.symbol for f in await plugin.check(Phase.DATA, ctx)] == []
    # the same From with DMARC failing for it is a forgery: no exemption
    failed = DomainEvaluation("google.com", DmarcVerdict.FAIL)
    ctx.results.put(DmarcResult(author_info(_INVITATION), (failed,)))
    assert "IDENTITY_REPLYTO_FREEMAIL" in {f.symbol for f in await plugin.check(Phase.DATA, ctx)}
    # another author, the same Reply-To: still counted
    other = _context(tmp_path, _INVITATION.replace(b"@google.com", b"@calendar-notes.example"))
    symbols = {f.symbol for f in await plugin.check(Phase.DATA, other)}
    assert "IDENTITY_REPLYTO_FREEMAIL" in symbols


def test_on_behalf_senders_are_validated(tmp_path: Path) -> None:
    rules = _rules_copy(tmp_path / "rules", 'on_behalf_senders = ["not a domain"]\n')
    with pytest.raises(ConfigErrors, match=r"identity\.toml.*on_behalf_senders"):
        load_rules(rules)


async def test_a_reply_to_on_the_same_name_under_another_suffix_is_one_company(
    tmp_path: Path,
) -> None:
    """Trusted Shops writes from email.trustedshops.de and takes replies at trustedshops.com."""
    from gateway.auth.dmarc import DmarcResult, DmarcVerdict, DomainEvaluation
    from gateway.rfc5322 import author_info

    raw = (
        b'From: "Trusted Shops" <willkommen@email.trustedshops.de>\r\n'
        b"Reply-To: info@trustedshops.com\r\nTo: bob@example.com\r\n"
        b"Subject: Bewertungen\r\n\r\nHallo Bob, danke.\r\n"
    )
    ctx = _context(tmp_path, raw)
    plugin = IdentityCheck(Services(ctx.settings))
    assert "IDENTITY_REPLYTO_UNRELATED" not in {
        f.symbol for f in await plugin.check(Phase.DATA, ctx)
    }
    failed = DomainEvaluation("email.trustedshops.de", DmarcVerdict.FAIL)
    ctx.results.put(DmarcResult(author_info(raw), (failed,)))
    assert "IDENTITY_REPLYTO_UNRELATED" in {f.symbol for f in await plugin.check(Phase.DATA, ctx)}
    # a name of three letters says nothing: abc.de and abc.com may be strangers
    short = raw.replace(b"trustedshops", b"abc")
    assert "IDENTITY_REPLYTO_UNRELATED" in await _symbols(tmp_path, short)
    # another name altogether is still another organisation
    other = raw.replace(b"info@trustedshops.com", b"info@trustedshopz.com")
    assert "IDENTITY_REPLYTO_UNRELATED" in await _symbols(tmp_path, other)


async def test_constant_contacts_shared_from_replies_to_the_business(tmp_path: Path) -> None:
    raw = (
        b"From: Lyn Warren <lyn-tonka.example@shared1.ccsend.com>\r\n"
        b"Reply-To: lyn@tonka.example\r\nTo: bob@example.com\r\n"
        b"Subject: 2007 KW T800\r\n\r\nFor sale.\r\n"
    )
    ctx = _context(tmp_path, raw)  # the shipped rules/
    found = {f.symbol for f in await IdentityCheck(Services(ctx.settings)).check(Phase.DATA, ctx)}
    assert not found & {"IDENTITY_REPLYTO_UNRELATED", "IDENTITY_REPLYTO_FREEMAIL"}
