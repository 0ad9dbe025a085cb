"""Choosing the next token of every row of a batch: greedy, temperature and nucleus (top-p) sampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row outside its nucleus (smallest set of tokens whose mass reaches top_p), renormalised.

    probs is (B, V), top_p is (B,); the most likely token is always kept; rows with top_p >= 1 are unchanged.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = (mass_before >= top_p[:, None]) & (top_p[:, None] < 1.0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    kept = probs.masked_fill(drop, 0.0)
    return kept / kept.sum(dim=-1, keepdim=True)


def sample_next_tokens(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Next token id of each row (B,): argmax where temperature is 0, else a draw from the tempered nucleus.

    Rows that share a generator object are drawn in one call, so unseeded requests cost one multinomial per step;
    a row with its own seeded generator is reproducible whatever else is in the batch.
    """
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    sampled_rows = (temperatures > 0).nonzero().flatten().tolist()
    if not sampled_rows:
        return greedy
    rows = torch.tensor(sampled_rows)
    probs = torch.softmax(logits[rows] / temperatures[rows, None], dim=-1)
    probs = top_p_filter(probs, top_ps[rows])
    result = greedy.clone()
    groups: dict[int, list[int]] = {}
    for position, row in enumerate(sampled_rows):
        groups.setdefault(id(generators[row]), []).append(position)
    for positions in groups.values():
        generator = generators[sampled_rows[positions[0]]]
        draws = torch.multinomial(probs[positions], 1, generator=generator).flatten()
        result[rows[positions]] = draws
    return result
