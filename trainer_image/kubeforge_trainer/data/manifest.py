"""The dataset manifest (docs/contracts.md), the row accounting behind it and the status fields derived from it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pyarrow as pa
from kubeforge.api.datapipeline import DataPipelineSpec
from kubeforge.conditions import now_rfc3339

from .split import SPLITS

FORMAT_VERSION = 1
# The spec fields that decide the output; workers, image and scheduling fields do not change a byte of it.
OUTPUT_SPEC_FIELDS = ("source", "steps", "tokenizer", "split", "output", "onError")


@dataclass
class OpStats:
    """Rows through one operation: rows_in = rows_out + dropped + rows_errored."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    rows_errored: int = 0
    seconds: float = 0.0
    """CPU seconds spent in the operation, summed over its tasks (and the driver's share of whole-dataset ones): it
    stays meaningful on a busy node, where wall time does not."""

    @property
    def rows_dropped(self) -> int:
        """Rows the operation removed on purpose."""
        return self.rows_in - self.rows_out - self.rows_errored

    def add(self, rows_in: int, rows_out: int, rows_errored: int = 0, seconds: float = 0.0) -> None:
        """Count one more block through the operation."""
        self.rows_in += rows_in
        self.rows_out += rows_out
        self.rows_errored += rows_errored
        self.seconds += seconds

    def to_wire(self) -> dict[str, Any]:
        """camelCase, as in the manifest and DataPipelineStatus.operations."""
        return {"name": self.name, "rowsIn": self.rows_in, "rowsOut": self.rows_out, "rowsErrored": self.rows_errored}


class AccountingError(RuntimeError):
    """Rows were lost between operations: a bug, never bad input."""


def accounting(operations: list[OpStats]) -> dict[str, int]:
    """Totals over the chain of operations, after checking each one starts with the rows the previous one ended
    with, so that rows in = rows out + rows dropped + rows errored holds for the whole run."""
    for before, after in pairwise(operations):
        if after.rows_in != before.rows_out:
            raise AccountingError(
                f"{after.name} received {after.rows_in} rows but {before.name} passed on {before.rows_out}"
            )
    for op in operations:
        if op.rows_dropped < 0:
            raise AccountingError(f"{op.name} passed on more rows than it received")
    totals = {
        "rowsIn": operations[0].rows_in if operations else 0,
        "rowsOut": operations[-1].rows_out if operations else 0,
        "rowsDropped": sum(op.rows_dropped for op in operations),
        "rowsErrored": sum(op.rows_errored for op in operations),
    }
    if totals["rowsIn"] != totals["rowsOut"] + totals["rowsDropped"] + totals["rowsErrored"]:
        raise AccountingError(f"rows in != rows out + dropped + errored: {totals}")
    return totals


def spec_hash(spec: DataPipelineSpec) -> str:
    """SHA-256 of the output-deciding part of the spec, in canonical JSON."""
    wire = spec.model_dump(by_alias=True, mode="json")
    relevant = {k: wire.get(k) for k in OUTPUT_SPEC_FIELDS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fingerprint(entries: list[tuple[Any, ...]]) -> str:
    """SHA-256 over a description of the input (e.g. path, size and modification time of every file)."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(json.dumps(list(entry), default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def schema_description(schema: pa.Schema) -> dict[str, str]:
    """Column -> type, e.g. {"input_ids": "list<int32>"}."""

    def describe(kind: pa.DataType) -> str:
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            return f"list<{describe(kind.value_type)}>"
        return str(kind)

    return {f.name: describe(f.type) for f in schema}


def split_entry(shards: list[dict], tokens: int, documents: int, dropped_tail_tokens: int = 0) -> dict[str, Any]:
    """One split in the manifest."""
    return {
        "rows": sum(s["rows"] for s in shards),
        "tokens": tokens,
        "documents": documents,
        "droppedTailTokens": dropped_tail_tokens,
        "shards": shards,
    }


def build_manifest(
    *,
    task: str,
    sequence_length: int,
    vocab_size: int | None,
    pad_token_id: int | None,
    eos_token_id: int | None,
    labels: list[str],
    splits: dict[str, dict[str, Any]],
    schema: dict[str, str],
    operations: list[OpStats],
    files_errored: int,
    errors: list[dict],
    leakage: dict[str, int],
    spec_digest: str,
    input_digest: str,
    tokenizer_file: str | None,
    stage_seconds: dict[str, float] | None = None,
    stage_cpu_seconds: dict[str, float] | None = None,
    output_format: str = "tokenized",
    bos_token_id: int | None = None,
    tokenizer_source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The _manifest.json document (tokenizer fields None for format documents)."""
    totals = accounting(operations)
    return {
        "formatVersion": FORMAT_VERSION,
        "task": task,
        "format": output_format,
        "sequenceLength": sequence_length,
        "tokenizer": tokenizer_file,
        "tokenizerSource": tokenizer_source,
        "vocabSize": vocab_size,
        "padTokenId": pad_token_id,
        "eosTokenId": eos_token_id,
        "bosTokenId": bos_token_id,
        "labels": labels,
        "splits": {name: splits.get(name, split_entry([], 0, 0)) for name in SPLITS},
        "schema": schema,
        "operations": [op.to_wire() for op in operations],
        "accounting": {**totals, "filesErrored": files_errored},
        "errors": errors,
        "leakage": leakage,
        "specHash": spec_digest,
        "inputFingerprint": input_digest,
        "createdAt": now_rfc3339(),
        # Where the time went (varies between runs; everything above does not, except createdAt).
        "timings": {
            "stageSeconds": {k: round(v, 3) for k, v in (stage_seconds or {}).items()},
            "operationCpuSeconds": {op.name: round(op.seconds, 3) for op in operations if op.seconds},
            "stageCpuSeconds": {k: round(v, 3) for k, v in (stage_cpu_seconds or {}).items()},
        },
    }


def status_fields(
    manifest: dict[str, Any], output_uri: str, manifest_uri: str, tokenizer_uri: str | None
) -> dict[str, Any]:
    """The DataPipelineStatus progress fields a finished manifest implies."""
    totals = manifest["accounting"]
    splits = manifest["splits"]
    return {
        "rowsIn": totals["rowsIn"],
        "rowsOut": totals["rowsOut"],
        "rowsDropped": totals["rowsDropped"],
        "rowsErrored": totals["rowsErrored"],
        "tokens": sum(s["tokens"] for s in splits.values()),
        "shards": sum(len(s["shards"]) for s in splits.values()),
        "operations": manifest["operations"],
        "splits": {
            name: {"rows": s["rows"], "tokens": s["tokens"], "shards": len(s["shards"])} for name, s in splits.items()
        },
        "outputUri": output_uri,
        "manifestUri": manifest_uri,
        "tokenizerUri": tokenizer_uri,
        "progress": "done",
    }
