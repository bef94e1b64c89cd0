"""DKIM-signed messages for the benches: real corpus messages given a From in a bench domain and
signed with dkimpy, with the DNS records that make them verify.

The corpus predates DKIM, so without this the DKIM, ARC and DMARC plugins would only ever see
unsigned mail and their cost would be missing from every figure.
"""

from __future__ import annotations

import base64
import dataclasses

import dkim
import nacl.encoding
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.corpus import Sample
from gateway.message import scan_fields

SIGNED_DOMAIN = "signed.bench.test"
SELECTOR = "bench"


def rsa_key() -> tuple[bytes, str]:
    """A fresh RSA-2048 key: (private PEM, the p= of its DKIM record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(spki).decode()


def ed25519_key() -> tuple[bytes, str]:
    """A fresh Ed25519 key: (base64 seed as dkimpy takes it, the p= of its DKIM record)."""
    signing = nacl.signing.SigningKey.generate()
    seed = signing.encode(encoder=nacl.encoding.Base64Encoder)
    return seed, base64.b64encode(bytes(signing.verify_key)).decode()


def with_author(raw: bytes, index: int, domain: str) -> bytes:
    """The message with its From fields (and any old signature) replaced by one in `domain`."""
    kept = b"".join(
        f.raw(raw) for f in scan_fields(raw) if f.name not in ("from", "dkim-signature")
    )
    end = raw.find(b"\r\n\r\n")
    body = raw[end:] if end != -1 else b"\r\n\r\n"
    return f"From: Sender {index} <sender{index}@{domain}>\r\n".encode() + kept + body


def signed(
    message: bytes, selector: str, domain: str, key: bytes, algorithm: str = "rsa-sha256"
) -> bytes | None:
    """`message` with a relaxed/relaxed DKIM-Signature on top, or None if dkimpy cannot read
    its header section (a few corpus messages)."""
    try:
        header = dkim.sign(
            message,
            selector.encode(),
            domain.encode(),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=algorithm.encode(),
        )
    except dkim.DKIMException:
        return None
    return bytes(header) + message


def sign_share(sample: Sample, every: int = 3) -> tuple[Sample, dict[str, str]]:
    """Every `every`-th message of the mix given a From in SIGNED_DOMAIN and an RSA-2048 DKIM
    signature (a fresh key per run), and the TXT records that make them verify and pass DMARC
    (p=reject: a signature that stopped verifying would show up as refused mail)."""
    pem, public = rsa_key()
    messages = list(sample.messages)
    count = 0
    for index in range(0, len(messages), every):
        message = signed(
            with_author(messages[index], index, SIGNED_DOMAIN), SELECTOR, SIGNED_DOMAIN, pem
        )
        if message is not None:
            messages[index] = message
            count += 1
    records = {
        f"{SELECTOR}._domainkey.{SIGNED_DOMAIN}": f"v=DKIM1; k=rsa; p={public}",
        f"_dmarc.{SIGNED_DOMAIN}": "v=DMARC1; p=reject",
    }
    return dataclasses.replace(sample, messages=tuple(messages), signed=count), records
