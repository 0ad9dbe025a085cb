"""`kubeforge run`: the three kinds on one machine, on an in-process Ray, through the same entry points as a cluster.

Parts: `plan` (references and order, pure), `resources` (the locally applied objects: generation, spec hash, URIs),
`status` (phase and condition transitions, pure, and the status files), `display` (progress from the status files),
`report` (the run report), `runner` (the glue that runs the steps).
"""

DEFAULT_STATE_DIR = ".kubeforge"
"""Where `kubeforge run` keeps status, stored resources, logs and reports (relative to the working directory)."""

DEFAULT_PROMPT = "The Python"
"""The prompt of the sample request sent to a freshly served language model."""
