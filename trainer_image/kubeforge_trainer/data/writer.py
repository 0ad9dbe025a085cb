"""Sharded Parquet output, written so a reader never sees a half-written dataset.

Shards are written under temporary names; once all exist, the old manifest is removed, the shards are renamed to
`<split>/part-NNNNN.parquet`, stale shards of an earlier run are deleted, the tokenizer is written and
`_manifest.json` comes last. A run that dies anywhere before that leaves no manifest (the dataset reads as
incomplete) and the next run cleans up its temporary files and writes everything again.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import storage
from .manifest import schema_description

MANIFEST_FILE = "_manifest.json"
TMP_MARKER = ".tmp-"


@dataclass(frozen=True)
class Piece:
    """Units [start, end) of one block's output (tokens for language modelling, rows for classification)."""

    block: int
    start: int
    end: int


@dataclass
class ShardInfo:
    """A written shard: where it is (relative to the output) and what it holds."""

    path: str
    rows: int
    tokens: int
    bytes: int
    sha256: str
    tmp_path: str = ""
    schema: dict = field(default_factory=dict)
    """Column -> type of the shard's table."""

    def manifest_entry(self) -> dict:
        """The shard as listed in the manifest."""
        entry = asdict(self)
        for internal in ("tmp_path", "tokens", "schema"):
            entry.pop(internal)
        return entry


def shard_path(split: str, index: int, file_format: str = "parquet") -> str:
    """The final relative path of shard `index` of a split."""
    return f"{split}/part-{index:05d}.{file_format}"


def tmp_shard_path(split: str, index: int, run_id: str, file_format: str = "parquet") -> str:
    """The temporary relative path a shard is written to before the commit renames it."""
    return f"{split}/.part-{index:05d}.{file_format}{TMP_MARKER}{run_id}"


def plan_shards(units_per_block: list[int], units_per_shard: int, total: int | None = None) -> list[list[Piece]]:
    """Cut the concatenation of the blocks' units (the first `total` of them) into shards of units_per_shard units
    (the last may be smaller): for each shard, the block pieces it is made of, in order."""
    if units_per_shard <= 0:
        raise ValueError("units_per_shard must be positive")
    total = sum(units_per_block) if total is None else total
    shards: list[list[Piece]] = []
    current: list[Piece] = []
    room = units_per_shard
    remaining = total
    for block, units in enumerate(units_per_block):
        start = 0
        while start < units and remaining > 0:
            take = min(units - start, room, remaining)
            current.append(Piece(block, start, start + take))
            start += take
            room -= take
            remaining -= take
            if room == 0:
                shards.append(current)
                current, room = [], units_per_shard
    if current:
        shards.append(current)
    return shards


def parquet_bytes(table: pa.Table, compression: str) -> bytes:
    """The table as one Parquet file in memory (deterministic for equal input)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=None if compression == "none" else compression)
    return sink.getvalue()


def jsonl_bytes(table: pa.Table) -> bytes:
    """The table as JSON lines (UTF-8, keys in column order; timestamps as microseconds since the epoch)."""
    rows = table.to_pylist()
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows).encode("utf-8")


def write_shard(
    output_uri: str,
    relative_tmp: str,
    final: str,
    table: pa.Table,
    compression: str,
    tokens: int,
    file_format: str = "parquet",
) -> ShardInfo:
    """Write a shard (Parquet, or JSON lines) under its temporary name; returns what the manifest needs."""
    data = jsonl_bytes(table) if file_format == "jsonl" else parquet_bytes(table, compression)
    fs, root = storage.resolve(output_uri)
    path = f"{root}/{relative_tmp}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)
    digest = hashlib.sha256(data).hexdigest()
    return ShardInfo(final, table.num_rows, tokens, len(data), digest, relative_tmp, schema_description(table.schema))


def _list(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    info = fs.get_file_info(directory)
    if info.type != pafs.FileType.Directory:
        return []
    return fs.get_file_info(pafs.FileSelector(directory, recursive=False))


def remove_temporary(output_uri: str, splits: tuple[str, ...]) -> int:
    """Delete temporary shards left by earlier, interrupted runs; returns how many."""
    fs, root = storage.resolve(output_uri)
    removed = 0
    for split in splits:
        for info in _list(fs, f"{root}/{split}"):
            if TMP_MARKER in info.base_name and info.type == pafs.FileType.File:
                fs.delete_file(info.path)
                removed += 1
    return removed


def remove_manifest(output_uri: str) -> None:
    """Delete the manifest, if any: from here until the new one is written the dataset reads as incomplete."""
    fs, root = storage.resolve(output_uri)
    path = f"{root}/{MANIFEST_FILE}"
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def commit_shards(output_uri: str, shards: list[ShardInfo], splits: tuple[str, ...]) -> None:
    """Rename the temporary shards to their final names and delete shards of earlier runs that are not in this one."""
    fs, root = storage.resolve(output_uri)
    keep = {s.path for s in shards}
    for shard in shards:
        rename(fs, f"{root}/{shard.tmp_path}", f"{root}/{shard.path}")
    for split in splits:
        for info in _list(fs, f"{root}/{split}"):
            relative = f"{split}/{info.base_name}"
            if info.base_name.startswith("part-") and relative not in keep:
                fs.delete_file(info.path)


def rename(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Move one file (a rename on local disks; copy and delete on object stores)."""
    fs.move(source, target)
