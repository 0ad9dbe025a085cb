"""Dynamic batching: concurrent requests are gathered into one batch, run one batch at a time.

Why not ``ray.serve.batch``: it forms a batch as soon as its wait window ends and queues formed batches behind
``max_concurrent_batches``. When a batch runs longer than the window, as generating tokens does, the requests that
arrive meanwhile are cut into many small batches that then run one after another. Here a batch is formed when the
previous one has finished, from everything that waited for it, so the longer a batch runs the fuller the next one is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class DynamicBatcher(Generic[Item, Result]):
    """Runs `run_batch` on up to `max_size` submitted items at a time.

    A batch starts when `max_size` items wait or when the oldest waiting item has waited `max_wait_s`, and only
    after the previous batch finished. Callers whose submit() was cancelled are left out of the batch.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Awaitable[list[Result]]],
        max_size: int,
        max_wait_s: float,
    ) -> None:
        self._run_batch = run_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result], float]] = []
        # Resolved to wake the worker (an item arrived, limits changed); a bare future costs the worker one event
        # loop step to resume, where an asyncio.Event awaited under wait_for costs two.
        self._arrived: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.configure(max_size, max_wait_s)

    def configure(self, max_size: int, max_wait_s: float) -> None:
        """Change the limits (from the next batch on)."""
        if max_size < 1 or max_wait_s < 0:
            raise ValueError("max_size must be >= 1 and max_wait_s >= 0")
        self.max_size, self.max_wait_s = max_size, max_wait_s
        self._wake()  # a waiting batch re-checks whether it may start now

    @property
    def waiting(self) -> int:
        """Items submitted and not yet in a running batch."""
        return len(self._waiting)

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """A future of the item's result, set once a batch containing it has run (cancel it to withdraw the item).

        A plain future rather than a coroutine: awaiting it costs no task of its own.
        """
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((item, future, time.monotonic()))
        self._wake()
        return future

    def _wake(self) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    async def _work(self) -> None:
        while True:
            await self._fill()
            batch = [(item, future) for item, future, _ in self._waiting[: self.max_size] if not future.cancelled()]
            del self._waiting[: self.max_size]
            if not batch:
                continue
            try:
                results = await self._run_batch([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} items returned {len(results)} results")
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _fill(self) -> None:
        """Return once a batch should start: it is full, or its oldest item has waited max_wait_s."""
        while True:
            self._waiting = [entry for entry in self._waiting if not entry[1].cancelled()]
            if self._waiting:
                remaining = self._waiting[0][2] + self.max_wait_s - time.monotonic()
                if len(self._waiting) >= self.max_size or remaining <= 0:
                    return
            else:
                remaining = None
            self._arrived = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._arrived, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                self._arrived = None
