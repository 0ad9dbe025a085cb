"""MinHash signatures, LSH banding, candidate pairs and duplicate clusters, vectorised with numpy (the signatures'
minima with numba).

Shingles are word n-grams of the lower-cased text with punctuation removed. Each permutation is a multiply-shift hash
of the 64-bit shingle hash; a signature keeps the minimum of each over the document's shingles (uint32). Documents
sharing the hash of one band of their signature are candidates; a candidate pair is a duplicate when the share of
equal signature values (the estimated Jaccard similarity) reaches the threshold; duplicates cluster transitively
(connected components) and each cluster keeps its first row.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import kernels
from .hashing import hash_strings, mix64
from .kernels import textscan

EMPTY = np.uint32(0xFFFFFFFF)
_COMBINE = np.uint64(0x100000001B3)  # odd multiplier combining word hashes into a shingle hash
_ALL_PAIRS_MAX = 16  # buckets up to this size compare every pair; larger ones a star and a chain
_SLICE_BYTES = 8 << 20  # text signed at once (see signatures)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (multipliers, offsets) of num_perm multiply-shift hash functions (odd multipliers), seeded."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
    return a, b


def shingle_hashes(text: pa.Array | pa.ChunkedArray, shingle_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, document index) of every word shingle, grouped by document in order; a document shorter than
    shingle_size words has one shingle of all its words, a document without words none."""
    cleaned = pc.replace_substring_regex(pc.utf8_lower(pc.fill_null(text, "")), r"[^\p{L}\p{N}\s]+", " ")
    word_hash, doc = _word_hashes(textscan.combined(cleaned))
    counts = np.bincount(doc, minlength=len(text)).astype(np.int64)
    if len(word_hash) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    k = shingle_size
    windows = max(len(word_hash) - k + 1, 0)
    with np.errstate(over="ignore"):
        # Every window of k consecutive words, by Horner's rule on contiguous slices; the documents lie one after
        # the other, so a window is a shingle when its first and last words are of one document.
        acc = word_hash[:windows].copy()
        for j in range(1, k):
            acc *= _COMBINE
            acc += word_hash[j : windows + j]
        full = doc[:windows] == doc[k - 1 : windows + k - 1]
        acc, doc_full = acc[full], doc[:windows][full]
        # Short documents: one shingle of all their words (few; a masked loop is fine).
        doc_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        short = np.flatnonzero((counts > 0) & (counts < k))
        short_acc = word_hash[doc_start[short]]
        for j in range(1, k):
            inside = j < counts[short]
            step = word_hash[np.where(inside, doc_start[short] + j, 0)]
            short_acc = np.where(inside, short_acc * _COMBINE + step, short_acc)
    if len(short):
        order = np.argsort(np.concatenate([doc_full, short]), kind="stable")
        return mix64(np.concatenate([acc, short_acc])[order]), np.concatenate([doc_full, short])[order]
    return mix64(acc), doc_full


# What the cleaning regex leaves between words: RE2's \s, ASCII whitespace without the vertical tab.
_SEPARATORS = "\t\n\x0c\r "
_SEPARATOR_BYTES = textscan.byte_set_table(_SEPARATORS.encode())


def _word_hashes(cleaned: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(hash, document index) of every word of the cleaned texts, in order. The texts are cut into pieces at each
    word start straight from their bytes (a piece is a word and the separators after it, or a row's leading
    separators), and each distinct piece is trimmed and hashed once."""
    view = textscan.utf8_bytes(cleaned)
    size = len(view.data)
    if size == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    separator = textscan.byte_class(view.data, _SEPARATOR_BYTES)
    word_starts = np.zeros(size, dtype=bool)
    np.greater(separator[:-1], separator[1:], out=word_starts[1:])  # a separator, then a word byte
    pieces, first_piece = textscan.cut_rows(view, word_starts)
    encoded = pc.dictionary_encode(pieces)
    words = pc.utf8_trim(encoded.dictionary, _SEPARATORS)
    is_word = pc.not_equal(words, "").to_numpy(zero_copy_only=False)
    piece_word = encoded.indices.to_numpy()
    pieces_per_doc = np.diff(first_piece)
    doc = np.repeat(np.arange(len(view), dtype=np.int64), pieces_per_doc)
    keep = is_word[piece_word]
    return hash_strings(words)[piece_word[keep]], doc[keep]


def signatures(text: pa.Array | pa.ChunkedArray, num_perm: int, shingle_size: int, seed: int) -> np.ndarray:
    """MinHash signatures (documents x num_perm, uint32); a document without words gets all EMPTY."""
    text = textscan.combined(text)
    sig = np.full((len(text), num_perm), EMPTY, dtype=np.uint32)
    a, b = permutations(num_perm, seed)
    # A slice of rows at a time: the temporaries (several arrays of 8 bytes a word) stay a few tens of MB, which the
    # allocator hands back from slice to slice; a whole 50 MB block's were fresh pages each time, whose faults cost
    # 0.4-0.8 CPU s a block, and the peak memory of a task grew with its block. At 16 MB a worker's first block
    # still paid 0.1-0.5 CPU s of faults growing its heap; at 8 MB about 0.03, and later blocks take the same time.
    for start, stop in textscan.row_slices(textscan.utf8_bytes(text), _SLICE_BYTES):
        hashes, docs = shingle_hashes(text.slice(start, stop - start), shingle_size)
        fold = _fold_minima if kernels.enabled() else fold_minima_numpy
        fold(sig[start:stop], hashes, docs, a, b)
    return sig


def fold_minima_numpy(sig: np.ndarray, hashes: np.ndarray, docs: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """_fold_minima in numpy (the reference path): broadcast multiply and reduceat, a few thousand shingles at a time
    so the (shingles x permutations) temporary stays a few MB."""
    step = 8192
    with np.errstate(over="ignore"):
        for i in range(0, len(hashes), step):
            h, d = hashes[i : i + step], docs[i : i + step]
            starts = np.flatnonzero(np.concatenate([[True], d[1:] != d[:-1]]))
            mins = np.minimum.reduceat(h[:, None] * a[None, :] + b[None, :], starts, axis=0)
            rows = d[starts]
            sig[rows] = np.minimum(sig[rows], (mins >> np.uint64(32)).astype(np.uint32))


@numba.njit(cache=True, nogil=True)
def _fold_minima(sig: np.ndarray, hashes: np.ndarray, docs: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Lower each document's signature (rows of sig, in place) to the top 32 bits of the minima of its shingles'
    permuted hashes (h * a + b, modulo 2**64); the shingles come grouped by document. One pass, the permutations in
    the inner loop (the compiler vectorises it): 12x numpy's broadcast multiply and reduceat, the same values."""
    num_perm = a.shape[0]
    mins = np.empty(num_perm, dtype=np.uint64)
    i, n = 0, hashes.shape[0]
    while i < n:
        doc = docs[i]
        mins[:] = np.uint64(0xFFFFFFFFFFFFFFFF)
        while i < n and docs[i] == doc:
            h = hashes[i]
            for j in range(num_perm):
                mins[j] = min(mins[j], h * a[j] + b[j])
            i += 1
        # The top 32 bits after the minimum equal the minimum of the top 32 bits (the shift keeps order).
        for j in range(num_perm):
            sig[doc, j] = min(sig[doc, j], np.uint32(mins[j] >> np.uint64(32)))


def has_shingles(sig: np.ndarray) -> np.ndarray:
    """Which documents had at least one shingle (only those take part in LSH)."""
    return ~np.all(sig == EMPTY, axis=1)


def band_keys(sig: np.ndarray, bands: int) -> np.ndarray:
    """The LSH bucket key of each band of each signature (documents x bands, uint64); the band index is mixed in so
    equal values in different bands do not collide."""
    n, num_perm = sig.shape
    rows = num_perm // bands
    keys = np.empty((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            acc = np.full(n, np.uint64(band) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
            for j in range(band * rows, (band + 1) * rows):
                acc = mix64(acc ^ sig[:, j].astype(np.uint64))
            keys[:, band] = acc
    return keys


def candidate_pairs(keys: np.ndarray, rids: np.ndarray) -> np.ndarray:
    """Candidate pairs (k x 2, smaller rid first, unique) of rows sharing a bucket key: every pair in small buckets,
    a star from the first row and a chain in rid order in large ones."""
    if len(keys) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort((rids, keys))
    k, r = keys[order], rids[order]
    new_group = np.concatenate([[True], k[1:] != k[:-1]])
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.append(starts, len(k)))
    size_of = sizes[group]
    first_of = starts[group]
    members = np.flatnonzero(~new_group)  # every row but the first of its bucket
    pairs = [np.stack([r[first_of[members]], r[members]], axis=1)]
    big = members[size_of[members] > _ALL_PAIRS_MAX]
    pairs.append(np.stack([r[big - 1], r[big]], axis=1))
    for g in np.flatnonzero((sizes > 2) & (sizes <= _ALL_PAIRS_MAX)):
        rest = r[starts[g] + 1 : starts[g] + sizes[g]]  # pairs with the first are in the star already
        i, j = np.triu_indices(len(rest), k=1)
        pairs.append(np.stack([rest[i], rest[j]], axis=1))
    out = np.concatenate(pairs).astype(np.int64)
    out = out[out[:, 0] != out[:, 1]]
    out.sort(axis=1)
    return np.unique(out, axis=0) if len(out) else out


def similar(sig_a: np.ndarray, sig_b: np.ndarray, threshold: float) -> np.ndarray:
    """Whether each pair of signatures estimates a Jaccard similarity of at least threshold."""
    return np.mean(sig_a == sig_b, axis=1) >= threshold


def duplicate_rows(pairs: np.ndarray) -> np.ndarray:
    """Rows to drop (sorted rids): every member of a cluster of duplicate pairs but the one with the smallest rid."""
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.int64)
    nodes, inverse = np.unique(pairs.ravel(), return_inverse=True)
    edges = inverse.reshape(-1, 2)
    label = np.arange(len(nodes))
    while True:
        low = np.minimum(label[edges[:, 0]], label[edges[:, 1]])
        new = label.copy()
        np.minimum.at(new, edges[:, 0], low)
        np.minimum.at(new, edges[:, 1], low)
        new = new[new]  # pointer jumping: follow labels to their roots
        if np.array_equal(new, label):
            break
        label = new
    # nodes are sorted, so the smallest index of a component is its smallest rid.
    return np.sort(nodes[label != np.arange(len(nodes))])
