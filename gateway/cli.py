"""`mailgate`: serve, check the configuration, scan a message offline.

Every value that came from a message or a client is printed through gateway.text, so a hostile
Subject or file name cannot drive the admin's terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway import __version__
from gateway.config import Settings, load_settings
from gateway.text import printable
from gateway.tomlfile import ConfigError, ConfigErrors

if TYPE_CHECKING:  # imported where used: `serve` with workers must not load them (see cmd_serve)
    from gateway.app import Gateway
    from gateway.plugin import MessageContext
    from gateway.verdict import Verdict

DEFAULT_CONFIG = Path("config/gateway.toml")


def _config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    env = os.environ.get("MAILGATE_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


class SafeFormatter(logging.Formatter):
    """Escape control characters in every log line, tracebacks included.

    Our own log calls pass client values through gateway.text, but a traceback carries the raw
    exception text, which may quote a header value (a plugin's `int(value)`...): without this an
    escape sequence in a message could reach the admin's terminal through the log.
    """

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(printable(line, 20_000) for line in super().format(record).split("\n"))


def _setup_logging(level: str, worker: int | None = None) -> None:
    handler = logging.StreamHandler()
    # A worker names itself on every line: which process handled which message.
    name = "%(name)s" if worker is None else f"%(name)s[worker {worker} pid %(process)d]"
    handler.setFormatter(SafeFormatter(f"%(asctime)s %(levelname)s {name}: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    # aiosmtpd logs every command line at INFO; our own log line per message says what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def _load(args: argparse.Namespace, out: TextIO) -> tuple[Settings, Gateway] | None:
    from gateway.app import Gateway, PolicyError

    try:
        settings = load_settings(_config_path(args.config))
        gateway = Gateway.create(settings)
    except (ConfigError, ConfigErrors, PolicyError) as exc:
        print(f"mailgate: configuration error:\n{exc}", file=out)
        return None
    return settings, gateway


# -- check ---------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args, sys.stderr)
    if loaded is None:
        return 1
    settings, gateway = loaded
    from gateway.tlscli import tls_errors, tls_warnings

    for warning in tls_warnings(settings):
        print(f"mailgate: warning: {warning}", file=sys.stderr)
    tls_problems = tls_errors(settings)
    for problem in tls_problems:
        print(f"mailgate: {problem}", file=sys.stderr)
    if tls_problems:
        return 1
    source = settings.source or "embedded defaults"
    print(f"config OK: {source}")
    print(
        f"rules OK: {settings.rules_dir} (policy {gateway.rules.version}, "
        f"{len(gateway.rules.scores)} scored symbols, quarantine at "
        f"{gateway.rules.quarantine_at:g}, reject at {gateway.rules.reject_at:g})"
    )
    print(f"plugins: {', '.join(p.name for p in gateway.chain.plugins) or '(none)'}")
    return 0


# -- serve ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    worker: int | None = args.worker
    if worker is None:
        try:
            settings = load_settings(_config_path(args.config))
        except (ConfigError, ConfigErrors) as exc:
            print(f"mailgate: configuration error:\n{exc}", file=sys.stderr)
            return 1
        if settings.listen.workers > 1:
            # The supervisor only starts and watches workers: it never loads the model, the
            # plugins or the policy (about 70 MB it would hold for nothing). `mailgate check`
            # in a child process validates all of that first, with the same messages.
            if not _checked_in_child(args):
                return 1
            _setup_logging(settings.log_level, None)
            return asyncio.run(_supervise(settings, dev=args.dev, demo=args.demo))
    loaded = _load(args, sys.stderr)
    if loaded is None:
        return 1
    settings, gateway = loaded
    from gateway.tlscli import tls_errors

    tls_problems = tls_errors(settings)
    for problem in tls_problems:
        print(f"mailgate: {problem}", file=sys.stderr)
    if tls_problems:
        return 1
    _setup_logging(settings.log_level, worker)
    return asyncio.run(_serve(settings, gateway, dev=args.dev, demo=args.demo, worker=worker))


def _checked_in_child(args: argparse.Namespace) -> bool:
    """`mailgate check` for this configuration, in a child process: its errors and warnings go
    to our stderr; True when it passed."""
    import subprocess

    argv = [sys.executable, "-m", "gateway"]
    if args.config:
        argv += ["--config", args.config]
    done = subprocess.run([*argv, "check"], stdout=subprocess.DEVNULL, check=False)
    return done.returncode == 0


def _start_sink(settings: Settings) -> tuple[Any, Any]:
    from gateway.devsink import start_dev_sink

    sink_controller, sink = start_dev_sink(
        settings.delivery.host, settings.delivery.port, settings.dev_maildir
    )
    logging.getLogger("mailgate").info(
        "dev sink on %s:%d writing to %s",
        settings.delivery.host,
        settings.delivery.port,
        settings.dev_maildir,
    )
    return sink_controller, sink


async def _supervise(settings: Settings, dev: bool, demo: bool) -> int:
    """`workers = N`: the dev sink runs here, once; the workers serve."""
    from gateway.supervisor import Supervisor, wait_listening

    sink_controller: Any = None
    sink: Any = None
    if dev or demo:
        sink_controller, sink = _start_sink(settings)
    supervisor = Supervisor(settings)
    try:
        task = asyncio.create_task(supervisor.run())
        listen = settings.listen
        if demo and await wait_listening(listen.host, listen.port):
            await _send_demo(settings, listen.host, listen.port, sink)
        return await task
    finally:
        if sink_controller is not None:
            sink_controller.stop()


async def _serve(
    settings: Settings, gateway: Gateway, dev: bool, demo: bool, worker: int | None = None
) -> int:
    from gateway.server import GatewayServer, install_signals
    from gateway.supervisor import watch_parent
    from gateway.tls import ServerTls, delivery_tls

    sink_controller: Any = None
    sink: Any = None
    if worker is not None:
        dev = demo = False  # the supervisor runs the sink
    if dev or demo:
        sink_controller, sink = _start_sink(settings)
    delivery_tls(settings.delivery)  # an unreadable CA file stops us here, not per connection
    server = GatewayServer(gateway, ServerTls.load(settings.tls), maintenance=not worker)
    stop = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    metrics: Any = None
    if settings.metrics.host is not None:
        from gateway.metrics import MetricsServer

        # One endpoint per worker, on consecutive ports: worker i on port + i.
        metrics_port = settings.metrics.port + (worker or 0)
        metrics = MetricsServer(gateway, settings.metrics.host, metrics_port)
    try:
        if metrics is not None:
            await metrics.start()
        host, port = await server.start()
        # What is loaded by now (modules, the model, the policy) lives as long as the process:
        # keep it out of the cyclic collector's full passes, each of which would otherwise walk
        # all of it again (10-20 ms with every plugin loaded: a pause in some message's reply).
        gc.freeze()
        install_signals(asyncio.get_running_loop(), gateway, stop.set, server.tls)
        if worker is not None:
            watcher = asyncio.create_task(watch_parent(stop))
        if demo:
            await _send_demo(settings, host, port, sink)
        await stop.wait()
        await server.stop()
    finally:
        if watcher is not None:
            watcher.cancel()
        if metrics is not None:
            await metrics.stop()
        if sink_controller is not None:
            sink_controller.stop()
    return 0


DEMO_MESSAGE = (
    b"From: Demo Sender <demo@example.net>\r\n"
    b"To: Postmaster <postmaster@example.com>\r\n"
    b"Subject: mailgate demo\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <demo@example.net>\r\n"
    b"\r\n"
    b"This message went through mailgate end to end.\r\n"
)


async def _send_demo(settings: Settings, host: str, port: int, sink: Any) -> None:
    """Send one message through the running gateway and show where it landed."""
    import aiosmtplib

    rcpt = f"postmaster@{settings.relay.domains[0]}" if settings.relay.domains else "x@example.com"
    try:
        _, reply = await aiosmtplib.send(
            DEMO_MESSAGE,
            sender="demo@example.net",
            recipients=[rcpt],
            hostname=host,
            port=port,
            start_tls=False,
            local_hostname="demo.example.net",
        )
        print(f"demo: the gateway answered: {printable(reply)}", flush=True)
    except aiosmtplib.SMTPException as exc:
        print(f"demo: the gateway refused the message: {printable(str(exc))}", flush=True)
        return
    files = sink.new_files() if sink else []
    if files:
        print(f"demo: delivered to {files[-1]}", flush=True)
        for line in files[-1].read_bytes().splitlines()[:8]:
            print(f"demo:   {printable(line.expandtabs(4))}", flush=True)
    print(f"demo: gateway listening on {host}:{port}; Ctrl-C to stop", flush=True)


# -- scan ----------------------------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    loaded = _load(args, sys.stderr)
    if loaded is None:
        return 1
    _, gateway = loaded
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"mailgate: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    verdict, ctx, normalized = asyncio.run(_scan(gateway, raw, args))
    if args.json:
        print(json.dumps(_scan_json(args.file, ctx, verdict, normalized), indent=2))
    else:
        _print_scan(gateway, args.file, ctx, verdict, normalized)
    return 0


async def _scan(
    gateway: Gateway, raw: bytes, args: argparse.Namespace
) -> tuple[Verdict, MessageContext, bool]:
    from gateway.line_endings import normalize_line_endings
    from gateway.plugin import ClientInfo, MessageContext, Phase
    from gateway.transaction import inspect

    # Files on disk often have LF line endings; over SMTP they would arrive as CRLF.
    crlf = normalize_line_endings(raw)
    client = ClientInfo(ip=args.ip, port=0, helo=args.helo, esmtp=True)
    ctx = MessageContext(client=client, rules=gateway.rules, settings=gateway.settings)
    chain = gateway.chain
    await chain.run(Phase.CONNECT, ctx)
    await chain.run(Phase.HELO, ctx)
    ctx.mail_from = getattr(args, "from")
    await chain.run(Phase.MAIL, ctx)
    for rcpt in args.rcpt:
        ctx.rcpt_tos.append(rcpt)
        await chain.run(Phase.RCPT, ctx)
    ctx.raw = crlf
    verdict = await inspect(gateway, ctx)
    return verdict, ctx, crlf != raw


def _scan_json(
    path: str, ctx: MessageContext, verdict: Verdict, normalized: bool
) -> dict[str, Any]:
    return {
        "file": path,
        "id": ctx.queue_id,
        "size": len(ctx.raw),
        "line_endings_normalized": normalized,
        "envelope": {"from": ctx.mail_from, "rcpt": ctx.rcpt_tos},
        "client": {"ip": ctx.client.ip, "helo": ctx.client.helo},
        "action": verdict.action.value,
        "score": verdict.score,
        "reason": verdict.reason,
        "reply": str(verdict.reply),
        "findings": [
            {"symbol": f.symbol, "score": f.score, "detail": f.finding.detail}
            for f in verdict.findings
        ],
        "thresholds": {"quarantine": ctx.rules.quarantine_at, "reject": ctx.rules.reject_at},
        "policy_version": ctx.rules.version,
        "plugin_ms": {k: round(v * 1000, 3) for k, v in ctx.timings.items()},
    }


def _print_scan(
    gateway: Gateway, path: str, ctx: MessageContext, verdict: Verdict, normalized: bool
) -> None:
    descriptions = gateway.registry.all_symbols(ctx.rules)
    p = printable
    print(f"message   {p(path)} ({len(ctx.raw)} bytes{', LF -> CRLF' if normalized else ''})")
    recipients = ", ".join(f"<{p(r)}>" for r in ctx.rcpt_tos)
    print(f"envelope  from <{p(ctx.mail_from or '')}> to {recipients}")
    print(f"client    {p(ctx.client.ip)} helo {p(ctx.client.helo or '-')}")
    print("findings")
    if not verdict.findings:
        print("  (none)")
    for f in sorted(verdict.findings, key=lambda f: (-f.score, f.symbol)):
        detail = f" [{p(f.finding.detail, 80)}]" if f.finding.detail else ""
        print(f"  {f.symbol:<26} {f.score:>7g}  {p(descriptions.get(f.symbol, ''))}{detail}")
    rules = ctx.rules
    print(
        f"score     {verdict.score:g} (quarantine at {rules.quarantine_at:g}, "
        f"reject at {rules.reject_at:g}; policy {rules.version})"
    )
    print(f"verdict   {verdict.action.value.upper()}: {verdict.reason}")
    print(f"reply     {verdict.reply}")


# -- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailgate", description="Inline SMTP security gateway.")
    parser.add_argument("--version", action="version", version=f"mailgate {__version__}")
    parser.add_argument(
        "--config",
        help="path to gateway.toml (default: $MAILGATE_CONFIG, else config/gateway.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="also start the built-in delivery sink (Maildir) on the [delivery] address",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="like --dev, and send one message through the gateway at start-up",
    )
    serve.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate config and rules, then exit")
    check.set_defaults(func=cmd_check)

    scan = sub.add_parser("scan", help="run the chain on an .eml file and explain the verdict")
    scan.add_argument("file", help="the message (RFC 5322, as bytes)")
    scan.add_argument("--from", default="sender@example.net", help="envelope sender")
    scan.add_argument(
        "--rcpt", action="append", default=None, help="envelope recipient (repeatable)"
    )
    scan.add_argument("--ip", default="192.0.2.1", help="client IP address")
    scan.add_argument("--helo", default="client.example.net", help="client HELO name")
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    scan.set_defaults(func=cmd_scan)

    from gateway.quarantine.cli import add_quarantine_parser

    add_quarantine_parser(sub)

    from gateway.tlscli import add_commands as add_tls_commands

    add_tls_commands(sub)

    from gateway.classifier.cli import add_commands as add_model_commands

    add_model_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "rcpt", "unset") is None:
        args.rcpt = ["postmaster@example.com"]
    result: int = args.func(args)
    return result
