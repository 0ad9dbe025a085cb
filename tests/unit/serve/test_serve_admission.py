"""The bounded admission gate: running slots, a bounded wait line, immediate refusal beyond (asyncio, no Ray)."""

from __future__ import annotations

import asyncio

import pytest
from kubeforge_trainer.serve.admission import AdmissionGate


def test_gate_runs_queues_then_refuses() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(running=2, queued=1)
        first, second, third = gate.try_admit(), gate.try_admit(), gate.try_admit()
        assert first and second and third
        assert gate.try_admit() is None  # 2 running + 1 waiting: full
        await first.wait()
        await second.wait()
        waiter = asyncio.ensure_future(third.wait())
        await asyncio.sleep(0)
        assert not waiter.done()  # no running slot free
        first.release()
        await asyncio.wait_for(waiter, 1)
        assert gate.admitted == 2
        fourth = gate.try_admit()
        assert fourth is not None  # the line has room again
        for admission in (second, third, fourth):
            admission.release()
        assert gate.admitted == 0

    asyncio.run(scenario())


def test_release_is_idempotent_and_frees_a_cancelled_waiter() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(running=1, queued=1)
        holder, waiter = gate.try_admit(), gate.try_admit()
        await holder.wait()
        waiting = asyncio.ensure_future(waiter.wait())
        await asyncio.sleep(0)
        waiting.cancel()  # the client left while waiting
        with pytest.raises(asyncio.CancelledError):
            await waiting
        waiter.release()
        waiter.release()
        holder.release()
        holder.release()
        assert gate.admitted == 0
        again = gate.try_admit()
        await asyncio.wait_for(again.wait(), 1)  # the slot really came back
        again.release()

    asyncio.run(scenario())


def test_gate_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        AdmissionGate(running=0, queued=1)
