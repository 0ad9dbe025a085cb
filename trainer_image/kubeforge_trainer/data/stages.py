"""The pure work of each stage of the data step, one function per piece of logic, applied by the Ray tasks of
pipeline.py to one Arrow block (or one reduce partition) at a time."""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from kubeforge.api import DataPipelineSpec
from kubeforge.api.datapipeline import NearDedupParams

from . import chat, hashing, hftokenizer, kernels, minhash, split, tokenize
from .columns import (
    CHAT_COLUMNS,
    CONTENT_HASH,
    KEY,
    LABEL,
    PARTS,
    PREFERENCE_COLUMNS,
    RID,
    TEXT,
    TIME,
    numeric_column,
)
from .errors import DataPipelineError
from .kernels import fused, textscan
from .plan import Step, plan_pipeline
from .readers import Chunk, ReadSpec, read_chunk


def apply_local_steps(
    table: pa.Table, steps: Sequence[Step], content_hash: bool = False
) -> tuple[pa.Table, list[tuple[int, int, float]]]:
    """Run row-local operations in order, the first ones in one fused pass where they allow it (fused.py); returns
    the table and (rows in, rows out, CPU seconds) of each. With content_hash, the table gains a CONTENT_HASH column:
    what exact dedup would compute from the final text, computed here while the pass reads it."""
    fusable = fused.fusable_prefix(steps) if TEXT in table.column_names and kernels.enabled() else 0
    counts: list[tuple[int, int, float]] = []
    hashes = None
    if fusable:
        table, counts, hashes = fused.run_fused(table, steps[:fusable], content_hash and fusable == len(steps))
    table, rest = fused.apply_each(table, steps[fusable:])
    if content_hash:
        if hashes is None:
            hashes = hashing.content_hashes(table.column(TEXT), normalize=True)
        table = table.append_column(CONTENT_HASH, pa.array(hashes, pa.uint64()))
    return table, counts + rest


def read_and_clean(
    chunk: Chunk, read: ReadSpec, steps: Sequence[Step], content_hash: bool = False
) -> tuple[pa.Table, dict]:
    """Read one chunk and run the first row-local operations on it; (the rows, their statistics)."""
    started = time.process_time()
    result = read_chunk(chunk, read)
    # The read's own CPU time, taken before the operations run (each of those is timed on its own).
    read_cpu = time.process_time() - started
    table, counts = apply_local_steps(result.table, steps, content_hash)
    stats = {
        "read": [result.table.num_rows + result.rows_errored, result.table.num_rows, result.rows_errored, read_cpu],
        "filesErrored": result.files_errored,
        "errors": [e.to_dict() for e in result.errors],
        "steps": counts,
    }
    return table, stats


# A few rows that take every row-local operation down its slower paths (tags, entities, non-ASCII, PII, line breaks).
_WARM_UP_TEXTS = [
    "<p>Caf\u00e9 &amp; bar</p>\r\n\n\n  mail a.b@example.com, 10.0.0.1 or fe80::1, call +1 555 123 4567.\t\u00a0end",
    "plain words\nplain words\nplain words",
    "",
    None,
]


def warm_up_table() -> pa.Table:
    """The made-up rows warm_up runs the operations on."""
    rids = pa.array(range(len(_WARM_UP_TEXTS)), pa.int64())
    return pa.table({TEXT: pa.array(_WARM_UP_TEXTS, pa.string()), RID: rids})


def warm_up(steps: Sequence[Step]) -> None:
    """Run the first operations once on a few made-up rows and load the readers, discarding the result: a worker's
    first real task then finds its modules imported and its lazy state set up."""
    for module in ("pyarrow.csv", "pyarrow.json", "pyarrow.parquet"):  # the readers load them on first use
        importlib.import_module(module)

    try:
        apply_local_steps(warm_up_table(), steps, content_hash=True)
    except Exception:  # only a head start: the real tasks run the same operations and report what fails
        return


def compile_kernels() -> None:
    """Compile the data step's numba kernels (the cleaning pass's and MinHash's) into their on-disk cache, raising if
    one fails. The trainer image does this when it is built (with NUMBA_CPU_NAME=generic, so the cache serves every
    x86-64 node), sparing each worker the compile (about 18 CPU s) on its first block."""
    steps = [{kind: {}} for kind in sorted(fused.FUSABLE)]
    spec = DataPipelineSpec.model_validate({"source": {"uris": ["/in"]}, "output": {"uri": "/out"}, "steps": steps})
    with kernels.switched_on():
        apply_local_steps(warm_up_table(), plan_pipeline(spec).segments[0].local_steps, content_hash=True)
        minhash.signatures(warm_up_table().column(TEXT), 8, 2, 0)


def clean(block: pa.Table, steps: Sequence[Step], content_hash: bool = False) -> tuple[pa.Table, dict]:
    """In-memory input (the builtin corpus): the first row-local operations; (the rows, their statistics)."""
    table, counts = apply_local_steps(block, steps, content_hash)
    stats = {"read": [block.num_rows, block.num_rows, 0, 0.0], "filesErrored": 0, "errors": [], "steps": counts}
    return table, stats


def partition_of(hashes: np.ndarray, partitions: int) -> np.ndarray:
    """The reduce partition of each hash."""
    return (np.asarray(hashes, dtype=np.uint64) % np.uint64(partitions)).astype(np.int64)


def partitioned(table: pa.Table, hashes: np.ndarray, partitions: int) -> list[pa.Table]:
    """table cut into one piece per partition of hashes."""
    part = partition_of(hashes, partitions)
    return [table.filter(part == p) for p in range(partitions)]


def global_map(step: Step, block: pa.Table, partitions: int) -> list[Any]:
    """The map side of a whole-dataset step on one block, then its CPU seconds. exactDedup: one (content hash, rid)
    table per reduce partition; nearDedup: the block's (rids, MinHash signatures), then one (band key, rid) table per
    partition; outlierFilter: the non-null values of the numeric column."""
    started = time.process_time()
    if step.kind == "exactDedup":
        outputs: list[Any] = exact_map(block, step.params.normalize, partitions)
    elif step.kind == "nearDedup":
        outputs = minhash_map(block, step.params, partitions)
    else:
        values = block.column(numeric_column(step.params.column)).drop_null()
        outputs = [values.to_numpy() if len(values) else np.zeros(0)]
    return [*outputs, time.process_time() - started]


def global_map_returns(step: Step | None, partitions: int) -> int:
    """How many values global_map returns for the step (0 for none)."""
    if step is None:
        return 0
    return {"exactDedup": partitions, "nearDedup": 1 + partitions}.get(step.kind, 1) + 1


def exact_map(block: pa.Table, normalize: bool, partitions: int) -> list[pa.Table]:
    """(content hash, rid) of each row, cut by hash into reduce partitions; the hash is the CONTENT_HASH column when
    the cleaning pass left one (it is the normalised hash)."""
    if normalize and CONTENT_HASH in block.column_names:
        hashes = block.column(CONTENT_HASH).to_numpy()
    else:
        hashes = hashing.content_hashes(block.column(TEXT), normalize)
    keys = pa.table({"h": pa.array(hashes, pa.uint64()), "rid": block.column(RID)})
    return partitioned(keys, hashes, partitions)


def minhash_map(block: pa.Table, params: NearDedupParams, partitions: int) -> list[Any]:
    """(rids, MinHash signatures) of the block's rows, then the (LSH band key, rid) pairs of the rows with shingles, cut
    by key into reduce partitions."""
    sig = minhash.signatures(block.column(TEXT), params.num_perm, params.shingle_size, params.seed)
    rids = block.column(RID).to_numpy()
    usable = minhash.has_shingles(sig)
    keys = minhash.band_keys(sig[usable], params.bands).ravel()
    table = pa.table({"key": pa.array(keys, pa.uint64()), "rid": pa.array(np.repeat(rids[usable], params.bands))})
    return [(rids, sig), *partitioned(table, keys, partitions)]


def exact_duplicates(hashes: np.ndarray, rids: np.ndarray) -> np.ndarray:
    """Rows to drop (sorted rids): all but the first (smallest rid) of each group of equal hashes."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((rids, hashes))
    h = hashes[order]
    first = np.concatenate([[True], h[1:] != h[:-1]])
    return np.sort(rids[order][~first])


def drop_rids(table: pa.Table, drops: np.ndarray) -> pa.Table:
    """The rows whose rid is not in the sorted drops."""
    if len(drops) == 0 or table.num_rows == 0:
        return table
    rids = table.column(RID).to_numpy()
    lo, hi = np.searchsorted(drops, [rids.min(), rids.max() + 1])
    mine = drops[lo:hi]
    if len(mine) == 0:
        return table
    return table.filter(~np.isin(rids, mine, assume_unique=True))


def keep_in_range(table: pa.Table, column: str, low: float, high: float) -> pa.Table:
    """Rows whose numeric column is within [low, high]; rows without a value are kept (nothing to test)."""
    values = table.column(column)
    inside = pc.and_(pc.greater_equal(values, low), pc.less_equal(values, high))
    return table.filter(pc.fill_null(inside, True))


def outlier_bounds(values: np.ndarray, method: str, threshold: float) -> tuple[float, float]:
    """[low, high] of the non-outliers: mean ± threshold standard deviations, or the quartiles ± threshold IQRs."""
    if len(values) == 0:
        return -math.inf, math.inf
    if method == "zscore":
        mean, std = float(np.mean(values)), float(np.std(values))
        return mean - threshold * std, mean + threshold * std
    q1, q3 = (float(q) for q in np.quantile(values, [0.25, 0.75]))
    return q1 - threshold * (q3 - q1), q3 + threshold * (q3 - q1)


def assign_splits(keys: pa.Table, method: str, cuts: Any, fractions: tuple[float, float, float]) -> np.ndarray:
    """Split index of each row of a keys table, by method."""
    if method == "hash":
        return split.hash_split(keys.column("key").to_pylist(), fractions)
    if method == "stratified":
        groups = label_groups(keys.column("label"), cuts["labels"])
        return split.assign_stratified(keys.column("key").to_numpy(), groups, cuts["cuts"])
    return split.assign_by_cuts(keys.column("key").to_numpy(), cuts)


def label_groups(labels: pa.ChunkedArray, vocabulary: list[str]) -> np.ndarray:
    return pc.index_in(labels, value_set=pa.array(vocabulary, pa.string())).to_numpy(zero_copy_only=False)


def final_assignment(rids: np.ndarray, assigned: np.ndarray, moved: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The split of each row after the leakage moves (moved is sorted, targets in the same order)."""
    result = assigned.copy()
    if len(moved):
        pos = np.searchsorted(moved, rids)
        pos = np.minimum(pos, len(moved) - 1)
        hit = moved[pos] == rids
        result[hit] = targets[pos[hit]]
    return result


def split_keys(block: pa.Table, method: str, seed: int) -> tuple[pa.Table, list[str]]:
    """(rid, content hash, ranking or hash key, label) of each row, and the block's distinct labels. The content
    hash of a conversation is its prompt's, so rows with the same prompt share a split (split.resolve_leakage)."""
    content = hashing.content_hashes(_split_texts(block), normalize=True)
    columns: dict[str, Any] = {"rid": block.column(RID), "ch": pa.array(content, pa.uint64())}
    if method in ("random", "stratified"):
        columns["key"] = pa.array(split.random_keys(content, seed), pa.uint64())
    elif method == "time":
        columns["key"] = block.column(TIME)
    elif method == "hash":
        columns["key"] = block.column(KEY)
    labels: list[str] = []
    if LABEL in block.column_names:
        columns["label"] = block.column(LABEL)
        labels = sorted(set(pc.unique(block.column(LABEL)).drop_null().to_pylist()))
    return pa.table(columns), labels


def _split_texts(block: pa.Table) -> pa.ChunkedArray | pa.Array:
    """The text whose hash keeps rows together in a split: the document, or a conversation's prompt."""
    if PARTS not in block.column_names:
        return block.column(TEXT)
    prompts = []
    for text, parts in zip(block.column(TEXT).to_pylist(), block.column(PARTS).to_pylist(), strict=True):
        try:
            prompts.append(chat.prompt_text(chat.split_text(text, parts), parts))
        except chat.RowProblem:  # reported as an errored row when the row is tokenized
            prompts.append(text or "")
    return pa.array(prompts, pa.string())


def leakage_partition(content_hash: np.ndarray, rids: np.ndarray, assigned: np.ndarray) -> dict[str, Any]:
    """Resolve cross-split duplicates in one hash partition, then check the result: moved rows, their targets,
    the groups that spanned splits before and (the check, recomputed on the final assignment) after."""
    moved, targets, spanning = split.resolve_leakage(content_hash, rids, assigned)
    final = final_assignment(rids, assigned, *_sorted_moves(moved, targets))
    return {"moved": moved, "to": targets, "found": spanning, "after": split.cross_split_groups(content_hash, final)}


def _sorted_moves(moved: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(moved)
    return moved[order], targets[order]


def tokenize_block(
    block: pa.Table, assigned: np.ndarray, bundle: hftokenizer.Bundle, task: str, settings: dict
) -> tuple[dict[str, dict[str, Any]], list[Any]]:
    """Per split: (documents, units, tokens, errored rows and samples of their errors) and the output: a token stream
    with eos after each document (language modelling; units are tokens), a table of truncated ids and labels
    (classification), of input_ids and labels (chat) or of chosen and rejected sequences (preference), or the cleaned
    rows themselves (settings["format"] documents); units are rows except for language modelling."""
    meta: dict[str, dict[str, Any]] = {}
    outputs: list[Any] = []
    for index, name in enumerate(split.SPLITS):
        rows = block.filter(pa.array(assigned == index))
        errored, errors = 0, []
        if settings.get("format") == "documents":
            output, errored, errors = documents_table(rows, task, settings)
            tokens = 0
        elif task in ("chat", "preference"):
            output, errored, errors = conversation_table(rows, bundle, task, settings)
            first = "input_ids" if task == "chat" else "chosen_input_ids"
            tokens = _list_tokens(output.column(first))
            if task == "preference":
                tokens += _list_tokens(output.column("rejected_input_ids"))
        else:
            tokenizer = hftokenizer.tokenizer(bundle)
            ids = tokenize.encode(tokenizer, textscan.combined(pc.fill_null(rows.column(TEXT), "")))
            if task == "languageModeling":
                stream = tokenize.with_eos(ids, settings["eos"])
                outputs.append(stream)
                meta[name] = {"documents": rows.num_rows, "units": len(stream), "tokens": len(stream)}
                meta[name].update(errored=0, errors=[])
                continue
            truncated = tokenize.truncate(ids, settings["sequence_length"])
            names = rows.column(LABEL).combine_chunks().cast(pa.string())
            label_ids = pc.index_in(names, value_set=pa.array(settings["labels"], pa.string())).cast(pa.int32())
            output = pa.table({"input_ids": truncated, "label": label_ids, "label_name": names})
            tokens = _list_tokens(truncated)
        outputs.append(output)
        units = output.num_rows
        meta[name] = {"documents": units, "units": units, "tokens": tokens, "errored": errored, "errors": errors}
        meta[name]["bytes"] = output.nbytes
    return meta, outputs


def _list_tokens(ids: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.sum(pc.list_value_length(ids)).as_py() or 0)


MAX_ERROR_SAMPLES = 20


def _each_conversation(
    rows: pa.Table, task: str, settings: dict, convert: Any
) -> tuple[list[Any], np.ndarray, int, list[dict]]:
    """(convert(segments, roles) of each conversation row that converts, which rows did, errored rows, samples of
    their errors): a row that cannot be converted (chat.RowProblem) fails the run under onError: fail and is an errored
    row under skip."""
    results: list[Any] = []
    converted = np.zeros(rows.num_rows, dtype=bool)
    errored, errors = 0, []
    texts, roles = rows.column(TEXT).to_pylist(), rows.column(PARTS).to_pylist()
    for row, (text, parts, rid) in enumerate(zip(texts, roles, rows.column(RID).to_pylist(), strict=True)):
        try:
            results.append(convert(chat.split_text(text, parts), parts))
            converted[row] = True
        except chat.RowProblem as problem:
            if settings.get("on_error", "fail") == "fail":
                raise DataPipelineError(f"spec.tokenizer.task: {task} row {rid}: {problem}") from None
            errored += 1
            if len(errors) < MAX_ERROR_SAMPLES:
                errors.append(
                    {"field": "spec.tokenizer.task", "source": "tokenize", "row": rid, "reason": str(problem)}
                )
    return results, converted, errored, errors


def conversation_table(
    rows: pa.Table, bundle: hftokenizer.Bundle, task: str, settings: dict
) -> tuple[pa.Table, int, list[dict]]:
    """(the tokenized rows, how many rows were errored, samples of their errors) of conversations (chat: input_ids,
    labels) or preference pairs (chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels)."""
    hf = hftokenizer.transformers_tokenizer(bundle)
    tok = hftokenizer.tokenizer(bundle)
    max_length = settings["sequence_length"]

    def render(messages: list[dict], generation_prompt: bool) -> str:
        try:
            return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as exc:  # jinja2 raises TemplateError (and a template may raise what it likes)
            first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise chat.RowProblem(f"the chat template failed: {first}") from None

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenize.encode_lists(tok, texts)

    def convert(pieces: list[str], parts: list[str]) -> list[np.ndarray]:
        if task == "chat":
            spans = chat.spans(render, chat.messages_of(pieces, parts))
            return list(chat.truncate_chat(*chat.encode_spans(encode, spans), max_length))
        return [a for sequence in chat.render_preference(render, encode, pieces, parts, max_length) for a in sequence]

    results, _, errored, errors = _each_conversation(rows, task, settings, convert)
    names = CHAT_COLUMNS if task == "chat" else PREFERENCE_COLUMNS
    list_type = pa.list_(pa.int32())
    table = pa.table({n: pa.array([r[i].tolist() for r in results], list_type) for i, n in enumerate(names)})
    return table, errored, errors


_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def documents_table(rows: pa.Table, task: str, settings: dict) -> tuple[pa.Table, int, list[dict]]:
    """(the cleaned rows as documents, errored rows, error samples): a stable id (a 64-bit hash of the cleaned
    content, hex; equal rows left by a pipeline without dedup share it), the text or the conversation (messages; for
    a preference pair its prompt messages, chosen and rejected), and the fields the pipeline read (label, key, time)."""
    keep = np.ones(rows.num_rows, dtype=bool)
    columns: dict[str, Any] = {}
    errored, errors = 0, []
    if PARTS in rows.column_names:
        results, keep, errored, errors = _each_conversation(rows, task, settings, lambda p, r: (p, r))
        if task == "preference":
            prompts = [chat.messages_of(p[:-2], r[:-2]) for p, r in results]
            columns.update(
                prompt=pa.array(prompts, _MESSAGES),
                chosen=pa.array([p[-2] for p, _ in results], pa.string()),
                rejected=pa.array([p[-1] for p, _ in results], pa.string()),
            )
        else:
            columns["messages"] = pa.array([chat.messages_of(p, r) for p, r in results], _MESSAGES)
    else:
        columns["text"] = rows.column(TEXT)
    kept = rows.filter(pa.array(keep)) if not keep.all() else rows
    ids = hashing.content_hashes(kept.column(TEXT), normalize=False)
    columns = {"id": pa.array([f"{int(h):016x}" for h in ids], pa.string()), **columns}
    for column, name in ((LABEL, "label"), (KEY, "key"), (TIME, "time")):
        if column in kept.column_names:
            columns[name] = kept.column(column)
    return pa.table(columns), errored, errors


def shard_table(task: str, sequence_length: int, parts: list[Any]) -> tuple[pa.Table, int]:
    """(the shard's table, its tokens) from the pieces of block outputs it is made of."""
    if task == "languageModeling":
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        return pa.table({"input_ids": tokenize.pack(stream, sequence_length)}), len(stream)
    table = pa.concat_tables(parts)
    lists = [c for c in ("input_ids", PREFERENCE_COLUMNS[0], PREFERENCE_COLUMNS[2]) if c in table.column_names]
    return table, sum(_list_tokens(table.column(c)) for c in lists)


def slice_output(output: Any, start: int, end: int) -> Any:
    """Units [start, end) of a block's output (a token stream or a table)."""
    return output[start:end] if isinstance(output, np.ndarray) else output.slice(start, end - start)
