"""The DataPipeline output as training input: manifest, tokenizer, Ray Data splits and batch collation.

Splits are read lazily with Ray Data (`read_parquet` over the manifest's shards) and streamed to the workers by
Ray Train (`get_dataset_shard`); no process ever holds a whole split.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import storage
from .plan import DATA_COLUMNS, SPLITS, DatasetInfo, parse_manifest, spec_error

if TYPE_CHECKING:
    import ray.data

MANIFEST_FILE = "_manifest.json"


def read_dataset_info(resource_name: str, data_uri: str) -> DatasetInfo:
    """Parse the dataset's `_manifest.json`; a SpecError when the dataset is missing or incomplete."""
    manifest_uri = storage.join(data_uri, MANIFEST_FILE)
    if not storage.exists(manifest_uri):
        raise spec_error(
            resource_name,
            "spec.dataRef",
            f"no complete dataset at {data_uri} ({MANIFEST_FILE} is missing; has the DataPipeline finished?)",
        )
    try:
        manifest = json.loads(storage.read_text(manifest_uri))
    except json.JSONDecodeError as exc:
        raise spec_error(resource_name, "spec.dataRef", f"{manifest_uri} is not valid JSON: {exc}") from exc
    info = parse_manifest(resource_name, data_uri, manifest)
    if not storage.exists(storage.join(data_uri, info.tokenizer)):
        raise spec_error(resource_name, "spec.dataRef", f"{data_uri} has no tokenizer file {info.tokenizer}")
    if info.rows("train") <= 0 or not info.splits["train"].shards:
        raise spec_error(resource_name, "spec.dataRef", f"the dataset at {data_uri} has an empty train split")
    return info


def split_datasets(info: DatasetInfo) -> dict[str, ray.data.Dataset]:
    """One lazy Ray Dataset per non-empty split, reading only the columns training uses."""
    import ray.data

    fs, root = storage.resolve(info.uri)
    columns = list(DATA_COLUMNS[info.task])
    context = ray.data.DataContext.get_current()
    # The manifest lists every shard with its row count, so the V2 parquet reader's footer indexing buys nothing,
    # and it starts 32 FooterReader actors per read: ~10 s for each pass over a small split on a 2-core node,
    # against ~0.15 s with the V1 reader (measured with Ray 2.60). Each Dataset keeps the context it was made with.
    use_v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        datasets = {}
        for name in SPLITS:
            split = info.splits.get(name)
            if not split or split.rows <= 0 or not split.shards:
                continue
            paths = [f"{root.rstrip('/')}/{shard}" for shard in split.shards]
            datasets[name] = ray.data.read_parquet(paths, filesystem=fs, columns=columns)
    finally:
        context.use_datasource_v2 = use_v2
    return datasets


def collate_language_modeling(input_ids: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a batch of packed sequences: predict ids[1:] from ids[:-1]."""
    ids = torch.from_numpy(np.stack(list(input_ids)).astype(np.int64))
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def collate_classification(
    input_ids: Any, labels: Any, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, labels) of a batch of documents, right-padded to the longest one."""
    rows = [np.asarray(r, dtype=np.int64) for r in input_ids]
    width = max(1, max(len(r) for r in rows))
    ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(np.asarray(labels, dtype=np.int64))
