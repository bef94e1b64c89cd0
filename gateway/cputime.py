"""CPU time spent on behalf of one plugin (or one stage) of one message, wherever it ran.

Wall time per plugin mixes waiting (DNS, other connections' turns on the loop) with work. For
"what does each plugin cost per message" we want CPU: the steps of the plugin's coroutine on the
event-loop thread, plus what it hands to a worker thread. `metered` times each step of a
coroutine with the thread CPU clock; `offload` runs a blocking call in a worker thread, timing
it there, and charges the meter that was current when it was called (a context variable, which
asyncio copies into tasks and into `asyncio.to_thread`). Tasks a metered coroutine starts are
charged to the same meter once `install_task_metering` is on (the gateway's server does it).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Generator
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


class CpuMeter:
    """Seconds of CPU charged so far. No lock: steps on the event loop never overlap, and the
    rare overlap of a worker thread's addition with one on the loop can at worst lose a few
    microseconds from an accounting figure."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0


_current: ContextVar[CpuMeter | None] = ContextVar("mailgate_cpu_meter", default=None)


class _Metered:
    """Drives a coroutine step by step, adding each step's thread CPU time to a meter."""

    __slots__ = ("_coro", "_meter")

    def __init__(self, coro: Coroutine[Any, Any, T], meter: CpuMeter) -> None:
        self._coro = coro
        self._meter = meter

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self._coro.__await__()
        meter = self._meter
        value: Any = None
        error: BaseException | None = None
        while True:
            started = time.thread_time()
            try:
                yielded = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            finally:
                meter.seconds += time.thread_time() - started
            try:
                value = yield yielded
                error = None
            except GeneratorExit:
                self._coro.close()
                raise
            except BaseException as exc:  # cancellation included: hand it to the coroutine
                value, error = None, exc


async def metered(coro: Coroutine[Any, Any, T], meter: CpuMeter) -> T:
    """Await `coro`, charging its CPU (its own steps and its `offload` calls) to `meter`."""
    token = _current.set(meter)
    try:
        result: T = await _Metered(coro, meter)
        return result
    finally:
        _current.reset(token)


async def _charged(coro: Coroutine[Any, Any, T], meter: CpuMeter) -> T:
    result: T = await _Metered(coro, meter)
    return result


def install_task_metering(loop: asyncio.AbstractEventLoop) -> None:
    """Charge tasks that a metered coroutine starts (asyncio.gather of two SPF checks, say) to
    its meter as well: they inherit its context, so the meter is known when they are created.
    Coroutines already `metered` (the resolver's shared lookups) keep their own meter."""
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        meter = _current.get()
        if meter is not None and getattr(coro, "cr_code", None) is not metered.__code__:
            coro = _charged(coro, meter)
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)


def _timed_call(meter: CpuMeter | None, call: Callable[[], T]) -> T:
    started = time.thread_time()
    try:
        return call()
    finally:
        if meter is not None:
            meter.seconds += time.thread_time() - started


async def offload(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`asyncio.to_thread`, with the call's CPU charged to the current meter (if any)."""
    call = functools.partial(func, *args, **kwargs)
    return await asyncio.to_thread(_timed_call, _current.get(), call)
