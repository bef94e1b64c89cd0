"""TLS administration: `mailgate tls selfsigned`, `mailgate check`'s certificate warnings, the
[tls] and [delivery] TLS settings, and a real `mailgate serve` reloading its certificate on
SIGHUP (kept when the new one is broken)."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import LOOPBACK, REPO, free_port
from tls_helpers import client_context

from gateway.certs import certificate_problems, hostname_matches, make_selfsigned
from gateway.config import DEFAULT_CIPHERS, load_settings
from gateway.tomlfile import ConfigErrors


def mailgate(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "mailgate"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "gateway"]
    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    return subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def set_key(text: str, table: str, key: str, value: str) -> str:
    """Set `key = value` in `[table]` of the shipped config text (replacing or adding it)."""
    lines = text.splitlines()
    current, insert_at = None, None
    for n, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            current = header.group(1).strip()
            if current == table:
                insert_at = n + 1
        elif current == table and re.match(rf"^\s*#?\s*{re.escape(key)}\s*=", line):
            lines[n] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    assert insert_at is not None, f"[{table}] not in the shipped config"
    lines.insert(insert_at, f"{key} = {value}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def install(tmp_path: Path) -> Path:
    """config/ and rules/ copied as laid out in the repository; returns gateway.toml."""
    root = tmp_path / "install"
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "rules", root / "rules")
    (root / "models").symlink_to(REPO / "models")  # the classifier's model, at ../models
    config = root / "config" / "gateway.toml"
    with config.open("a", encoding="utf-8") as out:  # no DNS query ever leaves loopback
        out.write('\n[dns]\nnameservers = ["127.0.0.1"]\n')
    return config


def configure_tls(config: Path, cert: Path, key: Path) -> None:
    text = config.read_text()
    text = set_key(text, "tls", "cert_file", f'"{cert}"')
    text = set_key(text, "tls", "key_file", f'"{key}"')
    config.write_text(text)


# -- mailgate tls selfsigned ---------------------------------------------------------------------


def test_selfsigned_makes_a_key_and_certificate_for_a_first_run(install: Path) -> None:
    result = mailgate("--config", install, "tls", "selfsigned", cwd=install.parent)
    assert result.returncode == 0, result.stderr
    cert, key = install.parent / "tls" / "cert.pem", install.parent / "tls" / "key.pem"
    assert f"certificate: {cert}" in result.stdout
    assert (key.stat().st_mode & 0o777) == 0o600
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    assert hostname_matches(loaded, "mailgate.localhost")  # [listen] hostname of the config
    assert f'cert_file = "{cert}"' in result.stdout  # what to put in [tls]
    # The pair works as a STARTTLS certificate and `mailgate check` is happy with it.
    configure_tls(install, cert, key)
    check = mailgate("--config", install, "check", "--no-dns-probe", cwd=install.parent)
    assert check.returncode == 0, check.stderr
    assert "warning" not in check.stderr
    # Never overwritten by accident.
    again = mailgate("--config", install, "tls", "selfsigned", cwd=install.parent)
    assert again.returncode == 1 and "--force" in again.stderr
    assert x509.load_pem_x509_certificate(cert.read_bytes()) == loaded
    forced = mailgate(
        "--config", install, "tls", "selfsigned", "--force", "--ec", cwd=install.parent
    )
    assert forced.returncode == 0, forced.stderr
    assert "cert_file" not in forced.stdout  # already configured at these paths
    assert isinstance(
        x509.load_pem_x509_certificate(cert.read_bytes()).public_key(), ec.EllipticCurvePublicKey
    )


def test_selfsigned_never_writes_into_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue item 11: run in a checkout, the key landed in its working tree. With no config
    file the pair goes next to where the system's would be (/etc/mailgate/tls/), or to --dir."""
    etc = tmp_path / "etc" / "mailgate"
    monkeypatch.setenv("MAILGATE_SYSTEM_CONFIG", str(etc / "gateway.toml"))  # absent
    before = sorted(p.name for p in REPO.iterdir())
    result = mailgate("tls", "selfsigned", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in REPO.iterdir()) == before
    key = etc / "tls" / "key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600 and (etc / "tls" / "cert.pem").is_file()
    assert f"key:         {key} (mode 0600)" in result.stdout
    chosen = tmp_path / "chosen"
    result = mailgate("tls", "selfsigned", "--dir", chosen, "--ec", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ((chosen / "key.pem").stat().st_mode & 0o777) == 0o600
    kept = (chosen / "key.pem").read_bytes()
    again = mailgate("tls", "selfsigned", "--dir", chosen, cwd=tmp_path)
    assert again.returncode == 1 and "use --force to replace it" in again.stderr
    assert (chosen / "key.pem").read_bytes() == kept
    assert mailgate("tls", "selfsigned", "--dir", chosen, "--force", cwd=tmp_path).returncode == 0
    assert (chosen / "key.pem").read_bytes() != kept


def test_keys_left_in_the_checkout_are_ignored_by_git() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("config/tls/key.pem", "var/quarantine/index.sqlite3", "dist/x.whl"):
        done = subprocess.run(
            ["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True, check=False
        )
        assert done.returncode == 0, f"{path} is not in .gitignore"


def test_selfsigned_pair_loads_as_a_server_certificate(tmp_path: Path) -> None:
    made = make_selfsigned("mx.example.org", tmp_path / "c.pem", tmp_path / "k.pem", days=30)
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(made.cert_file, made.key_file)
    cert = x509.load_pem_x509_certificate(made.cert_file.read_bytes())
    assert made.fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert made.not_after - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=29)
    # Verifiable by a client that trusts it, for its name.
    context = ssl.create_default_context(cafile=str(made.cert_file))
    assert context.cert_store_stats()["x509"] == 1


# -- certificate warnings ------------------------------------------------------------------------


@pytest.fixture
def selfsigned(tmp_path: Path) -> tuple[Path, Path, datetime.datetime]:
    made = make_selfsigned("mx.example.org", tmp_path / "cert.pem", tmp_path / "key.pem", days=90)
    return made.cert_file, made.key_file, made.not_after


def test_a_good_certificate_has_no_problems(
    selfsigned: tuple[Path, Path, datetime.datetime],
) -> None:
    cert, key, _ = selfsigned
    assert certificate_problems(cert, key, "mx.example.org") == []
    assert certificate_problems(cert, key, "MX.Example.Org.") == []


def test_expired_and_soon_expiring(selfsigned: tuple[Path, Path, datetime.datetime]) -> None:
    cert, key, not_after = selfsigned
    [expired] = certificate_problems(
        cert, key, "mx.example.org", now=not_after + datetime.timedelta(days=1)
    )
    assert "certificate expired on" in expired
    [soon] = certificate_problems(
        cert, key, "mx.example.org", now=not_after - datetime.timedelta(days=3, hours=1)
    )
    assert "certificate expires in 3 days" in soon and "kill -HUP" in soon
    fine = not_after - datetime.timedelta(days=15)
    assert certificate_problems(cert, key, "mx.example.org", now=fine) == []


def test_mismatched_key_and_hostname(
    selfsigned: tuple[Path, Path, datetime.datetime], tmp_path: Path
) -> None:
    cert, _, _ = selfsigned
    other = make_selfsigned("mx.example.org", tmp_path / "o-cert.pem", tmp_path / "o-key.pem")
    problems = certificate_problems(cert, other.key_file, "mail.example.net")
    assert any("private key does not match" in p for p in problems), problems
    assert any("does not name [listen] hostname 'mail.example.net'" in p for p in problems)


@pytest.mark.parametrize(
    ("names", "host", "matches"),
    [
        (["*.example.org"], "mx.example.org", True),
        (["*.example.org"], "a.b.example.org", False),
        (["*.example.org"], "example.org", False),
        (["mx.example.org", "mx2.example.org"], "mx2.example.org", True),
        (["192.0.2.25"], "192.0.2.25", True),
    ],
)
def test_hostname_matching(tmp_path: Path, names: list[str], host: str, matches: bool) -> None:
    made = make_selfsigned(names[0], tmp_path / "c.pem", tmp_path / "k.pem", extra_names=names[1:])
    cert = x509.load_pem_x509_certificate(made.cert_file.read_bytes())
    assert hostname_matches(cert, host) is matches


def write_expired(cert_file: Path, key_file: Path, hostname: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now - datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_check_warns_about_expired_soon_mismatched_certificates(
    install: Path, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    configure_tls(install, cert, key)

    write_expired(cert, key, "mailgate.localhost")
    result = mailgate("--config", install, "check", "--no-dns-probe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # it still runs; senders may not care
    assert "warning:" in result.stderr and "certificate expired on" in result.stderr

    make_selfsigned("mailgate.localhost", cert, key, days=5)
    result = mailgate("--config", install, "check", "--no-dns-probe", cwd=tmp_path)
    assert result.returncode == 0
    assert re.search(r"warning: .*certificate expires in [45] days", result.stderr), result.stderr

    make_selfsigned("other.example", cert, key, days=90)
    result = mailgate("--config", install, "check", "--no-dns-probe", cwd=tmp_path)
    assert result.returncode == 0
    assert "does not name [listen] hostname 'mailgate.localhost'" in result.stderr

    make_selfsigned("mailgate.localhost", cert, tmp_path / "unused-key.pem", days=90)
    # key.pem is another key
    result = mailgate("--config", install, "check", "--no-dns-probe", cwd=tmp_path)
    assert result.returncode == 1  # the gateway could not start with it
    assert "private key does not match the certificate" in result.stderr
    assert "TLS certificate or key unusable" in result.stderr


def test_check_and_serve_refuse_an_unreadable_delivery_ca_file(
    install: Path, tmp_path: Path
) -> None:
    text = install.read_text()
    text = set_key(text, "delivery", "tls", '"required"')
    text = set_key(text, "delivery", "tls_ca_file", f'"{tmp_path / "missing.pem"}"')
    install.write_text(text)
    for command in ("check", "serve"):
        result = mailgate("--config", install, command, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "[delivery] tls_ca_file unusable" in result.stderr


# -- settings ------------------------------------------------------------------------------------


def test_tls_settings_defaults_and_parsing(install: Path) -> None:
    settings = load_settings(install)
    assert settings.tls.min_version == "TLSv1.2"
    assert settings.tls.ciphers == DEFAULT_CIPHERS
    assert settings.delivery.tls == "none" and not settings.delivery.tls_verified
    pin = "AB:" * 31 + "CD"
    text = install.read_text()
    text = set_key(text, "tls", "min_version", '"TLSv1.3"')
    text = set_key(text, "delivery", "tls", '"opportunistic"')
    text = set_key(text, "delivery", "tls_fingerprints", f'["{pin}"]')
    text = set_key(text, "delivery", "tls_server_name", '"postfix.internal"')
    install.write_text(text)
    settings = load_settings(install)
    assert settings.tls.min_version == "TLSv1.3"
    assert settings.delivery.tls_fingerprints == ("ab" * 31 + "cd",)
    assert settings.delivery.tls_verified
    assert settings.delivery.tls_server_name == "postfix.internal"


@pytest.mark.parametrize(
    ("table", "key", "value", "problem"),
    [
        ("tls", "min_version", '"TLSv1.1"', '"TLSv1.2" or "TLSv1.3"'),
        ("tls", "ciphers", '"NO-SUCH-CIPHER"', "OpenSSL accepts no cipher"),
        ("delivery", "tls", '"always"', '"none", "opportunistic" or "required"'),
        ("delivery", "tls_fingerprints", '["abcd"]', "not 64 hex digits"),
        ("delivery", "tls_ca_file", '"/etc/ssl/ca.pem"', 'set tls = "opportunistic"'),
    ],
)
def test_tls_settings_errors_name_the_key(
    install: Path, table: str, key: str, value: str, problem: str
) -> None:
    install.write_text(set_key(install.read_text(), table, key, value))
    with pytest.raises(ConfigErrors) as caught:
        load_settings(install)
    text = str(caught.value)
    assert problem in text, text
    assert str(install) in text


# -- SIGHUP in a real process --------------------------------------------------------------------


def peer_serial(port: int) -> int:
    with smtplib.SMTP(LOOPBACK, port, timeout=5) as smtp:
        smtp.ehlo()
        smtp.starttls(context=client_context())
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def served_with_tls(install: Path, tmp_path: Path) -> Iterator[tuple[int, int, Path, Path, Path]]:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    make_selfsigned("mailgate.localhost", cert, key)
    configure_tls(install, cert, key)
    port, delivery_port = free_port(), free_port()
    text = install.read_text()
    for table, name, value in [
        ("listen", "port", str(port)),
        ("delivery", "port", str(delivery_port)),
        ("limits", "shutdown_grace", "2"),
    ]:
        text = set_key(text, table, name, value)
    install.write_text(text)
    log = tmp_path / "serve.log"
    script = Path(sys.executable).parent / "mailgate"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "gateway"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--config", str(install), "serve", "--dev"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220 "):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"mailgate did not start:\n{log.read_text()}")
        yield proc.pid, port, cert, key, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_log(log: Path, needle: str, count: int) -> None:
    deadline = time.monotonic() + 30  # bounds a failure only: generous for a loaded CI
    while time.monotonic() < deadline:
        if log.read_text(errors="replace").count(needle) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} x{count} not logged:\n{log.read_text()}")


def test_sighup_reloads_the_certificate_and_keeps_it_when_broken(
    served_with_tls: tuple[int, int, Path, Path, Path],
) -> None:
    pid, port, cert, key, log = served_with_tls
    first = peer_serial(port)
    make_selfsigned("mailgate.localhost", cert, key)  # renewed in place
    os.kill(pid, signal.SIGHUP)
    wait_log(log, "TLS certificate reloaded", 1)
    second = peer_serial(port)
    assert second != first
    cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    os.kill(pid, signal.SIGHUP)
    wait_log(log, "TLS certificate reload refused, keeping the running certificate", 1)
    assert peer_serial(port) == second
    assert "no setting changed; policy" in log.read_text()  # SIGHUP reloads rules/ too
