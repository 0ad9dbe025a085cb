"""Training objectives on top of a causal language model: supervised fine-tuning (SFT) on assistant tokens and
direct preference optimisation (DPO) against a reference model; their batches, losses and metrics.

Everything here is plain torch on tensors and modules, so the Ray Train + DeepSpeed loop calls it the same way as
the unit tests do. Conventions (the DataPipeline's chat and preference output, docs/contracts.md):

* `labels` has the token id where the model is trained and -100 (`IGNORE_INDEX`) everywhere else (system, user and
  prompt tokens, padding); `labels[t]` is predicted from the logits at position `t - 1` (the causal shift).
* A preference batch is one forward pass over 2B rows: the B chosen sequences first, then the B rejected ones.

TRL (`trl.DPOTrainer`) keeps its DPO loss inside `DPOTrainer._compute_loss`, a method bound to a Hugging Face
`Trainer` with its Accelerate state and patched LM head, so it cannot run inside a DeepSpeed engine's step; the loss
variants here follow TRL 1.16's formulas and the unit tests check them against a real `DPOTrainer` on the same
model and batch (docs/training.md, "Objectives").
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from kubeforge.api.trainingjob import TrainingJobSpec, objective_of

from .evaluation import language_model_metrics
from .plan import DPO, DPO_METRICS, LM_METRICS, SFT

IGNORE_INDEX = -100

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
SFT_METRICS = LM_METRICS  # on assistant tokens
# The per-pair quantities a worker sums; all-reduced, they give DPO_METRICS (dpo_metrics_from_sums).
DPO_SUM_KEYS = ("pairs", *DPO_METRICS)


# ------------------------------------------------------------------ the spec


def dpo_settings(spec: TrainingJobSpec) -> DpoSettings:
    """The DPO loss of spec.dpo (its defaults when the block is unset)."""
    dpo = spec.dpo
    if dpo is None:
        return DpoSettings()
    return DpoSettings(beta=dpo.beta, loss_type=dpo.loss_type, label_smoothing=dpo.label_smoothing)


def reference_kind(spec: TrainingJobSpec) -> str:
    """`base` or `adaptersDisabled`: as written, else adaptersDisabled for LoRA runs and base otherwise."""
    written = spec.dpo.reference if spec.dpo is not None else None
    return written or ("adaptersDisabled" if spec.model.lora is not None else "base")


# ------------------------------------------------------------------ batches


def _padded(rows: Sequence[Any], value: int, width: int) -> torch.Tensor:
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


def collate_sequences(
    input_ids: Sequence[Any], labels: Sequence[Any], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of variable-length rows, right-padded to the longest one: ids with the
    pad id, the mask with 0 and labels with -100, so padding is neither attended to nor trained on."""
    if len(input_ids) != len(labels):
        raise ValueError(f"{len(input_ids)} input_ids rows but {len(labels)} labels rows")
    rows = [np.asarray(r, dtype=np.int64) for r in input_ids]
    targets = [np.asarray(r, dtype=np.int64) for r in labels]
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        if len(row) != len(target):
            raise ValueError(f"row {i}: {len(row)} input_ids but {len(target)} labels")
    width = max(1, max((len(r) for r in rows), default=0))
    mask = _padded([np.ones(len(r), dtype=np.int64) for r in rows], 0, width)
    return _padded(rows, pad_token_id, width), mask, _padded(targets, IGNORE_INDEX, width)


def collate_chat(batch: dict[str, Any], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of a batch of chat rows (columns input_ids, labels)."""
    return collate_sequences(batch["input_ids"], batch["labels"], pad_token_id)


def collate_preference(batch: dict[str, Any], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of B preference pairs as 2B rows, chosen first, padded to one width so
    chosen and rejected go through the model in one forward pass."""
    ids = [*batch["chosen_input_ids"], *batch["rejected_input_ids"]]
    labels = [*batch["chosen_labels"], *batch["rejected_labels"]]
    return collate_sequences(ids, labels, pad_token_id)


# ------------------------------------------------------------------ log-probabilities and SFT


def causal_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, vocab) logits of a transformers causal LM (or a peft model or DeepSpeed engine around one)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each trained label, its mask), both (B, T-1): label t under the logits at t-1, in fp32;
    0 where the label is -100."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logits = logits[:, :-1].float()
    # log_softmax then gather, computed as x_label - logsumexp(x): no (B, T, vocab) log-softmax tensor is kept.
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return logps * mask, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's trained tokens, number of those tokens), both (B,)."""
    logps, mask = token_logps(logits, labels)
    return logps.sum(-1), mask.sum(-1)


def sft_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the trained (assistant) tokens (zero, with a gradient path, when there are none)."""
    flat = logits[:, :-1].float().reshape(-1, logits.size(-1))
    return F.cross_entropy(flat, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def trained_tokens(labels: torch.Tensor) -> int:
    """How many tokens of a batch are trained (labels not -100, after the causal shift)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> tuple[torch.Tensor, int]:
    """(cross-entropy over the trained (assistant) tokens, their count): the mean or the sum over them."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}")
    total, tokens = sft_loss_sum(logits, labels), trained_tokens(labels)
    return (total, tokens) if reduction == "sum" else (total / max(tokens, 1), tokens)


def sft_metrics(loss_sum: float, tokens: int, wanted: Sequence[str] = SFT_METRICS) -> dict[str, float]:
    """loss and perplexity on assistant tokens from the summed loss over them (all workers)."""
    return language_model_metrics(loss_sum, tokens, wanted)


# ------------------------------------------------------------------ DPO


@dataclass(frozen=True)
class DpoSettings:
    """The loss of spec.dpo: beta, variant and label smoothing (robust only)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"unknown DPO loss type {self.loss_type!r} (use {', '.join(DPO_LOSS_TYPES)})")
        if self.beta <= 0:
            raise ValueError(f"DPO beta must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"DPO label smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "robust":
            raise ValueError("DPO label smoothing applies to loss type robust only")


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    settings: DpoSettings,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair DPO losses (B,) from summed sequence log-probabilities under the policy and the reference.

    With d = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected):
    sigmoid  -log σ(β·d)                                  (DPO, Rafailov et al. 2023)
    hinge    max(0, 1 - β·d)                              (SLiC)
    ipo      (d' - 1/(2β))², d' from token-averaged log-ratios (IPO; TRL's length normalisation)
    robust   (-(1-ε)·log σ(β·d) + ε·log σ(-β·d)) / (1-2ε)   (robust DPO, ε = label smoothing)
    """
    beta, smoothing = settings.beta, settings.label_smoothing
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    delta = chosen_ratio - rejected_ratio
    if settings.loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if settings.loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if settings.loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the response token counts")
        averaged = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        return (averaged - 1 / (2 * beta)) ** 2
    clean = -(1 - smoothing) * F.logsigmoid(beta * delta)
    flipped = -smoothing * F.logsigmoid(-beta * delta)
    return (clean - flipped) / (1 - 2 * smoothing)


@dataclass
class DpoOutput:
    """One preference batch: the mean loss (with gradient) and the detached per-pair quantities behind the metrics."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    def metric_sums(self) -> list[float]:
        """Sums over the batch's pairs in DPO_SUM_KEYS order (all-reduce them, then dpo_metrics_from_sums)."""
        return self.sums().tolist()

    def sums(self) -> torch.Tensor:
        """metric_sums as a float64 tensor on the batch's device (adding these up needs no device sync)."""
        correct = (self.chosen_rewards > self.rejected_rewards).float()
        margin = self.chosen_rewards - self.rejected_rewards
        columns = (
            self.losses,
            correct,
            margin,
            self.chosen_rewards,
            self.rejected_rewards,
            self.chosen_logps,
            self.rejected_logps,
        )
        pairs = torch.full((1,), float(len(self.losses)), dtype=torch.float64, device=self.losses.device)
        return torch.cat([pairs, torch.stack([c.detach().double().sum() for c in columns])])


def dpo_metrics_from_sums(sums: Sequence[float], wanted: Sequence[str] = DPO_METRICS) -> dict[str, float]:
    """Means over all pairs from summed DPO quantities (DPO_SUM_KEYS order): reward accuracy (share of pairs whose
    chosen reward beats the rejected one), reward margin, rewards β·log(π/π_ref) and policy log-probabilities."""
    pairs = sums[0]
    if pairs <= 0:
        return {}
    means = {key: value / pairs for key, value in zip(DPO_METRICS, sums[1:], strict=True)}
    return {name: means[name] for name in wanted if name in means}


def dpo_forward(
    policy: Any,
    reference: ReferencePolicy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    settings: DpoSettings,
) -> DpoOutput:
    """DPO on one collated preference batch (2B rows, chosen first): one policy forward with gradient, one reference
    forward without."""
    logps, tokens = sequence_logps(causal_logits(policy, input_ids, attention_mask), labels)
    reference_logps = reference.logps(input_ids, attention_mask, labels)
    return dpo_from_logps(logps, reference_logps, tokens, settings)


def dpo_from_logps(
    policy_logps: torch.Tensor, reference_logps: torch.Tensor, tokens: torch.Tensor, settings: DpoSettings
) -> DpoOutput:
    """DpoOutput from summed log-probabilities and token counts of 2B rows (chosen first)."""
    chosen, rejected = policy_logps.chunk(2)
    reference_chosen, reference_rejected = reference_logps.chunk(2)
    chosen_tokens, rejected_tokens = tokens.chunk(2)
    losses = dpo_losses(
        chosen, rejected, reference_chosen, reference_rejected, settings, chosen_tokens, rejected_tokens
    )
    return DpoOutput(
        loss=losses.mean(),
        losses=losses.detach(),
        chosen_logps=chosen.detach(),
        rejected_logps=rejected.detach(),
        chosen_rewards=settings.beta * (chosen - reference_chosen).detach(),
        rejected_rewards=settings.beta * (rejected - reference_rejected).detach(),
    )


# ------------------------------------------------------------------ the reference model


@contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """peft's `disable_adapter()` on the peft model inside `model` (a DeepSpeed engine, a wrapper or the model)."""
    peft_model = model
    while not hasattr(peft_model, "disable_adapter") and hasattr(peft_model, "module"):
        peft_model = peft_model.module
    if not hasattr(peft_model, "disable_adapter"):
        raise ValueError("reference adaptersDisabled needs a LoRA (peft) model")
    with peft_model.disable_adapter():
        yield


class ReferencePolicy:
    """The frozen reference of DPO: a copy of the base model, or the policy itself with its LoRA adapters disabled
    (then no second copy is held; the base weights are frozen under LoRA, so they are the reference)."""

    def __init__(self, model: Any, adapters_off: bool) -> None:
        self.model = model
        self.adapters_off = adapters_off

    @classmethod
    def frozen(cls, base: torch.nn.Module) -> ReferencePolicy:
        """A reference that is `base` itself, frozen (eval mode, no gradients); nothing else may train it."""
        base.eval().requires_grad_(False)
        return cls(base, adapters_off=False)

    @classmethod
    def frozen_copy(cls, base: torch.nn.Module) -> ReferencePolicy:
        """A reference holding a frozen copy of `base`; make it before the policy is wrapped or trained."""
        return cls.frozen(copy.deepcopy(base))

    @classmethod
    def disabled_adapters(cls, policy: Any) -> ReferencePolicy:
        """A reference that runs the (LoRA) policy with its adapters disabled."""
        return cls(policy, adapters_off=True)

    def logps(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed log-probabilities (B,) of each row's trained tokens under the reference, without gradient."""
        context = adapters_disabled(self.model) if self.adapters_off else nullcontext()
        # The policy may be in train mode (dropout); the reference is evaluated deterministically.
        was_training = self.adapters_off and getattr(self.model, "training", False)
        if was_training:
            self.model.eval()
        try:
            with torch.no_grad(), context:
                logps, _ = sequence_logps(causal_logits(self.model, input_ids, attention_mask), labels)
        finally:
            if was_training:
                self.model.train()
        return logps


# ------------------------------------------------------------------ the training loop's objective step


class ObjectiveStep:
    """What sft and dpo change in the training loop: the micro-batch loss, and sums that add up over batches and
    workers into the metrics. The loop backpropagates the loss, all-reduces the sums and reports `metrics`."""

    def __init__(
        self,
        objective: str,
        pad_token_id: int,
        settings: DpoSettings | None = None,
        reference: ReferencePolicy | None = None,
    ) -> None:
        if objective not in (SFT, DPO):
            raise ValueError(f"no objective step for {objective!r} (only {SFT} and {DPO})")
        if objective == DPO and (settings is None or reference is None):
            raise ValueError("the dpo step needs its settings and a reference model")
        self.objective = objective
        self.pad_token_id = pad_token_id
        self.settings = settings
        self.reference = reference

    def forward(
        self, model: Any, batch: dict[str, Any], device: torch.device
    ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(mean loss with gradient, tokens in the batch, sums for `metrics` as a float64 tensor on the device) of one
        Ray Data batch. Token counts come from the host-side batch, so nothing here waits for the device."""
        collate = collate_preference if self.objective == DPO else collate_chat
        ids, mask, labels = collate(batch, self.pad_token_id)
        tokens, trained = int(mask.sum()), trained_tokens(labels)
        ids, mask, labels = (t.to(device, non_blocking=True) for t in (ids, mask, labels))
        if self.objective == DPO:
            assert self.settings is not None and self.reference is not None
            out = dpo_forward(model, self.reference, ids, mask, labels, self.settings)
            return out.loss, tokens, out.sums()
        total = sft_loss_sum(causal_logits(model, ids, mask), labels)
        sums = torch.stack([total.detach().double(), total.new_tensor(float(trained), dtype=torch.float64)])
        return total / max(trained, 1), tokens, sums

    def metrics(self, sums: Sequence[float], wanted: Sequence[str]) -> dict[str, float]:
        """Metrics from `forward`'s sums added up over batches and workers."""
        if self.objective == DPO:
            return dpo_metrics_from_sums(sums, wanted)
        return sft_metrics(sums[0], int(sums[1]), wanted)

    @property
    def sums_width(self) -> int:
        """How many sums `forward` returns."""
        return len(DPO_SUM_KEYS) if self.objective == DPO else 2


def needs_frozen_base(spec: TrainingJobSpec) -> bool:
    """Whether the run's reference is a frozen copy of the base model (dpo with reference base), which the worker
    builds beside the policy: DeepSpeed owns the policy's weights (and shards them under ZeRO-3)."""
    return objective_of(spec) == DPO and reference_kind(spec) == "base"


def objective_step(
    spec: TrainingJobSpec,
    pad_token_id: int,
    engine: Any,
    frozen_base: torch.nn.Module | None = None,
    dtype: torch.dtype | None = None,
) -> ObjectiveStep | None:
    """The step of an sft or dpo run; None for languageModeling and classification, which keep the loop's own path.
    The dpo reference is `frozen_base` (moved to the engine's device, in `dtype` when given) or, for reference
    adaptersDisabled, the engine itself with its LoRA adapters disabled."""
    objective = objective_of(spec)
    if objective == SFT:
        return ObjectiveStep(SFT, pad_token_id)
    if objective != DPO:
        return None
    if needs_frozen_base(spec):
        if frozen_base is None:
            raise ValueError("dpo with reference base needs the frozen base model (needs_frozen_base)")
        device = getattr(engine, "device", None)  # a DeepSpeed engine's; a bare module's stays where it is
        reference = ReferencePolicy.frozen(frozen_base.to(device=device, dtype=dtype))
    else:
        reference = ReferencePolicy.disabled_adapters(engine)
    return ObjectiveStep(DPO, pad_token_id, dpo_settings(spec), reference)
