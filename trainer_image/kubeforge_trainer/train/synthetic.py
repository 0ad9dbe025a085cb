"""Write already-tokenized rows in the DataPipeline output layout (docs/contracts.md), for benchmarks and tests.

The real data step (kubeforge_trainer.data) builds datasets from raw text; this writes the same layout from rows
you already have, so the trainer can be exercised on a known task or on random tokens without running it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .dataset import MANIFEST_FILE
from .plan import CLASSIFICATION


def write_dataset(
    root: str | Path,
    *,
    task: str,
    sequence_length: int,
    tokenizer_file: str | Path,
    vocab_size: int,
    splits: dict[str, Sequence[Sequence[int]]],
    labels: dict[str, Sequence[int]] | None = None,
    label_names: Sequence[str] = (),
    pad_token_id: int = 0,
    eos_token_id: int | None = None,
    rows_per_shard: int = 100_000,
    ids_column: str = "input_ids",
    sequences: dict[str, dict[str, Sequence[Sequence[int]]]] | None = None,
) -> Path:
    """Write parquet shards, tokenizer.json and `_manifest.json` (last) under root; returns root. `splits` fills
    `ids_column`; `sequences` adds list<int32> columns per split (chat `labels`; preference `chosen_labels`,
    `rejected_input_ids`, `rejected_labels` beside ids_column `chosen_input_ids`)."""
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_file, out / "tokenizer.json")
    manifest_splits: dict[str, Any] = {}
    for split, rows in splits.items():
        (out / split).mkdir(exist_ok=True)
        shards, tokens = [], 0
        for index, start in enumerate(range(0, max(len(rows), 1), rows_per_shard)):
            chunk = [list(map(int, r)) for r in rows[start : start + rows_per_shard]]
            columns: dict[str, pa.Array] = {ids_column: pa.array(chunk, type=pa.list_(pa.int32()))}
            for name, per_split in (sequences or {}).items():
                extra = [list(map(int, r)) for r in per_split[split][start : start + rows_per_shard]]
                columns[name] = pa.array(extra, type=pa.list_(pa.int32()))
            if task == CLASSIFICATION:
                ids = [int(x) for x in (labels or {})[split][start : start + rows_per_shard]]
                columns["label"] = pa.array(ids, type=pa.int32())
                columns["label_name"] = pa.array([label_names[i] for i in ids], type=pa.string())
            relative = f"{split}/part-{index:05d}.parquet"
            pq.write_table(pa.table(columns), out / relative)
            data = (out / relative).read_bytes()
            shards.append(
                {"path": relative, "rows": len(chunk), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            )
            tokens += sum(len(r) for r in chunk)
        manifest_splits[split] = {"rows": len(rows), "tokens": tokens, "shards": shards}
    total = sum(len(r) for r in splits.values())
    manifest = {
        "formatVersion": 1,
        "task": task,
        "sequenceLength": sequence_length,
        "tokenizer": "tokenizer.json",
        "vocabSize": vocab_size,
        "padTokenId": pad_token_id,
        "eosTokenId": eos_token_id,
        "labels": list(label_names),
        "splits": manifest_splits,
        "schema": {
            ids_column: "list<int32>",
            **dict.fromkeys(sequences or {}, "list<int32>"),
            **({"label": "int32"} if task == CLASSIFICATION else {}),
        },
        "operations": [],
        "accounting": {"rowsIn": total, "rowsOut": total, "rowsDropped": 0, "rowsErrored": 0},
        "leakage": {"crossSplitExactDuplicates": 0},
        "specHash": "synthetic",
        "createdAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return out
