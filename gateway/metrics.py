"""Prometheus metrics and a health check over HTTP, when `[metrics] address` is set.

Per-message counters are updated at one point, `record` (called from transaction.log_message), and
only when the endpoint is on: a gateway without [metrics] pays one boolean test per message. DNS
cache counters and the quarantine size are read when scraped, not maintained on the hot path.

With `[listen] workers = N`, worker i serves its own endpoint on port + i (no shared multiprocess
directory): scrape each, and let Prometheus sum across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.plugin import MessageContext
    from gateway.transaction import Outcome

log = logging.getLogger("mailgate")

REGISTRY = CollectorRegistry(auto_describe=True)
MESSAGES = Counter(
    "mailgate_messages", "Messages concluded, by verdict action", ["action"], registry=REGISTRY
)
SYMBOLS = Counter(
    "mailgate_symbols", "Symbols found in concluded messages", ["symbol"], registry=REGISTRY
)
PLUGIN_SECONDS = Histogram(
    "mailgate_plugin_seconds",
    "Time each plugin spent on a message (all phases)",
    ["plugin"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0),
    registry=REGISTRY,
)
PLUGIN_CPU = Counter(
    "mailgate_plugin_cpu_seconds",
    "CPU time spent per plugin and stage (quarantine write, relay to the delivery server), on "
    "the event loop and in worker threads; divide by mailgate_messages_total per message",
    ["plugin"],
    registry=REGISTRY,
)
MESSAGE_SECONDS = Histogram(
    "mailgate_message_seconds",
    "Time from the end of DATA to our reply (inspection, relay or quarantine)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=REGISTRY,
)
RELAY = Counter(
    "mailgate_relay_replies",
    "Delivery server replies to relayed messages, by class (2xx, 4xx, 5xx)",
    ["reply_class"],
    registry=REGISTRY,
)
DNSBL_SUSPENDED = Counter(
    "mailgate_dnsbl_suspended",
    "DNS lists suspended because they refused our queries (a refusal code, or an answer from "
    "outside 127.0.0.0/8: a public or lying resolver), by list; never scored as hits",
    ["list"],
    registry=REGISTRY,
)
DNS_SERVER_DOWN = Counter(
    "mailgate_dns_server_down",
    "Times a nameserver was found not answering (gateway.dns_health), by server",
    ["server"],
    registry=REGISTRY,
)

enabled = False  # set by `serve_metrics`; `record` is a no-op until then


def record(ctx: MessageContext, outcome: Outcome, elapsed: float) -> None:
    """Count one concluded message. Cheap: a few dictionary lookups and additions."""
    if not enabled:
        return
    verdict = outcome.verdict
    _child(MESSAGES, verdict.action.value).inc()
    for finding in verdict.findings:
        _child(SYMBOLS, finding.symbol).inc()
    for name, seconds in ctx.timings.items():
        _child(PLUGIN_SECONDS, name).observe(seconds)
    for name, meter in ctx.cpu.items():
        _child(PLUGIN_CPU, name).inc(meter.seconds)
    MESSAGE_SECONDS.observe(elapsed)
    if outcome.relay_class:
        _child(RELAY, outcome.relay_class).inc()


def count_dnsbl_suspension(name: str) -> None:
    """One suspension of DNS list `name` (rare: counted whether the endpoint is on or not, so
    a scrape after enabling it still shows what happened)."""
    DNSBL_SUSPENDED.labels(name).inc()


# `labels()` takes a lock and builds a key on every call (dozens per message): keep the labelled
# children. The values are bounded: actions, declared symbols, plugin names, reply classes.
_children: dict[tuple[int, str], Any] = {}


def _child(metric: Counter | Histogram, value: str) -> Any:
    key = (id(metric), value)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(value)
    return child


class GatewayCollector(Collector):
    """Read at scrape time: the DNS cache counters and the quarantine size."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        services = self.gateway.services
        if services is not None:
            stats = services.resolver.stats()
            cache = CounterMetricFamily(
                "mailgate_dns_cache", "DNS answers from the cache or not", labels=["result"]
            )
            cache.add_metric(["hit"], stats.hits)
            cache.add_metric(["miss"], stats.misses)
            yield cache
            yield GaugeMetricFamily("mailgate_dns_cache_size", "DNS answers cached", stats.size)
            yield CounterMetricFamily(
                "mailgate_dns_cpu_seconds",
                "CPU time spent sending DNS queries and reading the answers",
                services.resolver.cpu.seconds,
            )
        size = GaugeMetricFamily("mailgate_quarantine_messages", "Messages in quarantine")
        with contextlib.suppress(Exception):  # a broken store must not break the scrape
            from gateway.quarantine.model import Selection

            size.add_metric([], self.gateway.store.count(Selection()))
        yield size


class MetricsServer:
    """GET /metrics (Prometheus text format) and GET /health, on the gateway's own loop."""

    def __init__(self, gateway: Gateway, host: str, port: int) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None
        self._collector = GatewayCollector(gateway)

    async def start(self) -> tuple[str, int]:
        global enabled
        with contextlib.suppress(ValueError):  # one collector per process
            REGISTRY.register(self._collector)
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        host, port = self._server.sockets[0].getsockname()[:2]
        enabled = True
        log.info("metrics on http://%s:%d/metrics", host, port)
        return str(host), int(port)

    async def stop(self) -> None:
        global enabled
        enabled = False
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self._collector)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, _, rest = request.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method != b"GET":
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == b"/metrics":
                body = await asyncio.to_thread(generate_latest, REGISTRY)
                status, kind = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            elif path == b"/health":
                if self.gateway.shutting_down:
                    status, body = "503 Service Unavailable", b"stopping\n"
                else:
                    status, body = "200 OK", b"ok\n"
                kind = "text/plain"
            else:
                status, body, kind = "404 Not Found", b"/metrics or /health\n", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
