"""Bounded admission: a fixed number of requests run, a bounded number wait, the rest are refused at once."""

from __future__ import annotations

import asyncio


class AdmissionGate:
    """At most `running` requests hold a slot; at most `queued` more wait for one; anything beyond is refused.

    Refusing at once (rather than queueing without bound) is what lets an overloaded server answer 503 quickly.
    """

    def __init__(self, running: int, queued: int) -> None:
        if running < 1 or queued < 0:
            raise ValueError("running must be >= 1 and queued >= 0")
        self.running_limit, self.queued_limit = running, queued
        self._slots = asyncio.Semaphore(running)
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Requests holding or waiting for a slot."""
        return self._admitted

    def try_admit(self) -> Admission | None:
        """An Admission (a place in the line), or None when the running slots and the queue are all taken."""
        if self._admitted >= self.running_limit + self.queued_limit:
            return None
        self._admitted += 1
        return Admission(self)


class Admission:
    """One admitted request: wait() for a running slot, release() when done (always; it is idempotent)."""

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate = gate
        self._holding = False
        self._released = False

    async def wait(self) -> None:
        """Wait until a running slot is free and take it."""
        await self._gate._slots.acquire()
        self._holding = True

    def release(self) -> None:
        """Give back the slot (if taken) and the place in line."""
        if self._released:
            return
        self._released = True
        if self._holding:
            self._gate._slots.release()
        self._gate._admitted -= 1
