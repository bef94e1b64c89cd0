"""CPU accounting per plugin: the coroutine's own steps and its worker-thread calls, no more."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.cputime import CpuMeter, metered, offload


def _spin(seconds: float) -> int:
    """Burn CPU (not sleep) for about `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1
    return n


async def test_steps_on_the_loop_are_charged_and_waits_are_not() -> None:
    meter = CpuMeter()

    async def plugin() -> str:
        _spin(0.03)
        await asyncio.sleep(0.1)  # waiting is not work
        _spin(0.03)
        return "done"

    assert await metered(plugin(), meter) == "done"
    assert 0.05 <= meter.seconds < 0.09


async def test_work_of_other_tasks_meanwhile_is_not_charged() -> None:
    meter = CpuMeter()

    async def busy_neighbour() -> None:
        for _ in range(5):
            _spin(0.02)
            await asyncio.sleep(0)

    async def plugin() -> None:
        await asyncio.sleep(0.05)

    neighbour = asyncio.create_task(busy_neighbour())
    await metered(plugin(), meter)
    await neighbour
    assert meter.seconds < 0.01


async def test_offloaded_calls_are_charged_to_the_current_meter() -> None:
    meter = CpuMeter()

    async def plugin() -> int:
        return await offload(_spin, 0.04)

    assert await metered(plugin(), meter) > 0
    assert 0.035 <= meter.seconds < 0.07
    # outside any meter, offload still works and charges nobody
    assert await offload(_spin, 0.001) > 0


async def test_exceptions_and_cancellation_pass_through_and_time_is_kept() -> None:
    meter = CpuMeter()

    async def failing() -> None:
        _spin(0.01)
        raise ValueError("plugin bug")

    with pytest.raises(ValueError, match="plugin bug"):
        await metered(failing(), meter)
    assert meter.seconds >= 0.009

    cleaned = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.set()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(metered(slow(), CpuMeter()), 0.05)
    assert cleaned.is_set()


async def test_a_coroutine_that_catches_a_thrown_exception_goes_on() -> None:
    meter = CpuMeter()

    async def resilient() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            raise
        return "unreachable"

    task = asyncio.create_task(metered(resilient(), meter))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_tasks_a_metered_coroutine_starts_are_charged_to_it() -> None:
    from gateway.cputime import install_task_metering

    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    install_task_metering(loop)
    try:
        meter, own = CpuMeter(), CpuMeter()

        async def child() -> None:
            await asyncio.sleep(0)
            _spin(0.02)

        async def already_metered() -> None:
            _spin(0.02)

        async def plugin() -> None:
            await asyncio.gather(child(), child(), metered(already_metered(), own))

        await metered(plugin(), meter)
        assert 0.035 <= meter.seconds < 0.06  # both children, not the one metered elsewhere
        assert own.seconds >= 0.018
        before = meter.seconds
        # with no meter current, tasks run as usual and charge nobody
        assert await asyncio.gather(child()) == [None]
        assert meter.seconds == before
    finally:
        loop.set_task_factory(previous)
