"""The dynamic batcher: batches fill while the previous batch runs, respect max size and max wait (asyncio, no Ray)."""

from __future__ import annotations

import asyncio

import pytest
from kubeforge_trainer.serve.batching import DynamicBatcher


class Recorder:
    """A batch function that records each batch and can be held open until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail:
            raise ValueError("model failed")
        return [i * 10 for i in items]


def test_concurrent_submits_form_one_batch() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(recorder, max_size=8, max_wait_s=10)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))  # full: no need to wait 10 s
        assert results == [i * 10 for i in range(8)]
        assert recorder.batches == [list(range(8))]

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_max_size_splits_batches_in_order() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(recorder, max_size=4, max_wait_s=0)
        assert await asyncio.gather(*(batcher.submit(i) for i in range(10))) == [i * 10 for i in range(10)]
        assert [len(b) for b in recorder.batches] == [4, 4, 2]
        assert [i for batch in recorder.batches for i in batch] == list(range(10))

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_requests_arriving_during_a_batch_share_the_next_one() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(recorder, max_size=16, max_wait_s=0)
        recorder.gate.clear()  # the first batch runs until released
        first = asyncio.ensure_future(batcher.submit(0))
        while not recorder.batches:
            await asyncio.sleep(0)
        later = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)  # far longer than max_wait_s: they still wait for the running batch
        assert recorder.batches == [[0]] and batcher.waiting == 6
        recorder.gate.set()
        await asyncio.gather(first, *later)
        assert recorder.batches == [[0], [1, 2, 3, 4, 5, 6]]

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_lone_request_runs_after_max_wait() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(recorder, max_size=8, max_wait_s=0.01)
        assert await batcher.submit(3) == 30
        assert recorder.batches == [[3]]

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_failure_reaches_every_caller_and_the_batcher_goes_on() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        recorder.fail = True
        batcher = DynamicBatcher(recorder, max_size=4, max_wait_s=0)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outcomes)
        recorder.fail = False
        assert await batcher.submit(5) == 50

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_cancelled_callers_are_left_out() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(recorder, max_size=8, max_wait_s=10)
        kept = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        dropped = asyncio.ensure_future(batcher.submit(99))
        await asyncio.sleep(0)
        dropped.cancel()
        batcher.configure(max_size=2, max_wait_s=10)  # the two remaining now fill a batch
        assert await asyncio.gather(*kept) == [10, 20]
        assert recorder.batches == [[1, 2]]

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_bad_limits() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_size=0, max_wait_s=0)
