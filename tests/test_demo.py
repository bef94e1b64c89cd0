"""The README's run command: `mailgate serve --demo` shows what the gateway is for, offline.

It runs every default check against demo zones on an embedded loopback DNS server: a message
signed with a key made at start-up passes SPF, DKIM and DMARC and is delivered, and a spoof of
the DMARC p=reject demo domain is refused with 550 5.7.1. Nothing is asked of any other server.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

from harness import REPO, free_port
from test_signals import mailgate_command, set_key

from gateway.config import DnsSettings
from gateway.demo import DEMO_MESSAGE, SENDER_DOMAIN, DemoWorld
from gateway.dns import DnsStatus, Resolver


def demo_config(tmp_path: Path) -> Path:
    text = (REPO / "config" / "gateway.toml").read_text()
    port, delivery_port = free_port(), free_port()
    text = set_key(text, "listen", "port", str(port))
    text = set_key(text, "delivery", "port", str(delivery_port))
    text = set_key(text, "paths", "rules", f'"{REPO / "rules"}"')
    text = set_key(text, "paths", "quarantine", f'"{tmp_path / "quarantine"}"')
    text = set_key(text, "paths", "dev_maildir", f'"{tmp_path / "maildir"}"')
    # the shipped file leaves the model at ../models beside config/; this copy is elsewhere
    text += f'\n[plugins.classifier]\nmodel = "{REPO / "models" / "spam.npz"}"\n'
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    return config


def run_demo(tmp_path: Path) -> bytes:
    proc = subprocess.Popen(
        [*mailgate_command(), "--config", str(demo_config(tmp_path)), "serve", "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    deadline = time.monotonic() + 60  # only bounds a failure: the demo takes a second or two
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if b"demo: gateway listening" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    output = b"".join(lines) + rest
    assert proc.returncode == 0, output.decode(errors="replace")
    return output


def test_serve_demo_passes_authentication_and_refuses_a_spoof(tmp_path: Path) -> None:
    output = run_demo(tmp_path)
    text = output.decode(errors="replace")
    assert b"demo: a message from example.net, DKIM-signed: the gateway answered: 2.0.0 OK" in (
        output
    )
    delivered = list((tmp_path / "maildir" / "new").iterdir())
    assert len(delivered) == 1  # the spoof never reached the delivery server
    content = delivered[0].read_bytes()
    assert content.startswith(b"Received: from demo.example.net ([127.0.0.1])")
    assert b"X-Mailgate-Action: relay\r\n" in content
    assert content.endswith(b"This message went through mailgate end to end.\r\n")
    head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    assert b"spf=pass smtp.mailfrom=demo@example.net" in head
    assert b"dkim=pass" in head and b"header.d=example.net header.s=demo" in head
    assert b"dmarc=pass (p=reject) header.from=example.net" in head
    # the spoof: SPF passes for the spoofer's own domain, DMARC fails for example.net
    assert (
        "demo: a spoof of example.net (DMARC p=reject) sent by attacker.example: the gateway "
        "refused the message: 550 5.7.1 Unauthenticated email from this domain is not "
        "accepted due to its DMARC policy"
    ) in text
    assert "action=reject" in text and "DMARC_REJECT" in text
    assert "action=relay" in text  # the one log line per message
    assert "DNS: 127.0.0.1:" in text and "answers" in text  # the start-up probe, on loopback
    assert "WARNING" not in text and "Traceback" not in text


async def test_demo_world_publishes_the_key_it_signs_with() -> None:
    world = DemoWorld().start()
    try:
        resolver = Resolver.from_settings(world.dns_settings(DnsSettings(timeout=2.0)))
        key = await resolver.query(f"demo._domainkey.{SENDER_DOMAIN}", "TXT")
        dmarc = await resolver.query(f"_dmarc.{SENDER_DOMAIN}", "TXT")
        other = await resolver.query("example.org", "TXT")
        await resolver.aclose()
        signed = await asyncio.to_thread(world.signed_message)
    finally:
        world.stop()
    assert key.status is DnsStatus.ANSWER and key.texts()[0].startswith(b"v=DKIM1; k=rsa; p=")
    assert dmarc.texts() == [b"v=DMARC1; p=reject; adkim=s; aspf=r"]
    assert other.status is DnsStatus.NXDOMAIN  # nothing else exists in the demo world
    assert signed.startswith(b"DKIM-Signature: ") and signed.endswith(DEMO_MESSAGE)
    assert b"d=example.net" in signed and b"s=demo" in signed
