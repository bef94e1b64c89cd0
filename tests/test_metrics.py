"""`[metrics] address`: after a message over SMTP, the Prometheus endpoint counts it (action,
symbols, plugin latency, relay outcome), shows the DNS cache and quarantine size, and /health
answers; with workers, each worker has its own endpoint on consecutive ports. Before any traffic
every pre-initialised series reads 0; after a relay-denied RCPT, a connection over the per-IP
limit, a STARTTLS session and a delivered message, the counters move by exactly that."""

from __future__ import annotations

import re
import smtplib
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import trustme
from harness import LOOPBACK, free_port, message
from metrics_helpers import changes, samples, serving
from test_workers import running
from tls_helpers import client_context, write_cert

from gateway.metrics import REFUSALS, TLS_VERSIONS, Closed, Delivery, Phase
from gateway.verdict import Action


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def value(text: str, sample: str) -> float:
    """The value of one sample line, e.g. 'mailgate_messages_total{action="relay"}'."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"{sample} not in:\n{text}"
    return float(match.group(1))


def metrics_config(port: int) -> str:
    return f'\n[metrics]\naddress = "{LOOPBACK}:{port}"\n'


def test_scrape_after_a_message(tmp_path: Path) -> None:
    port = free_port()
    with running(tmp_path, workers=1, extra=metrics_config(port)) as served:
        assert get(port, "/health") == (200, "ok\n")
        status, before = get(port, "/metrics")
        assert status == 200
        assert value(before, 'mailgate_messages_total{action="relay"}') == 0  # pre-initialised
        served.send(1)
        served.wait_log(r"mailgate\.message: qid=", 1)
        status, text = get(port, "/metrics")
    assert status == 200
    assert value(text, 'mailgate_messages_total{action="relay"}') == 1
    assert value(text, 'mailgate_relay_replies_total{reply_class="2xx"}') == 1
    assert value(text, 'mailgate_plugin_seconds_count{plugin="headers"}') == 1
    # CPU per plugin, for "what does each plugin cost": present, small, not wall time
    cpu = value(text, 'mailgate_plugin_cpu_seconds_total{plugin="mime"}')
    assert 0 < cpu < value(text, 'mailgate_plugin_seconds_sum{plugin="mime"}') + 0.05
    assert value(text, "mailgate_message_seconds_count") == 1
    assert value(text, 'mailgate_dns_cache_total{result="hit"}') >= 0
    assert value(text, 'mailgate_dns_cache_total{result="miss"}') >= 0
    assert value(text, "mailgate_quarantine_messages") == 0


def test_unknown_path_is_404(tmp_path: Path) -> None:
    port = free_port()
    with running(tmp_path, workers=1, extra=metrics_config(port)):
        assert get(port, "/nope")[0] == 404


def test_each_worker_has_an_endpoint_on_consecutive_ports(tmp_path: Path) -> None:
    port = free_port()
    while True:  # port + 1 must be free too
        try:
            import socket

            with socket.socket() as probe:
                probe.bind((LOOPBACK, port + 1))
            break
        except OSError:
            port = free_port()
    with running(tmp_path, workers=2, extra=metrics_config(port)) as served:
        for n in range(10):
            served.send(n)
        served.wait_log(r"mailgate\.message\[worker", 10)
        total = 0.0
        for p in (port, port + 1):
            assert get(p, "/health") == (200, "ok\n")
            text = get(p, "/metrics")[1]
            match = re.search(r'^mailgate_messages_total\{action="relay"\} (\S+)$', text, re.M)
            total += float(match.group(1)) if match else 0.0
    assert total == 10


def test_every_preinitialised_series_reads_zero_then_counters_move_by_what_happened(
    tmp_path: Path, ca: trustme.CA
) -> None:
    port = free_port()
    cert_file, key_file = write_cert(ca, tmp_path / "tls")
    limit = [("limits", "max_connections_per_ip", "2")]
    with serving(tmp_path, metrics_config(port), limit, (cert_file, key_file)) as served:
        before = samples(get(port, "/metrics")[1])
        expected = [
            f'mailgate_refusals_total{{code_class="{c}",phase="{p}",reason="{r}"}}'
            for p, reasons in REFUSALS.items()
            for r, classes in reasons.items()
            for c in classes
        ]
        expected += [
            f'mailgate_connections_refused_total{{reason="{r}"}}' for r in REFUSALS[Phase.CONNECT]
        ]
        expected += [f'mailgate_connections_closed_total{{reason="{c}"}}' for c in Closed]
        expected += [
            f'mailgate_tls_sessions_total{{direction="{d}",version="{v}"}}'
            for d in ("inbound", "outbound")
            for v in TLS_VERSIONS
        ]
        expected += [f'mailgate_deliveries_total{{result="{r}"}}' for r in Delivery]
        expected += [f'mailgate_messages_total{{action="{a.value}"}}' for a in Action]
        expected += [
            f'mailgate_relay_replies_total{{reply_class="{c}"}}' for c in ("2xx", "4xx", "5xx")
        ]
        expected += [
            "mailgate_connections_accepted_total",
            "mailgate_connections_open",
            "mailgate_delivery_seconds_count",
            'mailgate_symbols_total{symbol="SMTP_BARE_LINE_ENDING"}',
            'mailgate_plugin_seconds_count{plugin="headers"}',
        ]
        missing = [name for name in expected if name not in before]
        assert not missing, missing
        assert {name: before[name] for name in expected if before[name]} == {}

        def moved(want: dict[str, float]) -> None:
            """Scrape until the counters moved by `want` from the last scrape (the server
            counts a closed connection just after the client saw it close); exactly that."""
            nonlocal before
            deadline = time.monotonic() + 30
            while True:
                after = samples(get(port, "/metrics")[1])
                got = changes(before, after)
                if got == want or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert got == want
            before = after

        def client() -> smtplib.SMTP:
            smtp = smtplib.SMTP(
                LOOPBACK, served.port, local_hostname="client.example.net", timeout=10
            )
            smtp.ehlo()
            return smtp

        # A recipient in a domain not served: 550 5.7.1 Relaying denied.
        with client() as smtp:
            assert smtp.mail("sender@example.net")[0] == 250
            assert smtp.rcpt("someone@elsewhere.test")[0] == 550
        moved(
            {
                'mailgate_refusals_total{code_class="5",phase="rcpt",reason="relay_denied"}': 1,
                "mailgate_connections_accepted_total": 1,
                'mailgate_connections_closed_total{reason="quit"}': 1,
            }
        )

        # Two connections held (the per-IP limit), a third refused at the greeting.
        held = [client(), client()]
        moved({"mailgate_connections_accepted_total": 2, "mailgate_connections_open": 2})
        with socket.create_connection((LOOPBACK, served.port), timeout=10) as third:
            assert third.makefile("rb").readline().startswith(b"421 4.7.0")
        moved(
            {
                'mailgate_refusals_total{code_class="4",phase="connect",reason="per_ip_limit"}': 1,
                'mailgate_connections_refused_total{reason="per_ip_limit"}': 1,
                'mailgate_connections_closed_total{reason="refused"}': 1,
                "mailgate_connections_accepted_total": 1,
            }
        )
        for smtp in held:
            smtp.quit()
        moved(
            {'mailgate_connections_closed_total{reason="quit"}': 2, "mailgate_connections_open": -2}
        )

        # A STARTTLS session.
        with client() as smtp:
            smtp.starttls(context=client_context())
            version = smtp.sock.version()  # type: ignore[union-attr]
            smtp.ehlo()
        moved(
            {
                f'mailgate_tls_sessions_total{{direction="inbound",version="{version}"}}': 1,
                "mailgate_connections_accepted_total": 1,
                'mailgate_connections_closed_total{reason="quit"}': 1,
            }
        )

        # A delivered message.
        with client() as smtp:
            smtp.sendmail("sender@example.net", ["user@example.com"], message(subject="metrics"))
        served.wait_log(r"mailgate\.message: qid=", 1)
        moved(
            {
                'mailgate_messages_total{action="relay"}': 1,
                'mailgate_relay_replies_total{reply_class="2xx"}': 1,
                'mailgate_deliveries_total{result="accepted"}': 1,
                "mailgate_delivery_seconds_count": 1,
                "mailgate_connections_accepted_total": 1,
                'mailgate_connections_closed_total{reason="quit"}': 1,
            }
        )
