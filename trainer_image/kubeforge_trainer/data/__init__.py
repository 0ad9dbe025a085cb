"""The data step of a DataPipeline: read, clean, deduplicate, label, tokenize, split and write sharded Parquet.

`run_datapipeline(resource, reporter)` is the entry point (docs/contracts.md); the RayJob's driver and the local runner
call it. docs/data.md describes every operation and the output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DataPipelineError

if TYPE_CHECKING:
    from kubeforge.api import DataPipeline

__all__ = ["DataPipelineError", "run_datapipeline"]


def run_datapipeline(resource: DataPipeline, reporter: Any) -> dict:
    """Run the data step of a DataPipeline on Ray; returns the manifest it wrote."""
    # Imported here so the pure modules (and their unit tests) do not pay for importing Ray; the workers start
    # importing the data step before this process does (warmup.py).
    from .warmup import start_workers

    cores = start_workers(resource)
    from .pipeline import run_datapipeline as run

    return run(resource, reporter, cores)
