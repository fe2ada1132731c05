"""The engine's bounded fan-out of `for` items: order, bound, and what a failure stops."""
from __future__ import annotations

import asyncio

import pytest

from agentflow.runtime.engine import fan_out


def run_fan_out(count: int, window: int, delay=lambda i: 0.0):
    started, finished, in_flight, peak = [], [], [0], [0]

    async def item(i: int) -> int:
        started.append(i)
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            await asyncio.sleep(delay(i))
            return i * i
        finally:
            in_flight[0] -= 1
            finished.append(i)

    async def main():
        return await fan_out(count, item, window)

    return asyncio.run(main()), started, finished, peak[0]


def test_values_keep_item_order_and_at_most_window_items_run_at_once():
    values, started, _, peak = run_fan_out(500, 16, delay=lambda i: 0.001 * (i % 3))
    assert values == [i * i for i in range(500)]
    assert started == list(range(500))  # deterministic: items start in index order
    assert peak == 16


def test_window_of_one_runs_items_one_after_another():
    values, started, finished, peak = run_fan_out(5, 1)
    assert values == [0, 1, 4, 9, 16] and started == finished == list(range(5)) and peak == 1


def test_after_a_failure_no_new_item_starts_and_running_items_finish_first():
    log: dict[int, str] = {}

    async def item(i: int) -> int:
        log[i] = "started"
        if i == 2:
            await asyncio.sleep(0.01)
            raise RuntimeError("item 2 failed")
        await asyncio.sleep(0.05)
        log[i] = "finished"
        return i

    async def main():
        with pytest.raises(RuntimeError, match="item 2 failed"):
            await fan_out(100, item, 4)
        # raised only once the items running beside the failed one had finished
        assert log == {0: "finished", 1: "finished", 2: "started", 3: "finished"}

    asyncio.run(main())


def test_empty_fan_out():
    assert run_fan_out(0, 8)[0] == []
