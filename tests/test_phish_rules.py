"""The shipped phishing lure rules (rules/content.toml, issue 15) over built messages: each
lexicon part on phrases phishing uses and on ham that talks about the same things, and the
combinations (a pretext with a link, with evidence from the identity, links and attachment
checks, with a deadline and a credential ask) through the real chain, so that a strong
combination reaches quarantine and a single weak signal stays below the tag threshold.

Every message here is written for the test; none is taken from a corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import make_settings

from gateway.app import load_checked_rules
from gateway.chain import Chain
from gateway.config import PluginSettings
from gateway.content_rules import PartHits
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins import builtin_registry

ORDER = ("headers", "mime", "attachments", "content", "links", "identity")
COMBINATIONS = (
    "CONTENT_PHISH_LURE",
    "CONTENT_PHISH_PRETEXT",
    "CONTENT_PHISH_URGENT_ASK",
    "CONTENT_PHISH_EVIDENCE",
    "CONTENT_PHISH_STRONG",
)


def build(
    body: str,
    subject: str = "Notice",
    sender: str = '"Support" <support@service.example>',
    html: bool = False,
    attachment: tuple[str, str] | None = None,
) -> bytes:
    """A message with CRLF line endings: plain or HTML text, optionally one attached file."""
    kind = "text/html" if html else "text/plain"
    head = (
        f"From: {sender}\r\nTo: Bob <bob@example.com>\r\nSubject: {subject}\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <phish-test@service.example>\r\n"
        "MIME-Version: 1.0\r\n"
    )
    text = body.replace("\n", "\r\n")
    if attachment is None:
        head += f"Content-Type: {kind}; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        return (head + "\r\n" + text + "\r\n").encode()
    name, content = attachment
    head += 'Content-Type: multipart/mixed; boundary="b1"\r\n'
    parts = (
        f"--b1\r\nContent-Type: {kind}; charset=utf-8\r\n\r\n{text}\r\n"
        "--b1\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        f"\r\n{content}\r\n--b1--\r\n"
    )
    return (head + "\r\n" + parts).encode()


async def run(tmp_path: Path, raw: bytes) -> tuple[dict[str, float], set[str], float]:
    """(scored symbol -> score, parts that hit, total) of the real chain with shipped rules/."""
    settings = make_settings(tmp_path, 1, plugins=PluginSettings(order=ORDER))
    registry = builtin_registry()
    rules = load_checked_rules(settings, registry)
    chain = Chain.build(registry, Services(settings, resolver=None))
    ctx = MessageContext(client=ClientInfo("192.0.2.10", 25), rules=rules, settings=settings)
    ctx.mail_from = "bounce@service.example"
    ctx.rcpt_tos.append("bob@example.com")
    ctx.raw = raw
    await chain.run(Phase.DATA, ctx)
    parts = ctx.results.get(PartHits)
    hit = set(parts.details) if parts is not None else set()
    scores = {f.symbol: rules.scores.get(f.symbol, 0.0) for f in ctx.findings}
    total = sum(rules.scores.get(f.symbol, 0.0) * f.weight for f in ctx.findings)
    return scores, hit, total


LINK = "\nhttps://portal.service.example/a/1\n"

# (part, phrase a phish would say): each must hit its part
LURES = [
    ("CONTENT_LURE_LOCKED", "Your account has been temporarily suspended."),
    ("CONTENT_LURE_LOCKED", "We have limited your account until you respond."),
    ("CONTENT_LURE_LOCKED", "Incoming messages have been suspended on your mailbox."),
    ("CONTENT_LURE_SIGNIN_ALERT", "We detected an unusual sign-in to your account."),
    ("CONTENT_LURE_SIGNIN_ALERT", "Suspicious login attempt from an unknown device."),
    ("CONTENT_LURE_PAYMENT_FAILED", "Your last payment was declined by your bank."),
    ("CONTENT_LURE_PAYMENT_FAILED", "We were unable to process your payment this month."),
    ("CONTENT_LURE_SHARED_FILE", "Maria has shared a secure document with you."),
    ("CONTENT_LURE_SHARED_FILE", "You have received 1 new voicemail message."),
    ("CONTENT_LURE_SHARED_FILE", "Please review and sign the agreement."),
    ("CONTENT_LURE_DELIVERY", "Your parcel could not be delivered to the address given."),
    ("CONTENT_LURE_DELIVERY", "A customs fee of 1.99 is due before redelivery."),
    ("CONTENT_LURE_TAX_REFUND", "You are eligible for a tax refund of 410.00."),
    ("CONTENT_LURE_WALLET", "Enter your 12-word recovery phrase to validate your wallet."),
    ("CONTENT_LURE_MFA", "Reset your 2FA now or your access ends."),
    ("CONTENT_LURE_STORAGE", "Your iCloud storage is full. Your photos will be deleted."),
    ("CONTENT_LURE_INVOICE", "Please view the attached invoice and remittance advice."),
    ("CONTENT_ASK_BILLING", "Please update your billing information today."),
    ("CONTENT_ASK_SIGNIN", "Log in to view the message waiting for you."),
    ("CONTENT_ASK_SIGNIN", "Click here to verify and keep your mailbox."),
    ("CONTENT_URGENT", "Your account will be closed within 24 hours."),
    ("CONTENT_URGENT", "FINAL NOTICE: action required."),
    ("CONTENT_LURE_FOREIGN", "Su cuenta ha sido suspendida temporalmente."),
    ("CONTENT_LURE_FOREIGN", "Verifique su cuenta para continuar."),
    ("CONTENT_LURE_FOREIGN", "Sua conta foi bloqueada. Atualize seus dados."),
    ("CONTENT_LURE_FOREIGN", "Ihr Konto wurde vorübergehend gesperrt."),
    ("CONTENT_LURE_FOREIGN", "Bestätigen Sie Ihre Zahlungsdaten."),
    ("CONTENT_LURE_FOREIGN", "Votre compte a été suspendu."),
    ("CONTENT_LURE_FOREIGN", "Votre colis n'a pas pu être livré."),
    ("CONTENT_LURE_FOREIGN", "Il tuo account è stato sospeso."),
    ("CONTENT_LURE_FOREIGN", "Conferma i tuoi dati di pagamento."),
    ("CONTENT_URGENT", "Handeln Sie innerhalb von 24 Stunden."),
    ("CONTENT_LURE_CJK", "お客様のアカウントが一時停止されました。"),
    ("CONTENT_LURE_CJK", "您的邮箱已满。请立即升级。"),
    ("CONTENT_GREETS_ADDRESS", "Dear bob@example.com,\nplease read."),
    ("CONTENT_ASK_SIGNIN", "Use the button to keep your current password."),
    ("CONTENT_LURE_LOCKED", "Act now or you will be locked out of your account."),
    ("CONTENT_LURE_LOCKED", "We received a request to deactivate your mailbox."),
    ("CONTENT_LURE_LOCKED", "Your email account is due to expire."),
    ("CONTENT_LURE_LOCKED", "This is the annual mailbox verification."),
    ("CONTENT_LURE_STORAGE", "You are exceeding your free data volume."),
    ("CONTENT_LURE_HELD_MAIL", "You have [7] pending messages."),
    ("CONTENT_LURE_HELD_MAIL", "Release all held messages now."),
    ("CONTENT_LURE_PASSWORD_EXPIRY", "The password for bob@example.com is due to expire."),
    ("CONTENT_MIXED_SCRIPT", "Your p\u0430ssword needs attention."),
]


@pytest.mark.parametrize(
    ("part", "subject"),
    [
        ("CONTENT_LURE_SUBJECT_WIDE", "Your password has expired"),
        ("CONTENT_LURE_SUBJECT_WIDE", "Unusual sign-in activity"),
        ("CONTENT_LURE_SUBJECT_WIDE", "Mailbox deactivation scheduled"),
        ("CONTENT_LURE_CJK_SUBJECT", "アカウントが停止されました"),
        ("CONTENT_SUBJECT_ADDRESS", "Notice for bob@example.com"),
    ],
)
async def test_each_lure_subject_hits_its_part(tmp_path: Path, part: str, subject: str) -> None:
    _, parts, _ = await run(tmp_path, build("Hello." + LINK, subject=subject))
    assert part in parts


async def test_newsletter_search_form_is_no_evidence(tmp_path: Path) -> None:
    """A newsletter's article on password expiry with a search form: a lure, no deceit."""
    body = (
        "<h2>Why your password expires every 90 days</h2>"
        '<form action="https://news.service.example/search"><input name="q"></form>'
        '<p><a href="https://news.service.example/a/1">Read on</a></p>'
    )
    scores, _, total = await run(tmp_path, build(body, subject="Weekly tips", html=True))
    assert "HTML_FORM" in scores and "CONTENT_PHISH_LURE" in scores
    assert "CONTENT_PHISH_EVIDENCE" not in scores
    assert total < 4


# ham that talks about the same things: no part of the lexicon may hit
HAM = [
    "The f2fs transaction failed and the disk quota was exceeded on the test box.",
    "The package was not shipped in bookworm; the card failed after a reboot.",
    "I will reply within a day; a final version of the patch follows.",
    "Click here to view this newsletter in your browser.",
    "Confirm your subscription to the list by replying to this message.",
    "Users can delete their account from the settings page at any time.",
    "The password hashing code expires old sessions after a timeout.",
    "If you have a document in markdown, pandoc converts it.",
    "The list server has scheduled maintenance on Sunday.",
    "Спасибо, the patch works with Linux 6.1 here.",
]


@pytest.mark.parametrize(("part", "phrase"), LURES)
async def test_each_lure_phrase_hits_its_part(tmp_path: Path, part: str, phrase: str) -> None:
    _, parts, _ = await run(tmp_path, build(phrase + LINK))
    assert part in parts


@pytest.mark.parametrize("text", HAM)
async def test_ham_on_the_same_topics_hits_no_lure_part(tmp_path: Path, text: str) -> None:
    scores, parts, _ = await run(tmp_path, build(text + LINK, subject="Re: [PATCH] fix"))
    lexicon = ("CONTENT_LURE", "CONTENT_ASK", "CONTENT_URGENT", "CONTENT_MIXED")
    assert not {p for p in parts if p.startswith(lexicon)}
    assert not set(COMBINATIONS) & set(scores)


async def test_a_pretext_with_only_a_link_stays_weak(tmp_path: Path) -> None:
    scores, _, total = await run(tmp_path, build("Your last payment was declined." + LINK))
    assert "CONTENT_PHISH_PRETEXT" in scores
    assert not {"CONTENT_PHISH_EVIDENCE", "CONTENT_PHISH_STRONG"} & set(scores)
    assert total < 4


async def test_a_pretext_without_a_link_is_nothing(tmp_path: Path) -> None:
    scores, _, _ = await run(tmp_path, build("Your last payment was declined. Call us."))
    assert not set(COMBINATIONS) & set(scores)


async def test_brand_name_on_another_domain_with_a_lure_and_pressure_quarantines(
    tmp_path: Path,
) -> None:
    body = (
        "Your account has been limited after unusual activity.\n"
        "Log in to restore your access within 24 hours." + LINK
    )
    raw = build(body, subject="Account limited", sender='"PayPal" <notice@service.example>')
    scores, _, total = await run(tmp_path, raw)
    assert {"IDENTITY_NAME_BRAND", "CONTENT_PHISH_EVIDENCE"} <= set(scores)
    # "restore your access" is the older lure (CONTENT_PHISH_LURE): one lure counts, not two
    assert "CONTENT_PHISH_LURE" in scores and "CONTENT_PHISH_PRETEXT" not in scores
    assert {"CONTENT_PHISH_URGENT_ASK", "CONTENT_PHISH_STRONG"} <= set(scores)
    assert total >= 6


async def test_shared_file_on_a_form_host_tags(tmp_path: Path) -> None:
    body = (
        "<p>Anna Berg has shared a document with you.</p>"
        '<p><a href="https://sites.google.com/view/q3-plan">Open</a></p>'
    )
    scores, _, total = await run(tmp_path, build(body, subject="Q3 plan", html=True))
    assert {"LINK_HOSTING_SERVICE", "CONTENT_PHISH_PRETEXT", "CONTENT_PHISH_EVIDENCE"} <= set(
        scores
    )
    assert "CONTENT_PHISH_STRONG" not in scores
    assert total >= 4


async def test_link_text_showing_another_site_with_a_foreign_lure_tags(tmp_path: Path) -> None:
    body = (
        "<p>Ihr Konto wurde gesperrt.</p>"
        '<p><a href="https://login.collect.example/x">https://www.bank.example/login</a></p>'
    )
    scores, _, total = await run(tmp_path, build(body, subject="Konto", html=True))
    assert {"HTML_LINK_MISMATCH", "CONTENT_PHISH_PRETEXT", "CONTENT_PHISH_EVIDENCE"} <= set(scores)
    assert total >= 4


async def test_invoice_in_an_html_attachment_from_freemail_is_evidence(tmp_path: Path) -> None:
    raw = build(
        "Please view the attached invoice.",
        subject="Invoice 2291",
        sender='"Accounts" <accounts.dept@gmail.com>',
        attachment=("invoice_2291.html", "<html><body>loading</body></html>"),
    )
    scores, parts, _ = await run(tmp_path, raw)
    assert {"CONTENT_HTML_ATTACHMENT", "CONTENT_FROM_FREEMAIL", "CONTENT_LURE_INVOICE"} <= parts
    assert "CONTENT_PHISH_EVIDENCE" in scores
    assert "CONTENT_PHISH_PRETEXT" not in scores  # an invoice alone is no pretext


async def test_urgent_credential_ask_by_address_greeting(tmp_path: Path) -> None:
    body = (
        "Hello bob@example.com,\nFailure to verify your identity within 48 hours will close "
        "your mailbox. Click here to verify." + LINK
    )
    scores, parts, total = await run(tmp_path, build(body))
    assert "CONTENT_GREETS_ADDRESS" in parts
    assert {"CONTENT_PHISH_URGENT_ASK", "CONTENT_PHISH_EVIDENCE", "CONTENT_PHISH_STRONG"} <= set(
        scores
    )
    assert total >= 6


async def test_genuine_notice_from_the_brand_without_evidence_is_not_tagged(
    tmp_path: Path,
) -> None:
    """A real service's payment reminder: a pretext and a link, but no deceit: below tag."""
    body = (
        "Hi Bob,\nyour last payment was declined. You can update your payment method in your "
        "account settings." + LINK
    )
    raw = build(body, subject="Payment declined", sender='"Service" <billing@service.example>')
    scores, _, total = await run(tmp_path, raw)
    assert "CONTENT_PHISH_EVIDENCE" not in scores
    assert total < 4


async def test_an_invoice_phrase_with_only_a_link_counts_for_nothing(tmp_path: Path) -> None:
    """News speaks of outstanding balances: the invoice part needs a file host, a page attached
    or a link showing another site before it is evidence."""
    raw = build("Outstanding balances of the fund were reported." + LINK, subject="News")
    scores, parts, _ = await run(tmp_path, raw)
    assert "CONTENT_LURE_INVOICE" in parts
    assert not set(COMBINATIONS) & set(scores)


async def test_urgent_subject_naming_the_reader_with_a_lure_tags(tmp_path: Path) -> None:
    """The address is evidence with no score of its own: pretext, evidence and pressure tag
    (5.5); a scored sign of deceit from another check on top would quarantine."""
    raw = build(
        "Your mailbox has been suspended." + LINK,
        subject="URGENT: mailbox notice for bob@example.com",
    )
    scores, parts, total = await run(tmp_path, raw)
    assert {"CONTENT_URGENT_SUBJECT", "CONTENT_SUBJECT_ADDRESS", "CONTENT_LURE_LOCKED"} <= parts
    assert {"CONTENT_PHISH_PRETEXT", "CONTENT_PHISH_EVIDENCE", "CONTENT_PHISH_STRONG"} <= set(
        scores
    )
    assert 4 <= total < 6


async def test_a_japanese_card_brand_on_another_domain_is_evidence(tmp_path: Path) -> None:
    body = "お客様のカードの利用を一時制限しました。" + LINK
    raw = build(body, subject="ご利用確認", sender="【三井住友カード】 <info@card-notice.example>")
    scores, parts, total = await run(tmp_path, raw)
    assert {"CONTENT_LURE_CJK", "CONTENT_LURE_CJK_SUBJECT"} <= parts
    assert {"IDENTITY_NAME_BRAND", "CONTENT_PHISH_PRETEXT", "CONTENT_PHISH_EVIDENCE"} <= set(scores)
    assert total >= 4


async def test_the_japanese_card_brand_from_its_own_domain_is_no_evidence(tmp_path: Path) -> None:
    body = "お客様のカードの利用を一時制限しました。" + LINK
    raw = build(body, subject="ご利用確認", sender="三井住友カード <info@smbc-card.com>")
    scores, _, total = await run(tmp_path, raw)
    assert "IDENTITY_NAME_BRAND" not in scores and "CONTENT_PHISH_EVIDENCE" not in scores
    assert total < 4


async def test_a_brand_name_and_a_mismatched_link_are_a_pair_without_a_lure(
    tmp_path: Path,
) -> None:
    body = (
        "<p>Hello, see the details.</p>"
        '<p><a href="https://collect.example/x">https://www.docusign.com/review</a></p>'
    )
    raw = build(body, subject="Details", sender='"DocuSign" <notice@service.example>', html=True)
    scores, _, _ = await run(tmp_path, raw)
    assert {"IDENTITY_NAME_BRAND", "HTML_LINK_MISMATCH", "CONTENT_DECEIT_PAIR"} <= set(scores)
    assert "CONTENT_PHISH_EVIDENCE" not in scores  # no lure


async def test_a_brand_name_alone_is_no_pair(tmp_path: Path) -> None:
    raw = build("Hello." + LINK, subject="Hi", sender='"DocuSign" <notice@service.example>')
    scores, _, _ = await run(tmp_path, raw)
    assert "IDENTITY_NAME_BRAND" in scores and "CONTENT_DECEIT_PAIR" not in scores


async def test_a_lure_in_subject_and_text_counts_once_more(tmp_path: Path) -> None:
    raw = build("Your password has expired." + LINK, subject="Password expiration notice")
    scores, _, total = await run(tmp_path, raw)
    assert {"CONTENT_PHISH_LURE", "CONTENT_PHISH_SUBJECT_AND_BODY"} <= set(scores)
    assert 4 <= total < 6


# -- callback phishing: no link, a number to call ------------------------------------------------

CALLBACK = (
    "Dear Customer,\nYour Norton 360 Total Protection subscription has been renewed and "
    "$399.99 has been charged to your account.\nIf you did not authorize this charge, please "
    "call our billing department at +1 (888) 555-0147 within 24 hours to cancel and get a "
    "refund.\nInvoice: NT-4471-2291\n"
)

CALLBACK_PARTS = [
    ("CONTENT_CALLBACK_NUMBER", "For help, call us toll free: 1-866-555-0199."),
    ("CONTENT_CALLBACK_NUMBER", "Contact our helpline at (844) 555 0123 today."),
    ("CONTENT_CALLBACK_NUMBER", "Please dial +44 20 7946 0958 to speak to an agent."),
    ("CONTENT_LURE_CHARGE", "Your subscription has been successfully renewed."),
    ("CONTENT_LURE_CHARGE", "An amount of USD 349.00 has been debited."),
    ("CONTENT_LURE_CHARGE", "Your order has been confirmed and will ship today."),
    ("CONTENT_LURE_CHARGE", "Your plan will be automatically charged tomorrow."),
    ("CONTENT_DISPUTE_ASK", "If you did not make this purchase, let us know."),
    ("CONTENT_DISPUTE_ASK", "To cancel this order, reply to this notice."),
    ("CONTENT_DISPUTE_ASK", "If this wasn't you, we can help."),
    ("CONTENT_DISPUTE_ASK", "This transaction was not authorized by you?"),
]


@pytest.mark.parametrize(("part", "phrase"), CALLBACK_PARTS)
async def test_each_callback_phrase_hits_its_part(tmp_path: Path, part: str, phrase: str) -> None:
    _, parts, _ = await run(tmp_path, build(phrase))
    assert part in parts


async def test_callback_phishing_from_freemail_is_tagged_without_any_link(tmp_path: Path) -> None:
    raw = build(CALLBACK, subject="Your Invoice", sender='"Billing" <nortonbill.team@gmail.com>')
    scores, parts, total = await run(tmp_path, raw)
    assert "CONTENT_HAS_LINK" not in parts
    assert {"CONTENT_PHISH_CALLBACK", "CONTENT_PHISH_CALLBACK_EVIDENCE"} <= set(scores)
    assert total >= 4


async def test_callback_script_from_an_unremarkable_sender_is_weak(tmp_path: Path) -> None:
    scores, _, total = await run(tmp_path, build(CALLBACK))
    assert "CONTENT_PHISH_CALLBACK" in scores
    assert "CONTENT_PHISH_CALLBACK_EVIDENCE" not in scores
    assert total < 4


@pytest.mark.parametrize(
    "text",
    [
        # a real order confirmation: a charge and a dispute offer, no number to call
        "Your order has been confirmed. If you did not place this order, visit your account.",
        # a support signature with a number, no charge
        "Thanks for the patch. If you want to talk it through, call me on 617-555-0100.",
        # a renewal reminder with a number, no dispute ask
        "Your domain will be renewed automatically. Questions? Call 1-800-555-0100.",
    ],
)
async def test_one_or_two_callback_signs_are_no_callback_phish(tmp_path: Path, text: str) -> None:
    scores, _, _ = await run(tmp_path, build(text, sender='"Ann" <ann@gmail.com>'))
    assert not {"CONTENT_PHISH_CALLBACK", "CONTENT_PHISH_CALLBACK_EVIDENCE"} & set(scores)
