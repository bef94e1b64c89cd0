"""Certificates on disk: make a self-signed one for a first run, and find what is wrong with one.

Both use the cryptography package and run only from the CLI (`mailgate tls selfsigned`,
`mailgate check`), never on the SMTP path: the live server loads PEM files through the ssl module.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SOON = datetime.timedelta(days=14)


@dataclass(frozen=True)
class SelfSigned:
    cert_file: Path
    key_file: Path
    fingerprint: str  # SHA-256 of the certificate, hex
    not_after: datetime.datetime


def make_selfsigned(
    hostname: str,
    cert_file: Path,
    key_file: Path,
    days: int = 365,
    key_type: str = "rsa",
    extra_names: Sequence[str] = (),
) -> SelfSigned:
    """Write a new private key (mode 0600) and a self-signed certificate for `hostname`."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:  # RSA: what every MTA on the internet can verify
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = []
    for name in (hostname, *extra_names):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    # The key is created 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    os.chmod(key_file, 0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SelfSigned(
        cert_file=cert_file,
        key_file=key_file,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
    )


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hostname_matches(cert: x509.Certificate, hostname: str) -> bool:
    """RFC 6125: the DNS names of subjectAltName (the CN only when there is none), one-label
    wildcards in the left-most label."""
    host = hostname.lower().rstrip(".")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
        addresses = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [
            str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
        addresses = []
    if host in addresses:
        return True
    for name in names:
        if name == host:
            return True
        if name.startswith("*.") and "." in host:
            label, _, rest = host.partition(".")
            if label and rest == name[2:]:
                return True
    return False


def certificate_problems(
    cert_file: Path,
    key_file: Path,
    hostname: str,
    now: datetime.datetime | None = None,
    soon: datetime.timedelta = SOON,
) -> list[str]:
    """What an admin should hear about a certificate before clients do; empty when all is well.

    Expired or not yet valid, expiring within `soon`, a key that is not the certificate's, a
    certificate that does not name `hostname` ([listen] hostname, the name in our EHLO).
    """
    now = now or datetime.datetime.now(datetime.UTC)
    problems: list[str] = []
    try:
        chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        return [f"{cert_file}: cannot read a PEM certificate: {exc}"]
    cert = chain[0]
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    if after <= now:
        problems.append(f"{cert_file}: certificate expired on {after:%Y-%m-%d %H:%M} UTC")
    elif after - now < soon:
        days = (after - now).days
        problems.append(
            f"{cert_file}: certificate expires in {days} day{'s' if days != 1 else ''} "
            f"({after:%Y-%m-%d %H:%M} UTC): renew it, then `kill -HUP` mailgate"
        )
    if before > now:
        problems.append(f"{cert_file}: certificate not valid before {before:%Y-%m-%d %H:%M} UTC")
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        problems.append(f"{key_file}: cannot read an unencrypted PEM private key: {exc}")
    else:
        if _spki(key.public_key()) != _spki(cert.public_key()):
            problems.append(f"{key_file}: private key does not match the certificate {cert_file}")
    if not hostname_matches(cert, hostname):
        problems.append(
            f"{cert_file}: certificate does not name [listen] hostname {hostname!r} "
            "(clients that verify will refuse it)"
        )
    return problems
