"""Where the input is: spec.source resolved to an ordered list of files (or the builtin corpus), then cut into read
chunks of similar size so every core has work. The order is the sorted file order; chunk boundaries never change
the order of rows, so the output does not depend on how many workers read."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from kubeforge.api.datapipeline import SourceSpec
from kubeforge.constants import ENV_PVC_ROOT, PVC_MOUNT_ROOT

from .. import storage
from .errors import DataPipelineError
from .readers import Chunk, FileSlice

MIN_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20
CHUNKS_PER_CORE = 4
MAX_FILES_PER_CHUNK = 512
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".zstd", ".lz4", ".br", ".snappy")
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class SourceFile:
    """One input file."""

    uri: str
    size: int
    mtime: str


def pvc_root() -> str:
    """Where PersistentVolumeClaims are mounted (PVC_MOUNT_ROOT; KUBEFORGE_PVC_ROOT overrides it off-cluster)."""
    return os.environ.get(ENV_PVC_ROOT) or PVC_MOUNT_ROOT


def source_locations(source: SourceSpec) -> list[tuple[str, str]]:
    """(uri, spec field) of every location spec.source names (uris, or the PVC path under its mount)."""
    if source.pvc is not None:
        uri = storage.join(pvc_root(), source.pvc.claim_name, source.pvc.path)
        return [(uri.rstrip("/") or "/", "spec.source.pvc.path")]
    return [(uri, f"spec.source.uris[{i}]") for i, uri in enumerate(source.uris)]


def list_files(uri: str, field: str) -> list[SourceFile]:
    """The files at a file, directory (recursively; hidden and _-prefixed names skipped) or glob location, sorted."""
    glob = any(c in uri for c in _GLOB_CHARS)
    base_uri = _glob_base(uri) if glob else uri
    try:
        fs, base = storage.resolve(base_uri)
        info = fs.get_file_info(base)
    except (OSError, ValueError, TypeError) as exc:
        raise DataPipelineError(f"{field}: cannot open {uri}: {exc}") from None
    if info.type == pafs.FileType.File and not glob:
        return [_source_file(uri, base, info, fs)]
    if info.type != pafs.FileType.Directory:
        raise DataPipelineError(f"{field}: {uri} does not exist")
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except OSError as exc:
        raise DataPipelineError(f"{field}: cannot list {uri}: {exc}") from None
    pattern = storage.resolve(uri)[1] if glob else None
    files = []
    for entry in infos:
        if entry.type != pafs.FileType.File:
            continue
        relative = entry.path[len(base) :].lstrip("/")
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        if pattern is not None and not glob_regex(pattern).fullmatch(entry.path):
            continue
        files.append(_source_file(uri, entry.path, entry, fs))
    if not files:
        raise DataPipelineError(f"{field}: no files match {uri}")
    return sorted(files, key=lambda f: f.uri)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regular expression: `*`, `?` and `[...]` stay within one path component, `**` crosses them."""
    parts = re.split(r"(\*\*/?|\*|\?|\[[^\]]*\])", pattern)
    out = []
    for part in parts:
        if part in ("**", "**/"):
            out.append(".*")
        elif part == "*":
            out.append("[^/]*")
        elif part == "?":
            out.append("[^/]")
        elif part.startswith("[") and part.endswith("]") and len(part) > 2:
            body = part[1:-1]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def _glob_base(uri: str) -> str:
    """The directory part of a glob before its first wildcard component."""
    parts = uri.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in _GLOB_CHARS):
            return "/".join(parts[:i]) or "/"
    return uri


def _source_file(original: str, path: str, info: pafs.FileInfo, fs: pafs.FileSystem) -> SourceFile:
    if storage.is_remote(original):
        scheme = original.split("://", 1)[0]
        uri = f"{scheme}://{path}"
    else:
        uri = path
    mtime = info.mtime.isoformat() if info.mtime is not None else ""
    return SourceFile(uri, int(info.size or 0), mtime)


def resolve_files(source: SourceSpec) -> list[SourceFile]:
    """Every input file of spec.source, in order, without duplicates."""
    seen: dict[str, SourceFile] = {}
    for uri, field in source_locations(source):
        for f in list_files(uri, field):
            seen.setdefault(f.uri, f)
    return list(seen.values())


def chunk_bytes(total_bytes: int, cores: int) -> int:
    """Target chunk size: a few chunks per core, within [1 MiB, 64 MiB]."""
    wanted = total_bytes // max(1, cores * CHUNKS_PER_CORE)
    return max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, wanted))


def plan_chunks(files: list[SourceFile], fmt: str, text_mode: str, target: int) -> list[Chunk]:
    """Read chunks of about target bytes: small files grouped, big line-based files cut into byte ranges, big
    Parquet files into row-group ranges; compressed files and CSV (quoted newlines) stay whole."""
    chunks: list[Chunk] = []
    group: list[FileSlice] = []
    group_bytes = 0

    def flush() -> None:
        nonlocal group, group_bytes
        if group:
            chunks.append(Chunk(len(chunks), tuple(group)))
            group, group_bytes = [], 0

    # Chunks as close to the target as the files allow, so a stage's tasks are about equal and the cores finish
    # together: a big file alone, cut into the number of equal pieces closest to the target (a file just over the
    # target stays whole rather than becoming two halves beside full chunks); small files grouped while adding the
    # next one overshoots the target by less than the group falls short of it.
    for f in files:
        if f.size > target:
            flush()
            pieces = _split_file(f, fmt, target) if _splittable(f, fmt, text_mode) else [FileSlice(f.uri)]
            for piece in pieces:
                chunks.append(Chunk(len(chunks), (piece,)))
            continue
        if group and group_bytes + f.size - target > target - group_bytes:
            flush()
        group.append(FileSlice(f.uri))
        group_bytes += f.size
        if group_bytes >= target or len(group) >= MAX_FILES_PER_CHUNK:
            flush()
    flush()
    return chunks


def _splittable(f: SourceFile, fmt: str, text_mode: str) -> bool:
    if f.uri.endswith(COMPRESSED_SUFFIXES):
        return False
    return fmt == "parquet" or fmt == "jsonl" or (fmt == "text" and text_mode == "line")


def _split_file(f: SourceFile, fmt: str, target: int) -> list[FileSlice]:
    pieces = max(1, round(f.size / target))
    if pieces == 1:
        return [FileSlice(f.uri)]
    if fmt == "parquet":
        fs, path = storage.resolve(f.uri)
        with fs.open_input_file(path) as handle:
            groups = pq.ParquetFile(handle).metadata.num_row_groups
        return [FileSlice(f.uri, start, end - start) for start, end in _even_bounds(groups, pieces)]
    return [FileSlice(f.uri, start, end - start) for start, end in _even_bounds(f.size, pieces)]


def _even_bounds(total: int, pieces: int) -> list[tuple[int, int]]:
    """[start, end) of at most `pieces` non-empty ranges covering range(total), their sizes differing by at most 1."""
    if total <= 0:
        return []
    pieces = max(1, min(pieces, total))
    cuts = [total * i // pieces for i in range(pieces + 1)]
    return list(itertools.pairwise(cuts))
