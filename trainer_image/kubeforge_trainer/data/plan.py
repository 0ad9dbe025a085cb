"""What a DataPipeline spec asks for, checked up front and turned into the settings the stages use (pure).

The API server evaluates the CRD's CEL rules; a resource handed to the data step directly (the local runner, tests)
has not been through them, so the cross-field rules the step depends on are checked again here, each failure naming
its field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubeforge.api.common import ApiModel
from kubeforge.api.datapipeline import DataPipelineSpec, LabelParams

from .errors import DataPipelineError
from .ops import GLOBAL_OPERATIONS, check_regex
from .readers import ReadSpec

CONVERSATION_TASKS = ("chat", "preference")
BUILTIN_DERIVE_TASK = {"documents": None, "instructions": "chat", "preferences": "preference"}
"""The tokenizer.task each builtin derivation feeds (None: the document tasks)."""


@dataclass(frozen=True)
class Step:
    """One cleaning operation of spec.steps."""

    index: int
    name: str
    kind: str
    params: ApiModel

    @property
    def path(self) -> str:
        """The spec field of the operation, e.g. spec.steps[3].lengthFilter."""
        return f"spec.steps[{self.index}].{self.kind}"

    @property
    def is_global(self) -> bool:
        """Whether the operation needs the whole dataset (dedup, outliers) rather than one block at a time."""
        return self.kind in GLOBAL_OPERATIONS


@dataclass(frozen=True)
class Segment:
    """A global operation (None for the first segment, which starts with reading) and the local ones after it."""

    global_step: Step | None
    local_steps: tuple[Step, ...]


@dataclass(frozen=True)
class Plan:
    """The settings of every stage."""

    read: ReadSpec
    steps: tuple[Step, ...]
    segments: tuple[Segment, ...]
    task: str
    sequence_length: int
    split_method: str
    fractions: tuple[float, float, float]
    seed: int
    has_labels: bool
    near_dedup: tuple[Step, ...] = field(default=())
    output_format: str = "tokenized"

    @property
    def conversational(self) -> bool:
        """Whether rows are conversations or preference pairs (chat.py) rather than documents."""
        return self.task in CONVERSATION_TASKS


def plan_pipeline(spec: DataPipelineSpec) -> Plan:
    """Check the spec's cross-field rules and derive the plan; raises DataPipelineError naming the field."""
    source = spec.source
    chosen = [
        name for name, value in (("uris", source.uris), ("pvc", source.pvc), ("builtin", source.builtin)) if value
    ]
    if len(chosen) != 1:
        raise DataPipelineError(
            f"spec.source: set exactly one of uris, pvc or builtin (got {', '.join(chosen) or 'none'})"
        )
    steps = tuple(_step(i, s) for i, s in enumerate(spec.steps))
    for step in steps:
        _check_step(step)
    label_steps = [s for s in steps if s.kind == "label"]
    has_labels = bool(source.label_field) or bool(label_steps)
    if source.builtin is not None and source.label_field:
        raise DataPipelineError("spec.source.labelField: the builtin corpus has no fields")
    tok = spec.tokenizer
    if tok.path and tok.train:
        raise DataPipelineError("spec.tokenizer: set either path or train, not both")
    if tok.from_model and (tok.path or tok.train):
        raise DataPipelineError("spec.tokenizer.fromModel: fromModel excludes path and train")
    if tok.extend and not (tok.path or tok.from_model):
        raise DataPipelineError("spec.tokenizer.extend: extend needs a base tokenizer: set path or fromModel")
    conversation = tok.task if tok.task in CONVERSATION_TASKS else None
    if source.builtin is not None:
        derived = BUILTIN_DERIVE_TASK[source.builtin.derive]
        if derived != conversation:
            raise DataPipelineError(
                f"spec.source.builtin.derive: {source.builtin.derive} rows are for tokenizer.task "
                f"{derived or 'languageModeling or classification'}, not {tok.task}"
            )
    elif conversation and source.format == "text":
        raise DataPipelineError(
            f"spec.tokenizer.task: {conversation} reads conversations from jsonl, parquet or csv rows "
            "(spec.source.fields), not format text (or a builtin corpus with derive)"
        )
    if tok.task == "classification" and not has_labels:
        raise DataPipelineError(
            "spec.tokenizer.task: classification needs labels: set spec.source.labelField or add a label step"
        )
    split = spec.split
    fractions = (split.train, split.validation, split.test)
    if abs(sum(fractions) - 1) > 0.001:
        raise DataPipelineError(f"spec.split: train + validation + test must sum to 1 (got {sum(fractions):g})")
    key_field = time_field = None
    key_path = time_path = "spec.split.keyField"
    if split.method == "hash":
        key_field = split.key_field or source.key_field
        key_path = "spec.split.keyField" if split.key_field else "spec.source.keyField"
        if not key_field:
            raise DataPipelineError("spec.split.keyField: method hash needs keyField")
    if split.method == "time":
        time_field = split.key_field or source.time_field
        time_path = "spec.split.keyField" if split.key_field else "spec.source.timeField"
        if not time_field:
            raise DataPipelineError("spec.split.keyField: method time needs keyField (the timestamp column)")
    if split.method == "stratified" and not has_labels:
        raise DataPipelineError(
            "spec.split.method: stratified needs labels: set spec.source.labelField or add a label step"
        )
    numeric = tuple(dict.fromkeys(s.params.column for s in steps if s.kind == "outlierFilter"))
    tabular = [("spec.source.labelField", source.label_field), (key_path, key_field), (time_path, time_field)]
    if source.format == "text" or source.builtin is not None:
        what = "the builtin corpus" if source.builtin is not None else "format text"
        for path, value in tabular:
            if value:
                raise DataPipelineError(f"{path}: {what} has no fields")
        if numeric:
            step = next(s for s in steps if s.kind == "outlierFilter")
            raise DataPipelineError(f"{step.path}.column: {what} has no numeric columns")
    read = ReadSpec(
        format="text" if source.builtin is not None else source.format,
        text_mode=source.text_mode,
        text_field=source.text_field,
        label_field=source.label_field,
        key_field=key_field,
        time_field=time_field,
        numeric_fields=numeric,
        on_error=spec.on_error,
        allow_missing_text=any(s.kind == "dropEmpty" for s in steps),
        key_field_path=key_path,
        time_field_path=time_path,
        conversation=conversation,
        fields=source.fields,
    )
    return Plan(
        read=read,
        steps=steps,
        segments=_segments(steps),
        task=tok.task,
        sequence_length=tok.sequence_length,
        split_method=split.method,
        fractions=fractions,
        seed=split.seed,
        has_labels=has_labels,
        output_format=spec.output.format,
    )


def _step(index: int, raw: object) -> Step:
    try:
        kind, params = raw.operation()  # type: ignore[attr-defined]
    except ValueError:
        raise DataPipelineError(f"spec.steps[{index}]: a step sets exactly one operation") from None
    set_members = [m for m in type(raw).model_fields if m != "name" and getattr(raw, m) is not None]
    if len(set_members) != 1:
        raise DataPipelineError(f"spec.steps[{index}]: a step sets exactly one operation (got {len(set_members)})")
    return Step(index, raw.name or kind, kind, params)  # type: ignore[attr-defined]


def _check_step(step: Step) -> None:
    params = step.params
    if step.kind == "nearDedup" and params.num_perm % params.bands:
        raise DataPipelineError(
            f"{step.path}.bands: numPerm ({params.num_perm}) must be a multiple of bands ({params.bands})"
        )
    if step.kind == "lengthFilter":
        for low, high, what in (("min_chars", "max_chars", "Chars"), ("min_words", "max_words", "Words")):
            lo, hi = getattr(params, low), getattr(params, high)
            if lo is not None and hi is not None and lo > hi:
                raise DataPipelineError(f"{step.path}.min{what}: {lo} is more than max{what} ({hi})")
    if step.kind == "label":
        _check_label(step, params)


def _check_label(step: Step, params: LabelParams) -> None:
    for j, rule in enumerate(params.rules):
        if not rule.pattern and not rule.keywords:
            raise DataPipelineError(f"{step.path}.rules[{j}]: a label rule needs a pattern or keywords")
        if rule.pattern:
            problem = check_regex(rule.pattern)
            if problem:
                raise DataPipelineError(
                    f"{step.path}.rules[{j}].pattern: {problem} (patterns use RE2 syntax: no lookaround "
                    "or backreferences)"
                )


def _segments(steps: tuple[Step, ...]) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    current_global: Step | None = None
    current: list[Step] = []
    for step in steps:
        if step.is_global:
            segments.append(Segment(current_global, tuple(current)))
            current_global, current = step, []
        else:
            current.append(step)
    segments.append(Segment(current_global, tuple(current)))
    return tuple(segments)
