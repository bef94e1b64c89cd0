"""`mailgate`: serve, check the configuration, scan a message offline.

Every value that came from a message or a client is printed through gateway.text, so a hostile
Subject or file name cannot drive the admin's terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway import __version__
from gateway.config import Settings, classifier_model_path, load_settings
from gateway.config_search import ConfigChoice, find_config
from gateway.logsetup import SafeFormatter as SafeFormatter  # tests import it from here
from gateway.logsetup import configure_logging, hold_early_reopens
from gateway.text import printable
from gateway.tomlfile import ConfigError, ConfigErrors

if TYPE_CHECKING:  # imported where used: `serve` with workers must not load them (see cmd_serve)
    from gateway.app import Gateway
    from gateway.demo import DemoWorld
    from gateway.dns import DnsProbe, Resolver
    from gateway.scan import Envelope, Found, Scanned


def _config_path(arg: str | None, dev: bool = False) -> Path | None:
    """The gateway.toml every command reads (gateway.config_search); None: embedded defaults."""
    return find_config(arg, dev).path


def _dev(args: argparse.Namespace) -> bool:
    """`serve --dev` or `--demo`: the only commands that may read a checkout's config/."""
    return bool(getattr(args, "dev", False) or getattr(args, "demo", False))


def _config_choice(args: argparse.Namespace) -> ConfigChoice:
    return find_config(args.config, _dev(args))


def _setup_logging(settings: Settings, worker: int | None = None) -> None:
    """[logging] (gateway.logsetup); a log file or syslog we cannot write stops us here."""
    try:
        configure_logging(settings, worker)
    except ConfigError as exc:
        print(f"mailgate: configuration error:\n{exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _load(
    args: argparse.Namespace,
    out: TextIO,
    demo_dns_port: int | None = None,
    resolver: Resolver | None = None,
) -> tuple[Settings, Gateway] | None:
    """Settings and the gateway they describe; with `demo_dns_port`, its resolver asks the demo
    DNS server on that loopback port instead of [dns]."""
    from gateway.app import Gateway, PolicyError

    try:
        settings = load_settings(_config_path(args.config, _dev(args)))
        if demo_dns_port is not None:
            from gateway.demo import demo_dns_settings

            settings = replace(settings, dns=demo_dns_settings(settings.dns, demo_dns_port))
        gateway = Gateway.create(settings, resolver=resolver)
    except (ConfigError, ConfigErrors, PolicyError) as exc:
        print(f"mailgate: configuration error:\n{exc}", file=out)
        return None
    return settings, gateway


def _plugins_off(gateway: Gateway) -> list[str]:
    """What `check` says about shipped plugins the configured order leaves out."""
    order = set(gateway.settings.plugins.order)
    off = [name for name in gateway.registry.names() if name not in order]
    lines = []
    if "clamav" in off:
        lines.append(
            'clamav: off (opt-in: it needs a clamd daemon; to turn it on, add "clamav" to '
            "[plugins] order and set [plugins.clamav] address)"
        )
    others = [name for name in off if name != "clamav"]
    if others:
        lines.append(f"also available, off: {', '.join(others)}")
    return lines


def _rbl_lines(gateway: Gateway) -> list[str]:
    """What `check` says about the DNS reputation lists the rbl plugin will ask."""
    from gateway.reputation import DOMAIN_SOURCES

    if "rbl" not in gateway.settings.plugins.order:
        return []
    policy = gateway.rules.reputation
    if not policy.lists:
        return ["rbl: on, but rules/reputation.toml enables no list: nothing is asked"]
    lines = [f"rbl: on, asking {len(policy.lists)} DNS lists (rules/reputation.toml):"]
    for entry in policy.ip_lists:
        lines.append(
            f"  {entry.name}: {entry.zone} (client IP{', IPv6 too' if entry.ipv6 else ''})"
        )
    for entry in policy.domain_lists:
        sources = ", ".join(s for s in DOMAIN_SOURCES if s in entry.domains)
        lines.append(f"  {entry.name}: {entry.zone} (domains of {sources})")
    return lines


DNS_DOWN_MEANS = (
    "every SPF, DKIM and DMARC check is a temporary error, so mail is deferred (4xx) until it "
    "answers; set [dns] nameservers to a recursive resolver that does"
)


async def _probe(resolver: Resolver) -> DnsProbe:
    try:
        return await resolver.probe()
    finally:
        await resolver.aclose()


async def _probe_and_log(resolver: Resolver) -> None:
    """Start-up: one query, and a WARNING naming the servers when nothing answers."""
    found = await resolver.probe()
    logger = logging.getLogger("mailgate")
    if found.answered:
        logger.info("DNS: %s", found.text)
    else:
        logger.warning("DNS: %s: %s", found.text, DNS_DOWN_MEANS)


# -- check ---------------------------------------------------------------------------------------


def _logs_line(settings: Settings) -> str:
    """Where `serve` writes its log, as `check` says it."""
    table = settings.logging
    if table.destination == "file":
        where = f"the file {table.file} (reopened on SIGHUP and SIGUSR1)"
    elif table.destination == "syslog":
        address = table.syslog_address
        target = address.path or f"{address.host}:{address.port}"
        where = f"syslog at {target}, facility {table.facility}"
    else:
        where = "stderr (under systemd: the journal)"
    return f"logs: {table.format} lines at level {table.level} to {where}"


def _runs_as_line(settings: Settings) -> str:
    """Which user `serve` ends up as, when started by whoever runs `check` now."""
    listen = settings.listen
    if listen.user is not None:
        group = f", group {listen.group}" if listen.group else ""
        return f"runs as: user {listen.user}{group} once the port is bound (when started as root)"
    if os.geteuid() == 0:
        return 'runs as: root (started as root; set [listen] user = "mailgate" to give it up)'
    return "runs as: the user that starts it"


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
    print(f"config OK: {_config_choice(args).describe()}")
    print(
        f"rules OK: {settings.rules_dir} (policy {gateway.rules.version}, "
        f"{len(gateway.rules.scores)} scored symbols, tag at {gateway.rules.tag_threshold:g}, "
        f"quarantine at {gateway.rules.quarantine_at:g}, reject at {gateway.rules.reject_at:g})"
    )
    print(f"plugins: {', '.join(p.name for p in gateway.chain.plugins) or '(none)'}")
    from gateway.plugins.classifier import SpamClassifier

    for plugin in gateway.chain.plugins:
        stale = plugin.model.stale_reading() if isinstance(plugin, SpamClassifier) else None
        if stale is not None:
            print(f"mailgate: warning: {stale}", file=sys.stderr)
    for line in _plugins_off(gateway) + _rbl_lines(gateway):
        print(line)
    print(_logs_line(settings))
    print(_runs_as_line(settings))
    if args.no_dns_probe or gateway.services is None:
        return 0
    found = asyncio.run(_probe(gateway.services.resolver))
    if not found.answered:
        print(f"mailgate: DNS: {found.text}: {DNS_DOWN_MEANS}", file=sys.stderr)
        return 1
    print(f"dns OK: {found.text}")
    return 0


# -- serve ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    worker: int | None = args.worker
    # A SIGHUP while the model and policy load (seconds) would otherwise kill the process with
    # the default action: remember it, and reload once the loop's own handler is in place.
    from gateway.server import hold_early_reloads

    hold_early_reloads()
    hold_early_reopens()  # logrotate's SIGUSR1 while we load: noted, not fatal
    if worker is None:
        try:
            settings = load_settings(_config_path(args.config, _dev(args)))
        except (ConfigError, ConfigErrors) as exc:
            print(f"mailgate: configuration error:\n{exc}", file=sys.stderr)
            return 1
        if settings.listen.workers > 1:
            # The supervisor only starts and watches workers: it never loads the model, the
            # plugins or the policy (about 70 MB it would hold for nothing). `mailgate check`
            # in a child process validates all of that first, with the same messages.
            if not _checked_in_child(settings.source):
                return 1
            _setup_logging(settings, None)
            _log_config(args)
            return asyncio.run(_supervise(settings, dev=args.dev, demo=args.demo))
    world: DemoWorld | None = None
    demo_port: int | None = None
    if worker is not None:
        from gateway.demo import advertised_port

        demo_port = advertised_port()  # the supervisor's demo DNS server, under --dev/--demo
    elif args.dev or args.demo:
        from gateway.demo import DemoWorld

        world = DemoWorld().start()
        demo_port = world.server.port
    try:
        loaded = _load(args, sys.stderr, demo_dns_port=demo_port)
        if loaded is None:
            return 1
        settings, gateway = loaded
        from gateway.tlscli import tls_errors

        tls_problems = tls_errors(settings)
        for problem in tls_problems:
            print(f"mailgate: {problem}", file=sys.stderr)
        if tls_problems:
            return 1
        _setup_logging(settings, worker)
        _log_config(args)
        try:
            return asyncio.run(
                _serve(settings, gateway, dev=args.dev, demo=args.demo, worker=worker, world=world)
            )
        except OSError as exc:
            refusal = _bind_refusal(exc)
            if refusal is None:
                raise
            print(f"mailgate: {refusal}", file=sys.stderr)
            from gateway.supervisor import EXIT_CANNOT_START

            return EXIT_CANNOT_START if worker is not None else 1
    finally:
        if world is not None:
            world.stop()


def _log_config(args: argparse.Namespace) -> None:
    """Start-up: which file this process serves with, or that there is none and where we looked."""
    logging.getLogger("mailgate").info("config: %s", _config_choice(args).describe())


_BIND_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def _bind_refusal(exc: OSError) -> str | None:
    """One line for an address we cannot listen on (in use, not ours, a port below 1024 without
    the capability), naming it; None for any other OSError, which stays a bug report."""
    # asyncio's create_server: "error while attempting to bind on address ('::1', 25): ..."
    where = re.search(r"bind on address \('([^']*)', (\d+)", str(exc))
    if exc.errno not in _BIND_ERRORS or where is None:
        return None  # e.g. EACCES on a folder: not a listening problem
    address = f"[{where[1]}]:{where[2]}" if ":" in where[1] else f"{where[1]}:{where[2]}"
    reason = os.strerror(exc.errno).lower()
    if exc.errno == errno.EACCES:
        reason += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
    purpose = "".join(f" for {note}" for note in getattr(exc, "__notes__", ()))
    return f"cannot listen on {address}{purpose}: {reason}"


def _checked_in_child(config: Path | None) -> bool:
    """`mailgate check` for this configuration, in a child process: its errors and warnings go
    to our stderr; True when it passed."""
    import subprocess

    argv = [sys.executable, "-m", "gateway"]
    if config is not None:
        argv += ["--config", str(config)]
    # The supervisor probes DNS itself, once, and only warns: see _supervise.
    done = subprocess.run(
        [*argv, "check", "--no-dns-probe"], stdout=subprocess.DEVNULL, check=False
    )
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
    from gateway.dns import Resolver
    from gateway.privileges import announce_supervisor
    from gateway.supervisor import Supervisor, wait_listening

    sink_controller: Any = None
    sink: Any = None
    world: DemoWorld | None = None
    dns = settings.dns
    if dev or demo:
        from gateway.demo import DemoWorld, advertise, demo_dns_settings

        sink_controller, sink = _start_sink(settings)
        world = DemoWorld().start()
        advertise(world)  # the workers, started below, point their resolvers at it
        dns = demo_dns_settings(dns, world.server.port)
    announce_supervisor(settings.listen, warn=not (dev or demo))
    supervisor = Supervisor(settings)
    probe: asyncio.Task[None] | None = None
    try:
        task = asyncio.create_task(supervisor.run())
        probe = asyncio.create_task(_probe_and_log(Resolver.from_settings(dns)))
        listen = settings.listen
        if demo and world is not None and await wait_listening(listen.host, listen.port):
            await _send_demo(settings, listen.host, listen.port, sink, world)
        return await task
    finally:
        if probe is not None:
            probe.cancel()
        if sink_controller is not None:
            sink_controller.stop()
        if world is not None:
            world.stop()


async def _serve(
    settings: Settings,
    gateway: Gateway,
    dev: bool,
    demo: bool,
    worker: int | None = None,
    world: DemoWorld | None = None,
) -> int:
    from gateway import service
    from gateway.privileges import PrivilegeError, drop_privileges, folders_written
    from gateway.server import GatewayServer, install_signals
    from gateway.supervisor import EXIT_CANNOT_START, tell_supervisor_ready, watch_parent
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
    probe: asyncio.Task[None] | None = None
    metrics: Any = None
    if settings.metrics.host is not None:
        from gateway.metrics import MetricsServer

        # One endpoint per worker, on consecutive ports: worker i on port + i.
        metrics_port = settings.metrics.port + (worker or 0)
        metrics = MetricsServer(gateway, settings.metrics.host, metrics_port)
    try:
        # Before "listening" is logged: whoever reads that line may signal us at once.
        install_signals(
            asyncio.get_running_loop(), gateway, stop.set, server.tls, _demo_dns(world, worker)
        )
        if metrics is not None:
            try:
                await metrics.start()
            except OSError as exc:
                port_of = f", port + {worker} for worker {worker}" if worker else ""
                exc.add_note(f"the metrics endpoint ([metrics] address{port_of})")
                raise
        host, port = await server.start()
        try:  # bound (metrics too): root is no longer needed (a trial run is not warned)
            sinks = dev or demo
            warn = worker is None and not sinks
            drop_privileges(settings.listen, folders_written(settings, sinks), warn=warn)
        except PrivilegeError as exc:
            logging.getLogger("mailgate").error("%s", exc)
            await server.stop(grace=0)
            return EXIT_CANNOT_START if worker is not None else 1
        # What is loaded by now (modules, the model, the policy) lives as long as the process:
        # keep it out of the cyclic collector's full passes, each of which would otherwise walk
        # all of it again (10-20 ms with every plugin loaded: a pause in some message's reply).
        gc.freeze()
        if worker is not None:
            tell_supervisor_ready()
            watcher = asyncio.create_task(watch_parent(stop))
        else:
            service.ready(f"serving on {host}:{port}; policy {gateway.rules.version}")
            if gateway.services is not None:  # a supervisor probes for its workers
                probe = asyncio.create_task(_probe_and_log(gateway.services.resolver))
        if demo and world is not None:
            await _send_demo(settings, host, port, sink, world)
        await stop.wait()
        await server.stop()
    finally:
        if probe is not None:
            probe.cancel()
        if watcher is not None:
            watcher.cancel()
        if metrics is not None:
            await metrics.stop()
        if sink_controller is not None:
            sink_controller.stop()
    return 0


def _demo_dns(world: DemoWorld | None, worker: int | None) -> Callable[[Settings], Settings] | None:
    """What `_load` did to [dns] under --dev/--demo, for a reload to do it again."""
    from gateway.demo import advertised_port, demo_dns_settings

    port = world.server.port if world is not None else None
    if port is None and worker is not None:  # the supervisor's demo server, if any
        port = advertised_port()
    if port is None:
        return None
    return lambda settings: replace(settings, dns=demo_dns_settings(settings.dns, port))


async def _send_demo(settings: Settings, host: str, port: int, sink: Any, world: DemoWorld) -> None:
    """Send the demo's two messages through the running gateway and show what became of them:
    a signed one from example.net (SPF, DKIM and DMARC pass: delivered) and a spoof of
    example.net, whose DMARC policy is p=reject (refused)."""
    import aiosmtplib

    from gateway.demo import SENDER_DOMAIN, SPOOF_MESSAGE, SPOOFER_DOMAIN

    rcpt = f"postmaster@{settings.relay.domains[0]}" if settings.relay.domains else "x@example.com"
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host

    async def send(message: bytes, sender: str, helo: str) -> str:
        try:
            _, reply = await aiosmtplib.send(
                message,
                sender=sender,
                recipients=[rcpt],
                hostname=target,
                port=port,
                start_tls=False,
                local_hostname=helo,
            )
        except aiosmtplib.SMTPResponseException as exc:
            return f"the gateway refused the message: {exc.code} {printable(exc.message)}"
        except aiosmtplib.SMTPException as exc:
            return f"the gateway refused the message: {printable(str(exc))}"
        return f"the gateway answered: {printable(reply)}"

    answer = await send(world.signed_message(), f"demo@{SENDER_DOMAIN}", f"demo.{SENDER_DOMAIN}")
    print(f"demo: a message from {SENDER_DOMAIN}, DKIM-signed: {answer}", flush=True)
    files = sink.new_files() if sink else []
    if files:
        print(f"demo: delivered to {files[-1]}", flush=True)
        for line in files[-1].read_bytes().splitlines()[:40]:
            if line.startswith(b"DKIM-Signature:"):
                break  # what follows is the message as sent
            print(f"demo:   {printable(line.expandtabs(4))}", flush=True)
    answer = await send(SPOOF_MESSAGE, f"spoofer@{SPOOFER_DOMAIN}", f"mail.{SPOOFER_DOMAIN}")
    print(
        f"demo: a spoof of {SENDER_DOMAIN} (DMARC p=reject) sent by {SPOOFER_DOMAIN}: {answer}",
        flush=True,
    )
    print(f"demo: gateway listening on {host}:{port}; Ctrl-C to stop", flush=True)


# -- scan ----------------------------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    from gateway.scan import EXIT_CONFIG, Envelope, messages

    resolver = None
    if args.dns_off:
        from gateway.dns import OfflineResolver

        resolver = OfflineResolver()
    loaded = _load(args, sys.stderr, resolver=resolver)
    if loaded is None:
        return EXIT_CONFIG
    settings, gateway = loaded
    gc.freeze()  # the gateway lives as long as the scan: keep it out of full collections
    envelope = Envelope(
        mail_from=getattr(args, "from"),
        rcpt_tos=tuple(args.rcpt),
        client_ip=args.ip,
        helo=args.helo,
    )
    found = messages(args.paths, settings.limits.max_message_size, sys.stdin.buffer)
    return asyncio.run(_scan_all(gateway, found, envelope, args))


async def _scan_all(
    gateway: Gateway, found: Iterator[Found], envelope: Envelope, args: argparse.Namespace
) -> int:
    """Scan message after message (one in memory at a time). The first result waits until a
    second exists: one message gets the full explanation, many get a block each and a summary."""
    from gateway.scan import Summary, next_found, record, scan_message

    summary = Summary()
    first: Scanned | None = None
    count = 0
    try:
        while (item := await next_found(found)) is not None:
            if item.raw is None:
                summary.add_problem(item)
                print(f"mailgate: {printable(item.label)}: {item.problem}", file=sys.stderr)
                continue
            scanned = await scan_message(gateway, item.label, item.raw, envelope)
            summary.add(scanned)
            count += 1
            if args.jsonl:
                print(json.dumps(record(scanned)), flush=False)
                continue
            if count == 1:
                first = scanned
                continue
            if args.json:
                print("mailgate: --json shows one message; use --jsonl for many", file=sys.stderr)
                return 64  # sysexits EX_USAGE
            if first is not None:
                _print_brief(gateway, first)
                first = None
            _print_brief(gateway, scanned)
    finally:
        await gateway.aclose()
    if first is not None and count == 1:
        if args.json:
            print(json.dumps(record(first), indent=2))
        else:
            _print_scan(gateway, first)
    if count != 1 or summary.skipped or summary.unreadable:
        out = sys.stderr if args.jsonl or args.json else sys.stdout
        for line in summary.lines():
            print(line, file=out)
    return summary.exit_status()


def _finding_lines(gateway: Gateway, scanned: Scanned, indent: str) -> list[str]:
    descriptions = gateway.registry.all_symbols(gateway.rules)
    p = printable
    lines = []
    for f in sorted(scanned.verdict.findings, key=lambda f: (-f.score, f.symbol)):
        detail = f" [{p(f.finding.detail, 120)}]" if f.finding.detail else ""
        lines.append(
            f"{indent}{f.symbol:<26} {f.score:>7g}  {p(descriptions.get(f.symbol, ''))}{detail}"
        )
    return lines


def _print_brief(gateway: Gateway, scanned: Scanned) -> None:
    """One message among many: its verdict on one line, then each finding."""
    p = printable
    verdict = scanned.verdict
    subject = scanned.ctx.message.decoded("subject", 80) or ""
    print(
        f"{p(scanned.label)}  {verdict.action.value.upper()} {verdict.score:g}  "
        f"subject {p(subject, 80)!s}"
    )
    for line in _finding_lines(gateway, scanned, "    "):
        print(line)


def _print_scan(gateway: Gateway, scanned: Scanned) -> None:
    """One message: everything that explains its verdict."""
    ctx, verdict = scanned.ctx, scanned.verdict
    p = printable
    note = ", LF -> CRLF" if scanned.normalized else ""
    print(f"message   {p(scanned.label)} ({len(ctx.raw)} bytes{note})")
    recipients = ", ".join(f"<{p(r)}>" for r in ctx.rcpt_tos)
    print(f"envelope  from <{p(ctx.mail_from or '')}> to {recipients}")
    print(f"client    {p(ctx.client.ip)} helo {p(ctx.client.helo or '-')}")
    print("findings")
    lines = _finding_lines(gateway, scanned, "  ")
    for line in lines or ["  (none)"]:
        print(line)
    rules = ctx.rules
    print(
        f"score     {verdict.score:g} (tag at {rules.tag_threshold:g}, "
        f"quarantine at {rules.quarantine_at:g}, "
        f"reject at {rules.reject_at:g}; policy {rules.version})"
    )
    print(f"verdict   {verdict.action.value.upper()}: {verdict.reason}")
    print(f"reply     {verdict.reply}")


# -- rules fit -----------------------------------------------------------------------------------


def cmd_rules_fit(args: argparse.Namespace) -> int:
    """Fit the scores of rules/ to labelled mail, offline; write rules/fitted.toml (or --out)."""
    import tempfile

    from gateway.app import PolicyError
    from gateway.devdns import LoopbackDnsServer
    from gateway.scorefit import FitSettings, fit_sources, offline_gateway, render

    sources = [("phish", Path(p)) for p in args.phish or []]
    sources += [("spam", Path(p)) for p in args.spam or []]
    sources += [("ham", Path(p)) for p in args.ham or []]
    if not args.vectors and (not args.ham or not (args.spam or args.phish)):
        print(
            "mailgate: rules fit needs both ham and spam (--ham, --spam/--phish)", file=sys.stderr
        )
        return 1
    for _, path in sources:
        if not path.exists():
            print(f"mailgate: {printable(str(path))}: no such file or folder", file=sys.stderr)
            return 1
    try:
        settings = load_settings(_config_path(args.config))
    except (ConfigError, ConfigErrors) as exc:
        print(f"mailgate: configuration error:\n{exc}", file=sys.stderr)
        return 1
    fit = FitSettings(
        target_fpr=args.target_fpr,
        calibrate_at=args.at,
        test_fraction=args.test_fraction,
        min_count=args.min_count,
        keep=frozenset(args.keep or ()),
    )
    with LoopbackDnsServer() as dns, tempfile.TemporaryDirectory() as scratch:
        try:
            gateway = offline_gateway(settings, dns.port, Path(scratch))
        except (ConfigError, ConfigErrors, PolicyError) as exc:
            print(f"mailgate: configuration error:\n{exc}", file=sys.stderr)
            return 1

        def progress(line: str) -> None:
            print(f"mailgate: {printable(line)}", file=sys.stderr)

        async def go() -> Any:
            try:
                return await fit_sources(
                    gateway,
                    sources,
                    fit,
                    args.limit,
                    progress,
                    Path(args.vectors) if args.vectors else None,
                    Path(args.save_vectors) if args.save_vectors else None,
                )
            finally:
                await gateway.aclose()

        report, policy = asyncio.run(go())
    text = render(report, policy, fit)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"mailgate: wrote {len(report.scores)} fitted scores to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _add_rules_commands(sub: Any) -> None:
    rules = sub.add_parser("rules", help="work on rules/: fit the scores to labelled mail")
    commands = rules.add_subparsers(dest="rules_command", required=True)
    fit = commands.add_parser(
        "fit",
        help="fit the scores to labelled mail, offline (README: How the default scores are made)",
    )
    where = "a folder of .eml files, a Maildir or an mbox file (repeatable)"
    fit.add_argument("--ham", action="append", metavar="PATH", help=f"legitimate mail: {where}")
    fit.add_argument("--spam", action="append", metavar="PATH", help=f"spam: {where}")
    fit.add_argument("--phish", action="append", metavar="PATH", help=f"phishing: {where}")
    fit.add_argument("--out", help="write the scores here (e.g. rules/fitted.toml); default stdout")
    fit.add_argument(
        "--target-fpr", type=float, default=0.001, help="ham share allowed at the threshold"
    )
    fit.add_argument(
        "--at", choices=("tag", "quarantine"), default="tag", help="the threshold calibrated"
    )
    fit.add_argument(
        "--test-fraction", type=float, default=0.2, help="newest share held out (time split)"
    )
    fit.add_argument("--min-count", type=int, default=5, help="fewest messages a fitted symbol")
    fit.add_argument("--keep", action="append", metavar="SYMBOL", help="do not fit this symbol")
    fit.add_argument("--limit", type=int, default=None, help="at most this many per source")
    fit.add_argument("--save-vectors", metavar="FILE", help="also write the symbol vectors (JSONL)")
    fit.add_argument(
        "--vectors", metavar="FILE", help="fit saved vectors instead of running the chain"
    )
    fit.set_defaults(func=cmd_rules_fit)


# -- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailgate", description="Inline SMTP security gateway.")
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="show the program's version, and the policy and model versions it would serve with",
    )
    parser.add_argument(
        "--config",
        help="path to gateway.toml (default: $MAILGATE_CONFIG, else /etc/mailgate/gateway.toml, "
        "else for serve --dev and --demo a checkout's config/gateway.toml, else built-in "
        "defaults)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="also start the built-in delivery sink (Maildir) on the [delivery] address, and "
        "a DNS server on loopback for the demo zones, which the resolver asks instead of "
        "[dns]: nothing leaves the machine",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="like --dev, and send two messages through the gateway at start-up: one "
        "that passes SPF, DKIM and DMARC, and a spoof of a DMARC p=reject domain",
    )
    serve.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check",
        help="validate config and rules, ask DNS once, then exit",
        description=(
            "Validate config and rules, say which plugins are off, and send one DNS query "
            "(NS of the root zone) to the configured resolver: exit 1 when any of it fails, "
            "since without DNS every SPF, DKIM and DMARC check defers mail."
        ),
    )
    check.add_argument("--no-dns-probe", action="store_true", help="do not send the DNS query")
    check.set_defaults(func=cmd_check)

    scan = sub.add_parser(
        "scan",
        help="run messages through the chain and policy offline and explain each verdict",
        description=(
            "Run messages through the same chain and policy as serve, one at a time, and say "
            "what each verdict would be and why. PATH is a message file, an mbox file (one "
            "that starts with a 'From ' line), a folder (recursively; a Maildir's cur/ and "
            "new/) or - for stdin. One message gets the full explanation; many get a block "
            "each and a summary of actions and top symbols."
        ),
        epilog=(
            "exit status, from the worst message: 0 relay, 1 tag, 2 quarantine, 3 tempfail, "
            "4 reject, 5 an action this table lacks; 66 an input could not be read (wins over "
            "any action); 78 configuration error; 2 is also argparse's usage error."
        ),
    )
    scan.add_argument("paths", nargs="+", metavar="PATH", help="message, mbox, folder, or -")
    scan.add_argument(
        "--from", default="", help="envelope sender (default: the message's From address)"
    )
    scan.add_argument(
        "--rcpt", action="append", default=None, help="envelope recipient (repeatable)"
    )
    scan.add_argument("--ip", default="192.0.2.1", help="client IP address")
    scan.add_argument("--helo", default="client.example.net", help="client HELO name")
    output = scan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one message, as a JSON document")
    output.add_argument(
        "--jsonl", action="store_true", help="one JSON line per message (summary on stderr)"
    )
    scan.add_argument(
        "--dns-off",
        action="store_true",
        help="answer every DNS lookup NXDOMAIN without sending anything (not listed, no "
        "SPF/DKIM/DMARC records): measure mail offline, deterministically",
    )
    scan.set_defaults(func=cmd_scan)

    _add_rules_commands(sub)

    from gateway.quarantine.cli import add_quarantine_parser

    add_quarantine_parser(sub)

    from gateway.tlscli import add_commands as add_tls_commands

    add_tls_commands(sub)

    from gateway.initcli import add_commands as add_init_commands

    add_init_commands(sub)

    from gateway.classifier.cli import add_commands as add_model_commands

    add_model_commands(sub)
    return parser


def version_lines(config: str | None) -> list[str]:
    """`mailgate --version`: the program, and the policy and model the configuration names
    (the policy version as `check` and the log show it; the model's from its card)."""
    from gateway.classifier.model import ModelError, read_card
    from gateway.policy import load_rules

    lines = [f"mailgate {__version__}"]
    try:
        settings = load_settings(_config_path(config))
    except (ConfigError, ConfigErrors):
        return [*lines, "policy: unknown (configuration error: see mailgate check)"]
    try:
        rules = load_rules(settings.rules_dir)
        lines.append(f"policy {rules.version} ({settings.rules_dir})")
    except (ConfigError, ConfigErrors):
        lines.append(f"policy: unknown ({settings.rules_dir} has errors: see mailgate check)")
    model = classifier_model_path(settings)
    try:
        lines.append(f"model {read_card(model).get('version', '?')} ({model})")
    except ModelError as exc:
        lines.append(f"model: unknown ({exc})")
    return lines


class _VersionAction(argparse.Action):
    """--version, computed when asked: it reads the rules and the model card of the config."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, *_: Any) -> None:
        for line in version_lines(getattr(namespace, "config", None)):
            print(line)
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "rcpt", "unset") is None:
        args.rcpt = ["postmaster@example.com"]
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not at interpreter exit
    except BrokenPipeError:
        return _reader_gone()
    return result


def _reader_gone() -> int:
    """The reader of our stdout went away (`mailgate quarantine list | head -1`): stop quietly,
    as a Unix tool killed by SIGPIPE does, with its exit status (128 + 13)."""
    # Python flushes stdout once more at exit: point it at /dev/null so that flush cannot fail.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13
