"""The Ray driver side of a TrainingJob: check the spec against the dataset, start the Ray Train TorchTrainer,
forward rank 0's progress to the reporter, and return the result.

The same function runs in the operator's RayJob (`python -m kubeforge_trainer train`) and under `kubeforge run`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from kubeforge.api import TrainingJob
from kubeforge.api.trainingjob import GPUS_PER_WORKER_MESSAGE
from kubeforge.wording import plural

from .. import storage
from . import checkpointing as ckpt
from .dataset import MANIFEST_FILE, read_dataset_info, split_datasets
from .dsconfig import build_deepspeed_config, effective_precision
from .modeling import (
    check_lora,
    pretrained_local_dir,
    read_pretrained_config,
    resolve_model,
    tokenizer_extends,
)
from .plan import SpecError, plan_training, spec_error, worker_resources
from .worker import RunSettings, train_worker

log = logging.getLogger("kubeforge_trainer.train")

DEFAULT_OUTPUT_DIR = "model"


class TrainingFailed(RuntimeError):
    """Training did not finish (workers failed more often than failurePolicy.maxWorkerFailures allows)."""


def output_uri(job: TrainingJob) -> str:
    """Where the exported model goes: spec.output.uri or <checkpoint.uri>/model."""
    return job.spec.output.uri or storage.join(job.spec.checkpoint.uri, DEFAULT_OUTPUT_DIR)


def _check_pretrained(job: TrainingJob, tokenizer_uri: str, cache: Path) -> Any | None:
    """The pretrained model's transformers config, after checking it exists and that the dataset's tokenizer keeps
    the ids of the model's (equal, or extended with new tokens)."""
    model, name = job.spec.model, job.metadata.name
    pretrained = model.pretrained
    if pretrained is None:
        return None
    if not storage.exists(pretrained.uri):
        raise spec_error(name, "spec.model.pretrained.uri", f"{pretrained.uri} does not exist")
    try:
        directory = pretrained_local_dir(pretrained.uri, cache)
        config = read_pretrained_config(model, directory)
    except (OSError, ValueError, KeyError) as exc:
        problem = f"cannot read {pretrained.uri} as a Hugging Face model directory: {exc}"
        raise spec_error(name, "spec.model.pretrained.uri", problem) from exc
    own_tokenizer = directory / "tokenizer.json"
    if own_tokenizer.is_file():
        local_tokenizer = cache / "dataset-tokenizer.json"
        local_tokenizer.write_text(storage.read_text(tokenizer_uri))
        if not tokenizer_extends(own_tokenizer, local_tokenizer):
            raise spec_error(
                name,
                "spec.model.pretrained",
                "the dataset was tokenized with a tokenizer that changes the ids of the pretrained model's tokens; "
                "take the DataPipeline's tokenizer from the model (or extend it, keeping the old ids)",
            )
    return config


def prepare_run(job: TrainingJob, data_uri: str) -> tuple[RunSettings, dict[str, Any]]:
    """Everything the workers need, resolved and checked on the driver; raises SpecError on bad input."""
    spec, name = job.spec, job.metadata.name
    workers = spec.workers
    if workers.gpu > 1:
        raise spec_error(
            name,
            "spec.workers.gpu",
            f"{workers.gpu}: {GPUS_PER_WORKER_MESSAGE}",
        )
    try:
        worker_resources(workers.cpu, workers.memory, workers.gpu)
    except ValueError as exc:
        raise spec_error(name, "spec.workers", str(exc)) from exc
    dataset = read_dataset_info(name, data_uri)
    plan = plan_training(name, spec, dataset, workers.count)
    use_gpu = workers.gpu > 0
    try:
        ds_config = build_deepspeed_config(spec, workers.count, use_gpu)
    except ValueError as exc:
        raise SpecError(f"TrainingJob/{name}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="kubeforge-pretrained-") as cache:
        pretrained = _check_pretrained(job, storage.join(data_uri, dataset.tokenizer), Path(cache))
    model_plan = resolve_model(name, spec.model, dataset, pretrained)
    check_lora(name, model_plan, spec.model.lora, use_gpu=use_gpu)
    wire = spec.model_dump(by_alias=True, mode="json")
    manifest = json.loads(storage.read_text(storage.join(data_uri, MANIFEST_FILE)))
    settings = RunSettings(
        resource_name=name,
        spec=wire,
        plan=plan.to_dict(),
        model_config=model_plan.to_dict(),
        deepspeed_config=ds_config,
        checkpoint_root=spec.checkpoint.uri,
        output_uri=output_uri(job),
        data_uri=data_uri,
        tokenizer_file=dataset.tokenizer,
        run_id=uuid.uuid4().hex[:8],
        use_gpu=use_gpu,
        precision=effective_precision(spec.training.precision, use_gpu),
        identity=ckpt.run_identity(wire, ckpt.dataset_hash(manifest)),
    )
    return settings, {"dataset": dataset, "plan": plan}


def choose_resume(job: TrainingJob, settings: RunSettings, total_steps: int) -> tuple[RunSettings, ckpt.ResumeDecision]:
    """The checkpoint to resume from (only one of this run: ckpt.decide_resume) and the run id to continue;
    without resume, old checkpoints are cleared first. Raises SpecError when the checkpoints belong elsewhere."""
    checkpoint, name = job.spec.checkpoint, job.metadata.name
    if not checkpoint.resume:
        removed = ckpt.clear_checkpoints(checkpoint.uri)
        if removed:
            log.warning(
                "checkpoint.resume is false: removed %d old checkpoint(s) from %s", len(removed), checkpoint.uri
            )
        return settings, ckpt.ResumeDecision()
    latest = ckpt.latest_checkpoint(checkpoint.uri)
    state = ckpt.read_trainer_state(latest) if latest is not None else None
    length_field = "spec.training.maxSteps" if job.spec.training.max_steps is not None else "spec.training.epochs"
    decision = ckpt.decide_resume(
        name, latest, state, settings.identity, total_steps, length_field, extend=checkpoint.extend
    )
    if state is None or decision.checkpoint is None:
        return settings, decision
    return replace(settings, run_id=state.run_id), decision


def _announce(text: str) -> None:
    """Default notice sink: the driver's stdout (the RayJob's log) and the logger."""
    print(f"kubeforge_trainer: {text}", flush=True)
    log.info("%s", text)


def step_line(fields: dict[str, Any]) -> str:
    """The log line of one reported training step: `step 120/300 loss 2.3456 lr 3.00e-04 tokens/s 1234 eta 42s`."""
    parts = [f"step {fields['step']}/{fields.get('totalSteps', '?')}"]
    if fields.get("loss") is not None:
        parts.append(f"loss {fields['loss']:.4f}")
    if fields.get("learningRate") is not None:
        parts.append(f"lr {fields['learningRate']:.2e}")
    if fields.get("tokensPerSecond") is not None:
        parts.append(f"tokens/s {fields['tokensPerSecond']:.0f}")
    eta = fields.get("etaSeconds")
    parts.append(f"eta {eta:.0f}s" if eta is not None else "eta -")
    return " ".join(parts)


def _forward_progress(message: dict[str, Any], reporter: Any, result: dict[str, Any]) -> None:
    if "status" in message and "loss" in message["status"] and "step" in message["status"]:
        log.info("%s", step_line(message["status"]))  # the step's log (`kubeforge logs`), one line per log interval
    if "status" in message:
        try:
            reporter.report(**message["status"])
        except ValueError as exc:  # a progress update must never end a training run
            log.warning("progress update %s not reported: %s", message["status"], exc)
    elif "result" in message:
        result.update(message["result"])


def run_trainingjob(
    resource: TrainingJob, data_uri: str, reporter: Any, notify: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Train, evaluate, checkpoint and export the model of a TrainingJob on Ray; returns the result
    (modelUri, modelVersion, metrics, steps, stoppedEarly, ...). notify shows one-line notices to the user
    ("resuming from <uri> (step N)"); by default they go to stdout and the log."""
    import ray
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    settings, resolved = prepare_run(resource, data_uri)
    plan, dataset = resolved["plan"], resolved["dataset"]
    settings, decision = choose_resume(resource, settings, plan.total_steps)
    notify = notify or _announce
    if decision.checkpoint is not None:
        extended = (
            f"; extending the run from {decision.extended_from} to {plural(plan.total_steps, 'step')} "
            "(checkpoint.extend)"
            if decision.extended_from is not None
            else ""
        )
        notify(f"resuming from {decision.checkpoint} (step {decision.step}){extended}")
    spec = resource.spec
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init()
    progress: Queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
    # Ray Data's interactive progress bars turn into thousands of log lines in a RayJob; kubeforge reports progress.
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets = split_datasets(dataset)
    if not plan.has_validation:
        datasets.pop("validation", None)
    if not plan.has_test:
        datasets.pop("test", None)
    if not plan.has_validation and spec.evaluation.early_stopping is not None:
        log.warning("evaluation.earlyStopping is set but the dataset has no validation split: it cannot trigger")
    if plan.dropped_train_rows:
        log.info(
            "%d of %d train rows are left out of each epoch (equal shares for %d workers, full micro-batches)",
            plan.dropped_train_rows,
            dataset.rows("train"),
            plan.world_size,
        )
    workers = spec.workers
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={**settings.to_dict(), "progressQueue": progress},
        scaling_config=ScalingConfig(
            num_workers=workers.count,
            use_gpu=workers.gpu > 0,
            resources_per_worker=worker_resources(workers.cpu, workers.memory, workers.gpu),
        ),
        torch_config=TorchConfig(backend="nccl" if workers.gpu > 0 else "gloo"),
        run_config=RunConfig(
            name=f"{resource.metadata.name}-{settings.run_id}",
            failure_config=FailureConfig(max_failures=spec.failure_policy.max_worker_failures),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all"),
    )
    reporter.report(
        totalSteps=plan.total_steps,
        step=decision.step,
        resumedFromStep=decision.step,
        progress=f"{decision.step}/{plan.total_steps} (starting)",
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # handed to the main thread, which raises it
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="kubeforge-train-fit", daemon=True)
    started = time.monotonic()
    thread.start()
    result: dict[str, Any] = {}
    try:
        while thread.is_alive() or not progress.empty():
            try:
                _forward_progress(progress.get(timeout=1.0), reporter, result)
            except Empty:
                continue
        if "error" in outcome:
            raise TrainingFailed(
                f"TrainingJob/{resource.metadata.name}: training failed: {_one_line(outcome['error'])}"
            ) from outcome["error"]
        if "modelUri" not in result:
            raise TrainingFailed(f"TrainingJob/{resource.metadata.name}: training ended without a result")
        result["durationSeconds"] = round(time.monotonic() - started, 1)
        reporter.report(
            step=result["steps"],
            totalSteps=result["totalSteps"],
            progress=f"{result['steps']}/{result['totalSteps']} (100%)"
            if not result["stoppedEarly"]
            else f"{result['steps']}/{result['totalSteps']} (stopped early)",
            modelUri=result["modelUri"],
            modelVersion=result["modelVersion"],
            bestCheckpoint=result["bestCheckpoint"],
            latestCheckpoint=result["latestCheckpoint"],
            bestMetrics=result["bestMetrics"],
            testMetrics=result["testMetrics"],
            stoppedEarly=result["stoppedEarly"],
            resumedFromStep=result["resumedFromStep"],
            etaSeconds=0.0,
        )
        reporter.flush()
        return result
    finally:
        ray.kill(progress.actor)
        if started_ray:
            ray.shutdown()


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # Ray's worker-group errors put the failing worker's last exception line at the end.
    tail = lines[-1] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {tail}"
