"""Prometheus metrics and a health check over HTTP, when `[metrics] address` is set.

Per-message counters are updated at one point, `record` (called from transaction.log_message), and
only when the endpoint is on: a gateway without [metrics] pays one boolean test per message (and
per refusal or connection). DNS cache counters, the quarantine size and the open connections are
read when scraped, not maintained on the hot path.

Refusals are counted by phase and reason, both from small fixed sets (`Phase`, `Reason`: never a
client's string, so the number of series is bounded); the SMTP front names the reason where it
decides a refusal (Session.reason, read by the adapter when it sends the reply) and the adapter
classifies aiosmtpd's own replies (`classify`). Every label set a dashboard needs is created at
start (`preinitialise`), so a rate() over a counter that has not moved yet reads 0, not "no data".

With `[listen] workers = N`, worker i serves its own endpoint on port + i (no shared multiprocess
directory): scrape each, and let Prometheus sum across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import front_replies
from gateway.front_symbols import (
    BARE_LINE_ENDING,
    FRONT_SYMBOLS,
    NUL_CHARACTER,
    REQUIRETLS_UNVERIFIED_DELIVERY,
    REQUIRETLS_WITHOUT_TLS,
    TLS_REQUIRED_CLIENT,
    TLS_REQUIRED_RECIPIENT,
    TLS_REQUIRED_SENDER,
)
from gateway.verdict import Action, Replies, SmtpReply, Verdict

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


class Phase(enum.StrEnum):
    """Where a refusal happened: the SMTP command refused (HELO and EHLO are one), the
    connection before the greeting, or any other command (RSET, VRFY, AUTH, an unknown one)."""

    CONNECT = "connect"
    HELO = "helo"
    STARTTLS = "starttls"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    OTHER = "other"


_COMMAND_PHASES = {
    "HELO": Phase.HELO,
    "EHLO": Phase.HELO,
    "STARTTLS": Phase.STARTTLS,
    "MAIL": Phase.MAIL,
    "RCPT": Phase.RCPT,
    "DATA": Phase.DATA,
}


def phase_of(command: str | None) -> Phase:
    """The phase of an SMTP command (upper case, as aiosmtpd dispatches it)."""
    return _COMMAND_PHASES.get(command or "", Phase.OTHER)


class Reason(enum.StrEnum):
    """Why something was refused (README "Metrics" says what each one means)."""

    # connection
    MAX_CONNECTIONS = "max_connections"
    PER_IP_LIMIT = "per_ip_limit"
    SHUTTING_DOWN = "shutting_down"
    PROXY_INVALID = "proxy_invalid"
    PROXY_UNTRUSTED = "proxy_untrusted"
    # policy (rules/): a forced action, by the family of its symbol, or the score ladder
    ACCESS_LIST = "access_list"
    TLS_REQUIRED = "tls_required"
    POLICY = "policy"
    SCORE = "score"
    BARE_LINE_ENDING = "bare_line_ending"
    NUL_CHARACTER = "nul_character"
    # the protocol and the front's fixed limits
    SYNTAX = "syntax"
    SEQUENCE = "sequence"
    UNKNOWN_COMMAND = "unknown_command"
    NOT_SUPPORTED = "not_supported"
    LINE_TOO_LONG = "line_too_long"
    CALL_LIMIT = "call_limit"
    ERROR_LIMIT = "error_limit"
    TIMEOUT = "timeout"
    TLS_UNAVAILABLE = "tls_unavailable"
    TLS_ALREADY_ACTIVE = "tls_already_active"
    HANDSHAKE_FAILED = "handshake_failed"
    RELAY_DENIED = "relay_denied"
    ROUTING_ADDRESS = "routing_address"
    NO_POSTMASTER_DOMAIN = "no_postmaster_domain"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    MESSAGE_SIZE = "message_size"
    HEADER_SIZE = "header_size"
    DATA_AFTER_REFUSAL = "data_after_refusal"
    # the delivery server: its own 5xx or 4xx, or it could not be asked (or lacks an extension)
    DOWNSTREAM_REJECT = "downstream_reject"
    DOWNSTREAM_TEMPFAIL = "downstream_tempfail"
    DOWNSTREAM_UNAVAILABLE = "downstream_unavailable"
    DOWNSTREAM_UNSUPPORTED = "downstream_unsupported"
    QUARANTINE_FAILED = "quarantine_failed"
    INTERNAL_ERROR = "internal_error"
    OTHER = "other"


class Closed(enum.StrEnum):
    """Why a client connection ended."""

    QUIT = "quit"
    CLIENT_GONE = "client_gone"  # the client closed or reset it without QUIT
    REFUSED = "refused"  # at connect (see mailgate_connections_refused_total)
    TIMEOUT = "timeout"
    ERROR_LIMIT = "error_limit"
    TLS_FAILED = "tls_failed"
    PROTOCOL = "protocol"  # aiosmtpd's command limits, data sent on after a DATA refusal
    SHUTDOWN = "shutdown"


class Delivery(enum.StrEnum):
    """The delivery server's answer that ends a transaction toward it."""

    ACCEPTED = "accepted"
    TEMP = "temp"  # its own 4xx
    PERM = "perm"  # its own 5xx
    UNAVAILABLE = "unavailable"  # not reached, timed out, dropped, 421, TLS failed


TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
_KNOWN_TLS_VERSIONS = frozenset({"TLSv1", "TLSv1.1", *TLS_VERSIONS})

_4, _5, _45, _NONE = ("4",), ("5",), ("4", "5"), ("none",)
# Every (phase, reason) the front can give, with the reply classes it can have ("none": the
# connection is closed without a reply): the label sets `preinitialise` creates.
REFUSALS: Mapping[Phase, Mapping[Reason, tuple[str, ...]]] = {
    Phase.CONNECT: {
        Reason.MAX_CONNECTIONS: _4,
        Reason.PER_IP_LIMIT: _4,
        Reason.SHUTTING_DOWN: _4,
        Reason.ACCESS_LIST: _45,
        Reason.POLICY: _45,
        Reason.PROXY_INVALID: _NONE,
        Reason.PROXY_UNTRUSTED: _NONE,
        Reason.TIMEOUT: _NONE,
        Reason.INTERNAL_ERROR: _4,
    },
    Phase.HELO: {
        Reason.SYNTAX: _5,
        Reason.POLICY: _45,
        Reason.ERROR_LIMIT: _4,
        Reason.INTERNAL_ERROR: _4,
    },
    Phase.STARTTLS: {
        Reason.TLS_REQUIRED: _45,
        Reason.TLS_UNAVAILABLE: _4,
        Reason.TLS_ALREADY_ACTIVE: _5,
        Reason.HANDSHAKE_FAILED: _NONE,
        Reason.SYNTAX: _5,
        Reason.ERROR_LIMIT: _4,
    },
    Phase.MAIL: {
        Reason.SYNTAX: _5,
        Reason.SEQUENCE: _5,
        Reason.MESSAGE_SIZE: _5,
        Reason.SHUTTING_DOWN: _4,
        Reason.ACCESS_LIST: _45,
        Reason.TLS_REQUIRED: _45,
        Reason.POLICY: _45,
        Reason.DOWNSTREAM_REJECT: _5,
        Reason.DOWNSTREAM_TEMPFAIL: _4,
        Reason.DOWNSTREAM_UNAVAILABLE: _4,
        Reason.DOWNSTREAM_UNSUPPORTED: _5,
        Reason.ERROR_LIMIT: _4,
        Reason.INTERNAL_ERROR: _4,
    },
    Phase.RCPT: {
        Reason.SYNTAX: _5,
        Reason.SEQUENCE: _5,
        Reason.RELAY_DENIED: _5,
        Reason.ROUTING_ADDRESS: _5,
        Reason.NO_POSTMASTER_DOMAIN: _5,
        Reason.TOO_MANY_RECIPIENTS: _4,
        Reason.TLS_REQUIRED: _45,
        Reason.POLICY: _45,
        Reason.DOWNSTREAM_REJECT: _5,
        Reason.DOWNSTREAM_TEMPFAIL: _4,
        Reason.DOWNSTREAM_UNAVAILABLE: _4,
        Reason.ERROR_LIMIT: _4,
        Reason.INTERNAL_ERROR: _4,
    },
    Phase.DATA: {
        Reason.SYNTAX: _5,
        Reason.SEQUENCE: _5,
        Reason.MESSAGE_SIZE: _5,
        Reason.HEADER_SIZE: _5,
        Reason.LINE_TOO_LONG: _5,
        Reason.DATA_AFTER_REFUSAL: _4,
        Reason.TIMEOUT: _NONE,
        Reason.BARE_LINE_ENDING: _45,
        Reason.NUL_CHARACTER: _45,
        Reason.POLICY: _45,
        Reason.SCORE: _5,
        Reason.DOWNSTREAM_REJECT: _5,
        Reason.DOWNSTREAM_TEMPFAIL: _4,
        Reason.DOWNSTREAM_UNAVAILABLE: _4,
        Reason.QUARANTINE_FAILED: _4,
        Reason.ERROR_LIMIT: _4,
        Reason.INTERNAL_ERROR: _4,
    },
    Phase.OTHER: {
        Reason.SYNTAX: _5,
        Reason.SEQUENCE: _5,
        Reason.UNKNOWN_COMMAND: _5,
        Reason.NOT_SUPPORTED: _5,
        Reason.LINE_TOO_LONG: _5,
        Reason.CALL_LIMIT: _4,
        Reason.ERROR_LIMIT: _4,
        Reason.INTERNAL_ERROR: _4,
        Reason.OTHER: _45,
    },
}

REFUSED = Counter(
    "mailgate_refusals",
    "Commands and connections refused, by phase, reason and reply class (4, 5; none: closed "
    "without a reply)",
    ["phase", "reason", "code_class"],
    registry=REGISTRY,
)
ACCEPTED = Counter(
    "mailgate_connections_accepted",
    "Client connections accepted by the listener",
    registry=REGISTRY,
)
CONNECTIONS_REFUSED = Counter(
    "mailgate_connections_refused",
    'Client connections refused before or at the greeting, by reason (the phase="connect" '
    "refusals)",
    ["reason"],
    registry=REGISTRY,
)
CONNECTIONS_CLOSED = Counter(
    "mailgate_connections_closed",
    "Client connections ended, by reason",
    ["reason"],
    registry=REGISTRY,
)
TLS_SESSIONS = Counter(
    "mailgate_tls_sessions",
    "TLS sessions negotiated, by direction (inbound STARTTLS, outbound to the delivery server) "
    "and protocol version",
    ["direction", "version"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "mailgate_deliveries",
    "Transactions toward the delivery server, by how they ended (its answer to DATA, or the "
    "failure that ended one at MAIL)",
    ["result"],
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "mailgate_delivery_seconds",
    "Time spent waiting on the delivery server per transaction: connect (or MAIL on a reused "
    "connection) to its final reply, without the client's and the inspection's time in between",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)

RELOADS = Counter(
    "mailgate_reloads",
    "SIGHUP reloads of gateway.toml, rules/ and the TLS files: done, or refused (the running "
    "configuration kept; the log names the file and line)",
    ["result"],
    registry=REGISTRY,
)
for _result in ("done", "refused"):
    RELOADS.labels(_result)

enabled = False  # set by `MetricsServer.start`; the counting functions are no-ops until then


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


def refused(phase: Phase, reason: Reason, code: int | None) -> None:
    """One refusal; `code` None: the connection was closed without a reply."""
    if not enabled:
        return
    code_class = str(code // 100) if code else "none"
    _child(REFUSED, phase.value, reason.value, code_class).inc()
    if phase is Phase.CONNECT:
        _child(CONNECTIONS_REFUSED, reason.value).inc()


def connection_accepted() -> None:
    if enabled:
        ACCEPTED.inc()


def connection_closed(reason: Closed) -> None:
    if enabled:
        _child(CONNECTIONS_CLOSED, reason.value).inc()


def tls_session(direction: str, version: str | None) -> None:
    """A negotiated TLS session, "inbound" (STARTTLS from a client) or "outbound"."""
    if enabled and version is not None:
        label = version if version in _KNOWN_TLS_VERSIONS else "other"
        _child(TLS_SESSIONS, direction, label).inc()


def delivery_ended(reply: SmtpReply, seconds: float) -> None:
    """A transaction toward the delivery server ended with `reply` (ours, mapped from its)."""
    if not enabled:
        return
    if reply.is_positive:
        result = Delivery.ACCEPTED
    elif not _from_downstream(reply):
        result = Delivery.UNAVAILABLE
    else:
        result = Delivery.TEMP if reply.is_transient else Delivery.PERM
    _child(DELIVERIES, result.value).inc()
    DELIVERY_SECONDS.observe(seconds)


# -- reasons -------------------------------------------------------------------------------------

# relay.reply_from_downstream gives the delivery server's own answers this prefix; every other
# refusal from there (unavailable, timed out, TLS failed, an extension it lacks) is ours.
_DOWNSTREAM_PREFIX = "delivery server:"
_TLS_SYMBOLS = frozenset(
    {
        TLS_REQUIRED_CLIENT,
        TLS_REQUIRED_SENDER,
        TLS_REQUIRED_RECIPIENT,
        REQUIRETLS_WITHOUT_TLS,
        REQUIRETLS_UNVERIFIED_DELIVERY,
    }
)
_DATA_REFUSALS = {
    front_replies.MESSAGE_TOO_BIG: Reason.MESSAGE_SIZE,
    front_replies.HEADER_TOO_BIG: Reason.HEADER_SIZE,
    front_replies.LINE_TOO_LONG: Reason.LINE_TOO_LONG,
}


def _from_downstream(reply: SmtpReply) -> bool:
    return reply.text.startswith(_DOWNSTREAM_PREFIX)


def verdict_reason(verdict: Verdict) -> Reason:
    """A policy refusal, by the symbol that forced it (its family) or the score."""
    symbol = verdict.forced_by
    if symbol is None:
        return Reason.SCORE
    if symbol in _TLS_SYMBOLS:
        return Reason.TLS_REQUIRED
    if symbol == BARE_LINE_ENDING:
        return Reason.BARE_LINE_ENDING
    if symbol == NUL_CHARACTER:
        return Reason.NUL_CHARACTER
    if symbol.startswith("LIST_"):
        return Reason.ACCESS_LIST
    return Reason.POLICY


def downstream_reason(reply: SmtpReply) -> Reason:
    """A refusal that came from (or for want of) the delivery server."""
    if _from_downstream(reply):
        return Reason.DOWNSTREAM_TEMPFAIL if reply.is_transient else Reason.DOWNSTREAM_REJECT
    return Reason.DOWNSTREAM_UNAVAILABLE if reply.is_transient else Reason.DOWNSTREAM_UNSUPPORTED


def relay_reason(reply: SmtpReply) -> Reason:
    """gateway.access's refusal: a domain not served, or an address with routing in it."""
    return Reason.ROUTING_ADDRESS if reply == Replies.BAD_RECIPIENT_SYNTAX else Reason.RELAY_DENIED


def data_reason(reply: SmtpReply) -> Reason:
    """A refusal while DATA streams in (gateway.data_reader's limits)."""
    return _DATA_REFUSALS.get(reply, Reason.OTHER)


def outcome_reason(outcome: Outcome) -> Reason | None:
    """Why the reply at the end of DATA refuses the message; None: it does not."""
    if outcome.reply.is_positive:
        return None
    if outcome.relay_class:  # the delivery server was sent the message
        return downstream_reason(outcome.reply)
    if outcome.verdict.action is Action.QUARANTINE:  # the copy could not be stored
        return Reason.QUARANTINE_FAILED
    return verdict_reason(outcome.verdict)


# aiosmtpd's own replies to lines it refuses before dispatching a command, by their start.
_UNDISPATCHED = (
    ("500 Command line too long", Phase.OTHER, Reason.LINE_TOO_LONG),
    ("500 Error: bad syntax", Phase.OTHER, Reason.SYNTAX),
    ("500 Error: strict ASCII mode", Phase.OTHER, Reason.SYNTAX),
    ('500 Error: command "', Phase.OTHER, Reason.UNKNOWN_COMMAND),
    ("502 ", Phase.OTHER, Reason.UNKNOWN_COMMAND),
    ("554 Command refused due to lack of security", Phase.STARTTLS, Reason.HANDSHAKE_FAILED),
)
_BY_CODE = {
    "500": Reason.SYNTAX,
    "501": Reason.SYNTAX,
    "504": Reason.SYNTAX,
    "553": Reason.SYNTAX,
    "555": Reason.SYNTAX,
    "503": Reason.SEQUENCE,
    "552": Reason.MESSAGE_SIZE,
    "451": Reason.INTERNAL_ERROR,
}


def classify(status: str, command: str | None) -> tuple[Phase, Reason]:
    """The phase and reason of a refusal the front did not name (aiosmtpd's own replies), from
    the command being answered and the reply's code (its fixed texts for the few that share
    a code)."""
    for start, phase, reason in _UNDISPATCHED:
        if status.startswith(start):
            return phase, reason
    code = status[:3]
    if code == "530":  # RFC 3207 4: a command before STARTTLS
        return Phase.STARTTLS, Reason.TLS_REQUIRED
    if code == "454":
        return Phase.STARTTLS, Reason.TLS_UNAVAILABLE
    if code == "421" and "too many times" in status:
        return Phase.OTHER, Reason.CALL_LIMIT
    return phase_of(command), _BY_CODE.get(code, Reason.OTHER)


def preinitialise(gateway: Gateway) -> None:
    """Create every label set a dashboard reads, at 0: a rate() over a counter that has not
    moved yet is then 0, and a panel shows zeros rather than "no data"."""
    for action in Action:
        _child(MESSAGES, action.value)
    for plugin in gateway.chain.plugins:
        _child(PLUGIN_SECONDS, plugin.name)
        _child(PLUGIN_CPU, plugin.name)
        for symbol in plugin.symbols:
            _child(SYMBOLS, symbol)
    for stage in ("relay", "quarantine"):
        _child(PLUGIN_CPU, stage)
    for symbol in FRONT_SYMBOLS:
        _child(SYMBOLS, symbol)
    for reply_class in ("2xx", "4xx", "5xx"):
        _child(RELAY, reply_class)
    for phase, reasons in REFUSALS.items():
        for reason, classes in reasons.items():
            for code_class in classes:
                _child(REFUSED, phase.value, reason.value, code_class)
    for reason in REFUSALS[Phase.CONNECT]:
        _child(CONNECTIONS_REFUSED, reason.value)
    for closed in Closed:
        _child(CONNECTIONS_CLOSED, closed.value)
    for direction in ("inbound", "outbound"):
        for version in TLS_VERSIONS:
            _child(TLS_SESSIONS, direction, version)
    for result in Delivery:
        _child(DELIVERIES, result.value)


def count_reload(result: str) -> None:
    """One reload, "done" or "refused" (rare: counted whether the endpoint is on or not)."""
    RELOADS.labels(result).inc()


# `labels()` takes a lock and builds a key on every call (dozens per message): keep the labelled
# children. The values are bounded: actions, declared symbols, plugin names, reply classes, and
# the fixed phases, reasons and results above.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Counter | Histogram, *values: str) -> Any:
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


class GatewayCollector(Collector):
    """Read at scrape time: open connections, the DNS cache counters and the quarantine size."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "mailgate_connections_open",
            "Client connections open (those counted against limits.max_connections)",
            self.gateway.total_connections,
        )
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
        preinitialise(self.gateway)
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
