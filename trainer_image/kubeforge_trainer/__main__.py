"""Entry point of the Ray jobs the operator creates: `python -m kubeforge_trainer data|train`.

The resource arrives as JSON in KUBEFORGE_RESOURCE (set by the operator in the RayJob's runtime environment);
a TrainingJob's resolved data location arrives in KUBEFORGE_DATA_URI. The local runner calls the same functions.
"""

from __future__ import annotations

import json
import os
import sys

from kubeforge.api import DataPipeline, TrainingJob
from kubeforge.failures import PERMANENT_MARKER, TRAINER_PREFIX, exit_message
from pydantic import ValidationError

from .progress import reporter_from_env

ENV_RESOURCE = "KUBEFORGE_RESOURCE"
ENV_DATA_URI = "KUBEFORGE_DATA_URI"


def _load(model: type, raw: str) -> object:
    try:
        return model.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as exc:
        sys.exit(f"{TRAINER_PREFIX}{PERMANENT_MARKER}{ENV_RESOURCE} does not hold a valid {model.__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    """Run the data or training step for the resource in the environment."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("data", "train"):
        sys.exit("usage: python -m kubeforge_trainer data|train   (resource JSON in $KUBEFORGE_RESOURCE)")
    raw = os.environ.get(ENV_RESOURCE)
    if not raw:
        sys.exit(f"kubeforge_trainer: ${ENV_RESOURCE} is not set")
    if argv[0] == "data":
        from .data import DataPipelineError, run_datapipeline

        resource = _load(DataPipeline, raw)
        reporter = reporter_from_env("DataPipeline", resource.metadata.name)
        try:
            run_datapipeline(resource, reporter)
        except DataPipelineError as exc:  # bad input or spec: one line naming the resource and the field
            reporter.close()
            sys.exit(exit_message(exc))  # marked permanent: failurePolicy does not retry it
    else:
        from .train import SpecError, TrainingFailed, run_trainingjob

        resource = _load(TrainingJob, raw)
        data_uri = os.environ.get(ENV_DATA_URI) or resource.spec.data_ref.uri
        if not data_uri:
            sys.exit(f"{TRAINER_PREFIX}{PERMANENT_MARKER}no data location: set spec.dataRef.uri or ${ENV_DATA_URI}")
        reporter = reporter_from_env("TrainingJob", resource.metadata.name)
        try:
            run_trainingjob(resource, data_uri, reporter)
        except (SpecError, TrainingFailed) as exc:  # one line naming the resource (workers' tracebacks are above)
            reporter.close()
            sys.exit(exit_message(exc))  # marked permanent when no retry can heal it
    reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
