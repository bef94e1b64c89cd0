"""rules/tls.toml: loading and its error reports, and each requirement answered at the SMTP phase
where it becomes known (client network: 530 before MAIL; sender: MAIL; recipient: RCPT), over
real loopback connections with and without STARTTLS (smtplib, aiosmtplib, swaks)."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import ssl
import textwrap
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from harness import LOOPBACK, REPO, RecordingSink, RunningGateway, make_settings, message
from reply_ids import without_id
from tls_helpers import client_context, need_swaks_with_tls, write_ca

from gateway.app import Gateway, PolicyError
from gateway.policy import TlsPolicy, load_rules
from gateway.tomlfile import ConfigErrors

PROTECTED = "protected.example"
RELAY = {"domains": ("example.com", PROTECTED)}


def rules_with_tls(tmp_path: Path, body: str) -> Path:
    rules = tmp_path / "rules"
    if not rules.exists():
        shutil.copytree(REPO / "rules", rules)
    (rules / "tls.toml").write_text(textwrap.dedent(body), encoding="utf-8")
    return rules


# -- loading -------------------------------------------------------------------------------------


def test_shipped_tls_policy_requires_nothing() -> None:
    rules = load_rules(REPO / "rules")
    assert rules.tls == TlsPolicy()
    assert not rules.tls.requires_anything


def test_rules_without_tls_toml_still_load(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "tls.toml").unlink()
    assert load_rules(rules).tls == TlsPolicy()


def test_tls_toml_is_part_of_the_policy_version(tmp_path: Path) -> None:
    before = load_rules(rules_with_tls(tmp_path, "[require_tls]\n")).version
    after = load_rules(rules_with_tls(tmp_path, '[require_tls]\nsender_domains = ["a.example"]\n'))
    assert after.version != before


def test_policy_matching(tmp_path: Path) -> None:
    rules = rules_with_tls(
        tmp_path,
        """\
        [require_tls]
        client_networks = ["192.0.2.0/24", "2001:db8::/32"]
        sender_domains = ["partner.example", ".bank.example"]
        recipient_domains = ["Secure.Example."]
        action = "reject"
        """,
    )
    tls = load_rules(rules).tls
    assert tls.required_for_client("192.0.2.77")
    assert tls.required_for_client("::ffff:192.0.2.77")
    assert tls.required_for_client("2001:db8::1")
    assert not tls.required_for_client("198.51.100.1")
    assert tls.required_for_sender("ceo@partner.example")
    assert tls.required_for_sender("x@mail.bank.example")
    assert not tls.required_for_sender("x@bank.example")  # ".bank.example" is below it only
    assert not tls.required_for_sender("<>")
    assert tls.required_for_recipient("bob@secure.example")
    assert not tls.required_for_recipient("bob@example.com")
    assert str(tls.refusal) == "550 5.7.1 TLS required: use STARTTLS"


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('client_networks = ["192.0.2.300"]', "require_tls.client_networks", "not an IP"),
        ('sender_domains = ["alice@partner.example"]', "require_tls.sender_domains", "domain"),
        ("recipient_domains = [3]", "require_tls.recipient_domains", "list of domain names"),
        ('action = "bounce"', "require_tls.action", '"tempfail" or "reject"'),
        ('all = "yes"', "require_tls.all", "true or false"),
        ("clients = []", "require_tls.clients", "known:"),
    ],
)
def test_tls_policy_errors_name_file_key_and_line(
    tmp_path: Path, line: str, key: str, problem: str
) -> None:
    rules = rules_with_tls(tmp_path, f"# policy\n[require_tls]\n{line}\n")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    [error] = caught.value.errors
    assert (error.path, error.key, error.line) == (str(rules / "tls.toml"), key, 3)
    assert problem in error.problem


def test_unknown_table_in_tls_toml(tmp_path: Path) -> None:
    rules = rules_with_tls(tmp_path, "[require_tls]\n\n[require]\nall = true\n")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    [error] = caught.value.errors
    assert (error.key, error.line) == ("require", 3)


def test_requiring_tls_without_a_certificate_is_refused(tmp_path: Path) -> None:
    rules_with_tls(tmp_path, '[require_tls]\nsender_domains = ["partner.example"]\n')
    settings = make_settings(tmp_path, 2526)
    with pytest.raises(PolicyError, match=r"tls\.toml: requires TLS .* no\s+cert_file"):
        Gateway.create(settings)


# -- client networks: 530 before MAIL ------------------------------------------------------------


def plain_session(port: int) -> dict[str, tuple[int, bytes]]:
    """What a client that never starts TLS is told, command by command."""
    replies: dict[str, tuple[int, bytes]] = {}
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.example.net", timeout=10) as smtp:
        replies["EHLO"] = smtp.ehlo()
        replies["NOOP"] = smtp.noop()
        replies["MAIL"] = smtp.mail("alice@example.net")
        replies["RCPT"] = smtp.rcpt("bob@example.com")
        replies["RSET"] = smtp.rset()
        replies["HELO"] = smtp.helo("client.example.net")
    return replies


def tls_delivery(port: int, ca: trustme.CA, sender: str, rcpts: list[str]) -> dict[str, Any]:
    context = client_context(ca)
    context.check_hostname = False
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.example.net", timeout=10) as smtp:
        smtp.starttls(context=context)
        smtp.ehlo()
        refused = smtp.sendmail(sender, rcpts, message(sender=sender, to=rcpts[0]))
    return refused


@pytest.mark.parametrize(
    "policy", ['client_networks = ["127.0.0.0/8"]', "all = true"], ids=["network", "all"]
)
async def test_listed_client_network_gets_530_before_mail(
    tmp_path: Path, start_tls_gateway: Any, sink: RecordingSink, ca: trustme.CA, policy: str
) -> None:
    rules_with_tls(tmp_path, f"[require_tls]\n{policy}\n")
    gw: RunningGateway = await start_tls_gateway()
    replies = await asyncio.to_thread(plain_session, gw.port)
    assert replies["EHLO"][0] == 250 and b"STARTTLS" in replies["EHLO"][1]
    assert replies["NOOP"][0] == 250
    for command in ("MAIL", "RCPT", "RSET", "HELO"):  # RFC 3207 4: all but EHLO/NOOP/QUIT
        code, text = replies[command]
        assert (code, without_id(text.decode())) == (
            530,
            "5.7.0 Must issue a STARTTLS command first",
        )
    assert sink.commands == []  # the delivery server never heard of it
    # The same client with STARTTLS delivers.
    refused = await asyncio.to_thread(tls_delivery, gw.port, ca, "a@example.net", ["b@example.com"])
    assert refused == {}
    assert len(await sink.arrived(1)) == 1


async def test_unlisted_client_network_is_not_bothered(
    tmp_path: Path, start_tls_gateway: Any, sink: RecordingSink
) -> None:
    rules_with_tls(tmp_path, '[require_tls]\nclient_networks = ["192.0.2.0/24"]\n')
    gw: RunningGateway = await start_tls_gateway()
    replies = await asyncio.to_thread(plain_session, gw.port)
    assert replies["MAIL"][0] == 250 and replies["RCPT"][0] == 250


# -- sender domains: at MAIL; recipient domains: at RCPT -------------------------------------------


@pytest.mark.parametrize(
    ("action", "code", "status"), [("tempfail", 451, "4.7.1"), ("reject", 550, "5.7.1")]
)
async def test_sender_domain_requirement_is_answered_at_mail(
    tmp_path: Path,
    start_tls_gateway: Any,
    sink: RecordingSink,
    ca: trustme.CA,
    action: str,
    code: int,
    status: str,
) -> None:
    rules_with_tls(
        tmp_path, f'[require_tls]\nsender_domains = ["partner.example"]\naction = "{action}"\n'
    )
    gw: RunningGateway = await start_tls_gateway()
    async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port, start_tls=False) as smtp:
        await smtp.ehlo()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail("ceo@partner.example")
        assert refused.value.code == code
        assert refused.value.message.startswith(f"{status} TLS required"), refused.value.message
        assert "(id=" in refused.value.message
        # Another sender in the same session is fine.
        assert (await smtp.mail("alice@example.net")).code == 250
    assert [c for c in sink.commands if "partner" in c] == []
    # With STARTTLS the partner delivers.
    refused_rcpts = await asyncio.to_thread(
        tls_delivery, gw.port, ca, "ceo@partner.example", ["bob@example.com"]
    )
    assert refused_rcpts == {}
    assert (await sink.arrived(1))[0].mail_from == "ceo@partner.example"


async def test_client_without_tls_cannot_send_to_a_protected_domain(
    tmp_path: Path, start_tls_gateway: Any, sink: RecordingSink, ca: trustme.CA
) -> None:
    rules_with_tls(tmp_path, f'[require_tls]\nrecipient_domains = ["{PROTECTED}"]\n')
    gw: RunningGateway = await start_tls_gateway(relay=RELAY)
    rcpts = [f"bob@{PROTECTED}", "carol@example.com"]

    def plain() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP(LOOPBACK, gw.port, local_hostname="client.example.net") as smtp:
            return smtp.sendmail("alice@example.net", rcpts, message(to=rcpts[0]))

    refused = await asyncio.to_thread(plain)
    assert list(refused) == [rcpts[0]]
    code, text = refused[rcpts[0]]
    assert code == 451 and text.startswith(b"4.7.1 TLS required: use STARTTLS, then try again (id=")
    [delivered] = await sink.arrived(1)
    assert delivered.rcpt_tos == ["carol@example.com"]  # only the unprotected recipient
    assert f"RCPT bob@{PROTECTED}" not in sink.commands  # never mirrored downstream

    # Alone, the protected recipient leaves the plaintext client with nothing to send.
    def only_protected() -> None:
        with smtplib.SMTP(LOOPBACK, gw.port, local_hostname="client.example.net") as smtp:
            smtp.sendmail("alice@example.net", rcpts[:1], message(to=rcpts[0]))

    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await asyncio.to_thread(only_protected)
    # Over TLS both are delivered.
    assert await asyncio.to_thread(tls_delivery, gw.port, ca, "alice@example.net", rcpts) == {}
    assert (await sink.arrived(2))[1].rcpt_tos == rcpts


async def test_swaks_reaches_a_protected_domain_only_with_tls(
    tmp_path: Path, start_tls_gateway: Any, sink: RecordingSink, ca: trustme.CA
) -> None:
    need_swaks_with_tls()
    rules_with_tls(tmp_path, f'[require_tls]\nrecipient_domains = ["{PROTECTED}"]\n')
    gw: RunningGateway = await start_tls_gateway(relay=RELAY)

    async def swaks(*extra: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "swaks",
            *("--server", LOOPBACK, "--port", str(gw.port), "--helo", "client.example.net"),
            *("--from", "alice@example.net", "--to", f"bob@{PROTECTED}", *extra),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, output.decode(errors="replace")

    code, text = await swaks()
    assert code != 0 and "<** 451 4.7.1 TLS required" in text, text
    assert sink.delivered == []
    code, text = await swaks("--tls", "--tls-verify", "--tls-ca-path", str(write_ca(ca, tmp_path)))
    assert code == 0, text
    assert (await sink.arrived(1))[0].rcpt_tos == [f"bob@{PROTECTED}"]


async def test_tls_policy_reloads_with_the_rules(
    tmp_path: Path, start_tls_gateway: Any, sink: RecordingSink
) -> None:
    gw: RunningGateway = await start_tls_gateway(relay=RELAY)

    async def rcpt_code() -> int:
        async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port, start_tls=False) as smtp:
            await smtp.ehlo()
            await smtp.mail("alice@example.net")
            code = (await smtp.execute_command(f"RCPT TO:<bob@{PROTECTED}>".encode())).code
        return code

    assert await rcpt_code() == 250
    rules_with_tls(tmp_path, f'[require_tls]\nrecipient_domains = ["{PROTECTED}"]\n')
    assert gw.gateway.reload_rules()
    assert await rcpt_code() == 451
    # A broken edit is refused; the running requirement stays.
    rules_with_tls(tmp_path, '[require_tls]\nrecipient_domains = ["a@b"]\n')
    assert not gw.gateway.reload_rules()
    assert await rcpt_code() == 451


def test_ssl_module_is_what_the_tests_expect() -> None:
    assert ssl.HAS_TLSv1_3
