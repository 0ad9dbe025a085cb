"""Content hashes, exact dedup across blocks and MinHash-LSH near dedup, as pure functions (no Ray)."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
from kubeforge_trainer.data import hashing, minhash, stages
from kubeforge_trainer.data.columns import RID, TEXT, make_rid

WORDS = [f"w{i}" for i in range(3000)]


def document(rng: random.Random, n: int = 80) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def perturb(rng: random.Random, text: str, edits: int) -> str:
    words = text.split()
    for _ in range(edits):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def test_content_hash_normalizes_case_and_whitespace_only_when_asked():
    a = pa.array(["Hello  World", "hello world", " hello\nworld ", "hello world!", None, ""])
    normalized = hashing.content_hashes(a, normalize=True)
    assert normalized[0] == normalized[1] == normalized[2]
    assert normalized[3] != normalized[0]
    assert normalized[4] == normalized[5]  # a missing text hashes as the empty one
    raw = hashing.content_hashes(a, normalize=False)
    assert len(set(raw[:3].tolist())) == 3


def test_hash_strings_is_stable_and_handles_sliced_and_large_arrays():
    values = pa.array(["a", "b", "c", "d"])
    full = hashing.hash_strings(values)
    assert hashing.hash_strings(values.slice(1, 2)).tolist() == full[1:3].tolist()
    assert hashing.hash_strings(values.cast(pa.large_string())).tolist() == full.tolist()
    # A fixed value: the hash must not change between releases (it decides splits and dedup keepers).
    assert (
        hashing.hash_strings(pa.array(["kubeforge"]))[0]
        == np.frombuffer(__import__("hashlib").blake2b(b"kubeforge", digest_size=8).digest(), "<u8")[0]
    )


def test_exact_dedup_across_blocks_keeps_the_first_occurrence():
    blocks = [
        pa.table({TEXT: ["alpha", "beta", "Alpha"], RID: [make_rid(0, i) for i in range(3)]}),
        pa.table({TEXT: ["gamma", "beta ", "alpha"], RID: [make_rid(1, i) for i in range(3)]}),
    ]
    hashes = np.concatenate([hashing.content_hashes(b.column(TEXT)) for b in blocks])
    rids = np.concatenate([b.column(RID).to_numpy() for b in blocks])
    # Reduce partitions see the pairs in any order; the result must not depend on it.
    order = np.random.default_rng(0).permutation(len(rids))
    drops = stages.exact_duplicates(hashes[order], rids[order])
    kept = [stages.drop_rids(b, drops).column(TEXT).to_pylist() for b in blocks]
    assert kept == [["alpha", "beta"], ["gamma"]]


def test_partitioned_pieces_cover_every_row_once():
    hashes = np.arange(100, dtype=np.uint64) * np.uint64(7919)
    t = pa.table({"h": pa.array(hashes, pa.uint64()), "rid": pa.array(range(100), pa.int64())})
    pieces = stages.partitioned(t, hashes, 3)
    assert sorted(r for p in pieces for r in p.column("rid").to_pylist()) == list(range(100))
    for index, piece in enumerate(pieces):
        assert (stages.partition_of(piece.column("h").to_numpy(), 3) == index).all()


def test_minhash_estimates_jaccard_similarity():
    rng = random.Random(1)
    base = document(rng, 200)
    near = perturb(rng, base, 4)
    far = document(rng, 200)
    sig = minhash.signatures(pa.array([base, near, far]), num_perm=256, shingle_size=3, seed=7)
    similarity = [float(np.mean(sig[0] == sig[i])) for i in (1, 2)]
    assert similarity[0] > 0.75
    assert similarity[1] < 0.05


def test_minhash_ignores_case_and_punctuation_and_marks_documents_without_words():
    sig = minhash.signatures(pa.array(["Two, words.", "two words", "", "!!!", None]), 64, 5, 1)
    assert (sig[0] == sig[1]).all()
    assert minhash.has_shingles(sig).tolist() == [True, True, False, False, False]


def test_signatures_do_not_depend_on_how_documents_are_batched():
    rng = random.Random(2)
    docs = [document(rng, rng.randint(1, 300)) for _ in range(50)]
    together = minhash.signatures(pa.array(docs), 32, 5, 3)
    apart = np.concatenate([minhash.signatures(pa.array(docs[i : i + 7]), 32, 5, 3) for i in range(0, 50, 7)])
    assert (together == apart).all()


def test_signatures_are_the_same_whatever_the_slice_of_text_signed_at_once(monkeypatch):
    rng = random.Random(4)
    docs = pa.chunked_array([[document(rng, rng.randint(1, 200)) for _ in range(30)], ["", None, "one two"]])
    whole = minhash.signatures(docs, 32, 5, 3)
    monkeypatch.setattr(minhash, "_SLICE_BYTES", 300)  # a few rows per slice, and rows longer than a slice alone
    assert (minhash.signatures(docs, 32, 5, 3) == whole).all()


def test_candidate_pairs_cover_every_pair_in_small_buckets_and_connect_large_ones():
    keys = np.array([5, 5, 5, 9, 9, 1], dtype=np.uint64)
    rids = np.array([30, 10, 20, 7, 8, 99])
    pairs = minhash.candidate_pairs(keys, rids).tolist()
    assert pairs == [[7, 8], [10, 20], [10, 30], [20, 30]]
    big = minhash.candidate_pairs(np.zeros(40, dtype=np.uint64), np.arange(40))
    assert len(minhash.duplicate_rows(big)) == 39


def test_duplicate_rows_keeps_the_smallest_rid_of_each_cluster():
    pairs = np.array([[5, 7], [7, 9], [1, 2], [9, 11], [40, 30]])
    assert minhash.duplicate_rows(pairs).tolist() == [2, 7, 9, 11, 40]
    assert minhash.duplicate_rows(np.zeros((0, 2), dtype=np.int64)).tolist() == []


def test_near_dedup_end_to_end_on_pure_functions_across_blocks():
    """Signatures per block, bands shuffled together, pairs verified, clusters resolved: only near copies go."""
    rng = random.Random(3)
    originals = [document(rng) for _ in range(40)]
    copies = {5: perturb(rng, originals[5], 2), 17: perturb(rng, originals[17], 3), 30: originals[30].upper()}
    texts = originals + list(copies.values())
    blocks = [texts[i : i + 15] for i in range(0, len(texts), 15)]
    rids = [np.array([make_rid(b, i) for i in range(len(block))]) for b, block in enumerate(blocks)]
    sigs = [minhash.signatures(pa.array(block), 128, 5, 42) for block in blocks]
    keys = np.concatenate([minhash.band_keys(s, 16).ravel() for s in sigs])
    key_rids = np.concatenate([np.repeat(r, 16) for r in rids])
    candidates = minhash.candidate_pairs(keys, key_rids)
    all_rids, all_sigs = np.concatenate(rids), np.concatenate(sigs)
    a = all_sigs[np.searchsorted(all_rids, candidates[:, 0])]
    b = all_sigs[np.searchsorted(all_rids, candidates[:, 1])]
    drops = minhash.duplicate_rows(candidates[minhash.similar(a, b, 0.7)])
    dropped_texts = {texts[int(np.flatnonzero(all_rids == r)[0])] for r in drops}
    assert dropped_texts == set(copies.values())


def _reference_shingles(text: str | None, k: int) -> list[int]:
    """Shingle hashes by their definition, one document at a time in plain Python."""
    import re

    words = re.sub(r"[^\w\s]|_", " ", (text or "").lower()).split()
    words_hash = [int(hashing.hash_strings(pa.array([w]))[0]) for w in words]
    windows = [words_hash[i : i + k] for i in range(len(words) - k + 1)] or ([words_hash] if words_hash else [])
    values = []
    for window in windows:
        acc = window[0]
        for h in window[1:]:
            acc = (acc * 0x100000001B3 + h) % (1 << 64)
        values.append(acc)
    return values


def test_shingles_are_word_windows_of_each_document_cut_from_the_bytes():
    texts = ["  lead and  trail ", "one", "", None, "a\tb\nc\rd\x0ce", "x,y;z w", "é 日本 ok", "\u00a0nb\u00a0sp"]
    for k in (1, 2, 3):
        hashes, docs = minhash.shingle_hashes(pa.array(texts), k)
        unmixed = [[] for _ in texts]
        for doc, value in zip(docs.tolist(), hashes.tolist(), strict=True):
            unmixed[doc].append(value)
        expected = [hashing.mix64(np.array(_reference_shingles(t, k), dtype=np.uint64)).tolist() for t in texts]
        assert unmixed == expected, k
