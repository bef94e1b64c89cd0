"""Whether the nameservers answer at all, told to the admin once: a WARNING naming a server that
stops answering (and where the server came from: `[dns] nameservers` or resolv.conf), one INFO
when it answers again.

Without it a dead resolver shows only as `SPF_TEMPERROR` on every message. A lookup that times out
proves little about the resolver, though: a name's own servers may be slow or dead, which a
recursive resolver reports by not answering in time. So a failed lookup makes us ask each server
a question any resolver answers from its cache (NS of the root zone), directly and with the
resolver's timeout; a server that does not answer that, cannot be reached, or refuses it is down.
Checks run in the background, at most one per `recheck` seconds; while a server is down, any
lookup may start the next one, and its answer ends the episode. The WARNING for one server comes
at most once per `warn_every` seconds, however often it flaps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from gateway import metrics

log = logging.getLogger("mailgate.dns")

RECHECK = 30.0  # seconds between checks while lookups fail or a server is down
WARN_EVERY = 600.0  # seconds: one WARNING per server per this long


class NameserverHealth:
    """Which of the resolver's servers answer; `noticed` is told the outcome of every lookup."""

    def __init__(
        self,
        servers: Sequence[str],
        port: int,
        origin: Callable[[], str],
        timeout: float,
        *,
        recheck: float = RECHECK,
        warn_every: float = WARN_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = tuple(servers)
        self.port = port
        self.origin = origin  # read when logging: the resolver's origin may be set after us
        self.timeout = timeout
        self.recheck = recheck
        self.warn_every = warn_every
        self._clock = clock
        self.down: dict[str, str] = {}  # server -> why it is taken for down
        self._warned: dict[str, float] = {}  # server -> when its last WARNING was logged
        self._last_check = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def noticed(self, failed: bool) -> None:
        """One lookup ended; `failed`: a timeout or SERVFAIL (a refusal is one). Never blocks."""
        if not failed and not self.down:
            return
        if self._task is not None and not self._task.done():
            return
        if self._clock() - self._last_check < self.recheck:
            return
        self._last_check = self._clock()
        self._task = asyncio.ensure_future(self.check())

    async def check(self) -> None:
        """Ask every server once, together; log what changed."""
        problems = await asyncio.gather(*(self._problem(s) for s in self.servers))
        for server, problem in zip(self.servers, problems, strict=True):
            if problem is None:
                self._answered(server)
            else:
                self._failed(server, problem)

    def _failed(self, server: str, problem: str) -> None:
        if server in self.down:
            return
        self.down[server] = problem
        if metrics.enabled:
            metrics.DNS_SERVER_DOWN.labels(server).inc()
        last = self._warned.get(server)
        if last is not None and self._clock() - last < self.warn_every:
            return
        self._warned[server] = self._clock()
        log.warning(
            "DNS server %s (from %s) does not answer: %s; SPF, DKIM, DMARC and DNS list lookups "
            "are temporary errors until it does",
            self._name(server),
            self.origin(),
            problem,
        )

    def _answered(self, server: str) -> None:
        if self.down.pop(server, None) is None:
            return
        if server in self._warned:
            log.info("DNS server %s (from %s) answers again", self._name(server), self.origin())

    def _name(self, server: str) -> str:
        return f"[{server}]:{self.port}" if ":" in server else f"{server}:{self.port}"

    async def _problem(self, server: str) -> str | None:
        """None when `server` answers the root zone's NS (any rcode but REFUSED), else why not."""
        query = dns.message.make_query(dns.name.root, dns.rdatatype.NS)
        try:
            response = await dns.asyncquery.udp(query, server, timeout=self.timeout, port=self.port)
        except dns.exception.Timeout:
            return f"no answer within {self.timeout:g}s"
        except OSError as exc:
            return f"unreachable ({exc.strerror or type(exc).__name__})"
        except dns.exception.DNSException as exc:
            return f"unreadable answer ({type(exc).__name__})"
        if response.rcode() == dns.rcode.REFUSED:
            return "it refuses our queries (REFUSED)"
        return None

    async def settled(self) -> None:
        """Return once no check is under way (what a caller that must see its outcome awaits)."""
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
