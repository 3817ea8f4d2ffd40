"""The scheduler in-process: FIFO admission, the load factor, engine death."""

from __future__ import annotations

import asyncio

import pytest

from ops.sim.engine import Engine
from ops.sim.errors import EngineDeadError


def test_load_factor_grows_linearly_to_the_full_batch() -> None:
    engine = Engine(max_num_seqs=5, time_factor_under_load=2.0)
    assert [engine.load_factor(n) for n in range(1, 6)] == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert Engine(max_num_seqs=1, time_factor_under_load=3.0).load_factor(1) == 1.0


async def test_shared_batch_slows_down_and_waiters_run_in_arrival_order() -> None:
    engine = Engine(max_num_seqs=2, time_factor_under_load=2.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    order: list[str] = []
    done: dict[str, float] = {}

    async def request(name: str, work: float) -> None:
        slot = await engine.admit()
        order.append(name)
        try:
            await engine.reach(slot, work)
        finally:
            engine.release(slot)
        done[name] = loop.time() - start

    tasks = [asyncio.create_task(request(name, 0.2)) for name in "abcd"]
    await asyncio.sleep(0.05)
    assert (engine.running, engine.waiting) == (2, 2)
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "d"]
    # a and b share the batch at half speed: 0.2 s of work takes 0.4 s; then c and d do too.
    assert done["a"] == pytest.approx(0.4, abs=0.05)
    assert done["d"] == pytest.approx(0.8, abs=0.05)
    assert (engine.running, engine.waiting) == (0, 0)


async def test_a_request_speeds_up_when_the_batch_empties() -> None:
    engine = Engine(max_num_seqs=2, time_factor_under_load=2.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    short, long = await engine.admit(), await engine.admit()
    await engine.reach(short, 0.1)  # 0.2 s at half speed
    engine.release(short)
    await engine.reach(long, 0.3)  # 0.1 done; the remaining 0.2 alone at full speed
    engine.release(long)
    assert loop.time() - start == pytest.approx(0.4, abs=0.05)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    engine = Engine(max_num_seqs=1, time_factor_under_load=1.0)
    slot = await engine.admit()
    waiter = asyncio.create_task(engine.admit())
    await asyncio.sleep(0.01)
    assert engine.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert engine.waiting == 0
    engine.release(slot)
    assert engine.running == 0


async def test_kill_fails_running_and_waiting_requests() -> None:
    engine = Engine(max_num_seqs=1, time_factor_under_load=1.0)
    slot = await engine.admit()
    running = asyncio.create_task(engine.reach(slot, 10.0))
    waiting = asyncio.create_task(engine.admit())
    await asyncio.sleep(0.01)
    engine.kill()
    for task in (running, waiting):
        with pytest.raises(EngineDeadError):
            await task
    engine.release(slot)  # a stale slot is ignored
    assert (engine.running, engine.waiting) == (0, 0)
    with pytest.raises(EngineDeadError):
        await engine.admit()
    engine.revive()
    engine.release(await engine.admit())
