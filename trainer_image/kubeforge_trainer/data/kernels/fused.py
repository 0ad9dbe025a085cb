"""Fused cleaning: a run of row-local operations that only rewrite text or drop rows (dropEmpty, stripHtml,
normalizeUnicode, collapseWhitespace, maskPii, lengthFilter, qualityFilter) done by one compiled pass per block, with
the exact operations of ops.py run on the rows that pass cannot settle.

The pass (textkernels.fused_scan) reads each row once. A plain ASCII row that no operation changes, or whose only
change is collapsing its whitespace (done in the pass), gets its filter features, and the filters decide on those
with the same functions ops.py uses. Every other row (HTML, entities, PII-like runs, non-ASCII, control characters,
null) goes through ops.py unchanged. Operations are row-local, so each row's result, and each operation's rows in and
out, are those of running the operations one after another on the whole block.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from .. import hashing, ops
from ..columns import TEXT
from ..plan import Step
from . import textkernels, textmarkup, textscan

FUSABLE = frozenset(
    {"dropEmpty", "stripHtml", "normalizeUnicode", "collapseWhitespace", "maskPii", "lengthFilter", "qualityFilter"}
)
"""The operations the pass can do: they rewrite the text of a row or drop it, and read nothing but its text."""

_ROW = "_fused_row"
"""A temporary column: each exact-path row's position in the block."""


def fusable_prefix(steps: Sequence[Step]) -> int:
    """How many of the first steps the pass can run."""
    count = 0
    for step in steps:
        if step.kind not in FUSABLE:
            break
        count += 1
    return count


_TRANSFORMS = ("stripHtml", "normalizeUnicode", "collapseWhitespace", "maskPii")
"""The rewriting operations in the order the pass does them for rows with HTML or PII (textkernels._markup_row)."""


def scan_settings(steps: Sequence[Step], content_hash: bool) -> np.ndarray:
    """The flags of textkernels.fused_scan for these steps."""
    kinds = [s.kind for s in steps]
    collapse_at = kinds.index("collapseWhitespace") if "collapseWhitespace" in kinds else len(steps)
    # Character counts and repeated lines change when whitespace collapses: the pass rewrites a row only when every
    # filter measuring them runs after the collapse (the other features are the same before and after).
    measured_before = any(
        index < collapse_at
        and (
            (s.kind == "lengthFilter" and ops.counts_chars(s.params))
            or (s.kind == "qualityFilter" and ops.counts_lines(s.params))
        )
        for index, s in enumerate(steps)
    )
    pii = [s.params for s in steps if s.kind == "maskPii"]
    return np.array(
        [
            "stripHtml" in kinds,
            "collapseWhitespace" in kinds,
            "collapseWhitespace" in kinds and not measured_before,
            any(p.emails for p in pii),
            any(p.ip_addresses for p in pii),
            any(p.phone_numbers for p in pii),
            any(s.kind == "qualityFilter" and ops.counts_lines(s.params) for s in steps),
            content_hash,
            _rewrites_markup(steps),
        ],
        dtype=np.uint8,
    )


def _rewrites_markup(steps: Sequence[Step]) -> bool:
    """Whether the pass may rewrite rows with HTML or PII itself: each rewriting operation at most once and in the
    pass's order, every length and quality filter after them (their features are those of the final text; dropEmpty
    goes anywhere, as the pass leaves rows it would empty to ops.py), and replacements of printable ASCII that the
    features and the content hash count as they count the rest."""
    transforms = [s.kind for s in steps if s.kind in _TRANSFORMS]
    if transforms != [kind for kind in _TRANSFORMS if kind in transforms]:
        return False
    last = max((i for i, s in enumerate(steps) if s.kind in _TRANSFORMS), default=-1)
    if any(s.kind in ("lengthFilter", "qualityFilter") and i < last for i, s in enumerate(steps)):
        return False
    return all(len(text) > 0 and text.isascii() and text.isprintable() for text in _replacements(steps))


def _replacements(steps: Sequence[Step]) -> list[str]:
    """maskPii's e-mail and phone replacements (empty when not masked)."""
    pii = next((s.params for s in steps if s.kind == "maskPii"), None)
    if pii is None:
        return []
    return [ops.replacement_text(pii.replacement, kind) for kind in ("EMAIL", "PHONE")]


def _markup_tables(steps: Sequence[Step]) -> tuple:
    """textkernels.fused_scan's markup argument for these steps."""
    forms = tuple(sorted({s.params.form for s in steps if s.kind == "normalizeUnicode"}))
    email, phone = (np.frombuffer(r.encode(), dtype=np.uint8) for r in (_replacements(steps) or ["", ""]))
    return (*textmarkup.entity_table(forms), email, phone)


def scan(view: textscan.Utf8Bytes, steps: Sequence[Step], content_hash: bool) -> tuple:
    """textkernels.fused_scan of a text's bytes for these steps."""
    settings = scan_settings(steps, content_hash)
    markup = _markup_tables(steps)
    return textkernels.fused_scan(view.data, view.starts, view.ends, view.valid, textkernels.CLASSES, settings, markup)


def _keep(step: Step, features: np.ndarray) -> np.ndarray | None:
    """Which rows a filter keeps, from the pass's features (None for an operation that drops nothing here)."""
    rows = len(features)
    if step.kind == "dropEmpty":
        return features[:, textkernels.NON_SPACE] > 0
    if step.kind == "lengthFilter":
        return ops.length_keep(
            step.params, rows, lambda: features[:, textkernels.CHARS], lambda: features[:, textkernels.WORDS]
        )
    if step.kind == "qualityFilter":
        return ops.quality_keep(
            step.params,
            rows,
            lambda: ops.share(features[:, textkernels.ALNUMS], features[:, textkernels.NON_SPACE]),
            lambda: ops.share(features[:, textkernels.REPEATED], features[:, textkernels.LINES]),
        )
    return None


def run_fused(
    table: pa.Table, steps: Sequence[Step], content_hash: bool = False
) -> tuple[pa.Table, list[tuple[int, int, float]], np.ndarray | None]:
    """The steps (all in FUSABLE) on a table: the rows they keep, (rows in, rows out, CPU seconds) of each, and the
    content hash (hashing.content_hashes) of each kept row when asked for."""
    started = time.process_time()
    text = textscan.combined(table.column(TEXT))
    view = textscan.utf8_bytes(text)
    kinds, features, hashes, rewritten, new_starts, new_ends = scan(view, steps, content_hash)
    exact = kinds == textkernels.EXACT_PATH
    alive = ~exact
    counts = []
    for step in steps:
        before = int(alive.sum())
        keep = _keep(step, features)
        if keep is not None:
            alive &= keep
        counts.append([before, int(alive.sum()), 0.0])

    exact_rows = np.flatnonzero(exact)
    exact_text = pa.array([], text.type)
    exact_kept = np.zeros(0, dtype=np.int64)
    exact_seconds = 0.0
    if len(exact_rows):
        subset = table.take(exact_rows).append_column(_ROW, pa.array(exact_rows, pa.int64()))
        done, exact_counts = apply_each(subset, steps)
        for count, (rows_in, rows_out, seconds) in zip(counts, exact_counts, strict=True):
            count[0] += rows_in
            count[1] += rows_out
            count[2] += seconds
            exact_seconds += seconds
        exact_kept = done.column(_ROW).to_numpy()
        exact_text = textscan.combined(done.column(TEXT))

    keep = alive.copy()
    keep[exact_kept] = True
    kept = np.flatnonzero(keep)
    result = _with_text(table, keep, _gather(text, view, kinds, rewritten, new_starts, new_ends, kept, exact_text))
    kept_hashes = None
    if content_hash:
        kept_hashes = hashes[kept]
        if len(exact_kept):
            kept_hashes[np.searchsorted(kept, exact_kept)] = hashing.content_hashes(exact_text)
    # The pass and the merge serve every operation alike: their time is shared out evenly.
    shared = (time.process_time() - started - exact_seconds) / len(steps)
    return result, [(i, o, s + shared) for i, o, s in counts], kept_hashes


def apply_each(table: pa.Table, steps: Sequence[Step]) -> tuple[pa.Table, list[tuple[int, int, float]]]:
    """Run row-local operations of ops.py in order; returns the table and (rows in, rows out, CPU seconds) of each."""
    counts = []
    for step in steps:
        before, started = table.num_rows, time.process_time()
        table = ops.LOCAL_OPERATIONS[step.kind](table, step.params)
        # CPU time, not wall time: it stays meaningful on a busy node (a Ray worker runs one task at a time).
        counts.append((before, table.num_rows, time.process_time() - started))
    return table, counts


def _gather(
    text: pa.Array,
    view: textscan.Utf8Bytes,
    kinds: np.ndarray,
    rewritten: np.ndarray,
    new_starts: np.ndarray,
    new_ends: np.ndarray,
    kept: np.ndarray,
    exact_text: pa.Array,
) -> pa.Array:
    """The final text of the kept rows, in order: unchanged rows from the input, rewritten ones from the pass, the
    others from the exact path (exact_text holds those kept, in order)."""
    kind = kinds[kept]
    starts, ends = view.starts[kept].copy(), view.ends[kept].copy()
    rewrote = kind == textkernels.REWRITTEN
    starts[rewrote], ends[rewrote] = new_starts[kept[rewrote]], new_ends[kept[rewrote]]
    exact_view = textscan.utf8_bytes(exact_text)
    from_exact = kind == textkernels.EXACT_PATH
    starts[from_exact], ends[from_exact] = exact_view.starts, exact_view.ends
    valid = np.ones(len(kept), dtype=bool)
    valid[from_exact] = exact_view.valid
    lengths = np.where(valid, ends - starts, 0)
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = textkernels.gather(view.data, rewritten, exact_view.data, kind, starts, ends, offsets)
    large = pa.types.is_large_string(text.type) or offsets[-1] >= 1 << 31
    nulls = int(len(kept) - valid.sum())
    return pa.Array.from_buffers(
        pa.large_string() if large else pa.string(),
        len(kept),
        [
            pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None,
            pa.py_buffer(offsets if large else offsets.astype(np.int32)),
            pa.py_buffer(data),
        ],
        nulls,
    )


def _with_text(table: pa.Table, keep: np.ndarray, text: pa.Array) -> pa.Table:
    """The kept rows of table with their text replaced (the old text column is not copied)."""
    index = table.schema.get_field_index(TEXT)
    rest = table.remove_column(index).filter(keep)
    return rest.add_column(index, table.schema.field(index).with_type(text.type), text)
