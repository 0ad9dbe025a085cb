"""Train/validation/test assignment: pure functions on per-row keys.

* random: rows ranked by a seeded hash of their content; the first train fraction of the ranking goes to train, and
  so on, so the sizes are exact and identical content always lands in the same split.
* stratified: the same ranking within each label.
* time: rows ranked by timestamp, oldest to train (rows with equal timestamps at a boundary go to the earlier split).
* hash: each row by a hash of its key alone, so a row keeps its split when the dataset grows (sizes approximate).

Afterwards no exact duplicate (same normalised content) may sit in two splits: a duplicate group that spans splits
moves to the earliest of them (train before validation before test), so evaluation never sees training text.
"""

from __future__ import annotations

import numpy as np

from .hashing import hash_strings, seeded, unit_interval

SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = 0, 1, 2

Cut = int | None
"""The largest key of a split in the ranking, or None when the split and all before it are empty."""


def split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Rows per split for n rows: floors of n x fraction, the rest by largest remainder (ties to the earlier split)."""
    total = sum(fractions)
    raw = [n * f / total for f in fractions]
    sizes = [int(np.floor(r)) for r in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - sizes[i]), i))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes[0], sizes[1], sizes[2]


def rank_cuts(keys: np.ndarray, fractions: tuple[float, float, float]) -> tuple[Cut, Cut]:
    """The keys at which train and validation end in the ranking of keys."""
    n = len(keys)
    n_train, n_validation, _ = split_sizes(n, fractions)
    ends = [n_train, n_train + n_validation]
    wanted = sorted({e - 1 for e in ends if 0 < e <= n})
    if not wanted:
        return None, None
    ranked = np.partition(keys, wanted)
    cut_train = ranked[n_train - 1].item() if n_train > 0 else None
    cut_validation = ranked[ends[1] - 1].item() if ends[1] > 0 else None
    return cut_train, cut_validation


def assign_by_cuts(keys: np.ndarray, cuts: tuple[Cut, Cut]) -> np.ndarray:
    """Split index (int8) of each key: train up to the first cut, validation up to the second, test after."""
    split = np.zeros(len(keys), dtype=np.int8)
    for cut in cuts:
        split += np.ones(len(keys), dtype=np.int8) if cut is None else (keys > cut).astype(np.int8)
    return split


def random_keys(content_hash: np.ndarray, seed: int) -> np.ndarray:
    """The ranking key of random and stratified splits: a seeded hash of the content."""
    return seeded(content_hash, seed)


def hash_split(keys: list[str] | np.ndarray, fractions: tuple[float, float, float]) -> np.ndarray:
    """Split index of each row from a hash of its key alone (stable across reruns and dataset growth)."""
    import pyarrow as pa

    position = unit_interval(hash_strings(pa.array(list(keys), pa.string())))
    total = sum(fractions)
    bounds = np.array([fractions[0] / total, (fractions[0] + fractions[1]) / total])
    return np.searchsorted(bounds, position, side="right").astype(np.int8)


def stratified_cuts(
    keys: np.ndarray, groups: np.ndarray, fractions: tuple[float, float, float]
) -> dict[int, tuple[Cut, Cut]]:
    """rank_cuts within each group (label index)."""
    return {int(g): rank_cuts(keys[groups == g], fractions) for g in np.unique(groups)}


def assign_stratified(keys: np.ndarray, groups: np.ndarray, cuts: dict[int, tuple[Cut, Cut]]) -> np.ndarray:
    """Split index of each row from its group's cuts."""
    split = np.zeros(len(keys), dtype=np.int8)
    for g, group_cuts in cuts.items():
        rows = groups == g
        split[rows] = assign_by_cuts(keys[rows], group_cuts)
    return split


def resolve_leakage(
    content_hash: np.ndarray, rids: np.ndarray, split: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """(rids to move, their new split, duplicate groups that spanned splits): every group of equal content moves to
    the earliest split it occurs in."""
    if len(content_hash) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8), 0
    order = np.lexsort((split, content_hash))
    h, s, r = content_hash[order], split[order], rids[order]
    first = np.concatenate([[True], h[1:] != h[:-1]])
    group = np.cumsum(first) - 1
    earliest = s[first][group]  # sorted by split within a group: the first row has the earliest split
    move = s != earliest
    spanning = np.unique(group[move])
    return r[move].astype(np.int64), earliest[move].astype(np.int8), len(spanning)


def cross_split_groups(content_hash: np.ndarray, split: np.ndarray) -> int:
    """How many groups of equal content occur in more than one split (the leakage check)."""
    if len(content_hash) == 0:
        return 0
    pairs = np.unique(np.stack([content_hash, split.astype(np.uint64)], axis=1), axis=0)
    _, counts = np.unique(pairs[:, 0], return_counts=True)
    return int((counts > 1).sum())
