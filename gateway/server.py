"""Run the gateway: listen, serve, reload on SIGHUP (gateway.reload), drain and stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Callable
from typing import cast

from gateway import service
from gateway.app import Gateway
from gateway.config import Settings
from gateway.cputime import install_task_metering
from gateway.logsetup import install_reopen_signal, reopen_logs
from gateway.quarantine.maintenance import run_maintenance
from gateway.reload import Reloader
from gateway.smtp import GatewaySMTP
from gateway.tls import ServerTls, server_context
from gateway.verdict import Replies

log = logging.getLogger("mailgate")


def make_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Server-side TLS for STARTTLS, offered only when a certificate is configured."""
    return server_context(settings.tls)


class GatewayServer:
    """The listening socket and the live connections of one gateway process."""

    def __init__(
        self,
        gateway: Gateway,
        tls_context: ssl.SSLContext | ServerTls | None = None,
        maintenance: bool = True,
    ) -> None:
        self.gateway = gateway
        self.maintenance = maintenance  # quarantine expiry: one worker runs it, not all of them
        # A ServerTls is reloadable (SIGHUP): each new connection takes its current context.
        self.tls = (
            tls_context if isinstance(tls_context, ServerTls) else ServerTls.fixed(tls_context)
        )
        self.protocols: set[GatewaySMTP] = set()
        self._server: asyncio.base_events.Server | None = None
        self._maintenance: asyncio.Task[None] | None = None  # quarantine expiry, hourly

    def _factory(self) -> GatewaySMTP:
        protocol = GatewaySMTP(self.gateway, self.tls.context)
        self.protocols.add(protocol)
        original = protocol.connection_lost

        def lost(error: Exception | None) -> None:
            self.protocols.discard(protocol)
            original(error)

        protocol.connection_lost = lost  # type: ignore[method-assign]
        return protocol

    async def start(self) -> tuple[str, int]:
        listen = self.gateway.settings.listen
        loop = asyncio.get_running_loop()
        install_task_metering(loop)  # CPU per plugin includes the tasks a plugin starts
        # With workers, every process binds the same address: the kernel spreads connections.
        self._server = await loop.create_server(
            self._factory,
            host=listen.host,
            port=listen.port,
            reuse_address=True,
            reuse_port=listen.workers > 1 or None,
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        if self.maintenance:
            self._maintenance = asyncio.create_task(run_maintenance(self.gateway.store))
        log.info(
            "listening on %s:%d as %s; delivering to %s:%d; policy %s",
            host,
            port,
            listen.hostname,
            self.gateway.settings.delivery.host,
            self.gateway.settings.delivery.port,
            self.gateway.rules.version,
        )
        return str(host), int(port)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; idle clients get 421 now, busy ones finish (bounded by `grace`)."""
        grace = self.gateway.settings.limits.shutdown_grace if grace is None else grace
        self.gateway.shutting_down = True
        if self._maintenance is not None:
            self._maintenance.cancel()
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while self.protocols and time.monotonic() < deadline:
            for protocol in list(self.protocols):
                transport = protocol.transport
                if protocol.idle and transport is not None and not transport.is_closing():
                    # A TLS transport mid-teardown may refuse the write: closing is what's left.
                    with contextlib.suppress(AttributeError, RuntimeError, OSError):
                        # aiosmtpd types `transport` as BaseTransport (no write): mypy needs this.
                        writer = cast(asyncio.WriteTransport, transport)
                        closing = protocol.connection.stamp_refusal(str(Replies.SHUTTING_DOWN), "-")
                        writer.write(closing.encode() + b"\r\n")
                    transport.close()
            await asyncio.sleep(0.05)
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                log.warning("closing connection still busy after %gs of shutdown grace", grace)
                protocol.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        # After the connections: a transaction finishing within the grace may still need DNS.
        await self.gateway.aclose()
        log.info("stopped")


_early_reload = False


def hold_early_reloads() -> None:
    """Until `install_signals`, a SIGHUP is only noted (the default action would end us)."""

    def note(signum: int, frame: object) -> None:
        global _early_reload
        _early_reload = True

    signal.signal(signal.SIGHUP, note)


def install_signals(
    loop: asyncio.AbstractEventLoop,
    gateway: Gateway,
    stop: Callable[[], None],
    tls: ServerTls | None = None,
    adjust: Callable[[Settings], Settings] | None = None,
) -> None:
    """SIGHUP reloads (gateway.reload), SIGTERM and SIGINT stop; `adjust`: see Reloader."""
    reloader = Reloader(gateway, tls, adjust)

    async def reload() -> bool:
        """gateway.toml, rules/ and the TLS files again, all or nothing; False: refused."""
        reopen_logs()  # first: what the reload says goes to the new file
        return await reloader.reload()

    # systemd hears of each reload and of the stop (gateway.service; a no-op without it).
    told_reload = service.around_reload(reload, lambda: f"serving; policy {gateway.rules.version}")
    told_stop = service.around_stop(stop)
    loop.add_signal_handler(signal.SIGHUP, told_reload)
    loop.add_signal_handler(signal.SIGTERM, told_stop)
    loop.add_signal_handler(signal.SIGINT, told_stop)
    install_reopen_signal(loop)  # SIGUSR1: reopen the log file only (logrotate's postrotate)
    global _early_reload
    if _early_reload:  # asked for while we were starting: the files may have changed since load
        _early_reload = False
        loop.call_soon(told_reload)
