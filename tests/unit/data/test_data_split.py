"""Split assignment: exact sizes, determinism, stability of hash splits, stratification, time order, leakage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from kubeforge_trainer.data import split, stages

FRACTIONS = (0.8, 0.1, 0.1)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, (0, 0, 0)), (1, (1, 0, 0)), (10, (8, 1, 1)), (19, (15, 2, 2)), (101, (81, 10, 10))],
)
def test_split_sizes_add_up_and_follow_the_fractions(n, expected):
    assert split.split_sizes(n, FRACTIONS) == expected


def test_rank_cuts_give_exact_sizes_and_do_not_depend_on_row_order():
    keys = split.random_keys(np.arange(1000, dtype=np.uint64) * np.uint64(2654435761), seed=7)
    cuts = split.rank_cuts(keys, FRACTIONS)
    assigned = split.assign_by_cuts(keys, cuts)
    assert np.bincount(assigned, minlength=3).tolist() == [800, 100, 100]
    shuffled = np.random.default_rng(0).permutation(keys)
    assert split.rank_cuts(shuffled, FRACTIONS) == cuts
    other_seed = split.assign_by_cuts(split.random_keys(np.arange(1000, dtype=np.uint64), 8), cuts)
    assert not np.array_equal(other_seed, assigned)


def test_empty_validation_and_test_splits():
    keys = np.arange(10, dtype=np.uint64)
    assert split.assign_by_cuts(keys, split.rank_cuts(keys, (1.0, 0.0, 0.0))).tolist() == [0] * 10


def test_equal_content_gets_equal_random_keys():
    keys = split.random_keys(np.array([5, 5, 9], dtype=np.uint64), 1)
    assert keys[0] == keys[1] != keys[2]


def test_hash_split_is_stable_when_rows_are_added():
    keys = [f"doc-{i}" for i in range(2000)]
    before = split.hash_split(keys, FRACTIONS)
    after = split.hash_split([*keys, *(f"new-{i}" for i in range(500))], FRACTIONS)
    assert np.array_equal(after[:2000], before)
    shares = np.bincount(before, minlength=3) / 2000
    assert abs(shares[0] - 0.8) < 0.05 and abs(shares[1] - 0.1) < 0.03


def test_stratified_split_keeps_the_fractions_within_every_label():
    rng = np.random.default_rng(3)
    groups = np.concatenate([np.zeros(100, dtype=int), np.ones(30, dtype=int), np.full(10, 2)])
    keys = rng.integers(0, 2**63, len(groups), dtype=np.uint64)
    cuts = split.stratified_cuts(keys, groups, FRACTIONS)
    assigned = split.assign_stratified(keys, groups, cuts)
    for label, sizes in ((0, [80, 10, 10]), (1, [24, 3, 3]), (2, [8, 1, 1])):
        assert np.bincount(assigned[groups == label], minlength=3).tolist() == sizes


def test_time_split_sends_the_oldest_rows_to_train():
    times = np.array([50, 10, 40, 20, 30, 60, 70, 80, 90, 100], dtype=np.int64)
    assigned = split.assign_by_cuts(times, split.rank_cuts(times, FRACTIONS))
    assert sorted(times[assigned == 0].tolist()) == [10, 20, 30, 40, 50, 60, 70, 80]
    assert times[assigned == 1].tolist() == [90] and times[assigned == 2].tolist() == [100]


def test_leakage_moves_duplicate_groups_to_their_earliest_split_and_the_check_sees_none_left():
    content = np.array([1, 1, 2, 2, 2, 3, 4], dtype=np.uint64)
    rids = np.array([10, 11, 12, 13, 14, 15, 16])
    assigned = np.array([2, 1, 0, 2, 1, 2, 1], dtype=np.int8)
    assert split.cross_split_groups(content, assigned) == 2
    moved, targets, spanning = split.resolve_leakage(content, rids, assigned)
    assert spanning == 2
    assert dict(zip(moved.tolist(), targets.tolist(), strict=True)) == {10: 1, 13: 0, 14: 0}
    result = stages.leakage_partition(content, rids, assigned)
    assert result["found"] == 2 and result["after"] == 0
    final = stages.final_assignment(rids, assigned, *stages._sorted_moves(moved, targets))
    assert final.tolist() == [1, 1, 0, 0, 0, 2, 1]


def test_assign_splits_by_method_from_a_keys_table():
    keys = pa.table(
        {
            "rid": pa.array(range(6), pa.int64()),
            "ch": pa.array(range(6), pa.uint64()),
            "key": pa.array(split.random_keys(np.arange(6, dtype=np.uint64), 1), pa.uint64()),
            "label": pa.array(["a", "b", "a", "b", "a", "b"]),
        }
    )
    cuts = split.rank_cuts(keys.column("key").to_numpy(), (0.5, 0.5, 0.0))
    assert np.bincount(stages.assign_splits(keys, "random", cuts, (0.5, 0.5, 0.0)), minlength=3).tolist() == [3, 3, 0]
    groups = stages.label_groups(keys.column("label"), ["a", "b"])
    strat = {
        "labels": ["a", "b"],
        "cuts": split.stratified_cuts(keys.column("key").to_numpy(), groups, (2 / 3, 1 / 3, 0)),
    }
    assigned = stages.assign_splits(keys, "stratified", strat, (2 / 3, 1 / 3, 0))
    assert np.bincount(assigned[groups == 0], minlength=3).tolist() == [2, 1, 0]
