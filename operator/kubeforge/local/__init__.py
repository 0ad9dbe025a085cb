"""`kubeforge run`: the three kinds on one machine, on an in-process Ray, through the same entry points as a cluster.

Parts: `plan` (references, order and capacity, pure), `resources` (the locally applied objects: generation, spec
hash, absolute locations), `status` (phase and condition transitions, pure, and the status files), `summary`
(readable numbers and metrics), `display` (progress bars from the status files), `serving` (the sample request and
curl commands), `report` (the run report), `status_command` (`kubeforge status`), `runner` (the glue).
"""

DEFAULT_STATE_DIR = ".kubeforge"
"""Where `kubeforge run` keeps status, stored resources, logs and reports (relative to the working directory)."""

DEFAULT_PROMPT = "The Python"
"""The prompt of the sample request sent to a freshly served language model."""
