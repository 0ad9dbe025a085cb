"""The TrainingJob runtime: Ray Train TorchTrainer + DeepSpeed ZeRO, evaluation, checkpoints, resume and export.

`run_trainingjob(resource, data_uri, reporter)` is the entry point the RayJob and `kubeforge run` call
(docs/contracts.md); docs/training.md describes the behaviour, the checkpoint layout and the status fields.
"""

from .driver import TrainingFailed, output_uri, prepare_run, run_trainingjob
from .plan import SpecError

__all__ = ["SpecError", "TrainingFailed", "output_uri", "prepare_run", "run_trainingjob"]
