"""The data step on Ray: read, clean, deduplicate, split, tokenize and write a DataPipeline's dataset.

Ray only orchestrates; every computation is a pure function of the other modules, applied to Arrow blocks.

1. Read + the first row-local operations: one Ray task per read chunk, returning the chunk's Arrow block (the
   blocks a Ray Dataset is made of) and, as a second return value, its statistics, so the row accounting is exact
   even when tasks are retried.
2. Each whole-dataset operation is a map-reduce over the blocks with Ray tasks: exact dedup shuffles
   (content hash, row id) pairs to hash partitions; near dedup shuffles LSH band keys, verifies the candidate pairs
   on their MinHash signatures and clusters them; an outlier filter aggregates one numeric column. Only hashes, ids
   and numbers travel, never the texts. The filter that applies the result also runs the row-local operations that
   follow, in the same task, and every task that makes a block (read or filter) runs the map side of the next
   whole-dataset operation on it too, so a stage's reduces start without another round of tasks over the blocks.
   A dedup with no row-local operation after it makes no new blocks: its dropped rows (ids) travel beside the blocks
   and each later task drops them as it reads a block, so the dataset is not copied into the object store again.
3. Split: the ranking keys (8 bytes a row) decide exact cut points; a hash-partitioned pass moves duplicate groups
   that span splits into one. The tokenizer is loaded, or trained in one task streaming the train split block by
   block. Tokenize tasks return per-split token streams; shards are planned over them and written in parallel
   under temporary names, then committed (see writer.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from kubeforge.api import DataPipeline
from kubeforge.api.datapipeline import BuiltinCorpus, ConversationFields, TrainTokenizer

from .. import storage
from . import builtin, chat, hftokenizer, manifest, minhash, split, stages, tokenize, vocab, writer
from .columns import CONTENT_HASH, PARTS, RID, TEXT, make_rid, numeric_column
from .errors import DataPipelineError, find_pipeline_error
from .kernels import allocator
from .plan import Plan, Step, plan_pipeline
from .readers import Chunk, ReadSpec
from .sources import chunk_bytes, plan_chunks, resolve_files

log = logging.getLogger(__name__)

MAX_ERRORS_IN_MANIFEST = 100
TOKENIZER_TRAIN_MAX_BYTES = 256 << 20
"""The tokenizer trains on at most this much of the train split (in order); BPE merges settle long before."""
BUILTIN_BLOCK_BYTES = 4 << 20
BUILTIN_DOCS_PER_BLOCK_MIN = 64


def run_datapipeline(resource: DataPipeline, reporter: Any, cores: int) -> dict:
    """Run the data step of a DataPipeline on the running Ray's `cores` CPUs (warmup.start_workers starts it and
    counts them); returns the manifest written (see docs/contracts.md)."""
    meta = resource.metadata
    who = f"DataPipeline {meta.namespace or 'default'}/{meta.name}"
    try:
        return _Run(resource, reporter, cores).execute()
    except Exception as exc:
        # A task's error comes as RayTaskError(DataPipelineError), whose text carries the remote traceback.
        found = find_pipeline_error(exc)
        if found is None:
            raise
        raise DataPipelineError(f"{who}: {found}") from None


# ---- Ray tasks: thin wrappers around stages.py ---------------------------------------------------------------
# The tasks that work on whole blocks first set this worker's allocator to keep freed memory (allocator.py).


@ray.remote(num_cpus=1)
def _read_and_clean(
    chunk: Chunk, read: ReadSpec, steps: tuple[Step, ...], content_hash: bool, then: Step | None, partitions: int
) -> list:
    allocator.keep_freed_memory()
    return _with_map(*stages.read_and_clean(chunk, read, steps, content_hash), then, partitions)


@ray.remote(num_cpus=1)
def _clean(block: pa.Table, steps: tuple[Step, ...], content_hash: bool, then: Step | None, partitions: int) -> list:
    allocator.keep_freed_memory()
    return _with_map(*stages.clean(block, steps, content_hash), then, partitions)


@ray.remote(num_cpus=1)
def _exact_reduce(*parts: pa.Table) -> tuple[np.ndarray, float]:
    started = time.process_time()
    keys = pa.concat_tables(parts)
    drops = stages.exact_duplicates(keys.column("h").to_numpy(), keys.column("rid").to_numpy())
    return drops, time.process_time() - started


@ray.remote(num_cpus=1)
def _candidate_reduce(*parts: pa.Table) -> tuple[np.ndarray, float]:
    started = time.process_time()
    table = pa.concat_tables(parts)
    pairs = minhash.candidate_pairs(table.column("key").to_numpy(), table.column("rid").to_numpy())
    return pairs, time.process_time() - started


@ray.remote(num_cpus=1)
def _take_signatures(signatures: tuple[np.ndarray, np.ndarray], needed: np.ndarray) -> tuple:
    started = time.process_time()
    rids, sig = signatures
    rows = np.flatnonzero(np.isin(rids, needed))
    return rids[rows], sig[rows], time.process_time() - started


@ray.remote(num_cpus=1)
def _filter_then_clean(
    block: pa.Table,
    dropped: np.ndarray,
    drops: np.ndarray | None,
    bounds: tuple | None,
    steps: Sequence[Step],
    then: Step | None,
    partitions: int,
) -> list:
    allocator.keep_freed_memory()
    started = time.process_time()
    block = stages.drop_rids(block, dropped)
    table = stages.drop_rids(block, drops) if drops is not None else stages.keep_in_range(block, *bounds)
    after, cpu = table.num_rows, time.process_time() - started
    table, counts = stages.apply_local_steps(table, steps)
    return _with_map(table, {"global": [block.num_rows, after, 0, cpu], "steps": counts}, then, partitions)


@ray.remote(num_cpus=1)
def _filter_then_map(block: pa.Table, dropped: np.ndarray, then: Step, partitions: int) -> list:
    """The map side of the next whole-dataset step on a block whose dropped rows are left in it (no new block)."""
    allocator.keep_freed_memory()
    started = time.process_time()
    table = stages.drop_rids(block, dropped)
    return [time.process_time() - started, *stages.global_map(then, table, partitions)]


def _with_map(table: pa.Table, stats: dict, then: Step | None, partitions: int) -> list:
    """What a task that makes a block returns: the block, its statistics, then the map side of the next whole-dataset
    step on it (stages.global_map), so that step's reduces start without another round of tasks over the blocks."""
    outputs = stages.global_map(then, table, partitions) if then is not None else []
    if CONTENT_HASH in table.column_names:  # the cleaning pass's hash, read by exact dedup's map just now
        table = table.drop_columns([CONTENT_HASH])
    return [table, stats, *outputs]


@ray.remote(num_cpus=1, num_returns=2)
def _split_keys(block: pa.Table, dropped: np.ndarray, method: str, seed: int) -> tuple[pa.Table, list[str]]:
    return stages.split_keys(stages.drop_rids(block, dropped), method, seed)


@ray.remote(num_cpus=1)
def _assign_map(keys: pa.Table, method: str, cuts: Any, fractions: tuple, partitions: int) -> list:
    assigned = stages.assign_splits(keys, method, cuts, fractions)
    table = pa.table({"ch": keys.column("ch"), "rid": keys.column("rid"), "split": pa.array(assigned, pa.int8())})
    return [assigned, *stages.partitioned(table, keys.column("ch").to_numpy(), partitions)]


@ray.remote(num_cpus=1)
def _leakage_reduce(*parts: pa.Table) -> dict:
    table = pa.concat_tables(parts)
    return stages.leakage_partition(
        table.column("ch").to_numpy(), table.column("rid").to_numpy(), table.column("split").to_numpy()
    )


@ray.remote(num_cpus=1)
def _final_assignment(keys: pa.Table, assigned: np.ndarray, moved: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return stages.final_assignment(keys.column("rid").to_numpy(), assigned, moved, targets)


@ray.remote(num_cpus=1)
def _train_tokenizer(
    blocks: list,
    dropped: np.ndarray,
    assignments: list,
    vocab_size: int,
    min_frequency: int,
    max_bytes: int,
    base: str | None = None,
    model: str | None = None,
) -> str:
    """A tokenizer trained on the train split (a byte-level BPE, or with base: one like the base, vocab.train_like),
    as tokenizers JSON."""

    def train_texts() -> Iterator[list[str]]:
        used = 0
        # One block in memory at a time.
        for block_ref, assigned_ref in zip(blocks, assignments, strict=True):
            block, assigned = stages.drop_rids(ray.get(block_ref), dropped), ray.get(assigned_ref)
            texts = pc.fill_null(block.column(TEXT).filter(pa.array(assigned == split.TRAIN)), "").to_pylist()
            texts = [t.replace(chat.SEPARATOR, "\n") for t in texts]  # a conversation's messages
            taken = []
            for text in texts:
                taken.append(text)
                used += len(text)
                if used >= max_bytes:
                    yield taken
                    return
            yield taken

    # The only task running now: let the tokenizer's trainer use every core of its node.
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    if base is not None:
        return vocab.train_like(base, train_texts(), vocab_size, min_frequency, model).to_str()
    return tokenize.train_bpe(train_texts(), vocab_size, min_frequency).to_str()


@ray.remote(num_cpus=1, num_returns=5)
def _tokenize_block(
    block: pa.Table, dropped: np.ndarray, assigned: np.ndarray, bundle: Any, task: str, settings: dict
) -> list:
    allocator.keep_freed_memory()
    started = time.process_time()
    meta, outputs = stages.tokenize_block(stages.drop_rids(block, dropped), assigned, bundle, task, settings)
    return [meta, time.process_time() - started, *outputs]


@ray.remote(num_cpus=1)
def _write_shard(
    output_uri: str, tmp: str, final: str, settings: dict, pieces: list, *outputs: Any
) -> tuple[writer.ShardInfo, float]:
    started = time.process_time()
    parts = [stages.slice_output(o, start, end) for o, (start, end) in zip(outputs, pieces, strict=True)]
    table, tokens = stages.shard_table(settings["task"], settings["sequence_length"], parts)
    info = writer.write_shard(
        output_uri, tmp, final, table, settings["compression"], tokens, settings.get("fileFormat", "parquet")
    )
    return info, time.process_time() - started


# ---- the run -----------------------------------------------------------------------------------------------------


class _Run:
    """One execution of the data step; its methods are the stages, in order."""

    def __init__(self, resource: DataPipeline, reporter: Any, cores: int) -> None:
        self.resource = resource
        self.spec = resource.spec
        self.reporter = reporter
        self.output = self.spec.output.uri
        self.operations: list[manifest.OpStats] = []
        self.errors: list[dict] = []
        self.files_errored = 0
        self.cores = cores
        self.stage_seconds: dict[str, float] = {}
        self.stage_cpu: dict[str, float] = {}
        self._stage: str | None = None
        self._stage_started = 0.0

    def _enter(self, stage: str | None) -> None:
        """Start timing a stage (wall clock), ending the previous one."""
        now = time.perf_counter()
        if self._stage:
            self.stage_seconds[self._stage] = self.stage_seconds.get(self._stage, 0.0) + now - self._stage_started
        self._stage, self._stage_started = stage, now

    # -- driver

    def execute(self) -> dict:
        """Check the spec and run the stages; returns the manifest."""
        return self._execute(plan_pipeline(self.spec))

    def _execute(self, plan: Plan) -> dict:
        self.partitions = self.cores

        source, input_digest = self._source(plan)
        input_digest = self._with_tokenizer_files(plan, input_digest)
        spec_digest = manifest.spec_hash(self.spec)
        done = self._complete_manifest(spec_digest, input_digest)
        if done is not None:
            log.info("%s is complete for this spec and input; nothing to do", self.output)
            self._report(**self._status(done))
            self.reporter.flush()
            return done
        writer.remove_temporary(self.output, split.SPLITS)

        self.operations = [manifest.OpStats("read")] + [manifest.OpStats(s.name) for s in plan.steps]
        segments = plan.segments
        # Whole-dataset steps in order; each task that makes a block also runs the next one's map side on it.
        globals_ = [s.global_step for s in segments[1:]]
        blocks, maps = self._read(plan, source, globals_[0] if globals_ else None)
        dropped = np.zeros(0, dtype=np.int64)  # rows still in the blocks that a dedup dropped (sorted rids)
        step_position = {s.index: i + 1 for i, s in enumerate(plan.steps)}
        for index, segment in enumerate(segments[1:]):
            then = globals_[index + 1] if index + 1 < len(globals_) else None
            blocks, dropped, maps = self._global(
                segment.global_step, segment.local_steps, blocks, dropped, maps, then, step_position
            )
        totals = manifest.accounting(self.operations)
        if totals["rowsOut"] == 0:
            raise DataPipelineError(
                f"spec.steps: no rows left to write ({totals['rowsIn']} read, {totals['rowsDropped']} dropped, "
                f"{totals['rowsErrored']} errored)"
            )
        return self._split_tokenize_write(plan, blocks, dropped, spec_digest, input_digest)

    def _with_tokenizer_files(self, plan: Plan, input_digest: str) -> str:
        """The input fingerprint, covering a given tokenizer's files too: a rerun after the model directory's
        tokenizer changed writes the data again rather than keeping ids of the old one."""
        tok = self.spec.tokenizer
        if plan.output_format == "documents" or not (tok.from_model or tok.path):
            return input_digest
        if tok.from_model:
            files = hftokenizer.tokenizer_files_digest(tok.from_model)
        else:
            files = _sha256(tokenize.load_tokenizer(tok.path).to_str())
        return _sha256(f"{input_digest} {files}")

    def _report(self, **fields: Any) -> None:
        self.reporter.report(**fields)

    def _report_operations(self, progress: str) -> None:
        done = [op for op in self.operations if op.rows_in or op.rows_out]
        self._report(progress=progress, operations=[op.to_wire() for op in self.operations])
        if done:
            first, last = self.operations[0], done[-1]
            self._report(
                rowsIn=first.rows_in,
                rowsOut=last.rows_out,
                rowsDropped=sum(op.rows_dropped for op in done),
                rowsErrored=sum(op.rows_errored for op in done),
            )

    def _wait(self, refs: list, stage: str) -> None:
        """Wait for refs, reporting '<stage> k/n' as they finish."""
        pending, total, finished = list(refs), len(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            finished += len(ready)
            self._report(progress=f"{stage} {finished}/{total}")

    # -- input

    def _source(self, plan: Plan) -> tuple[Any, str]:
        """(read chunks, or the builtin corpus as blocks in the object store; the input fingerprint)."""
        source = self.spec.source
        if source.builtin is not None:
            return self._builtin_blocks(source.builtin, plan.read.conversation)
        files = resolve_files(source)
        target = chunk_bytes(sum(f.size for f in files), self.cores)
        chunks = plan_chunks(files, plan.read.format, plan.read.text_mode, target)
        return chunks, manifest.fingerprint([(f.uri, f.size, f.mtime) for f in files])

    def _builtin_blocks(self, corpus: BuiltinCorpus, conversation: str | None) -> tuple[list[ray.ObjectRef], str]:
        """The builtin corpus as blocks in the object store, built as the documents come (the driver holds one block's
        texts at a time), and its fingerprint (a hash of every document). Derived conversations carry their roles."""
        digest = hashlib.sha256(f"system-docs {corpus.derive} {corpus.max_documents}".encode())
        blocks: list[ray.ObjectRef] = []
        texts: list[str] = []
        parts: list[list[str]] = []
        size = 0

        def put() -> None:
            rids = np.arange(len(texts), dtype=np.int64) + make_rid(len(blocks), 0)
            columns = {TEXT: pa.array(texts, pa.string()), RID: rids}
            if conversation:
                columns[PARTS] = pa.array(parts, pa.list_(pa.string()))
            blocks.append(ray.put(pa.table(columns)))

        for text, roles in self._builtin_rows(corpus, conversation):
            digest.update(hashlib.sha256(text.encode()).digest())
            texts.append(text)
            parts.append(roles)
            size += len(text)
            if size >= BUILTIN_BLOCK_BYTES and len(texts) >= BUILTIN_DOCS_PER_BLOCK_MIN:
                put()
                texts, parts, size = [], [], 0
        if texts:
            put()
        if not blocks:
            raise DataPipelineError("spec.source.builtin: no documents found on this machine")
        return blocks, digest.hexdigest()

    @staticmethod
    def _builtin_rows(corpus: BuiltinCorpus, conversation: str | None) -> Iterator[tuple[str, list[str]]]:
        """(text, segment roles) of each builtin row: documents, or derived conversations in the reader's form."""
        if corpus.derive == "documents":
            for text in builtin.system_docs(corpus.max_documents):
                yield text, []
            return
        fields = ConversationFields()
        for record in builtin.derived_records(corpus.derive, corpus.max_documents):
            segments, roles = chat.segments(record, fields, conversation or "chat")
            yield chat.joined(segments), roles

    def _complete_manifest(self, spec_digest: str, input_digest: str) -> dict | None:
        """The existing manifest when it was written for this spec and input and all its shards are there."""
        uri = storage.join(self.output, writer.MANIFEST_FILE)
        try:
            if not storage.exists(uri):
                return None
            existing = json.loads(storage.read_text(uri))
        except (OSError, ValueError):
            return None
        if (
            existing.get("formatVersion") != manifest.FORMAT_VERSION
            or existing.get("specHash") != spec_digest
            or existing.get("inputFingerprint") != input_digest
        ):
            return None
        fs, root = storage.resolve(self.output)
        for entry in existing.get("splits", {}).values():
            for shard in entry.get("shards", []):
                info = fs.get_file_info(f"{root}/{shard['path']}")
                if info.size != shard["bytes"]:
                    return None
        tokenizer_file = existing.get("tokenizer")
        if tokenizer_file and not storage.exists(storage.join(self.output, tokenizer_file)):
            return None
        return existing

    # -- stage 1: read and clean

    def _read(self, plan: Plan, source: Any, then: Step | None) -> tuple[list, list]:
        """(blocks, the map outputs of the first whole-dataset step on each) after reading and the first steps."""
        first = plan.segments[0].local_steps
        # Exact dedup right after: the cleaning pass hashes the text it already reads.
        content_hash = then is not None and then.kind == "exactDedup" and then.params.normalize
        self._enter("read")
        self._report(progress="read", outputUri=self.output)
        parts = self.partitions
        returns = 2 + stages.global_map_returns(then, parts)
        if source and isinstance(source[0], Chunk):
            read = _read_and_clean.options(num_returns=returns)
            outputs = [read.remote(chunk, plan.read, first, content_hash, then, parts) for chunk in source]
        else:
            clean = _clean.options(num_returns=returns)
            outputs = [clean.remote(block, first, content_hash, then, parts) for block in source]
        blocks = [o[0] for o in outputs]
        self._wait([o[1] for o in outputs], "read")
        all_stats = ray.get([o[1] for o in outputs])
        for entry in all_stats:
            self.operations[0].add(*entry["read"])
            self.files_errored += entry["filesErrored"]
            self.errors.extend(entry["errors"][: max(0, MAX_ERRORS_IN_MANIFEST - len(self.errors))])
            for position, (rows_in, rows_out, seconds) in enumerate(entry["steps"], start=1):
                self.operations[position].add(rows_in, rows_out, 0, seconds)
        for error in self.errors[:5]:
            log.warning("skipped: %s: %s row %s: %s", error["field"], error["source"], error["row"], error["reason"])
        self._report_operations(f"read {len(blocks)}/{len(blocks)}")
        return blocks, [o[2:] for o in outputs]

    # -- stage 2: whole-dataset operations

    def _global(
        self,
        step: Step,
        after: tuple[Step, ...],
        blocks: list,
        dropped: np.ndarray,
        maps: list,
        then: Step | None,
        position: dict[int, int],
    ) -> tuple[list, np.ndarray, list]:
        """Reduce a whole-dataset step's map outputs and apply the result, with the row-local steps after it, to every
        block (and the next whole-dataset step's map side); (blocks, the rows dropped but still in them, the map
        outputs). A dedup with nothing row-local after it leaves the blocks as they are and adds its drops to
        `dropped`."""
        self._enter(step.name)
        self._report(progress=step.name)
        drops, bounds = None, None
        op = self.operations[position[step.index]]
        if step.kind == "exactDedup":
            drops = self._exact_drops(step, maps, op)
        elif step.kind == "nearDedup":
            drops = self._near_drops(step, maps, op)
        else:
            bounds = self._outlier_range(step, maps, op)
        parts = self.partitions
        if drops is not None and not after:
            rows_in = self.operations[position[step.index] - 1].rows_out
            op.add(rows_in, rows_in - len(drops))  # drops are distinct rids of rows still in the dataset
            dropped = np.union1d(dropped, drops)
            if then is not None:
                dropped_ref = ray.put(dropped)
                mapped = _filter_then_map.options(num_returns=1 + stages.global_map_returns(then, parts))
                outputs = [mapped.remote(b, dropped_ref, then, parts) for b in blocks]
                self._wait([o[0] for o in outputs], step.name)
                op.seconds += sum(ray.get([o[0] for o in outputs]))
                maps = [o[1:] for o in outputs]
            self._report_operations(f"{step.name} done")
            return blocks, dropped, maps
        apply = _filter_then_clean.options(num_returns=2 + stages.global_map_returns(then, parts))
        dropped_ref, drops_ref = ray.put(dropped), ray.put(drops) if drops is not None else None
        outputs = [apply.remote(b, dropped_ref, drops_ref, bounds, after, then, parts) for b in blocks]
        self._wait([o[1] for o in outputs], step.name)
        for stats in ray.get([o[1] for o in outputs]):
            op.add(*stats["global"])
            for local, (rows_in, rows_out, seconds) in zip(after, stats["steps"], strict=True):
                self.operations[position[local.index]].add(rows_in, rows_out, 0, seconds)
        self._report_operations(f"{step.name} done")
        return [o[0] for o in outputs], np.zeros(0, dtype=np.int64), [o[2:] for o in outputs]

    def _exact_drops(self, step: Step, maps: list, stats: manifest.OpStats) -> np.ndarray:
        parts = self.partitions
        reduces = [_exact_reduce.remote(*[m[p] for m in maps]) for p in range(parts)]
        self._wait(reduces, step.name)
        results = ray.get(reduces)
        stats.seconds += sum(ray.get([m[-1] for m in maps])) + sum(cpu for _, cpu in results)
        drops = [d for d, _ in results if len(d)]
        return np.sort(np.concatenate(drops)) if drops else np.zeros(0, dtype=np.int64)

    def _near_drops(self, step: Step, maps: list, stats: manifest.OpStats) -> np.ndarray:
        p = step.params
        parts = self.partitions
        reduces = [_candidate_reduce.remote(*[m[1 + i] for m in maps]) for i in range(parts)]
        self._wait(reduces, step.name)
        results = ray.get(reduces)
        stats.seconds += sum(ray.get([m[-1] for m in maps])) + sum(cpu for _, cpu in results)
        pairs = [c for c, _ in results if len(c)]
        if not pairs:
            return np.zeros(0, dtype=np.int64)
        started = time.process_time()
        candidates = np.unique(np.concatenate(pairs), axis=0)
        needed = ray.put(np.unique(candidates))
        found = ray.get([_take_signatures.remote(m[0], needed) for m in maps])
        rids = np.concatenate([f[0] for f in found])
        sigs = np.concatenate([f[1] for f in found])
        order = np.argsort(rids)
        rids, sigs = rids[order], sigs[order]
        a = sigs[np.searchsorted(rids, candidates[:, 0])]
        b = sigs[np.searchsorted(rids, candidates[:, 1])]
        verified = candidates[minhash.similar(a, b, p.threshold)]
        drops = minhash.duplicate_rows(verified)
        stats.seconds += time.process_time() - started + sum(f[2] for f in found)
        return drops

    def _outlier_range(self, step: Step, maps: list, stats: manifest.OpStats) -> tuple[str, float, float]:
        column = numeric_column(step.params.column)
        results = ray.get([m[0] for m in maps])
        stats.seconds += sum(ray.get([m[-1] for m in maps]))
        merged = np.concatenate(results) if results else np.zeros(0)
        low, high = stages.outlier_bounds(merged, step.params.method, step.params.threshold)
        return (column, low, high)

    # -- stage 3: split, tokenize, write

    def _split_tokenize_write(
        self, plan: Plan, blocks: list, dropped: np.ndarray, spec_digest: str, input_digest: str
    ) -> dict:
        self._enter("split")
        self._report(progress="split")
        dropped_ref = ray.put(dropped)  # every task below drops these rows as it reads a block
        keyed = [_split_keys.remote(b, dropped_ref, plan.split_method, plan.seed) for b in blocks]
        keys = [k[0] for k in keyed]
        labels = sorted(set().union(*ray.get([k[1] for k in keyed])))
        cuts = self._cuts(plan, keys, labels)
        parts = self.partitions
        maps = [
            _assign_map.options(num_returns=parts + 1).remote(k, plan.split_method, cuts, plan.fractions, parts)
            for k in keys
        ]
        reduces = [_leakage_reduce.remote(*[m[1 + i] for m in maps]) for i in range(parts)]
        leak = ray.get(reduces)
        moved = np.concatenate([r["moved"] for r in leak]) if leak else np.zeros(0, dtype=np.int64)
        targets = np.concatenate([r["to"] for r in leak]) if leak else np.zeros(0, dtype=np.int8)
        order = np.argsort(moved)
        moved_ref, targets_ref = ray.put(moved[order]), ray.put(targets[order])
        assignments = [
            _final_assignment.remote(k, m[0], moved_ref, targets_ref) for k, m in zip(keys, maps, strict=True)
        ]
        leakage = {
            "crossSplitExactDuplicates": sum(r["after"] for r in leak),
            "duplicateGroupsMoved": sum(r["found"] for r in leak),
            "rowsMoved": len(moved),
        }

        documents = plan.output_format == "documents"
        bundle = None if documents else self._tokenizer(plan, blocks, dropped_ref, assignments)
        eos_id = bundle.token_id("eos_token") if bundle is not None else None
        settings = {
            "eos": eos_id,
            "sequence_length": plan.sequence_length,
            "labels": labels,
            "on_error": self.spec.on_error,
            "format": plan.output_format,
        }
        bundle_ref = ray.put(bundle)
        stage = "documents" if documents else "tokenize"
        self._enter(stage)
        self._report(progress=stage)
        tokenized = [
            _tokenize_block.remote(b, dropped_ref, a, bundle_ref, plan.task, settings)
            for b, a in zip(blocks, assignments, strict=True)
        ]
        self._wait([t[0] for t in tokenized], stage)
        metas = ray.get([t[0] for t in tokenized])
        self.stage_cpu[stage] = sum(ray.get([t[1] for t in tokenized]))
        self._count_converted(plan, stage, metas)

        run_id = uuid.uuid4().hex[:12]
        compression = self.spec.output.compression
        shard_task = "documents" if documents else plan.task
        file_format = self.spec.output.document_format if documents else "parquet"
        write_settings = {
            "task": shard_task,
            "sequence_length": plan.sequence_length,
            "compression": compression,
            "fileFormat": file_format,
        }
        planned: list[tuple[str, int, list[writer.Piece], list]] = []
        split_entries: dict[str, dict] = {}
        tails: dict[str, int] = {}
        for index, name in enumerate(split.SPLITS):
            units = [m[name]["units"] for m in metas]
            outputs = [t[2 + index] for t in tokenized]
            total = sum(units)
            usable = total
            if shard_task == "languageModeling":
                usable = (total // plan.sequence_length) * plan.sequence_length
                tails[name] = total - usable
                if name == "train" and usable == 0:
                    raise DataPipelineError(
                        f"spec.tokenizer.sequenceLength: the train split holds {total} tokens, fewer than one "
                        f"sequence of {plan.sequence_length}"
                    )
            per_shard = self._units_per_shard(plan, metas, name)
            for shard_index, pieces in enumerate(writer.plan_shards(units, per_shard, usable)):
                planned.append((name, shard_index, pieces, [outputs[p.block] for p in pieces]))
        # The biggest shards first (Ray starts tasks in the order they come), so the cores finish together.
        order = sorted(range(len(planned)), key=lambda i: -sum(p.end - p.start for p in planned[i][2]))
        submitted = {}
        for i in order:
            name, shard_index, pieces, involved = planned[i]
            submitted[i] = _write_shard.remote(
                self.output,
                writer.tmp_shard_path(name, shard_index, run_id, file_format),
                writer.shard_path(name, shard_index, file_format),
                write_settings,
                [(p.start, p.end) for p in pieces],
                *involved,
            )
        shard_tasks = [(planned[i][0], submitted[i]) for i in range(len(planned))]
        self._enter("write")
        self._report(progress="write")
        self._wait([t for _, t in shard_tasks], "write")
        written = ray.get([t for _, t in shard_tasks])
        infos = [info for info, _ in written]
        self.stage_cpu["write"] = sum(cpu for _, cpu in written)
        for name in split.SPLITS:
            mine = [info for (n, _), info in zip(shard_tasks, infos, strict=True) if n == name]
            documents = sum(m[name]["documents"] for m in metas)
            tokens = sum(i.tokens for i in mine)
            split_entries[name] = manifest.split_entry(
                [i.manifest_entry() for i in mine], tokens, documents, tails.get(name, 0)
            )

        self._enter(None)
        tok = hftokenizer.tokenizer(bundle) if bundle is not None else None
        document = manifest.build_manifest(
            task=plan.task,
            output_format=plan.output_format,
            sequence_length=plan.sequence_length,
            vocab_size=tok.get_vocab_size() if tok is not None else None,
            pad_token_id=bundle.token_id("pad_token") if bundle is not None else None,
            eos_token_id=eos_id,
            bos_token_id=bundle.token_id("bos_token") if bundle is not None else None,
            tokenizer_source=hftokenizer.describe(bundle) if bundle is not None else None,
            labels=labels if plan.task == "classification" else [],
            splits=split_entries,
            schema=_schema(plan, infos),
            operations=self.operations,
            files_errored=self.files_errored,
            errors=self.errors,
            leakage=leakage,
            spec_digest=spec_digest,
            input_digest=input_digest,
            tokenizer_file=tokenize.TOKENIZER_FILE if bundle is not None else None,
            stage_seconds=self.stage_seconds,
            stage_cpu_seconds=self.stage_cpu,
        )
        self._commit(infos, bundle, document)
        self._report(**self._status(document))
        self.reporter.flush()
        return document

    def _cuts(self, plan: Plan, keys: list, labels: list[str]) -> Any:
        """What assign_splits needs besides the keys: rank cut points (random, stratified, time)."""
        method = plan.split_method
        if method == "hash":
            return None
        tables = ray.get(keys)
        values = np.concatenate([t.column("key").to_numpy() for t in tables]) if tables else np.zeros(0)
        if method == "stratified":
            groups = np.concatenate([stages.label_groups(t.column("label"), labels) for t in tables])
            return {"labels": labels, "cuts": split.stratified_cuts(values, groups, plan.fractions)}
        return split.rank_cuts(values, plan.fractions)

    def _units_per_shard(self, plan: Plan, metas: list[dict], name: str) -> int:
        """Units (tokens or rows) per shard for the target shard size (in-memory Arrow size)."""
        target = self.spec.output.target_shard_size_mb * (1 << 20)
        if plan.output_format == "documents":
            rows = sum(m[name]["documents"] for m in metas) or 1
            return max(1, int(target // (sum(m[name]["bytes"] for m in metas) / rows + 1)))
        if plan.task == "languageModeling":
            row_bytes = 4 * plan.sequence_length + 4
            return max(1, int(target // row_bytes)) * plan.sequence_length
        rows = sum(m[name]["documents"] for m in metas) or 1
        tokens = sum(m[name]["tokens"] for m in metas)
        row_bytes = 4 * tokens / rows + 24
        return max(1, int(target // row_bytes))

    def _tokenizer(self, plan: Plan, blocks: list, dropped: Any, assignments: list) -> hftokenizer.Bundle:
        """The run's tokenizer: from spec.tokenizer.fromModel or path (extended with tokens trained on the train split
        when extend is set), or trained on the train split; with the chat template chat and preference render with."""
        tok_spec = self.spec.tokenizer
        self._enter("tokenizer")
        if tok_spec.from_model:
            bundle = hftokenizer.load_model_tokenizer(tok_spec.from_model, tok_spec.trust_remote_code)
        elif tok_spec.path:
            tok = tokenize.load_tokenizer(tok_spec.path)
            bundle = self._plain_bundle(tok, {"kind": "path", "uri": tok_spec.path, "sha256": _sha256(tok.to_str())})
        else:
            self._report(progress="train tokenizer")
            train = tok_spec.train or TrainTokenizer()  # training is the default when no path is set
            tok_json = ray.get(
                _train_tokenizer.remote(
                    blocks, dropped, assignments, train.vocab_size, train.min_frequency, TOKENIZER_TRAIN_MAX_BYTES
                )
            )
            bundle = self._plain_bundle(tokenize.Tokenizer.from_str(tok_json), {"kind": "trained"})
        if tok_spec.extend is not None:
            bundle = self._extend(bundle, blocks, dropped, assignments)
        if plan.conversational or tok_spec.chat_template is not None:
            # A language-modeling corpus keeps a template it is given, so a model trained on it can be chatted with.
            bundle = hftokenizer.with_chat_template(bundle, tok_spec.chat_template)
        return bundle

    @staticmethod
    def _plain_bundle(tok: tokenize.Tokenizer, source: dict) -> hftokenizer.Bundle:
        pad_id, eos_id = tokenize.special_token_ids(tok)  # adds <pad> and <eos> when the file has neither
        return hftokenizer.from_tokenizers(tok, tok.id_to_token(pad_id), tok.id_to_token(eos_id), source)

    def _extend(self, base: hftokenizer.Bundle, blocks: list, dropped: Any, assignments: list) -> hftokenizer.Bundle:
        """The base with the tokens it lacks of a tokenizer trained like it on the train split (vocab.py)."""
        extend = self.spec.tokenizer.extend
        self._report(progress="extend vocabulary")
        vocab.base_kind(base.json, extend.model)  # a bad combination fails here, before training
        trained = ray.get(
            _train_tokenizer.remote(
                blocks,
                dropped,
                assignments,
                extend.vocab_size,
                extend.min_frequency,
                TOKENIZER_TRAIN_MAX_BYTES,
                base.json,
                extend.model,
            )
        )
        merged, added = vocab.merge(base.json, tokenize.Tokenizer.from_str(trained))
        before = hftokenizer.tokenizer(base).get_vocab_size()
        source = {**base.source, "extended": {"baseVocabSize": before, "addedTokens": added}}
        return dataclasses.replace(base, json=merged, source=source)

    def _count_converted(self, plan: Plan, stage: str, metas: list[dict]) -> None:
        """Account for the rows the tokenize (or documents) stage could not convert: conversations whose template,
        truncation or preference checks failed are errored rows of an operation of that name."""
        if not plan.conversational:
            return
        op = manifest.OpStats(stage)
        for meta in metas:
            for name in split.SPLITS:
                entry = meta[name]
                op.add(entry["documents"] + entry["errored"], entry["documents"], entry["errored"])
                self.errors.extend(entry["errors"][: max(0, MAX_ERRORS_IN_MANIFEST - len(self.errors))])
        self.operations.append(op)
        self._report_operations(f"{stage} done")

    def _commit(self, shards: list[writer.ShardInfo], bundle: hftokenizer.Bundle | None, document: dict) -> None:
        """Make the new dataset visible: manifest last (see writer.py). The tokenizer is written in save_pretrained
        form (tokenizer.json, tokenizer_config.json, chat_template.jinja), so AutoTokenizer loads the output."""
        self._report(progress="commit")
        writer.remove_manifest(self.output)
        writer.commit_shards(self.output, shards, split.SPLITS)
        if bundle is not None:
            hftokenizer.save_pretrained(bundle, self.output)
        storage.write_text_atomic(storage.join(self.output, writer.MANIFEST_FILE), json.dumps(document, indent=2))

    def _status(self, document: dict) -> dict:
        tokenizer_file = document.get("tokenizer")
        return manifest.status_fields(
            document,
            self.output,
            storage.join(self.output, writer.MANIFEST_FILE),
            storage.join(self.output, tokenizer_file) if tokenizer_file else None,
        )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _schema(plan: Plan, infos: list[writer.ShardInfo]) -> dict[str, str]:
    """Column -> type of the shards (docs/contracts.md)."""
    if plan.output_format == "documents":
        return dict(infos[0].schema) if infos else {}
    ids = "list<int32>"
    return {
        "languageModeling": {"input_ids": ids},
        "classification": {"input_ids": ids, "label": "int32", "label_name": "string"},
        "chat": dict.fromkeys(stages.CHAT_COLUMNS, ids),
        "preference": dict.fromkeys(stages.PREFERENCE_COLUMNS, ids),
    }[plan.task]
