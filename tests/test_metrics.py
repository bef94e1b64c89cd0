"""`[metrics] address`: after a message over SMTP, the Prometheus endpoint counts it (action,
symbols, plugin latency, relay outcome), shows the DNS cache and quarantine size, and /health
answers; with workers, each worker has its own endpoint on consecutive ports."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

from harness import LOOPBACK, free_port
from test_workers import running


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
        assert 'mailgate_messages_total{action="relay"}' not in before
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
