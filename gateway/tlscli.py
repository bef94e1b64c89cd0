"""`mailgate tls ...` and the TLS part of `mailgate check`.

`mailgate tls selfsigned` makes a key and a self-signed certificate so a first run can offer
STARTTLS (senders on the internet do not verify an MX's certificate by default, so a self-signed
one still encrypts); replace it with a real one before anyone relies on verification.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.config import Settings
from gateway.text import printable


def add_commands(sub: Any) -> None:
    """Register `mailgate tls ...` on the main parser's subparsers."""
    tls = sub.add_parser("tls", help="TLS certificate tools")
    tls_sub = tls.add_subparsers(dest="tls_command", required=True)
    selfsigned = tls_sub.add_parser(
        "selfsigned",
        help="make a private key and a self-signed certificate for a first run",
        description=(
            "Write a new private key (mode 0600) and a self-signed certificate for the "
            "[listen] hostname, to the [tls] cert_file/key_file of the configuration, else "
            "cert.pem and key.pem in --dir, else in tls/ next to the configuration in use "
            "(/etc/mailgate/tls/ when there is none). Existing files are never replaced "
            "without --force."
        ),
    )
    selfsigned.add_argument("--hostname", help="name in the certificate (default: [listen])")
    selfsigned.add_argument("--cert", help="certificate file to write (PEM)")
    selfsigned.add_argument("--key", help="private key file to write (PEM)")
    selfsigned.add_argument(
        "--dir", help="folder for cert.pem and key.pem (default: tls/ next to the config)"
    )
    selfsigned.add_argument("--days", type=int, default=365, help="validity (default: 365)")
    selfsigned.add_argument("--ec", action="store_true", help="an ECDSA P-256 key (default RSA)")
    selfsigned.add_argument(
        "--force", action="store_true", help="overwrite existing files (default: refuse)"
    )
    selfsigned.set_defaults(func=cmd_selfsigned)


def cmd_selfsigned(args: argparse.Namespace) -> int:
    from gateway.certs import make_selfsigned
    from gateway.cli import _config_path
    from gateway.config import load_settings
    from gateway.config_search import system_config
    from gateway.tomlfile import ConfigError, ConfigErrors

    try:
        settings = load_settings(_config_path(args.config))
    except (ConfigError, ConfigErrors) as exc:
        print(f"mailgate: configuration error:\n{exc}", file=sys.stderr)
        return 1
    # Never the current folder: run in a checkout, that would put a private key in git's tree.
    if args.dir:
        folder = Path(args.dir)
        cert_default, key_default = folder / "cert.pem", folder / "key.pem"
    else:
        folder = (settings.source or system_config()).parent / "tls"
        cert_default = settings.tls.cert_file or folder / "cert.pem"
        key_default = settings.tls.key_file or folder / "key.pem"
    cert = Path(args.cert) if args.cert else cert_default
    key = Path(args.key) if args.key else key_default
    if args.days <= 0:
        print("mailgate: --days must be at least 1", file=sys.stderr)
        return 2
    existing = [p for p in (cert, key) if p.exists()]
    if existing and not args.force:
        names = ", ".join(str(p) for p in existing)
        print(f"mailgate: {names} exists; use --force to replace it", file=sys.stderr)
        return 1
    hostname = args.hostname or settings.listen.hostname
    try:
        made = make_selfsigned(
            hostname, cert, key, days=args.days, key_type="ec" if args.ec else "rsa"
        )
    except OSError as exc:
        print(f"mailgate: cannot write the certificate: {exc}", file=sys.stderr)
        return 1
    print(f"key:         {made.key_file} (mode 0600)")
    print(f"certificate: {made.cert_file} (self-signed for {printable(hostname)})")
    print(f"valid until: {made.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"sha256:      {made.fingerprint}")
    if settings.tls.cert_file != cert.resolve() or settings.tls.key_file != key.resolve():
        print("\nTo offer STARTTLS with it, set in the configuration:")
        print(f'[tls]\ncert_file = "{cert.resolve()}"\nkey_file = "{key.resolve()}"')
    return 0


def tls_errors(settings: Settings) -> list[str]:
    """TLS settings that stop the gateway: unusable certificate or key, unreadable CA file."""
    import ssl

    from gateway.tls import delivery_tls, server_context

    errors: list[str] = []
    try:
        server_context(settings.tls)
    except (OSError, ValueError) as exc:
        errors.append(f"TLS certificate or key unusable: {exc}")
    try:
        delivery_tls(settings.delivery)
    except (OSError, ValueError, ssl.SSLError) as exc:
        errors.append(f"[delivery] tls_ca_file unusable: {settings.delivery.tls_ca_file}: {exc}")
    return errors


def tls_warnings(settings: Settings) -> list[str]:
    """What works today but will hurt: expiry soon or past, a mismatched key or host name."""
    from gateway.certs import certificate_problems

    tls = settings.tls
    if tls.cert_file is None or tls.key_file is None:
        return []
    return certificate_problems(tls.cert_file, tls.key_file, settings.listen.hostname)
