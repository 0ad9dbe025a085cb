"""Reading one chunk of the input (some files, or a byte range or row groups of one big file) into a working table.

Every format goes through pyarrow (pyarrow.fs for the bytes, pyarrow.json/csv/parquet for parsing). The fast path
parses a whole chunk at once; only when it fails (bad JSON, invalid UTF-8, a field of the wrong type) does a slower
path look at rows one by one, so that under onError: skip exactly the bad rows are counted and skipped. Nothing is
replaced silently: invalid UTF-8 is an error, never U+FFFD.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .. import storage
from . import chat
from .columns import KEY, LABEL, PARTS, RID, TEXT, TIME, make_rid, numeric_column
from .errors import DataPipelineError

MAX_ERROR_SAMPLES = 20
"""Bad rows kept (with their reason) per chunk for the manifest; all of them are counted."""


@dataclass(frozen=True)
class ReadSpec:
    """What to read from each row and how strictly."""

    format: str
    text_mode: str = "line"
    text_field: str = "text"
    label_field: str | None = None
    key_field: str | None = None
    time_field: str | None = None
    numeric_fields: tuple[str, ...] = ()
    on_error: str = "fail"
    allow_missing_text: bool = True
    key_field_path: str = "spec.source.keyField"
    time_field_path: str = "spec.source.timeField"
    conversation: str | None = None
    """chat or preference: rows are conversations read through `fields` (chat.segments), not a text column."""
    fields: object = None


@dataclass(frozen=True)
class FileSlice:
    """A whole file, a byte range of a line-based file, or a range of row groups of a Parquet file."""

    uri: str
    start: int = 0
    length: int | None = None

    def describe(self) -> str:
        """The file and, for a part of it, which part."""
        if self.length is None:
            return self.uri
        return f"{self.uri} (part at {self.start}+{self.length})"


@dataclass(frozen=True)
class Chunk:
    """The unit of reading: one Ray task reads one chunk; its index numbers the rows (see columns.RID)."""

    index: int
    files: tuple[FileSlice, ...]


@dataclass
class RowError:
    """A row (or a whole file when row is None) that could not be read."""

    field: str
    source: str
    row: int | None
    reason: str

    def message(self) -> str:
        """One line: field, where, why."""
        where = self.source if self.row is None else f"{self.source} row {self.row}"
        return f"{self.field}: {where}: {self.reason}"

    def to_dict(self) -> dict:
        """The error as a manifest entry."""
        return {"field": self.field, "source": self.source, "row": self.row, "reason": self.reason}


@dataclass
class ReadResult:
    """The rows read from a chunk and what could not be read."""

    table: pa.Table
    rows_errored: int = 0
    files_errored: int = 0
    errors: list[RowError] = field(default_factory=list)


class _Collector:
    """Collects bad rows: raises at the first one under onError: fail, counts them under skip."""

    def __init__(self, spec: ReadSpec) -> None:
        self.spec = spec
        self.rows_errored = 0
        self.files_errored = 0
        self.errors: list[RowError] = []

    def row(self, error: RowError, count: int = 1) -> None:
        if self.spec.on_error == "fail":
            raise DataPipelineError(error.message())
        self.rows_errored += count
        if len(self.errors) < MAX_ERROR_SAMPLES:
            self.errors.append(error)

    def file(self, error: RowError) -> None:
        if self.spec.on_error == "fail":
            raise DataPipelineError(error.message())
        self.files_errored += 1
        if len(self.errors) < MAX_ERROR_SAMPLES:
            self.errors.append(error)


@dataclass(frozen=True)
class ExtraField:
    """A field read besides the text: its output column, the spec field that names it, its name in the input, and
    its kind (label, key, time or number), which fixes its type and how it is checked."""

    column: str
    path: str
    name: str
    kind: str


_ARROW_TYPES = {"label": pa.string(), "key": pa.string(), "time": pa.int64(), "number": pa.float64()}


def extra_fields(spec: ReadSpec) -> list[ExtraField]:
    """Every field the spec reads besides the text, in column order."""
    fields = []
    if spec.label_field:
        fields.append(ExtraField(LABEL, "spec.source.labelField", spec.label_field, "label"))
    if spec.key_field:
        fields.append(ExtraField(KEY, spec.key_field_path, spec.key_field, "key"))
    if spec.time_field:
        fields.append(ExtraField(TIME, spec.time_field_path, spec.time_field, "time"))
    fields.extend(
        ExtraField(numeric_column(name), "spec.steps.outlierFilter.column", name, "number")
        for name in spec.numeric_fields
    )
    return fields


def working_schema(spec: ReadSpec, with_rid: bool = True) -> pa.Schema:
    """The columns every chunk's table has, whatever the format."""
    fields = [pa.field(TEXT, pa.string())]
    if spec.conversation:
        fields.append(pa.field(PARTS, pa.list_(pa.string())))
    if with_rid:
        fields.append(pa.field(RID, pa.int64()))
    fields.extend(pa.field(f.column, _ARROW_TYPES[f.kind]) for f in extra_fields(spec))
    return pa.schema(fields)


def read_chunk(chunk: Chunk, spec: ReadSpec) -> ReadResult:
    """Read every file slice of the chunk into one working table, rows numbered in order."""
    collector = _Collector(spec)
    parts: list[pa.Table] = []
    for piece in chunk.files:
        try:
            table = _read_slice(piece, spec, collector)
        except DataPipelineError:
            raise
        except (OSError, pa.ArrowException, EOFError, ValueError) as exc:
            collector.file(RowError("spec.source", piece.describe(), None, f"cannot read: {_first_line(exc)}"))
            continue
        if table is not None and table.num_rows:
            parts.append(table)
    schema = working_schema(spec, with_rid=False)
    table = pa.concat_tables([p.select(schema.names).cast(schema) for p in parts]) if parts else schema.empty_table()
    rids = pa.array(np.arange(table.num_rows, dtype=np.int64) + make_rid(chunk.index, 0))
    table = table.add_column(1, RID, rids)
    return ReadResult(table, collector.rows_errored, collector.files_errored, collector.errors)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _read_slice(piece: FileSlice, spec: ReadSpec, errors: _Collector) -> pa.Table | None:
    if spec.conversation and spec.format in ("parquet", "csv"):
        return _read_conversation_table(piece, spec, errors)
    if spec.format == "parquet":
        return _read_parquet(piece, spec, errors)
    data = read_bytes(piece)
    if spec.format == "jsonl" and spec.conversation:
        return _read_jsonl_rows(data, piece, spec, errors)  # nested messages: each row checked on its own
    if spec.format == "jsonl":
        return _read_jsonl(data, piece, spec, errors)
    if spec.format == "csv":
        return _read_csv(data, piece, spec, errors)
    if spec.text_mode == "file":
        return _read_text_file(data, piece, spec, errors)
    return _read_text_lines(data, piece, spec, errors)


def read_bytes(piece: FileSlice) -> bytes:
    """The bytes of a whole file (decompressed by extension) or of the complete lines in a byte range: a line
    belongs to the range its first byte is in."""
    fs, path = storage.resolve(piece.uri)
    if piece.length is None:
        with fs.open_input_stream(path, compression="detect") as f:
            return f.read()
    with fs.open_input_file(path) as f:
        size = f.size()
        begin = piece.start
        if begin > 0:
            # Skip the line that started before the range (it belongs to the previous range).
            f.seek(begin - 1)
            begin = _next_line_start(f, size)
        end = piece.start + piece.length
        if begin >= end:
            return b""
        f.seek(end - 1)
        end = _next_line_start(f, size)
        f.seek(begin)
        return f.read(end - begin)


def _next_line_start(f: pa.NativeFile, size: int) -> int:
    """The offset just after the next newline at or after the current position (or the end of the file)."""
    while True:
        pos = f.tell()
        block = f.read(64 * 1024)
        if not block:
            return size
        newline = block.find(b"\n")
        if newline >= 0:
            return pos + newline + 1


def _line_split(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _utf8_error(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    return ""


# ---- JSON lines ----------------------------------------------------------------------------------------------------


def _read_jsonl(data: bytes, piece: FileSlice, spec: ReadSpec, errors: _Collector) -> pa.Table | None:
    if _is_utf8(data):
        try:
            table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=1 << 26))
        except pa.ArrowInvalid:
            table = None
        if table is not None:
            try:
                return _convert_columns(table, piece.describe(), spec, errors, per_row=False)
            except _NeedsRowByRow:
                pass
    return _read_jsonl_rows(data, piece, spec, errors)


def _read_jsonl_rows(data: bytes, piece: FileSlice, spec: ReadSpec, errors: _Collector) -> pa.Table | None:
    """The slow path: parse line by line so each bad line is reported (or counted) on its own."""
    records: list[dict] = []
    for number, line in enumerate(_line_split(data), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            errors.row(RowError("spec.source.format", piece.describe(), number, f"invalid UTF-8 at byte {exc.start}"))
            continue
        except json.JSONDecodeError as exc:
            errors.row(RowError("spec.source.format", piece.describe(), number, f"not valid JSON: {exc.msg}"))
            continue
        if not isinstance(record, dict):
            errors.row(RowError("spec.source.format", piece.describe(), number, "not a JSON object"))
            continue
        record["__line"] = number
        records.append(record)
    if not records:
        return None
    return _records_to_table(records, piece, spec, errors)


def _records_to_table(records: list[dict], piece: FileSlice, spec: ReadSpec, errors: _Collector) -> pa.Table | None:
    """Working columns from Python records, each value checked on its own."""
    if not spec.conversation and not any(spec.text_field in r for r in records):
        errors.row(
            RowError("spec.source.textField", piece.describe(), None, f"no field {spec.text_field!r}"),
            count=len(records),
        )
        return None
    columns: dict[str, list] = {name: [] for name in working_schema(spec, with_rid=False).names}
    for record in records:
        row = _record_values(record, piece, spec, errors)
        if row is None:
            continue
        for name, value in row.items():
            columns[name].append(value)
    if not columns[TEXT]:
        return None
    return pa.table(columns, schema=working_schema(spec, with_rid=False))


def _record_values(record: dict, piece: FileSlice, spec: ReadSpec, errors: _Collector) -> dict | None:
    number = record.get("__line")
    if spec.conversation:
        try:
            texts, parts = chat.segments(record, spec.fields, spec.conversation)
        except chat.RowProblem as problem:
            errors.row(RowError("spec.source.fields", piece.describe(), number, str(problem)))
            return None
        return _with_extras({TEXT: chat.joined(texts), PARTS: parts}, record, piece, spec, errors)
    text = record.get(spec.text_field)
    if text is not None and not isinstance(text, str):
        errors.row(
            RowError(
                "spec.source.textField",
                piece.describe(),
                number,
                f"field {spec.text_field!r} is {type(text).__name__}, expected a string",
            )
        )
        return None
    if text is None and not spec.allow_missing_text:
        errors.row(RowError("spec.source.textField", piece.describe(), number, f"no text in {spec.text_field!r}"))
        return None
    return _with_extras({TEXT: text}, record, piece, spec, errors)


def _with_extras(row: dict, record: dict, piece: FileSlice, spec: ReadSpec, errors: _Collector) -> dict | None:
    """The row with the extra fields (label, key, time, numbers) of the record added; None when one is bad."""
    number = record.get("__line")
    for extra in extra_fields(spec):
        try:
            row[extra.column] = _ROW_CONVERTERS[extra.kind](record.get(extra.name))
        except ValueError as exc:
            errors.row(RowError(extra.path, piece.describe(), number, f"field {extra.name!r} {exc}"))
            return None
    return row


def _label_value(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"is {type(value).__name__}, expected a string or an integer")


def _key_value(value: object) -> str:
    if value is None:
        raise ValueError("is missing (a hash split needs a key on every row)")
    if isinstance(value, (dict, list)):
        raise ValueError(f"is {type(value).__name__}, expected a scalar")
    return str(value)


def _time_value(value: object) -> int:
    if value is None:
        raise ValueError("is missing (a time split needs a timestamp on every row)")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(float(value) * 1_000_000)
    if isinstance(value, str):
        return _parse_iso(value)
    raise ValueError(f"is {type(value).__name__}, expected a timestamp")


def _parse_iso(value: str) -> int:
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"is {value!r}, not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _number_value(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"is {value!r}, not a number") from None
    raise ValueError(f"is {type(value).__name__}, expected a number")


# ---- column conversion shared by the fast paths -------------------------------------------------------------------


# How each kind of extra field is checked and converted, one value at a time.
_ROW_CONVERTERS = {"label": _label_value, "key": _key_value, "time": _time_value, "number": _number_value}


class _NeedsRowByRow(Exception):
    """A column's type drifted (e.g. text is a number on some rows): only the row-by-row path can tell which rows."""


def _convert_columns(
    table: pa.Table, source: str, spec: ReadSpec, errors: _Collector, per_row: bool
) -> pa.Table | None:
    """Working columns from a parsed table (None when no row is left). A column of the wrong type raises
    _NeedsRowByRow, unless per_row is set (the format has no row-by-row path: its rows are then reported here)."""
    n = table.num_rows
    if n == 0:
        return None
    names = set(table.column_names)
    if spec.text_field not in names:
        errors.row(
            RowError(
                "spec.source.textField",
                source,
                None,
                f"no column {spec.text_field!r} (columns: {', '.join(sorted(names)) or 'none'})",
            ),
            count=n,
        )
        return None
    columns: dict[str, pa.Array] = {}
    bad = np.zeros(n, dtype=bool)
    text = table.column(spec.text_field)
    text_result = _string_column(text, allow_binary=True)
    if text_result is None:
        if not per_row:
            raise _NeedsRowByRow
        errors.row(
            RowError(
                "spec.source.textField",
                source,
                None,
                f"column {spec.text_field!r} is {text.type}, expected a string",
            ),
            count=n,
        )
        return None
    text_values, text_bad = text_result
    for row in np.flatnonzero(text_bad):
        errors.row(RowError("spec.source.textField", source, int(row) + 1, "invalid UTF-8"))
    bad |= text_bad
    if not spec.allow_missing_text:
        missing = text_values.is_null().to_numpy(zero_copy_only=False) & ~bad
        for row in np.flatnonzero(missing):
            errors.row(RowError("spec.source.textField", source, int(row) + 1, f"no text in {spec.text_field!r}"))
        bad |= missing
    columns[TEXT] = text_values
    for extra in extra_fields(spec):
        column, path, name, convert = extra.column, extra.path, extra.name, _COLUMN_CONVERTERS[extra.kind]
        if name not in names:
            errors.row(RowError(path, source, None, f"no column {name!r}"), count=int((~bad).sum()))
            return None
        values, column_bad, reason = convert(table.column(name))
        if values is None:
            if not per_row:
                raise _NeedsRowByRow
            errors.row(RowError(path, source, None, f"column {name!r} {reason}"), count=int((~bad).sum()))
            return None
        for row in np.flatnonzero(column_bad & ~bad):
            errors.row(RowError(path, source, int(row) + 1, f"field {name!r} {reason}"))
        bad |= column_bad
        columns[column] = values
    result = pa.table(columns)
    if bad.any():
        result = result.filter(~bad)
    return result


def _combined(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _string_column(values: pa.ChunkedArray | pa.Array, allow_binary: bool) -> tuple[pa.Array, np.ndarray] | None:
    """(strings, invalid UTF-8 mask) for a string, binary or all-null column; None for other types."""
    values = _combined(values)
    kind = values.type
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string()), np.zeros(len(values), dtype=bool)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = values.cast(pa.string()) if pa.types.is_large_string(kind) else values
        try:
            values.validate(full=True)
            return values, np.zeros(len(values), dtype=bool)
        except pa.ArrowInvalid:
            values = values.view(pa.binary())
    elif not (allow_binary and (pa.types.is_binary(kind) or pa.types.is_large_binary(kind))):
        return None
    try:
        return values.cast(pa.string()), np.zeros(len(values), dtype=bool)
    except pa.ArrowInvalid:
        pass
    raw = values.to_pylist()
    bad = np.array([v is not None and not _is_utf8(v) for v in raw], dtype=bool)
    strings = [None if b or v is None else v.decode("utf-8") for v, b in zip(raw, bad, strict=True)]
    return pa.array(strings, pa.string()), bad


def _label_column(values: pa.ChunkedArray) -> tuple[pa.Array | None, np.ndarray, str]:
    values = _combined(values)
    if pa.types.is_integer(values.type) or pa.types.is_null(values.type):
        return values.cast(pa.string()), np.zeros(len(values), dtype=bool), ""
    result = _string_column(values, allow_binary=True)
    if result is None:
        return None, np.zeros(0, dtype=bool), f"is {values.type}, expected a string or an integer"
    return result[0], result[1], "is not valid UTF-8"


def _key_column(values: pa.ChunkedArray) -> tuple[pa.Array | None, np.ndarray, str]:
    values = _combined(values)
    if pa.types.is_nested(values.type):
        return None, np.zeros(0, dtype=bool), f"is {values.type}, expected a scalar"
    result = _string_column(values, allow_binary=True)
    strings = result[0] if result is not None else values.cast(pa.string())
    missing = strings.is_null().to_numpy(zero_copy_only=False)
    return strings, missing, "is missing (a hash split needs a key on every row)"


def _time_column(values: pa.ChunkedArray) -> tuple[pa.Array | None, np.ndarray, str]:
    values = _combined(values)
    kind = values.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        micros = values.cast(pa.timestamp("us", tz=getattr(kind, "tz", None))).cast(pa.int64())
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        micros = pc.round(pc.multiply(values.cast(pa.float64()), 1_000_000.0)).cast(pa.int64())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        parsed = []
        for v in values.to_pylist():
            try:
                parsed.append(None if v is None else _parse_iso(v))
            except ValueError:
                parsed.append(None)
        micros = pa.array(parsed, pa.int64())
    else:
        return None, np.zeros(0, dtype=bool), f"is {kind}, expected a timestamp"
    missing = micros.is_null().to_numpy(zero_copy_only=False)
    return micros, missing, "is missing or not a timestamp (a time split needs one on every row)"


def _number_column(values: pa.ChunkedArray) -> tuple[pa.Array | None, np.ndarray, str]:
    values = _combined(values)
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        return values.cast(pa.float64()), np.zeros(len(values), dtype=bool), ""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        numbers, bad = [], []
        for v in values.to_pylist():
            try:
                numbers.append(None if v is None or not v.strip() else float(v))
                bad.append(False)
            except ValueError:
                numbers.append(None)
                bad.append(True)
        return pa.array(numbers, pa.float64()), np.array(bad, dtype=bool), "is not a number"
    return None, np.zeros(0, dtype=bool), f"is {kind}, expected a number"


# ---- CSV -----------------------------------------------------------------------------------------------------------


# ... and a whole column at a time: (values, rows that failed, why).
_COLUMN_CONVERTERS = {"label": _label_column, "key": _key_column, "time": _time_column, "number": _number_column}


def _csv_header(data: bytes) -> list[str]:
    """The column names on the first line (header names do not span lines)."""
    first = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    return next(csv.reader([first]), [])


def _read_csv(data: bytes, piece: FileSlice, spec: ReadSpec, errors: _Collector) -> pa.Table | None:
    wanted = [spec.text_field, spec.label_field, spec.key_field, spec.time_field, *spec.numeric_fields]
    wanted = list(dict.fromkeys(w for w in wanted if w))
    bad_rows: list[str] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append(f"expected {row.expected_columns} columns, got {row.actual_columns}: {row.text[:80]!r}")
        return "skip"

    header = _csv_header(data)
    include = [w for w in wanted if w in header]
    # The text as binary, validated afterwards so invalid UTF-8 is one bad row; the other cells as strings.
    types = {w: pa.string() for w in include}
    if spec.text_field in types:
        types[spec.text_field] = pa.binary()
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                include_columns=include,
                column_types=types,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        errors.file(RowError("spec.source.format", piece.describe(), None, f"not valid CSV: {_first_line(exc)}"))
        return None
    for reason in bad_rows:
        errors.row(RowError("spec.source.format", piece.describe(), None, reason))
    for name in include:
        if name != spec.text_field:
            # CSV has no null: an empty cell is a missing value.
            strings = _combined(table.column(name))
            missing = pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)
            table = table.set_column(table.schema.get_field_index(name), name, missing)
    if table.num_rows == 0:
        return None
    return _convert_columns(table, piece.describe(), spec, errors, per_row=True)


# ---- Parquet -------------------------------------------------------------------------------------------------------


def _read_parquet(piece: FileSlice, spec: ReadSpec, errors: _Collector) -> pa.Table | None:
    fs, path = storage.resolve(piece.uri)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        names = set(parquet.schema_arrow.names)
        wanted = [spec.text_field, spec.label_field, spec.key_field, spec.time_field, *spec.numeric_fields]
        columns = [w for w in dict.fromkeys(w for w in wanted if w) if w in names]
        groups = range(parquet.num_row_groups)
        if piece.length is not None:
            groups = range(piece.start, min(piece.start + piece.length, parquet.num_row_groups))
        parts = []
        for group in groups:
            raw = parquet.read_row_group(group, columns=columns)
            rows = raw.num_rows
            if spec.text_field not in names:
                errors.row(
                    RowError(
                        "spec.source.textField",
                        piece.describe(),
                        None,
                        f"no column {spec.text_field!r} (columns: {', '.join(sorted(names))})",
                    ),
                    count=rows,
                )
                continue
            source = f"{piece.uri} row group {group}" if parquet.num_row_groups > 1 else piece.uri
            converted = _convert_columns(raw, source, spec, errors, per_row=True)
            if converted is not None:
                parts.append(converted)
    return pa.concat_tables(parts) if parts else None


def _read_conversation_table(piece: FileSlice, spec: ReadSpec, errors: _Collector) -> pa.Table | None:
    """Conversations from a Parquet or CSV file: every column, row by row (messages are nested values)."""
    if spec.format == "parquet":
        fs, path = storage.resolve(piece.uri)
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            groups = range(parquet.num_row_groups)
            if piece.length is not None:
                groups = range(piece.start, min(piece.start + piece.length, parquet.num_row_groups))
            table = parquet.read_row_groups(list(groups)) if len(groups) else None
    else:
        try:
            table = pacsv.read_csv(io.BytesIO(read_bytes(piece)))
        except pa.ArrowInvalid as exc:
            errors.file(RowError("spec.source.format", piece.describe(), None, f"not valid CSV: {_first_line(exc)}"))
            return None
    if table is None or table.num_rows == 0:
        return None
    records = table.to_pylist()
    for number, record in enumerate(records, start=1):
        record["__line"] = number
    return _records_to_table(records, piece, spec, errors)


# ---- plain text ----------------------------------------------------------------------------------------------------


def _read_text_lines(data: bytes, piece: FileSlice, spec: ReadSpec, errors: _Collector) -> pa.Table | None:
    lines = _line_split(data)
    if not lines:
        return None
    binary = pa.array(lines, pa.binary())
    strings, bad = _string_column(binary, allow_binary=True)
    for row in np.flatnonzero(bad):
        errors.row(RowError("spec.source.format", piece.describe(), int(row) + 1, _utf8_error(lines[row])))
    table = pa.table({TEXT: strings})
    return table.filter(~bad) if bad.any() else table


def _read_text_file(data: bytes, piece: FileSlice, spec: ReadSpec, errors: _Collector) -> pa.Table | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.row(RowError("spec.source.format", piece.describe(), 1, f"invalid UTF-8 at byte {exc.start}"))
        return None
    return pa.table({TEXT: pa.array([text], pa.string())})
