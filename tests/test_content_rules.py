"""Admin content rules (rules/content.toml, content.d/): every rule type on built messages, the
composites over any plugin's symbols, RE2's refusals and every other load error with file:line
and rule, GTUBE, the detail of a hit, the bounds, and a reload over a running gateway."""

from __future__ import annotations

import shutil
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import pytest
from harness import (
    HARNESS_ORDER,
    REPO,
    GatewayFactory,
    RecordingSink,
    RunningGateway,
    make_settings,
    message,
)
from quarantine_fixtures import send

from gateway.app import PolicyError, load_checked_rules
from gateway.chain import Chain
from gateway.config import PluginSettings, Settings
from gateway.content_rules import parse_expression
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins import builtin_registry
from gateway.plugins.content import GTUBE, visible
from gateway.policy import RuleSet, load_rules
from gateway.tomlfile import ConfigErrors
from gateway.verdict import Action, Finding

ORDER = ("headers", "mime", "attachments", "content")


def rules_dir(tmp_path: Path, content: str, files: Mapping[str, str] | None = None) -> Path:
    """A copy of the shipped rules/ with this content.toml (and other files, by relative name)."""
    target = tmp_path / "rules"
    if not target.exists():
        shutil.copytree(REPO / "rules", target)
    (target / "content.toml").write_text(content, encoding="utf-8")
    for name, text in (files or {}).items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def settings_for(tmp_path: Path, order: tuple[str, ...] = ORDER) -> Settings:
    return make_settings(tmp_path, 1, plugins=PluginSettings(order=order))


async def findings_of(
    tmp_path: Path,
    raw: bytes,
    content: str,
    order: tuple[str, ...] = ORDER,
    mail_from: str = "alice@example.net",
    client_ip: str = "192.0.2.10",
) -> dict[str, Finding]:
    """Symbol -> finding of the real chain (DATA) over `raw` with these content rules."""
    rules_dir(tmp_path, content)
    settings = settings_for(tmp_path, order)
    registry = builtin_registry()
    rules = load_checked_rules(settings, registry)
    chain = Chain.build(registry, Services(settings, resolver=None))
    ctx = MessageContext(client=ClientInfo(client_ip, 25), rules=rules, settings=settings)
    ctx.mail_from = mail_from
    ctx.rcpt_tos.append("bob@example.com")
    ctx.raw = raw
    await chain.run(Phase.DATA, ctx)
    return {f.symbol: f for f in ctx.findings}


def rule(symbol: str, kind: str, **keys: object) -> str:
    lines = ["[[rule]]", f'symbol = "{symbol}"', f'description = "test rule {symbol}"']
    lines += [] if keys.get("part") else ["score = 1.0"]
    lines += [f'type = "{kind}"']
    for key, value in keys.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        else:
            lines.append(f"{key} = '{value}'")
    return "\n".join(lines) + "\n\n"


def load_errors(directory: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_rules(directory)
    return [str(e) for e in caught.value.errors]


def line_of(path: Path, needle: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


# -- header rules ---------------------------------------------------------------------------------


async def test_header_rule_reads_the_decoded_value_of_any_listed_field(tmp_path: Path) -> None:
    # "Invoice overdue" as a Q-encoded word: the rule reads what the reader sees
    raw = message(subject="=?utf-8?q?Invoice_overdue?=", extra=b"Reply-To: x@pay.example\r\n")
    content = rule("T_SUBJECT", "header", fields=["Subject", "X-Other"], pattern="(?i)overdue")
    content += rule("T_REPLY_TO", "header", fields=["reply-to"], pattern="pay\\.example$")
    content += rule("T_NOT_IN_TO", "header", fields=["To"], pattern="overdue")
    found = await findings_of(tmp_path, raw, content)
    assert "T_SUBJECT" in found and "T_REPLY_TO" in found
    assert "T_NOT_IN_TO" not in found
    assert found["T_SUBJECT"].detail.endswith('header subject: "overdue"')


async def test_header_exists_negate_and_all(tmp_path: Path) -> None:
    raw = message(extra=b"X-Mailer: BulkBlaster 3\r\n")
    content = rule("T_HAS_MAILER", "header", fields=["X-Mailer"], exists=True)
    content += rule("T_NO_LIST_ID", "header", fields=["List-Id"], exists=True, negate=True)
    content += rule("T_HAS_DATE_NEG", "header", fields=["Date"], exists=True, negate=True)
    content += rule("T_ALL", "header", fields=["ALL"], pattern="(?m)^X-Mailer: Bulk")
    content += rule(
        "T_SUBJECT_NOT_URGENT", "header", fields=["Subject"], pattern="URGENT", negate=True
    )
    found = await findings_of(tmp_path, raw, content)
    assert {"T_HAS_MAILER", "T_NO_LIST_ID", "T_ALL", "T_SUBJECT_NOT_URGENT"} <= set(found)
    assert "T_HAS_DATE_NEG" not in found
    assert found["T_NO_LIST_ID"].detail.endswith("header: no match")


async def test_header_rule_sees_a_field_the_lenient_parse_sees(tmp_path: Path) -> None:
    """`Subject : x` is a Subject to the one parse, so to the rules too (no differential)."""
    raw = message(subject="hello").replace(b"Subject: hello", b"Subject : win a prize")
    found = await findings_of(
        tmp_path, raw, rule("T_PRIZE", "header", fields=["Subject"], pattern="prize")
    )
    assert "T_PRIZE" in found


# -- body, rawbody, full --------------------------------------------------------------------------


def html_message(html: str) -> bytes:
    return message(
        extra=b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n",
        body=html.encode() + b"\r\n",
    )


async def test_body_rawbody_and_full(tmp_path: Path) -> None:
    b64 = b"VmVyaWZ5IHlvdXIgYWNjb3VudCB0b2RheQ=="  # "Verify your account today"
    raw = message(
        extra=b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: base64\r\n",
        body=b64 + b"\r\n",
    )
    content = rule("T_BODY", "body", pattern="(?i)verify your account")
    content += rule("T_FULL_DECODED", "full", pattern="(?i)verify your account")
    content += rule("T_FULL_RAW", "full", pattern="VmVyaWZ5")
    content += rule("T_BODY_ABSENT", "body", pattern="lottery", negate=True)
    found = await findings_of(tmp_path, raw, content)
    assert {"T_BODY", "T_FULL_RAW", "T_BODY_ABSENT"} <= set(found)
    assert "T_FULL_DECODED" not in found  # full is the message as received, still base64
    html = html_message('<p>Hello</p><form action="https://evil.example/x">')
    content = rule("T_RAW_FORM", "rawbody", pattern='(?i)<form[^>]+action="https?://')
    found = await findings_of(tmp_path, html, content)
    assert "T_RAW_FORM" in found


PASSWORD_RULES = rule("T_PASSWORD", "body", pattern="(?i)password") + rule(
    "T_RAW_PASSWORD", "rawbody", pattern="(?i)password"
)


@pytest.mark.parametrize(
    ("html", "body", "rawbody"),
    [
        # what a reader sees: the word, whatever markup or encoding splits it
        ("Your pass<b></b>word expires", True, False),
        ("Your <span>pass</span><i>word</i> expires", True, False),
        ("Your &#112;assword expires", True, False),
        ("Your &#x70;ass&#x77;ord expires", True, False),
        ("Your pass<span style='display:none'>xyz</span>word expires", True, False),
        ("Your pass<!-- x -->word expires", True, False),
        # what a reader never sees: the markup has the word, the rendered text does not
        ("Hello <!-- password --> there", False, True),
        ("Hello <script>var password = 1;</script> there", False, True),
        ("Hello <style>.password { color: red }</style> there", False, True),
        ("<title>password</title><p>Hello</p>", False, True),
        ("Hello <div style='display: none'>password</div> there", False, True),
        ("Hello <span style='font-size:0px'>password</span> there", False, True),
        ("Hello <p hidden>password</p> there", False, True),
    ],
)
async def test_body_rules_read_html_as_the_text_a_reader_sees(
    tmp_path: Path, html: str, body: bool, rawbody: bool
) -> None:
    found = await findings_of(tmp_path, html_message(html), PASSWORD_RULES)
    assert ("T_PASSWORD" in found) is body
    assert ("T_RAW_PASSWORD" in found) is rawbody


async def test_body_rules_see_html_blocks_as_lines_and_plain_parts_as_written(
    tmp_path: Path,
) -> None:
    raw = message(
        extra=b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n",
        body=b"--b\r\nContent-Type: text/plain\r\n\r\nplain <b>tags</b> stay\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>first</p><div>second</div>"
        b"<table><tr><td>cell</td><td>next</td></tr></table>\r\n--b--\r\n",
    )
    content = rule("T_LINES", "body", pattern="(?m)^first\\nsecond\\ncell next$")
    content += rule("T_PLAIN_MARKUP", "body", pattern="plain <b>tags</b> stay")
    content += rule("T_GLUED", "body", pattern="firstsecond")
    found = await findings_of(tmp_path, raw, content)
    assert {"T_LINES", "T_PLAIN_MARKUP"} <= set(found) and "T_GLUED" not in found


async def test_gtube_hidden_in_an_html_comment_is_not_read(tmp_path: Path) -> None:
    hidden = html_message(f"<p>Hello</p><!-- {GTUBE} -->")
    assert "GTUBE" not in await findings_of(tmp_path, hidden, "")
    shown = html_message(f"<p>{GTUBE}</p>")
    assert "GTUBE" in await findings_of(tmp_path, shown, "")


async def test_body_rule_ignores_invisible_characters_between_letters(tmp_path: Path) -> None:
    body = "Your pass\u200dword has ex\u00adpired".encode()
    raw = message(extra=b"Content-Type: text/plain; charset=utf-8\r\n", body=body + b"\r\n")
    found = await findings_of(
        tmp_path, raw, rule("T_EXPIRED", "body", pattern="(?i)password has expired")
    )
    assert "T_EXPIRED" in found


def test_visible_drops_every_format_character() -> None:
    every = "".join(
        chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"
    )
    assert visible(every + "ok") == "ok"
    assert visible("caf\u00e9 \u05d0") == "caf\u00e9 \u05d0"


async def test_each_text_is_cut_to_its_limit(tmp_path: Path) -> None:
    raw = message(body=b"x" * 300_000 + b" lottery winner\r\n")
    content = rule("T_LATE", "body", pattern="lottery")
    content += rule("T_EARLY", "body", pattern="^x")
    found = await findings_of(tmp_path, raw, content)
    assert "T_EARLY" in found and "T_LATE" not in found


async def test_rules_stay_linear_on_a_pattern_that_backtracks_elsewhere(tmp_path: Path) -> None:
    """(a+)+$ takes exponential time in a backtracking engine on "aaaa...!"; RE2 does not."""
    raw = message(body=b"a" * 100_000 + b"!\r\n")
    found = await findings_of(tmp_path, raw, rule("T_EVIL", "body", pattern="(a+)+$"))
    assert "T_EVIL" not in found


# -- uri, attachment, list ------------------------------------------------------------------------


async def test_uri_rule_by_pattern_and_by_registrable_domain(tmp_path: Path) -> None:
    raw = message(body=b"See https://login.bad.example.co.uk/owa and http://fine.example/\r\n")
    content = rule("T_URI_OWA", "uri", pattern="(?i)/owa$")
    content += rule("T_URI_LISTED", "uri", entries=["example.co.uk"])  # its registrable domain
    content += rule("T_URI_BOTH", "uri", entries=["fine.example"], pattern="/owa")
    content += rule("T_URI_FILE", "uri", file="lists/links.txt")
    (rules_dir(tmp_path, content) / "lists" / "links.txt").write_text(
        "# links\nfine.example   # a comment\n"
    )
    found = await findings_of(tmp_path, raw, content)
    assert {"T_URI_OWA", "T_URI_LISTED", "T_URI_FILE"} <= set(found)
    assert "T_URI_BOTH" not in found  # both conditions must hold for the same link
    assert found["T_URI_LISTED"].detail.endswith('uri "https://login.bad.example.co.uk/owa"')


def with_attachment(name: str, content_type: str, data: bytes) -> bytes:
    import base64

    return message(
        extra=b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n',
        body=(
            b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
            + f"Content-Type: {content_type}\r\n".encode()
            + f'Content-Disposition: attachment; filename="{name}"\r\n'.encode()
            + b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(data)
            + b"\r\n--b--\r\n"
        ),
    )


async def test_attachment_rule_by_name_and_by_detected_type(tmp_path: Path) -> None:
    html = (
        b"<html><body><form action='https://x.example'><input type=password></form></body></html>"
    )
    raw = with_attachment("Invoice.pdf.htm", "application/pdf", html)
    content = rule("T_HTM_NAME", "attachment", name="(?i)\\.s?html?$")
    content += rule("T_HTML_TYPE", "attachment", mime_type="^text/html")
    content += rule("T_PDF_TYPE", "attachment", mime_type="^application/pdf")
    found = await findings_of(tmp_path, raw, content)
    assert "T_HTM_NAME" in found
    # the attachments plugin ran first: the type is what the content is, not what it claims
    assert "T_HTML_TYPE" in found and "T_PDF_TYPE" not in found
    assert '"Invoice.pdf.htm" (text/html)' in found["T_HTML_TYPE"].detail
    # without it, the declared type is all there is
    alone = await findings_of(tmp_path, raw, content, order=("content",))
    assert "T_PDF_TYPE" in alone and "T_HTML_TYPE" not in alone


async def test_list_rule_matches_each_identity(tmp_path: Path) -> None:
    lists = (
        "# bad senders and places\n"
        "evil.example\n"
        ".spam.example          # below spam.example only\n"
        "ceo@victim.example\n"
        "198.51.100.0/24\n"
    )
    raw = message(
        sender="ceo@victim.example",
        extra=b"Reply-To: Pay <pay@mail.spam.example>\r\n",
        body=b"click http://203.0.113.9/login now\r\n",
    )
    content = ""
    for identity in ("from", "reply_to", "envelope_from", "client_ip", "url"):
        content += rule(
            f"T_LIST_{identity.upper()}", "list", file="lists/bad.txt", match=[identity]
        )
    content += rule("T_LIST_IP_URL", "list", entries=["203.0.113.0/28"], match=["url"])
    rules_dir(tmp_path, content, {"lists/bad.txt": lists})
    found = await findings_of(
        tmp_path, raw, content, mail_from="x@evil.example", client_ip="198.51.100.7"
    )
    expected = {"T_LIST_FROM", "T_LIST_REPLY_TO", "T_LIST_ENVELOPE_FROM", "T_LIST_CLIENT_IP"}
    assert expected | {"T_LIST_IP_URL"} <= set(found)
    assert "T_LIST_URL" not in found
    assert found["T_LIST_REPLY_TO"].detail.endswith('list reply_to "pay@mail.spam.example"')
    # ".spam.example" is below only: spam.example itself and other domains do not match
    clean = await findings_of(
        tmp_path,
        message(extra=b"Reply-To: x@spam.example\r\n"),
        content,
        mail_from="a@good.example",
        client_ip="192.0.2.1",
    )
    assert not {s for s in clean if s.startswith("T_LIST")}


# -- composites -----------------------------------------------------------------------------------


def test_expression_grammar() -> None:
    expression = parse_expression("A_1 && !(B_2 || C_3) || D_4")
    assert expression.symbols() == {"A_1", "B_2", "C_3", "D_4"}
    assert expression.holds({"A_1"})
    assert not expression.holds({"A_1", "C_3"})
    assert expression.holds({"D_4", "B_2"})
    assert not expression.holds(set())


async def test_composite_over_content_rules_and_other_plugins(tmp_path: Path) -> None:
    raw = message(body=b"Please verify your account.\r\n").replace(
        b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n", b""
    )
    content = rule("T_VERIFY", "body", pattern="(?i)verify your account")
    content += rule("T_LINK", "uri", pattern="^https?://")
    content += rule("T_NO_DATE_VERIFY", "meta", expression="T_VERIFY && HDR_DATE_MISSING")
    content += rule("T_VERIFY_NO_LINK", "meta", expression="T_VERIFY && !T_LINK")
    content += rule("T_LURE_LINK", "meta", expression="(T_VERIFY || T_OTHER_META) && T_LINK")
    content += rule("T_OTHER_META", "meta", expression="T_NO_DATE_VERIFY && T_VERIFY_NO_LINK")
    found = await findings_of(tmp_path, raw, content)
    assert {"T_NO_DATE_VERIFY", "T_VERIFY_NO_LINK", "T_OTHER_META"} <= set(found)
    assert "T_LURE_LINK" not in found
    assert found["T_VERIFY_NO_LINK"].detail.endswith("meta: T_VERIFY && !T_LINK")


async def test_parts_feed_composites_and_are_no_findings(tmp_path: Path) -> None:
    raw = message(body=b"Please verify your account at https://x.example/login\r\n")
    content = rule("T_VERIFY", "body", pattern="(?i)verify your account", part=True)
    content += rule("T_LINK", "uri", pattern="^https?://", part=True)
    content += rule("T_LURE", "meta", expression="T_VERIFY && T_LINK")
    content += rule("T_NO_LINK", "meta", expression="T_VERIFY && !T_LINK")
    found = await findings_of(tmp_path, raw, content)
    assert "T_LURE" in found and not {"T_VERIFY", "T_LINK", "T_NO_LINK"} & set(found)
    # the composite says what its parts matched, in the order the expression names them
    assert found["T_LURE"].detail == (
        'content.toml:15 meta: content.toml:1 body "verify your account"; '
        'content.toml:8 uri "https://x.example/login"'
    )
    rules = load_rules(tmp_path / "rules")
    assert "T_VERIFY" not in rules.scores and "T_LURE" in rules.scores
    assert set(rules.content.part_symbols) == {"T_VERIFY", "T_LINK"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            rule("T_X", "body", pattern="x", part=True).replace("type", "score = 1.0\ntype"),
            "no score",
        ),
        (rule("T_X", "meta", expression="A_B", part=True), "cannot be a part"),
        (rule("T_X", "body", pattern="x").replace("score = 1.0\n", ""), "score'"),
    ],
)
def test_part_and_score_go_together(tmp_path: Path, text: str, problem: str) -> None:
    [error] = load_errors(rules_dir(tmp_path, text))
    assert problem in error


def test_composite_scores_count_in_the_verdict(tmp_path: Path) -> None:
    content = rule("T_A", "body", pattern="a") + rule("T_META", "meta", expression="T_A")
    rules = load_rules(rules_dir(tmp_path, content))
    findings = [Finding("T_A")]
    findings += rules.content.composite_findings(findings)
    assert rules.decide(findings).score == 2.0


# -- GTUBE ----------------------------------------------------------------------------------------


async def test_gtube_is_refused(tmp_path: Path) -> None:
    raw = message(body=f"test\r\n{GTUBE}\r\n".encode())
    found = await findings_of(tmp_path, raw, "")
    assert "GTUBE" in found
    verdict = load_rules(tmp_path / "rules").decide(list(found.values()))
    assert verdict.action is Action.REJECT and verdict.forced_by == "GTUBE"
    assert str(verdict.reply).startswith("554 5.7.1")
    almost = message(body=GTUBE.replace("GTUBE", "GTUB").encode() + b"\r\n")
    assert "GTUBE" not in await findings_of(tmp_path, almost, "")


# -- load errors: file:line, key and rule ---------------------------------------------------------


def test_patterns_re2_cannot_run_are_refused_with_file_line_and_rule(tmp_path: Path) -> None:
    content = rule("T_OK", "body", pattern="fine")
    content += rule("T_BACKREF", "body", pattern="(a)\\1")
    content += rule("T_LOOKAHEAD", "header", fields=["Subject"], pattern="a(?=b)")
    content += rule("T_LOOKBEHIND", "attachment", name="(?<!x)\\.exe$")
    directory = rules_dir(tmp_path, content)
    path = directory / "content.toml"
    errors = load_errors(directory)
    assert len(errors) == 3
    for symbol, key in (
        ("T_BACKREF", "pattern"),
        ("T_LOOKAHEAD", "pattern"),
        ("T_LOOKBEHIND", "name"),
    ):
        line = line_of(
            path, "\\1" if symbol == "T_BACKREF" else ("(?=" if key == "pattern" else "(?<!")
        )
        [error] = [e for e in errors if f"rule {symbol}:" in e]
        assert error.startswith(f"{path}:{line}: key 'rule["), error
        assert f"].{key}': rule {symbol}: not an RE2 pattern" in error
        assert "no backreferences or lookaround" in error


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (rule("T_X", "body"), "pattern", "is required for a 'body' rule"),
        (
            rule("T_X", "meta", expression="A_B", pattern="x"),
            "pattern",
            "is not a setting of a 'meta' rule",
        ),
        (rule("T_X", "header", fields=["Subject"]), "pattern", "either a pattern or exists = true"),
        (
            rule("T_X", "header", fields=["Sub ject"], pattern="x"),
            "fields",
            "is not a header field name",
        ),
        (rule("T_X", "list", entries=["a.example"]), "match", "is required for a 'list' rule"),
        (rule("T_X", "list", entries=["a.example"], match=["helo"]), "match", "must be"),
        (rule("T_X", "list", entries=["not a domain"], match=["from"]), "entries", "item 1"),
        (rule("T_X", "list", file="lists/missing.txt", match=["from"]), "file", "cannot read"),
        (rule("T_X", "meta", expression="A_B &&"), "expression", "ends too early"),
        (rule("T_X", "meta", expression="A_B & C_D"), "expression", "unexpected '&'"),
        (rule("T_X", "meta", expression="(A_B"), "expression", "not closed"),
        (rule("T_X", "meta", expression="lower"), "expression", "is not a symbol"),
        (rule("T_X", "body", pattern="x", colour="red"), "colour", "unknown setting"),
        (rule("t_x", "body", pattern="x"), "symbol", "UPPER_CASE"),
    ],
)
def test_each_problem_names_file_line_and_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    directory = rules_dir(tmp_path, "# first\n" + text)
    path = directory / "content.toml"
    [error] = load_errors(directory)
    written = line_of(path, f"{key} =") if f"{key} =" in text else line_of(path, "[[rule]]")
    assert error.startswith(f"{path}:{written}: key 'rule[0].{key}':"), error
    assert problem in error


def test_list_file_errors_name_the_list_file_and_line(tmp_path: Path) -> None:
    content = rule("T_X", "list", file="lists/bad.txt", match=["from"])
    directory = rules_dir(tmp_path, content, {"lists/bad.txt": "ok.example\n\nnot a domain\n"})
    [error] = load_errors(directory)
    assert error.startswith(f"{directory / 'lists' / 'bad.txt'}:3: 'not a domain' is not a domain")
    assert "rule T_X" in error


def test_duplicate_symbols_cycles_and_double_scores(tmp_path: Path) -> None:
    content = rule("T_A", "body", pattern="a") + rule("T_A", "body", pattern="b")
    content += rule("T_M1", "meta", expression="T_M2") + rule("T_M2", "meta", expression="T_M1")
    content += rule("HDR_DATE_MISSING", "header", fields=["Date"], exists=True, negate=True)
    directory = rules_dir(tmp_path, content)
    path = directory / "content.toml"
    errors = load_errors(directory)
    assert any(
        e.startswith(f"{path}:") and "rule T_A is already written at content.toml:1" in e
        for e in errors
    ), errors
    assert any("cycle (T_M1 -> T_M2 -> T_M1)" in e for e in errors), errors
    assert any("rule HDR_DATE_MISSING: the symbol is already scored at" in e for e in errors)


def test_content_d_files_load_after_content_toml(tmp_path: Path) -> None:
    directory = rules_dir(
        tmp_path,
        rule("T_MAIN", "body", pattern="a"),
        {"content.d/extra.toml": rule("T_EXTRA", "meta", expression="T_MAIN")},
    )
    rules = load_rules(directory)
    assert rules.where("T_EXTRA") == f"{directory / 'content.d' / 'extra.toml'}:1"
    assert rules.scores["T_EXTRA"] == 1.0 and "T_MAIN" in rules.content.rule_symbols


def test_registry_refuses_clashes_and_unknown_composite_symbols(tmp_path: Path) -> None:
    # SPF_FAIL is the spf plugin's even though spf is not in the order (it is not scored twice:
    # scores.toml has no SPF_FAIL entry once we take it out, so the clash is the registry's)
    directory = rules_dir(tmp_path, rule("T_META", "meta", expression="T_TYPO || HDR_DATE_MISSING"))
    with pytest.raises(PolicyError) as caught:
        load_checked_rules(settings_for(tmp_path), builtin_registry())
    assert f"{directory / 'content.toml'}:1: rule T_META: T_TYPO is not declared" in str(
        caught.value
    )
    scores = directory / "scores.toml"
    scores.write_text(scores.read_text().replace("\nSPF_FAIL =", "\n# SPF_FAIL ="))
    rules_dir(tmp_path, rule("SPF_FAIL", "body", pattern="x"))
    with pytest.raises(PolicyError) as caught:
        load_checked_rules(settings_for(tmp_path), builtin_registry())
    assert "rule SPF_FAIL: the symbol is already declared by 'spf'" in str(caught.value)


def test_shipped_rules_load_and_declare_their_symbols() -> None:
    rules = load_rules(REPO / "rules")
    assert "CONTENT_PHISH_LURE" in rules.content.composite_symbols
    registry = builtin_registry()
    order = PluginSettings().order
    assert "content" in order
    assert registry.check_policy(order, rules.with_defaults(*registry.policy_defaults(order))) == []
    described = registry.all_symbols(rules)
    assert described["CONTENT_PHISH_LURE"].startswith("a credential-phishing lure")


# -- the detail, and a reload over a running gateway ----------------------------------------------


async def test_detail_is_a_short_escaped_excerpt(tmp_path: Path) -> None:
    raw = message(subject="=?utf-8?q?win=1B[31m_big?=")  # ESC inside the decoded value
    found = await findings_of(
        tmp_path, raw, rule("T_WIN", "header", fields=["Subject"], pattern="win.*big")
    )
    detail = found["T_WIN"].detail
    assert detail == 'content.toml:1 header subject: "win\\x1b[31m big"'
    long = message(body=b"spam " * 100 + b"\r\n")
    found = await findings_of(tmp_path, long, rule("T_SPAM", "body", pattern="(spam )+"))
    assert len(found["T_SPAM"].detail) < 100 and found["T_SPAM"].detail.endswith('...[cut]"')


@pytest.fixture
async def content_gw(
    tmp_path: Path, sink: RecordingSink, start_gateway: GatewayFactory
) -> RunningGateway:
    """A gateway whose order runs the content plugin, over a copy of the shipped rules."""
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    plugins = PluginSettings(order=(*HARNESS_ORDER, "content"))
    return await start_gateway(settings=make_settings(tmp_path, sink.port, plugins=plugins))


async def test_reload_picks_up_content_rules(content_gw: RunningGateway) -> None:
    gw = content_gw
    directory = gw.settings.rules_dir
    raw = message(body=b"Cheap watches here\r\n")
    assert (await send(gw, raw)).code == 250
    extra = directory / "content.d"
    extra.mkdir()
    (extra / "watches.toml").write_text(
        rule("LOCAL_WATCHES", "body", pattern="(?i)cheap watches").replace(
            "score = 1.0", "score = 7.0"
        )
    )
    assert gw.gateway.reload_rules()
    quarantined = await send(gw, raw)
    assert quarantined.code == 250
    _, meta = gw.gateway.store.get(quarantined.qid)
    assert "LOCAL_WATCHES" in {f["symbol"] for f in meta["findings"]}
    # a broken edit is refused, and the running rules stay
    (extra / "watches.toml").write_text(rule("LOCAL_WATCHES", "body", pattern="(w)\\1"))
    assert not gw.gateway.reload_rules()
    assert "LOCAL_WATCHES" in gw.gateway.rules.content.rule_symbols


def test_rules_without_content_files_have_no_rules(tmp_path: Path) -> None:
    directory = rules_dir(tmp_path, "")
    (directory / "content.toml").unlink()
    rules: RuleSet = load_rules(directory)
    assert rules.content.rules == () and rules.content.composites == ()


def test_mailgate_check_names_file_line_and_rule(tmp_path: Path) -> None:
    from test_cli import mailgate

    root = tmp_path / "install"
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "rules", root / "rules")
    content = root / "rules" / "content.toml"
    broken = rule("LOCAL_LOOKAROUND", "body", pattern="prize(?! draw)")
    content.write_text(content.read_text() + "\n" + broken)
    line = line_of(content, "prize(?!")
    result = mailgate("--config", root / "config" / "gateway.toml", "check", cwd=root)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert f"{content.resolve()}:{line}: key 'rule[" in err, err
    assert "rule LOCAL_LOOKAROUND: not an RE2 pattern" in err
    assert "Traceback" not in err


async def test_gtube_over_smtp_is_refused_and_nothing_is_relayed(
    content_gw: RunningGateway, sink: RecordingSink
) -> None:
    gw = content_gw
    refused = await send(gw, message(body=f"{GTUBE}\r\n".encode()))
    assert refused.code == 554 and "GTUBE" in refused.text
    assert (await send(gw, message())).code == 250
    delivered = await sink.arrived(1)
    assert len(delivered) == 1 and GTUBE.encode() not in delivered[0].content
