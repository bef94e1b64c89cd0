"""The `mailgate` command run for real as a subprocess: check, scan (text, JSON), hostile input."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dns_server import DnsTestServer
from harness import REPO

from gateway.cli import SafeFormatter

CORPUS = REPO.parent / "shared" / "corpora" / "spamassassin"


def mailgate_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m gateway`."""
    script = Path(sys.executable).parent / "mailgate"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def mailgate(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    return subprocess.run(
        [*mailgate_command(), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def install(tmp_path: Path) -> Path:
    """A copy of config/ and rules/ laid out as in the repository: config/gateway.toml."""
    root = tmp_path / "install"
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "rules", root / "rules")
    (root / "models").symlink_to(REPO / "models")  # the classifier's model, at ../models
    return root / "config" / "gateway.toml"


NARROW_ORDER = '["lists", "headers", "limits", "mime", "attachments"]'


@pytest.fixture
def narrow(install: Path) -> Path:
    """The shipped install with only the checks that need no DNS and no model: exact scores."""
    text = install.read_text()
    text = re.sub(r"(?m)^order = \[.*\]$", f"order = {NARROW_ORDER}", text)
    install.write_text(text)
    return install


# -- check ---------------------------------------------------------------------------------------


def test_check_ok_on_the_repository_config(tmp_path: Path) -> None:
    result = mailgate(
        "--config", REPO / "config" / "gateway.toml", "check", "--no-dns-probe", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert f"config OK: {(REPO / 'config' / 'gateway.toml').resolve()}" in out
    assert f"rules OK: {(REPO / 'rules').resolve()}" in out
    assert (
        "plugins: lists, headers, limits, tls, spf, mime, attachments, qr, content, links, rbl, "
        "dkim, arc, dmarc, " in out
    )
    assert "clamav: off (opt-in: it needs a clamd daemon; to turn it on, add" in out
    # DNS reputation needs only DNS: on, and the lists it will ask are named
    assert "rbl: on, asking 7 DNS lists (rules/reputation.toml):" in out
    assert "  spamhaus_zen: zen.spamhaus.org (client IP, IPv6 too)" in out
    assert "  spamhaus_dbl: dbl.spamhaus.org (domains of links, from, reply_to, helo)" in out
    assert "  uribl: multi.uribl.com" in out and "rbl" not in out.partition("also available")[2]


def _dns_pointed_at(install: Path, server: DnsTestServer) -> None:
    text = install.read_text()
    text += f'\n[dns]\nnameservers = ["{server.host}"]\nport = {server.port}\ntimeout = 1\n'
    text += '\n[plugins.classifier]\nmodel = "' + str(REPO / "models" / "spam.npz") + '"\n'
    install.write_text(text.replace("# [dns]\n", "# (dns)\n"))


def test_check_asks_dns_once_and_says_it_answers(install: Path, dns_server: DnsTestServer) -> None:
    _dns_pointed_at(install, dns_server)
    result = mailgate("--config", install, "check", cwd=install.parent)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    server = f"{dns_server.host}:{dns_server.port}"
    assert f"dns OK: {server} (from [dns] nameservers) answers" in out
    assert [(q.name, q.rtype) for q in dns_server.queries] == [("", "NS")]


def test_check_names_the_dns_server_that_does_not_answer(
    install: Path, dns_server: DnsTestServer
) -> None:
    dns_server.timeout("")
    _dns_pointed_at(install, dns_server)
    result = mailgate("--config", install, "check", cwd=install.parent)
    assert result.returncode == 1
    err = result.stderr.decode()
    server = f"{dns_server.host}:{dns_server.port}"
    assert f"mailgate: DNS: no answer from {server} (from [dns] nameservers) within 1s" in err
    assert "mail is deferred (4xx) until it answers" in err
    assert "config OK" in result.stdout.decode()  # everything else was fine


def test_check_in_a_checkout_reads_its_folders_but_not_its_config_file() -> None:
    """config/gateway.toml of a checkout is for serve --dev only (gateway.config_search); the
    embedded defaults there use the checkout's rules/."""
    result = mailgate("check", "--no-dns-probe", cwd=REPO)
    assert result.returncode == 0, result.stderr.decode()
    assert b"config OK: embedded defaults" in result.stdout
    assert f"rules OK: {REPO / 'rules'} (policy ".encode() in result.stdout


def _line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, start=1) if line.startswith(text))


def test_check_broken_rules_exit_1_naming_file_line_and_key(install: Path) -> None:
    scores = install.parent.parent / "rules" / "scores.toml"
    scores.write_text(
        scores.read_text(encoding="utf-8").replace("MSG_EMPTY = 2.0", 'MSG_EMPTY = "two"'),
        encoding="utf-8",
    )
    line = _line_of(scores, "MSG_EMPTY")
    result = mailgate("--config", install, "check", cwd=install.parent)
    assert result.returncode == 1
    assert result.stdout == b""
    err = result.stderr.decode()
    assert "configuration error" in err
    assert f"{scores.resolve()}:{line}: key 'scores.MSG_EMPTY':" in err
    assert "Traceback" not in err


def test_check_bad_toml_syntax_exit_1_naming_file_and_line(install: Path) -> None:
    actions = install.parent.parent / "rules" / "actions.toml"
    text = actions.read_text(encoding="utf-8").replace("reject = 15.0", "reject = 15.0.0")
    actions.write_text(text, encoding="utf-8")
    line = _line_of(actions, "reject = 15.0.0")
    result = mailgate("--config", install, "check", cwd=install.parent)
    assert result.returncode == 1
    assert f"{actions.resolve()}:{line}: key 'thresholds.reject':" in result.stderr.decode()


def test_check_unscored_plugin_symbol_exit_1(install: Path) -> None:
    scores = install.parent.parent / "rules" / "scores.toml"
    text = scores.read_text(encoding="utf-8").replace("MSG_EMPTY = 2.0", "")
    scores.write_text(text, encoding="utf-8")
    result = mailgate("--config", install, "check", cwd=install.parent)
    assert result.returncode == 1
    assert "symbol MSG_EMPTY (plugin 'limits') has no score" in result.stderr.decode()


# -- scan ----------------------------------------------------------------------------------------

SUSPICIOUS = (
    b"From: Alice <alice@example.net>\n"
    b"From: Bank <security@bank.example>\n"
    b"To: Bob <bob@example.com>\n"
    b"Subject: verify your account\n"
    b"Message-ID: <scan-1@example.net>\n"
    b"\n"
    b"Click here.\n"
)  # two From fields (5) + no Date (1.5) = 6.5: quarantine; LF endings as files often have


def test_scan_prints_findings_score_verdict_and_reply(tmp_path: Path, narrow: Path) -> None:
    eml = tmp_path / "suspicious.eml"
    eml.write_bytes(SUSPICIOUS)
    result = mailgate("--config", narrow, "scan", eml, cwd=tmp_path)
    assert result.returncode == 2, result.stderr.decode()  # quarantine
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith(f"message   {eml} (")
    assert "LF -> CRLF" in lines[0]
    # the envelope sender defaults to the header From (the first one of two here)
    assert "envelope  from <alice@example.net> to <postmaster@example.com>" in lines
    findings = lines[lines.index("findings") + 1 :]
    assert findings[0].split()[:2] == ["HDR_FROM_MULTIPLE", "5"]
    assert findings[1].split()[:2] == ["HDR_DATE_MISSING", "1.5"]
    assert any(
        line.startswith("score     6.5 (tag at 4, quarantine at 6, reject at 15") for line in lines
    )
    assert "verdict   QUARANTINE: score 6.5 >= quarantine threshold 6" in lines
    assert "reply     250 2.0.0 Message accepted" in lines


def test_scan_clean_message_relays(tmp_path: Path, narrow: Path) -> None:
    eml = tmp_path / "clean.eml"
    eml.write_bytes(
        SUSPICIOUS.replace(b"From: Bank <security@bank.example>\n", b"").replace(
            b"To:", b"Date: Fri, 27 Nov 2026 10:00:00 +0000\nTo:"
        )
    )
    result = mailgate("--config", narrow, "scan", eml, cwd=tmp_path)
    assert result.returncode == 0
    out = result.stdout.decode()
    assert "  (none)" in out
    assert "verdict   RELAY: score 0 below thresholds" in out
    assert "reply     250 2.0.0 OK" in out


def test_scan_json(tmp_path: Path, narrow: Path) -> None:
    eml = tmp_path / "suspicious.eml"
    eml.write_bytes(SUSPICIOUS)
    result = mailgate(
        "--config",
        narrow,
        "scan",
        "--json",
        "--from",
        "carol@example.org",
        "--rcpt",
        "a@example.com",
        "--rcpt",
        "b@example.com",
        eml,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr.decode()
    data = json.loads(result.stdout)
    assert data["path"] == str(eml)
    assert (data["message_id"], data["subject"]) == ("<scan-1@example.net>", "verify your account")
    assert data["from"] == "Alice <alice@example.net>"  # the first, as every plugin reads it
    assert data["action"] == "quarantine"
    assert data["score"] == 6.5
    assert {(f["symbol"], f["score"]) for f in data["findings"]} == {
        ("HDR_FROM_MULTIPLE", 5.0),
        ("HDR_DATE_MISSING", 1.5),
    }
    assert data["reply"] == "250 2.0.0 Message accepted"
    assert data["envelope"] == {
        "from": "carol@example.org",
        "rcpt": ["a@example.com", "b@example.com"],
    }
    assert data["line_endings_normalized"] is True
    assert set(data["plugin_ms"]) == set(json.loads(NARROW_ORDER))


def test_scan_unreadable_file_exit_66(tmp_path: Path, narrow: Path) -> None:
    result = mailgate("--config", narrow, "scan", tmp_path / "absent.eml", cwd=tmp_path)
    assert result.returncode == 66  # sysexits EX_NOINPUT: not mistaken for any action
    assert b"cannot read" in result.stderr


HOSTILE = (
    b"From: Alice <alice@example.net>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: hi \x1b]0;pwned\x07 \x1b[2J \xff\xfe\xc3( bad utf-8\r\n"
    b"Subject: again \x1b[31mred\x1b[0m\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"\r\n"
    b"body \x1b[2J \x07 \xff\r\n"
)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_scan_never_prints_raw_escape_or_bell(tmp_path: Path, as_json: bool) -> None:
    # The file name and the envelope come from the message's world too: make them hostile.
    name = os.fsdecode(b"evil-\x1b]0;pwned\x07-\x1b[2J-\xff.eml")
    eml = tmp_path / name
    eml.write_bytes(HOSTILE)
    args: list[str | Path] = ["--config", REPO / "config" / "gateway.toml", "scan", "--dns-off"]
    if as_json:
        args.append("--json")
    args += [
        "--from",
        "a\x1b]0;t\x07@example.net",
        "--helo",
        "h\x1b[2J.example",
        "--rcpt",
        "r\x1b[1m@example.com",
        name,
    ]
    result = mailgate(*args, cwd=tmp_path)
    assert result.returncode in (0, 1, 2), result.stderr  # relay, tag or quarantine
    for stream in (result.stdout, result.stderr):
        assert b"\x1b" not in stream
        assert b"\x07" not in stream
    if as_json:
        data = json.loads(result.stdout)
        # escaped for the terminal, but the values survive intact for a program
        assert data["envelope"]["from"] == "a\x1b]0;t\x07@example.net"
        assert {
            "HDR_DUPLICATE_FIELD",
            "HDR_MESSAGE_ID_MISSING",
            "MIME_8BIT_IN_7BIT",  # raw 8-bit bytes in the Subject, no MIME declaration
        } <= {f["symbol"] for f in data["findings"]}
    else:
        out = result.stdout.decode("utf-8")
        assert "\\x1b" in out
        assert "HDR_DUPLICATE_FIELD" in out


def test_log_lines_escape_control_characters_in_tracebacks() -> None:
    # A plugin's exception text (a traceback in the log) may quote a hostile header value.
    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("invalid literal for int(): '\x1b]0;pwned\x07'")
    except ValueError:
        record = logging.LogRecord(
            "mailgate.chain", logging.ERROR, __file__, 1, "plugin %s raised", ("x\x1b[2J",),
            exc_info=sys.exc_info(),
        )  # fmt: skip
    text = formatter.format(record)
    assert "\x1b" not in text and "\x07" not in text
    assert "Traceback (most recent call last):\n" in text  # still one line per traceback line
    assert "ValueError: invalid literal for int(): '\\x1b]0;pwned\\x07'" in text


def corpus_samples() -> list[Path]:
    picks = []
    for folder in ("spam", "easy_ham", "hard_ham"):
        files = sorted((CORPUS / folder).glob("0*")) if (CORPUS / folder).is_dir() else []
        if files:
            picks.append(files[0])
    return picks


@pytest.mark.parametrize("sample", corpus_samples(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scan_spamassassin_corpus_message(tmp_path: Path, sample: Path) -> None:
    raw = sample.read_bytes()  # many are not UTF-8
    assert raw
    result = mailgate(
        "--config", REPO / "config" / "gateway.toml", "scan", "--dns-off", "--json", sample,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode in (0, 1, 2, 3, 4), result.stderr.decode(errors="replace")
    data = json.loads(result.stdout)
    assert data["action"] in {"relay", "tag", "quarantine", "reject", "tempfail"}
    assert not any(f["symbol"].endswith("_ERROR") for f in data["findings"])
    assert b"Traceback" not in result.stderr


def test_corpus_is_there() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} is not present")
    assert len(corpus_samples()) == 3


def test_check_says_where_logs_go_and_which_user_serves(install: Path) -> None:
    """What an admin asks before the first start: where is the log, and is it root?"""
    result = mailgate("--config", install, "check", "--no-dns-probe", cwd=install.parent)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "logs: text lines at level info to stderr (under systemd: the journal)" in out
    expected = "runs as: root" if os.geteuid() == 0 else "runs as: the user that starts it"
    assert expected in out
    text = install.read_text(encoding="utf-8")
    text = re.sub(
        r"(?m)^\[logging\]\n",
        '[logging]\nformat = "json"\ndestination = "syslog"\nsyslog_address = "127.0.0.1:514"\n',
        text,
    )
    text = text.replace("workers = 1\n", 'workers = 1\nuser = "nobody"\n', 1)
    install.write_text(text, encoding="utf-8")
    out = mailgate("--config", install, "check", "--no-dns-probe", cwd=install.parent).stdout
    assert b"logs: json lines at level info to syslog at 127.0.0.1:514, facility mail" in out
    assert b"runs as: user nobody once the port is bound (when started as root)" in out
