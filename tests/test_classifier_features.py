"""Classifier features: what they see, what they leave out; hostile MIME never breaks them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from classifier_data import CORPUS, REPO, SA_FEATURES, corpus_files

from gateway.classifier import corpus
from gateway.classifier.features import (
    FIELDS,
    FeatureSettings,
    extract,
    html_to_text,
    message_times,
)
from gateway.classifier.vectorize import VectorSpec, hashed_counts, weighted
from gateway.domains import registrable_domain

MIME = REPO.parent / "shared" / "mime"


def msg(headers: str, body: str = "Hello there, see you soon.\r\n") -> bytes:
    return (headers.replace("\n", "\r\n") + "\r\n" + body).encode("utf-8")


PLAIN = msg(
    "From: Alice Example <alice@example.net>\n"
    "To: bob@example.com\n"
    "Subject: Lunch tomorrow?\n"
    "Date: Wed, 04 Sep 2002 10:00:00 +0100\n"
    "Message-ID: <1@example.net>\n"
)


def test_fields_of_a_plain_message() -> None:
    fields = extract(PLAIN, FeatureSettings())
    assert set(fields) == set(FIELDS)
    assert fields["subject"] == ["lunch", "tomorrow"]
    assert "hello" in fields["body"]
    assert "from:dom:example.net" in fields["header"]
    assert "mailer:none" in fields["header"]
    assert not any(t.startswith("date:") for t in fields["header"])


def test_sender_traits_disagreement_and_date_anomalies() -> None:
    raw = msg(
        "From: PRIZE DEPT <winner123456@freemail.example>\n"
        "Reply-To: claims@other.example\n"
        "Subject: You WON $1,000,000!!!      8841\n"
        "Date: Sat, 24 Aug 102 09:42:10 -1600\n"
        "X-Mailer: Microsoft Outlook Express 5.00.2919.6700\n"
        "Message-ID: <abc@elsewhere.example>\n"
        "Content-Type: text/html\n",
        "<html><body><font color=#ffffff>hidden</font><a href='http://1.2.3.4:8080/x?id=1'>"
        'CLICK</a> <a href="http://user@www.sub.deep.spam.co.uk/win/prize">here</a>'
        "</body></html>",
    )
    fields = extract(raw, FeatureSettings(), envelope_from="bounce@third.example")
    h = set(fields["header"])
    assert {"replyto:other_domain", "env:other_domain", "msgid:other_domain"} <= h
    assert {"date:year_3digit", "date:bad_zone", "from:local_digits", "from:name_caps"} <= h
    assert {"subj:bang", "subj:dollar", "subj:trailing_id", "html:only", "html:white_text"} <= h
    assert "mailer:microsoft" in h and "mailer:outlook" in h
    u = set(fields["url"])
    assert {"host_ip", "port", "userinfo", "dom:spam.co.uk", "tld:uk", "path:prize"} <= u
    # rendered as a reader sees it (gateway.mime.html): inline elements join their words
    assert "hiddenclick" in fields["body"] and "here" in fields["body"]
    assert "font" not in fields["body"]  # tags are not words


def test_html_reads_as_the_mime_stage_reads_it() -> None:
    """One reading: the classifier's words are the text the content rules see, and a JSON-LD
    block (every GitHub notification has one) is no script, as HTML_SCRIPT says."""
    from gateway.message import visible_body_text
    from gateway.mime.parse import analyze

    html = (
        '<script type="application/ld+json">{"@type": "EmailMessage"}</script>'
        "<p>Your build passed</p><div style='display:none'>cheap pills casino</div>"
        "<p>V<b></b>iagra</p>"
    )
    raw = msg("From: ci@example.org\nSubject: build\nContent-Type: text/html\n", html)
    fields = extract(raw, FeatureSettings())
    assert not any(t.startswith("html:script") for t in fields["header"])
    assert "viagra" in fields["body"]  # split by markup, read whole, as a reader does
    assert not {"cheap", "pills", "casino", "emailmessage"} & set(fields["body"])
    shown = visible_body_text(analyze(raw))
    assert "Viagra" in shown and "casino" not in shown
    script = msg("From: a@example.org\nContent-Type: text/html\n", "<script>x()</script><p>hi")
    assert "html:script:1" in extract(script, FeatureSettings())["header"]


def test_null_envelope_sender() -> None:
    assert "env:null" in extract(PLAIN, FeatureSettings(), envelope_from="")["header"]


def test_collector_names_hops_and_list_artefacts_are_left_out() -> None:
    raw = msg(
        "Return-Path: <list-admin@lists.example.org>\n"
        "Received: from phobos [127.0.0.1] by localhost with IMAP (fetchmail-5.9.0)\n"
        "Received: from relay.example.org by dogma.slashnull.org; Thu, 22 Aug 2002 12:34:53 +0100\n"
        "Received: from origin.example.org by relay.example.org; Thu, 22 Aug 2002 12:30:00 +0100\n"
        "From: a@example.org\n"
        "Subject: [ILUG] Re: kernel question\n"
        "List-Id: <ilug.linux.ie>\n"
        "Date: Thu, 22 Aug 2002 12:00:00 +0100\n",
        "Mail zzzz@spamassassin.taint.org about the kernel.\r\n"
        "___________________________________________\r\n"
        "ILUG mailing list\r\nhttp://www.linux.ie/mailman/listinfo/ilug\r\n",
    )
    fields = extract(raw, SA_FEATURES)
    assert not any(t.startswith("hops:") for t in fields["header"])  # how it was collected
    everything = " ".join(t for f in fields.values() for t in f)
    assert "taint" not in everything and "zzzz" not in everything
    assert fields["subject"] == ["re", "kernel", "question"]  # the list's tag is dropped
    assert "listinfo" not in everything and "mailing" not in fields["body"]  # footer dropped
    assert "env:other_domain" not in fields["header"]  # the list's bounce address


def test_subject_tags_stay_when_no_list_added_them() -> None:
    raw = msg("From: a@b.example\nSubject: [ADV] cheap stuff\n")
    assert extract(raw, FeatureSettings())["subject"] == ["adv", "cheap", "stuff"]


def test_broken_multipart_falls_back_to_the_raw_body() -> None:
    raw = msg(
        "From: a@b.example\nSubject: x\nMIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="=Multipart Boundary 0925"\n',
        "--= Multipart Boundary 0925\r\nContent-Type: text/plain\r\n\r\n"
        "<html><body>Printer cartridges cheap</body></html>\r\n",
    )
    fields = extract(raw, FeatureSettings())
    assert "mime:no_parts_found" in fields["header"]
    assert "cartridges" in fields["body"]


def test_attachments_and_charsets() -> None:
    raw = msg(
        "From: a@b.example\nSubject: invoice\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="B"\n',
        "--B\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n\xd0\xd2\xc9\xd7\xc5\xd4\r\n"
        '--B\r\nContent-Type: application/octet-stream; name="invoice.pdf.exe"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
        "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA\r\n--B--\r\n",
    )
    h = extract(raw, FeatureSettings())["header"]
    assert "att:ext:exe" in h and "att:type:application/octet-stream" in h
    assert "charset:koi8-r" in h and "parts:1" in h  # two parts


def test_cjk_text_becomes_character_pairs() -> None:
    raw = msg("From: a@b.example\nSubject: =?utf-8?b?5pyq5om/6Ku+5bqD5ZGK?=\n")
    assert extract(raw, FeatureSettings())["subject"] == ["未承", "承諾", "諾広", "広告"]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"no headers at all, just text",
        b"Subject: =?bogus-charset?q?=FF=FE?=\r\n\r\nx",
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n\xff\xfe body",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64",
        b'Content-Type: multipart/mixed; boundary="' + b"x" * 5000 + b'"\r\n\r\n--x\r\n',
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
        + b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" * 500,
        b"From: " + b"<" * 20000 + b"\r\nDate: " + b"9" * 5000 + b"\r\n\r\n",
        b"Received: ;" + b" " * 10000 + b"\r\nDate: Mon, 99 Foo 99999 99:99:99 +9999\r\n\r\n",
        b"Content-Type: text/html\r\n\r\n" + b"<script" * 50000,
        b"Content-Type: text/html\r\n\r\n" + b"<!--" * 50000 + b"<a href=" * 20000,
        b"Subject: \x00\x01\x02\r\n\r\n\x00" * 100,
    ],
)
def test_hostile_input_never_raises(raw: bytes) -> None:
    started = time.perf_counter()
    fields = extract(raw, FeatureSettings())
    assert set(fields) == set(FIELDS)
    assert time.perf_counter() - started < 2.0
    index, value = weighted(hashed_counts(fields, VectorSpec(bits=12)), VectorSpec(bits=12), None)
    assert len(index) == len(value)


def test_size_is_bounded() -> None:
    big = PLAIN + b"word " * 2_000_000  # 10 MB
    started = time.perf_counter()
    fields = extract(big, FeatureSettings())
    assert time.perf_counter() - started < 2.0
    assert "size:cut" in fields["header"]
    assert len(fields["body"]) <= FeatureSettings().max_tokens


def test_html_to_text_is_linear_on_unclosed_blocks() -> None:
    started = time.perf_counter()
    html_to_text("<style" * 100_000 + "<!--" * 100_000)
    assert time.perf_counter() - started < 1.0
    assert html_to_text("a<script>x</script>b &amp; <b>c</b>").split() == ["a", "b", "&", "c"]


def test_every_shared_mime_sample_and_a_corpus_slice_extract() -> None:
    files = [p for p in MIME.rglob("*") if p.is_file() and p.stat().st_size < 5_000_000]
    files += corpus_files("spam_2", 0, 30) + corpus_files("hard_ham", 0, 30)
    assert len(files) > 60
    for path in files:
        fields = extract(path.read_bytes(), SA_FEATURES)
        assert set(fields) == set(FIELDS), path


def test_registered_domain() -> None:
    assert registrable_domain("www.Example.COM.") == "example.com"
    assert registrable_domain("a.b.example.co.uk") == "example.co.uk"
    assert registrable_domain("localhost") == "localhost"


def test_time_order_prefers_a_plausible_date_and_distrusts_forged_ones() -> None:
    good = msg(
        "Received: from a by b; Thu, 22 Aug 2002 12:00:00 +0000\n"
        "Date: Thu, 22 Aug 2002 11:00:00 +0000\n"
    )
    forged = msg(
        "Received: from a by b; Thu, 22 Aug 2002 12:00:00 +0000\n"
        "Date: Mon, 1 Jan 1980 00:00:00 +0000\n"
    )
    times = message_times(good)
    assert times.date == datetime(2002, 8, 22, 11, tzinfo=UTC)
    assert times.arrival == datetime(2002, 8, 22, 12, tzinfo=UTC)
    assert corpus.sort_time(good) == datetime(2002, 8, 22, 11, tzinfo=UTC).timestamp()
    assert corpus.sort_time(forged) == datetime(2002, 8, 22, 12, tzinfo=UTC).timestamp()
    mbox_only = b"From someone@example.net  Thu Aug 22 12:36:23 2002\n" + msg("Subject: x\n")
    assert corpus.sort_time(mbox_only) == datetime(2002, 8, 22, 12, 36, 23, tzinfo=UTC).timestamp()
    import math

    assert math.isnan(corpus.sort_time(b"Subject: no dates\r\n\r\n"))


def test_corpus_files_are_bytes_and_cmds_is_skipped() -> None:
    names = [name for name, _ in corpus.iter_source(CORPUS / "hard_ham")]
    assert "cmds" not in names and len(names) == 250


def test_maildir_and_mbox_sources(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1.host:2,S").write_bytes(PLAIN)
    (maildir / "new" / "2.host").write_bytes(PLAIN)
    (maildir / "tmp" / "3.host").write_bytes(PLAIN)  # being delivered: not a message yet
    assert len(list(corpus.iter_source(maildir))) == 2
    mbox = tmp_path / "box.mbox"
    mbox.write_bytes(
        b"From a@example.net Thu Aug 22 12:36:23 2002\n"
        + PLAIN.replace(b"\r\n", b"\n")
        + b"\nFrom b@example.net Thu Aug 22 12:37:23 2002\n"
        + PLAIN.replace(b"\r\n", b"\n")
    )
    found = list(corpus.iter_source(mbox))
    assert len(found) == 2 and all(b"Lunch tomorrow" in raw for _, raw in found)


def test_body_and_mime_features_come_from_the_gateways_one_mime_parse() -> None:
    """The classifier tokenises the leaves of the MIME report it is given (the one every check
    reads), never a parse of its own: content only that report holds is what it sees."""
    from gateway.mime.model import Leaf, MimeReport

    raw = msg("From: a@b.example\nSubject: hi\n", "words of the raw body\r\n")
    leaf = Leaf("1", "part", "text/plain", "", (), "7bit", b"viagra pharmacy", charset="utf-8")
    report = MimeReport((), (leaf,), True, 1, 1, 0, 0.0)
    fields = extract(raw, FeatureSettings(), mime=report)
    assert fields["body"] == ["viagra", "pharmacy"]
    assert extract(raw, FeatureSettings())["body"] == ["words", "of", "the", "raw", "body"]


def test_a_second_reading_of_an_ambiguous_message_is_tokenised_too() -> None:
    """Two Content-Type fields: the first-wins reading (all the classifier's own compat32 parse
    gave it) is a multipart with an innocent part, the spam sitting in its preamble, which such
    readers hide; the last-wins reading (some clients) is one text/plain, the spam on show. The
    MIME stage reports both readings; the classifier reads what it reports."""
    raw = msg(
        "From: a@b.example\nSubject: hi\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="B"\n'
        "Content-Type: text/plain\n",
        "casino jackpot winnings\r\n--B\r\nContent-Type: text/plain\r\n\r\n"
        "innocent note\r\n--B--\r\n",
    )
    fields = extract(raw, FeatureSettings())
    assert "casino" in fields["body"] and "jackpot" in fields["body"]
    assert "mime:mime_ambiguous" in fields["header"]


def test_a_list_footer_is_cut_only_at_the_end_of_a_part() -> None:
    footer = (
        "_______________________________________________\r\n"
        "Spam-devel mailing list\r\nhttps://lists.example.org/listinfo/spam-devel\r\n"
    )
    head = "From: a@b.example\nSubject: [Spam-devel] offer\nList-Id: <spam-devel.example.org>\n"
    at_end = extract(msg(head, "buy cheap pills\r\n" + footer), FeatureSettings())
    assert "pills" in at_end["body"] and "listinfo" not in at_end["body"]
    assert at_end["subject"] == ["offer"]
    # a "footer" of the sender's own at the top hides nothing that follows it
    hidden = "buy cheap pills now " * 200
    on_top = extract(msg(head, footer + hidden + "\r\n"), FeatureSettings())
    assert "pills" in on_top["body"]


def test_a_from_rewritten_by_a_list_says_nothing_of_the_sender() -> None:
    head = (
        "From: Amira Example via Spam-devel <spam-devel@lists.example.org>\n"
        "Reply-To: spam-devel@lists.example.org\n"
        "List-Post: <mailto:spam-devel@lists.example.org>\n"
        "Subject: x\n"
    )
    h = extract(msg(head), FeatureSettings())["header"]
    assert not any(t.startswith(("from:dom:", "from:tld:", "replyto:")) for t in h)
    assert "from:name:amira" in h and "from:name:via" not in h
    whole = head.replace("Amira Example via Spam-devel", "Spam devel discussion")
    h = extract(msg(whole), FeatureSettings())["header"]
    assert not any(t.startswith("from:") for t in h)


def test_blind_fields_give_no_traits() -> None:
    raw = msg("From: \nTo: \nMessage-ID: \nSubject: loan offer\n")
    seen = extract(raw, FeatureSettings())["header"]
    assert "from:missing" in seen and "msgid:missing" in seen
    blind = extract(raw, FeatureSettings(), blind=frozenset({"from", "to", "message-id"}))
    assert not any(t.startswith(("from:", "msgid:", "rcpt:", "to:")) for t in blind["header"])


def test_without_layout_traits_the_model_reads_what_a_message_says_not_its_layout() -> None:
    """Public ham is plain-text list mail: its layout must not teach "laid out = spam"."""
    html = (
        "<html><head><style>@media (max-width:600px){.x{display:none}}</style></head><body>"
        '<table><tr><td><img src="https://cdn.shop.example/logo.png"><a href="https://shop.'
        'example/o/1">View your order</a></td></tr></table><form action="https://f.example/">'
        '<input type="password"></form><font color="#ffffff">pills</font></body></html>'
    )
    raw = msg(
        "From: Shop <orders@shop.example>\nSubject: Your order\nMIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="B"\n',
        "--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n"
        "\r\nView your order\r\n--B\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
        f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{html}\r\n--B--\r\n",
    )
    layout = ("cte:", "charset:", "parts:", "mime:alternative", "html:only", "html:hidden")
    tags = ("html:img:", "html:table:", "html:a:", "html:font:")
    full = extract(raw, FeatureSettings())
    assert any(t.startswith(layout + tags) for t in full["header"])
    plain = extract(raw, FeatureSettings(layout_traits=False))
    assert not [t for t in plain["header"] if t.startswith(layout + tags)]
    # what a page does or hides from the reader is still read, and so are the words and links
    assert {"html:form:1", "html:white_text"} <= set(plain["header"])
    assert plain["body"] == full["body"] and plain["url"] == full["url"]
    settings = FeatureSettings(layout_traits=False)
    assert FeatureSettings.from_json(settings.to_json()) == settings
    with pytest.raises(ValueError, match="layout_traits"):
        FeatureSettings.from_json({"layout_traits": "no"})
