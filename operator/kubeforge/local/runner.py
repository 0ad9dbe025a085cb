"""`kubeforge run`: validate, resolve, then run each resource on one in-process Ray through the cluster's entry points.

The glue only: what to run and in which order comes from `plan`, the status transitions from `status`, the progress
display from `display`, the report from `report`. The data and training steps are the functions the RayJobs call
(`kubeforge_trainer.data.run_datapipeline`, `kubeforge_trainer.train.run_trainingjob`); serving deploys the
RayService's application (`kubeforge_trainer.serve.build_app`, through `serve_locally`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from .. import conditions
from ..constants import ANNOTATION_LOCAL_SOURCE
from ..failures import is_permanent
from ..validate import Problem, validate_paths
from . import DEFAULT_PROMPT, DEFAULT_STATE_DIR
from . import status as st
from .display import Renderer, make_renderer, watching
from .manage import owned_outputs, step_log_path
from .plan import Step, capacity_problems, plan_run
from .resources import ResourceStore, typed, with_absolute_locations
from .serving import MODELS, answer_text, curl_commands, playground_url, post_json, sample_request, served_model
from .summary import human_duration, metrics_text, seconds_between

log = logging.getLogger(__name__)

DATASET_MANIFEST = "_manifest.json"
RAY_START_ATTEMPTS = 3
MODEL_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"  # peft's: what a LoRA adapter export holds instead of config.json


@dataclass
class RunOptions:
    """What `kubeforge run` was asked to do."""

    paths: Sequence[str]
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    serve: bool = False
    port: int = 8000  # the endpoint's, when the run serves
    metrics_port: int | None = None  # None: Ray picks a free one (and kubeforge one for the printed URL when serving)
    prompt: str = DEFAULT_PROMPT
    plain: bool = False
    verbose: bool = False
    num_cpus: int | None = None
    workdir: Path = field(default_factory=Path.cwd)


@dataclass
class StepOutcome:
    """How one resource's step ended in this run."""

    kind: str
    name: str
    phase: str
    seconds: float | None = None
    skipped: bool = False
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Kind/name."""
        return f"{self.kind}/{self.name}"

    @property
    def ok(self) -> bool:
        """Whether the step's output is there (a job succeeded, a deployment serves)."""
        return self.phase in ("Succeeded", "Ready")


class StepFailed(Exception):
    """A step could not run or failed; the message is one line for the user."""


def now_rfc3339() -> str:
    """Now, as the status files spell times."""
    return conditions.now_rfc3339()


def root_cause(exc: BaseException) -> BaseException:
    """The user-level exception behind Ray's wrappers (RayTaskError.cause, __cause__ chains)."""
    seen: set[int] = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        nxt = getattr(current, "cause", None)
        if not isinstance(nxt, BaseException):
            nxt = current.__cause__
        if not isinstance(nxt, BaseException):
            break
        current = nxt
    return current


def one_line(exc: BaseException) -> str:
    """A one-line description of an exception: its message's first line, or its type when it has none."""
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    return first or type(exc).__name__


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def manifest_paths(paths: Sequence[str | Path]) -> list[Path]:
    """What `kubeforge run` validates: files as given; in directories the YAML files outside hidden directories
    (a run writes .json status, datasets and models under the directory it runs in, often the manifests' own)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            found.append(path)
            continue
        files = sorted(
            p
            for p in path.rglob("*")
            if p.suffix in (".yaml", ".yml")
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts[:-1])
        )
        found.extend(files or [path])  # an empty directory stays, so validate reports it
    return found


def _exists(uri: str | None, *parts: str) -> bool:
    if not uri:
        return False
    from kubeforge_trainer import storage

    try:
        return storage.exists(storage.join(uri, *parts) if parts else uri)
    except OSError:
        return False


def model_exported(uri: str | None) -> bool:
    """Whether a TrainingJob's export is at uri: a Hugging Face directory (config.json) or, for
    `lora.export: adapter`, a peft adapter directory (adapter_config.json, no config.json)."""
    return _exists(uri, MODEL_CONFIG) or _exists(uri, ADAPTER_CONFIG)


def _model_version(uri: str) -> str:
    """The version recorded in a model directory's kubeforge.json (what serving reports for a modelUri)."""
    from kubeforge_trainer import storage
    from kubeforge_trainer.models.export import INFO_FILE

    return str(json.loads(storage.read_text(storage.join(uri, INFO_FILE))).get("version", "unknown"))


class LocalRun:
    """One `kubeforge run`."""

    def __init__(self, options: RunOptions, out: TextIO | None = None) -> None:
        self.options = options
        self.out = out or sys.stdout
        self.state_dir = (options.workdir / options.state_dir).resolve()
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        self.statuses = st.StatusStore(self.state_dir)
        self.resources = ResourceStore(self.state_dir)
        self.log_dir = self.state_dir / "logs" / self.run_id
        self.renderer: Renderer = make_renderer(self.out, force_plain=options.plain)
        self.outcomes: list[StepOutcome] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.data_manifests: dict[str, dict[str, Any]] = {}
        self.samples: dict[str, dict[str, Any]] = {}
        self.deployed: list[str] = []
        self.metrics_url: str | None = None
        self.cpus = options.num_cpus or os.cpu_count() or 1
        self.started = time.monotonic()
        self.started_at = now_rfc3339()
        self._ray_started = False
        self._direct_ingress = False  # a ModelDeployment of the run asks for spec.ingress: direct
        self._serving = False
        self._previous_sigterm: Any = signal.SIG_DFL

    # ---- the run ----

    def run(self) -> int:
        """Run everything; returns the exit code (0 ok, 1 bad input or a failed step, 130 interrupted)."""
        report = validate_paths(manifest_paths(self.options.paths))
        if report.problems:
            return self._print_problems(report.problems)
        if not report.manifests:
            self._err("kubeforge run: no kubeforge resources found")
            return 1
        completed = {(k, n): s.get("phase", "") for k, n, s in self.statuses.entries()}
        steps, problems = plan_run(report.manifests, completed)
        problems += capacity_problems(report.manifests, self.cpus)
        if problems:
            return self._print_problems(problems)
        port_problem = self._check_ports(steps)
        if port_problem:
            self._err(f"kubeforge run: {port_problem}")
            return 1

        conflict = self._state_conflict(steps)
        if conflict:
            self._err(f"kubeforge run: {conflict}")
            return 1

        self._setup_logging()
        self._apply(steps)
        self._direct_ingress = any(
            s.kind == "ModelDeployment" and s.manifest.resource.spec.ingress == "direct" for s in steps
        )
        paths = " ".join(map(str, self.options.paths))
        self.renderer.line(
            f"kubeforge run: {len(steps)} resource(s) from {paths} · state in {self._show(self.state_dir)}",
            "bold",
        )
        current: Step | None = None
        try:
            for index, step in enumerate(steps, 1):
                current = step
                self.renderer.line(f"[{index}/{len(steps)}] {step.label}  ({step.manifest.source})", "bold cyan")
                outcome = self._run_step(step)
                self.outcomes.append(outcome)
                self._print_outcome(outcome)
            current = None
            self._finish()
            if self.options.serve and self.deployed:
                self._serve_forever()
            return 0 if all(o.ok for o in self.outcomes) else 1
        except KeyboardInterrupt:
            return self._interrupted(current)
        except Exception as exc:  # a bug, not bad input: one line here, the traceback in the log
            return self._unexpected(current, exc)
        finally:
            self._shutdown()

    def _state_conflict(self, steps: list[Step]) -> str:
        """Why this run would take over another resource's state: one of the same kind and name, applied from
        another manifest file, that writes elsewhere (a copied manifest directory run from the same place). A copy
        that writes to the same outputs shares the state, as it shares the outputs."""
        for step in steps:
            stored = self.resources.get(step.kind, step.name)
            if stored is None:
                continue
            source = _source_file(step)
            stored_source = (stored["metadata"].get("annotations") or {}).get(ANNOTATION_LOCAL_SOURCE)
            wire = with_absolute_locations(step.kind, step.manifest.resource.to_wire(), self.options.workdir)
            if stored_source in (None, source) or owned_outputs(stored) == owned_outputs(wire):
                continue
            return (
                f"{step.label} from {step.manifest.source} writes to {', '.join(owned_outputs(wire))}, but "
                f"{self._show(self.state_dir)} holds {step.label} from {stored_source} writing to "
                f"{', '.join(owned_outputs(stored))}: run the copy from its own directory or with --state-dir, "
                f"rename it, or `kubeforge delete {step.kind.lower()}/{step.name}` first"
            )
        return ""

    def _apply(self, steps: list[Step]) -> None:
        """Store each resource as `kubectl apply` would; a changed spec gets a new generation and a fresh status."""
        now = now_rfc3339()
        for step in steps:
            wire = with_absolute_locations(step.kind, step.manifest.resource.to_wire(), self.options.workdir)
            source = _source_file(step)
            annotations = {**(wire["metadata"].get("annotations") or {}), ANNOTATION_LOCAL_SOURCE: source}
            wire["metadata"] = {**wire["metadata"], "annotations": annotations}
            previous = self.resources.get(step.kind, step.name)
            obj = self.resources.apply(wire, now)
            if previous is not None and previous["metadata"]["generation"] != obj["metadata"]["generation"]:
                self.statuses.reset(step.kind, step.name)
            self.objects[step.key] = obj
            waits_for = [f"{r.kind}/{r.name}" for r in step.references if r not in step.external]
            if waits_for and not self.statuses.get(step.kind, step.name):
                # New resources show up at once, Pending on what they reference, as the operator shows them.
                message = f"waits for {', '.join(waits_for)}"
                generation = obj["metadata"]["generation"]
                self._put(step, st.waiting({}, step.kind, generation, now, message, failed_dependency=False))

    def _run_step(self, step: Step) -> StepOutcome:
        """Run one resource's step, writing its status the way the operator would."""
        obj = self.objects[step.key]
        generation = obj["metadata"]["generation"]
        status = self.statuses.get(step.kind, step.name)
        blocked = self._blocked_by(step)
        if blocked:
            self._put(step, st.waiting(status, step.kind, generation, now_rfc3339(), blocked, failed_dependency=True))
            return StepOutcome(step.kind, step.name, "Pending", message=blocked)
        if step.kind == "DataPipeline":
            return self._datapipeline(step, obj, status)
        if step.kind == "TrainingJob":
            return self._trainingjob(step, obj, status)
        return self._modeldeployment(step, obj, status)

    def _blocked_by(self, step: Step) -> str:
        """Why a step cannot start: a resource it references failed in this run ('' when none did)."""
        for ref in step.references:
            earlier = next((o for o in self.outcomes if (o.kind, o.name) == ref.key), None)
            if earlier is not None and not earlier.ok:
                return f"waits for {ref.kind}/{ref.name} ({ref.field}), which is {earlier.phase}"
        return ""

    # ---- data ----

    def _datapipeline(self, step: Step, obj: dict[str, Any], status: st.Status) -> StepOutcome:
        resource = typed(obj)
        generation = obj["metadata"]["generation"]
        output_uri = resource.spec.output.uri
        if st.is_up_to_date(status, generation) and _exists(status.get("outputUri"), DATASET_MANIFEST):
            self._remember_dataset(step.name, status["outputUri"])
            return self._up_to_date(step, status)

        def work(reporter: Any) -> dict[str, Any]:
            from kubeforge_trainer.data import run_datapipeline

            manifest = run_datapipeline(resource, reporter)
            self.data_manifests[step.name] = manifest
            return {"outputUri": output_uri}

        return self._run_job(step, generation, status, work, retries=0)

    def _remember_dataset(self, name: str, uri: str) -> None:
        from kubeforge_trainer import storage

        try:
            self.data_manifests[name] = json.loads(storage.read_text(storage.join(uri, DATASET_MANIFEST)))
        except (OSError, ValueError):
            log.warning("could not read %s/%s for the report", uri, DATASET_MANIFEST)

    # ---- training ----

    def _data_uri(self, step: Step, resource: Any) -> tuple[str, st.Status]:
        """The dataset a TrainingJob reads (the DataPipeline's status.outputUri, or spec.dataRef.uri) and the
        DataPipeline's status ({} for a dataRef.uri)."""
        ref = resource.spec.data_ref
        if ref.uri:
            if not _exists(ref.uri, DATASET_MANIFEST):
                raise StepFailed(
                    f"spec.dataRef.uri: {ref.uri} holds no complete dataset ({DATASET_MANIFEST} is missing)"
                )
            return ref.uri, {}
        data_status = self.statuses.get("DataPipeline", ref.name)
        uri = data_status.get("outputUri")
        if not uri or not _exists(uri, DATASET_MANIFEST):
            raise StepFailed(
                f"spec.dataRef.name: DataPipeline/{ref.name} has no complete dataset ({uri or 'no outputUri'})"
            )
        return uri, data_status

    def _trainingjob(self, step: Step, obj: dict[str, Any], status: st.Status) -> StepOutcome:
        resource = typed(obj)
        generation = obj["metadata"]["generation"]
        try:
            data_uri, data_status = self._data_uri(step, resource)
        except StepFailed as exc:
            return self._fail_before_start(step, generation, status, str(exc))
        # Fresh data (the DataPipeline finished after this job started) makes a finished model stale.
        data_newer = (seconds_between(status.get("startTime"), data_status.get("completionTime")) or 0) > 0
        if st.is_up_to_date(status, generation) and model_exported(status.get("modelUri")) and not data_newer:
            return self._up_to_date(step, status)

        def work(reporter: Any) -> dict[str, Any]:
            from kubeforge_trainer.train import run_trainingjob

            result = run_trainingjob(resource, data_uri, reporter, notify=self._notice)
            fields = {"modelUri": result["modelUri"], "modelVersion": str(result["modelVersion"])}
            if result.get("testMetrics"):
                fields["testMetrics"] = result["testMetrics"]
            return fields

        retries = resource.spec.failure_policy.max_retries
        return self._run_job(step, generation, status, work, retries=retries)

    # ---- jobs (data and training) ----

    def _run_job(self, step: Step, generation: int, status: st.Status, work: Any, retries: int) -> StepOutcome:
        """Run a job's entry point with its reporter and the progress bars; retry on failure as the operator does."""
        from kubeforge_trainer.progress import FileStatusReporter

        attempt = 0
        started = time.monotonic()
        resumed = status.get("phase") in ("Running", "Suspended", "Failed")
        note = "resuming where the last run stopped" if resumed else "started"
        status = self._put(step, st.started(status, step.kind, generation, now_rfc3339(), note))
        try:
            self.start_ray()
        except StepFailed as exc:
            return self._fail_before_start(step, generation, status, self._log_failure(step, exc))
        while True:
            reporter = FileStatusReporter(step.kind, step.name, self.statuses.directory)
            try:
                with self._step_log(step), watching(step.kind, self.statuses.path(step.kind, step.name), self.renderer):
                    try:
                        fields = work(reporter)
                    finally:
                        reporter.close()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                message = self._log_failure(step, exc)
                status = self.statuses.get(step.kind, step.name)
                if attempt < retries and not is_permanent(exc):
                    attempt += 1
                    retry_note = f"retry {attempt}/{retries} after: {message}"
                    self.renderer.line(f"    ! {retry_note}", "yellow")
                    status = st.started(status, step.kind, generation, now_rfc3339(), retry_note)
                    status["retries"] = status.get("retries", 0) + 1
                    self._put(step, status)
                    continue
                if attempt < retries:
                    message += "; not retried: a retry cannot fix this"
                self._put(step, st.failed(status, step.kind, generation, now_rfc3339(), message))
                return StepOutcome(step.kind, step.name, "Failed", time.monotonic() - started, message=message)
            status = self.statuses.get(step.kind, step.name)
            done = st.succeeded({**status, **fields}, step.kind, generation, now_rfc3339(), "completed")
            final = self._put(step, done)
            return StepOutcome(step.kind, step.name, "Succeeded", time.monotonic() - started, details=final)

    def _up_to_date(self, step: Step, status: st.Status) -> StepOutcome:
        seconds = seconds_between(status.get("startTime"), status.get("completionTime"))
        message = f"up to date: Succeeded at generation {status.get('observedGeneration')}, nothing to redo"
        return StepOutcome(step.kind, step.name, "Succeeded", seconds, skipped=True, message=message, details=status)

    def _fail_before_start(self, step: Step, generation: int, status: st.Status, message: str) -> StepOutcome:
        self._put(step, st.failed(status, step.kind, generation, now_rfc3339(), message))
        return StepOutcome(step.kind, step.name, "Failed", message=message)

    # ---- serving ----

    def _model_of(
        self, ref: Any, uri: str | None, field_path: str, marker: str = MODEL_CONFIG
    ) -> tuple[str, str | None]:
        """(model URI, version) from a modelRef (the TrainingJob's status) or a modelUri; marker is the file an
        export of that kind holds (an adapter export has no config.json)."""
        if ref is None:
            return uri or "", None
        job = self.statuses.get("TrainingJob", ref.name)
        model_uri, version = job.get("modelUri"), job.get("modelVersion")
        if not model_uri or not _exists(model_uri, marker):
            what = "an adapter" if marker == ADAPTER_CONFIG else "a model"
            raise StepFailed(f"{field_path}: TrainingJob/{ref.name} has not exported {what}")
        if ref.version and str(ref.version) != str(version):
            raise StepFailed(
                f"{field_path.rsplit('.', 1)[0]}.version: TrainingJob/{ref.name} exported version {version!r}, "
                f"not {ref.version!r}"
            )
        return model_uri, version

    def _modeldeployment(self, step: Step, obj: dict[str, Any], status: st.Status) -> StepOutcome:
        resource = typed(obj)
        spec = resource.spec
        generation = obj["metadata"]["generation"]
        started = time.monotonic()
        try:
            model_uri, version = self._model_of(spec.model_ref, spec.model_uri, "spec.modelRef.name")
            args: dict[str, Any] = {"resource": obj, "modelUri": model_uri}
            if version:
                args["modelVersion"] = version
            if spec.canary is not None:
                canary_uri, canary_version = self._model_of(
                    spec.canary.model_ref, spec.canary.model_uri, "spec.canary.modelRef.name"
                )
                args["canaryModelUri"] = canary_uri
                if canary_version:
                    args["canaryModelVersion"] = canary_version
            adapters = []
            for i, adapter in enumerate(spec.adapters):
                field_path = f"spec.adapters[{i}].modelRef.name"
                adapter_uri, adapter_version = self._model_of(
                    adapter.model_ref, adapter.uri, field_path, ADAPTER_CONFIG
                )
                adapters.append({"name": adapter.name, "uri": adapter_uri, "version": adapter_version or ""})
            if adapters:  # modelRefs resolved here, as the operator resolves them for the RayService
                args["adapters"] = adapters
        except StepFailed as exc:
            return self._fail_before_start(step, generation, status, str(exc))

        status = self._put(step, st.started(status, step.kind, generation, now_rfc3339(), "deploying"))
        try:
            self.start_ray()
            with self._step_log(step), watching(step.kind, self.statuses.path(step.kind, step.name), self.renderer):
                url = self._deploy(step, args)
                fields = self._deployment_fields(step.name, url, args)
                self._put(step, fields)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            message = self._log_failure(step, exc)
            self._put(
                step, st.failed(self.statuses.get(step.kind, step.name), step.kind, generation, now_rfc3339(), message)
            )
            return StepOutcome(step.kind, step.name, "Failed", time.monotonic() - started, message=message)
        self.deployed.append(step.name)
        ready = st.succeeded(self.statuses.get(step.kind, step.name), step.kind, generation, now_rfc3339(), "serving")
        final = self._put(step, ready)
        outcome = StepOutcome(step.kind, step.name, "Ready", time.monotonic() - started, details=final)
        try:
            self.samples[step.name] = self._sample(url, spec.generation.max_tokens)
            if spec.playground:
                self.samples[step.name]["playground"] = playground_url(url)
        except Exception as exc:
            outcome.phase = "Degraded"
            outcome.message = f"the sample request failed: {self._log_failure(step, exc)}"
            degraded = {**final, "phase": "Degraded", "message": outcome.message}
            self._put(step, degraded)
        return outcome

    def _deploy(self, step: Step, args: dict[str, Any]) -> str:
        import ray.serve  # noqa: F401  (configures Serve's logger, which _route_ray_logs then redirects)
        from kubeforge_trainer.serve import serve_locally

        self._route_ray_logs()
        return serve_locally(args, http_port=self.options.port)

    def _route_ray_logs(self) -> None:
        """Make Ray's loggers write to run.log instead of the terminal (unless --verbose): the bars own the
        terminal, and a log line would tear them. Ray's libraries add terminal handlers and stop propagation."""
        if self.options.verbose:
            return
        for name in ("ray", "ray.serve", "ray.data", "ray.train", "ray.tune"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    logger.removeHandler(handler)
            logger.propagate = True

    def _deployment_fields(self, name: str, url: str, args: dict[str, Any]) -> dict[str, Any]:
        """The status fields a RayService reports once serving: URL, model, traffic, replicas."""
        stable_version = args.get("modelVersion") or _model_version(args["modelUri"])
        traffic = [{"version": stable_version, "modelUri": args["modelUri"], "percent": 100}]
        if "canaryModelUri" in args:
            canary_version = args.get("canaryModelVersion") or _model_version(args["canaryModelUri"])
            canary_percent = typed(args["resource"]).spec.canary.traffic_percent
            traffic = [
                {**traffic[0], "percent": 100 - canary_percent},
                {"version": canary_version, "modelUri": args["canaryModelUri"], "percent": canary_percent},
            ]
        replicas, ready = self._replica_counts(name)
        return {
            "url": url,
            "modelUri": args["modelUri"],
            "modelVersion": stable_version,
            "traffic": traffic,
            "replicas": replicas,
            "readyReplicas": ready,
        }

    @staticmethod
    def _replica_counts(app_name: str) -> tuple[int, int]:
        """(replicas, running replicas) of the application's model deployments, from serve.status()."""
        from ray import serve

        app = serve.status().applications.get(app_name)
        if app is None:
            return 0, 0
        total = running = 0
        for name, deployment in app.deployments.items():
            if name == "ingress":
                continue
            states = {str(k).rsplit(".", 1)[-1]: v for k, v in deployment.replica_states.items()}
            total += sum(states.values())
            running += states.get("RUNNING", 0)
        return total, running

    def _sample(self, url: str, max_tokens: int) -> dict[str, Any]:
        """Ask the freshly deployed model for one answer (a chat turn when it has a chat template); returns the task,
        prompt, answer and endpoint URL."""
        task, chat = served_model(post_json(url + MODELS, None))
        request = sample_request(task, self.options.prompt, max_tokens, chat=chat)
        response = post_json(url + request.path, request.body)
        answer = answer_text(task, response)
        return {"task": task, "chat": chat, "prompt": self.options.prompt, "answer": answer, "url": url}

    def _serve_forever(self) -> None:
        """Keep the deployments up until Ctrl-C (or SIGTERM)."""
        self._serving = True
        self.renderer.line(f"Serving {', '.join(self.deployed)}; press Ctrl-C to stop.", "bold")
        while True:
            time.sleep(3600)

    # ---- the end ----

    def _finish(self) -> None:
        """Completion, curl commands, report and summary after the last step."""
        for name, sample in self.samples.items():
            self.renderer.line(f"==> ModelDeployment/{name} at {sample['url']}", "bold green")
            self.renderer.line(f"    prompt:     {sample['prompt']}")
            shown = sample["answer"].replace("\n", "\n                ")
            self.renderer.line(f"    {'completion' if sample['task'] != 'classification' else 'label'}: {shown}")
            if "playground" in sample:
                self.renderer.line(f"    playground: {sample['playground']}")
        if self.samples:
            self.renderer.line("Try it yourself:" if self.options.serve else "Commands for a `--serve` run:", "bold")
            for sample in self.samples.values():
                for command in self._commands(sample):
                    self.renderer.line(f"    {command}")
        report_path = self._write_report()
        if report_path is not None:
            self.renderer.line(f"Report: {self._show(report_path)}", "bold")
        failed = [o for o in self.outcomes if not o.ok]
        total = human_duration(time.monotonic() - self.started)
        if failed:
            names = ", ".join(f"{o.label} ({o.phase})" for o in failed)
            self.renderer.line(f"kubeforge run: {len(failed)} step(s) did not complete: {names} [{total}]", "bold red")
        else:
            self.renderer.line(f"kubeforge run: all {len(self.outcomes)} step(s) done in {total}", "bold green")

    def _write_report(self) -> Path | None:
        """Write the run report; a plotting or reading problem is reported, never fatal to a finished run."""
        from .report import ReportInput, StepSummary, read_curves, write_report

        try:
            steps = [
                StepSummary(o.kind, o.name, o.phase, o.seconds, o.skipped, o.message, self.statuses.get(o.kind, o.name))
                for o in self.outcomes
            ]
            curves = {}
            for o in self.outcomes:
                if o.kind == "TrainingJob":
                    curves[o.name] = read_curves(typed(self.objects[(o.kind, o.name)]).spec.checkpoint.uri)
            data = ReportInput(
                run_id=self.run_id,
                paths=[str(p) for p in self.options.paths],
                started_at=self.started_at,
                seconds=time.monotonic() - self.started,
                cpus=self.cpus,
                steps=steps,
                datasets={n: m for n, m in self.data_manifests.items() if ("DataPipeline", n) in self.objects},
                curves=curves,
                samples=self.samples,
                commands={n: self._commands(s) for n, s in self.samples.items()},
                serving_live=self.options.serve,
            )
            return write_report(self.state_dir / "report" / self.run_id, data)
        except Exception as exc:
            log.exception("could not write the run report")
            self._err(f"kubeforge run: could not write the report: {one_line(exc)}")
            return None

    def _commands(self, sample: dict[str, Any]) -> list[str]:
        return curl_commands(
            sample["url"], sample["task"], sample["prompt"], self.metrics_url, chat=sample.get("chat", False)
        )

    def _unexpected(self, current: Step | None, exc: Exception) -> int:
        log.error("unexpected error", exc_info=exc)
        where = f" in {current.label}" if current is not None else ""
        if current is not None:
            obj = self.objects[current.key]
            status = self.statuses.get(current.kind, current.name)
            message = f"unexpected error: {one_line(exc)}"
            self._put(current, st.failed(status, current.kind, obj["metadata"]["generation"], now_rfc3339(), message))
        log_file = self._show(self.log_dir / "run.log")
        self._err(f"kubeforge run: unexpected error{where}: {one_line(exc)} (traceback: {log_file})")
        return 1

    def _interrupted(self, current: Step | None) -> int:
        if current is not None:
            obj = self.objects[current.key]
            message = "interrupted; run the same command again to resume"
            status = self.statuses.get(current.kind, current.name)
            self._put(
                current, st.interrupted(status, current.kind, obj["metadata"]["generation"], now_rfc3339(), message)
            )
            self.renderer.line(f"    ■ {current.label}: {message}", "yellow")
        if self._serving:
            self.renderer.line("Stopping the deployment(s).", "yellow")
            return 0  # Ctrl-C is how a --serve run ends
        return 130

    def _shutdown(self) -> None:
        """Mark the deployments stopped (their endpoint goes away with this process) and stop Ray and Serve."""
        for name in self.deployed:
            obj = self.objects[("ModelDeployment", name)]
            status = self.statuses.get("ModelDeployment", name)
            message = "stopped with the local run that served it; `kubeforge run --serve` keeps it up"
            self._put_kind(
                "ModelDeployment", name, st.stopped(status, obj["metadata"]["generation"], now_rfc3339(), message)
            )
        if self._ray_started:
            import ray

            # ray.shutdown stops Serve's actors with everything else; serve.shutdown first would only add noise.
            ray.shutdown()
            self._ray_started = False
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    # ---- helpers ----

    def _check_ports(self, steps: list[Step]) -> str:
        """A fixed port this run needs that is taken, in one line (before Ray starts and fails less clearly)."""
        if any(s.kind == "ModelDeployment" for s in steps) and not port_is_free(self.options.port):
            return f"port {self.options.port} is in use; pass --port to serve on another one"
        metrics_port = self.options.metrics_port
        if metrics_port is not None and not port_is_free(metrics_port):
            return f"port {metrics_port} (--metrics-port) is in use; name another one, or leave it out for a free one"
        return ""

    def _metrics_port(self) -> int | None:
        """The metrics port to give Ray: the one named; a free one when the run serves (its URL is printed with
        the curl commands); else None, and Ray picks its own, so runs side by side never collide."""
        if self.options.metrics_port is not None:
            return self.options.metrics_port
        if any(kind == "ModelDeployment" for kind, _ in self.objects):
            return free_port()
        return None

    def start_ray(self) -> None:
        """Start the run's one local Ray (all steps share it); the entry points see it initialised and reuse it."""
        if self._ray_started:
            return
        import ray
        import ray.data  # Ray Data adds a terminal log handler when imported: route it with the others

        self._route_ray_logs()  # before init too: Ray warns while it starts
        if self._direct_ingress:
            from kubeforge_trainer.serve.local import enable_direct_ingress

            enable_direct_ingress(self.options.port)  # Serve's processes read it when they start
        cpus = self.cpus
        self.renderer.line(f"    starting a local Ray ({cpus} CPUs) ...", "dim")
        metrics_port = self._metrics_port()
        for attempt in range(1, RAY_START_ATTEMPTS + 1):
            try:
                ray.init(
                    address="local",
                    num_cpus=cpus,
                    include_dashboard=False,
                    # Quiet by default: Ray's driver logs go to run.log and the workers' output stays in Ray's
                    # session logs, so the terminal shows the bars; --verbose shows both as Ray normally does.
                    configure_logging=self.options.verbose,
                    log_to_driver=self.options.verbose,
                    _metrics_export_port=metrics_port,
                )
                break
            except Exception as exc:
                # Ray gives its raylet a fixed 30 s to come up; on a busy machine a second try usually makes it.
                ray.shutdown()
                if attempt == RAY_START_ATTEMPTS:
                    raise StepFailed(f"could not start a local Ray: {one_line(exc)}") from exc
                log.warning("starting Ray failed (%s); trying again", one_line(exc))
        self._ray_started = True
        self._route_ray_logs()
        if metrics_port is not None:
            self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        # ray.init installs its own SIGTERM handler; a terminated run stops like Ctrl-C (status written, Ray down).
        self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    def _notice(self, text: str) -> None:
        """A workload's one-line notice (e.g. "resuming from <uri> (step N)"): on screen and in run.log."""
        log.info("%s", text)
        self.renderer.line(f"    {text}", "cyan")

    def _put(self, step: Step, fields: dict[str, Any]) -> st.Status:
        return self._put_kind(step.kind, step.name, fields)

    def _put_kind(self, kind: str, name: str, fields: dict[str, Any]) -> st.Status:
        return self.statuses.put(kind, name, fields)

    @contextmanager
    def _step_log(self, step: Step) -> Iterator[None]:
        """While a step runs, everything logged (its step lines included) also goes to its own log file, which
        `kubeforge logs KIND/NAME [-f]` shows."""
        path = step_log_path(self.log_dir, step.kind, step.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()

    def _log_failure(self, step: Step, exc: BaseException) -> str:
        """Write the traceback to the step's log file; returns the one line shown to the user."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = step_log_path(self.log_dir, step.kind, step.name)
        with path.open("a") as f:
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        message = one_line(root_cause(exc)) if not isinstance(exc, StepFailed) else str(exc)
        return f"{message} (traceback: {self._show(path)})"

    def _setup_logging(self) -> None:
        """Everything logged goes to <state dir>/logs/<run>/run.log; the terminal shows bars and phase lines."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_dir / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        if self.options.verbose:
            console = logging.StreamHandler(sys.stderr)
            console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            root.addHandler(console)

    def _print_outcome(self, outcome: StepOutcome) -> None:
        took = f" in {human_duration(outcome.seconds)}" if outcome.seconds is not None else ""
        metrics = metrics_text(outcome.kind, outcome.details) if outcome.details else ""
        metrics = "" if metrics == "-" else f" · {metrics}"
        if outcome.skipped:
            self.renderer.line(f"    = {outcome.message}{metrics}", "dim")
        elif outcome.ok:
            self.renderer.line(f"    ✓ {outcome.phase}{took}{metrics}", "green")
        else:
            self.renderer.line(f"    ✗ {outcome.label} {outcome.phase}{took}: {outcome.message}", "red")

    def _print_problems(self, problems: list[Problem]) -> int:
        for problem in problems:
            self._err(str(problem))
        self._err(f"{len(problems)} problem(s) found; nothing was run")
        return 1

    def _err(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def _show(self, path: Path) -> str:
        """A path as short as possible: relative to the working directory when inside it."""
        try:
            return str(Path(path).relative_to(self.options.workdir.resolve()))
        except ValueError:
            return str(path)


def _source_file(step: Step) -> str:
    """The absolute path of the file a step's manifest came from (validate labels documents `file#N`)."""
    return str(Path(step.manifest.source.rsplit("#", 1)[0]).resolve())


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(options: RunOptions, out: TextIO | None = None) -> int:
    """Run `kubeforge run` with these options; returns the exit code."""
    return LocalRun(options, out).run()
