"""Start the workers on the data step before the driver has imported it.

Importing the data step (numba, the tokenizers library, pyarrow's compute and readers, the API types) takes a few
tenths of a second in every process. This module imports none of it: the driver sends one warm-up task per CPU from
here first, so the workers import and set up the step while the driver imports it too, rather than after.
"""

from __future__ import annotations

from typing import Any

import ray


@ray.remote(num_cpus=1)
def _warm_up(resource: Any) -> None:
    from . import pipeline, stages  # noqa: F401 (pipeline: the module of every later task)
    from .kernels import allocator
    from .plan import plan_pipeline

    allocator.keep_freed_memory()
    try:
        steps = plan_pipeline(resource.spec).segments[0].local_steps
    except Exception:  # the driver checks the spec and reports what is wrong with it
        steps = ()
    stages.warm_up(steps)


def start_workers(resource: Any) -> int:
    """Start Ray if it is not running and send one warm-up task per CPU; returns the CPUs. Nothing waits for the tasks
    (a dropped reference does not cancel a task)."""
    if not ray.is_initialized():
        ray.init()
    cores = max(1, int(ray.cluster_resources().get("CPU", 1)))
    for _ in range(cores):
        _warm_up.remote(resource)
    return cores
