"""Column names of the working tables that flow between the stages of the data step (one place each is spelled)."""

from __future__ import annotations

TEXT = "text"
"""The document text (string; null when the source row has none)."""
RID = "_rid"
"""A stable row id: (read chunk index << 32) | row in chunk; input order, the same on every rerun."""
LABEL = "label"
"""The label name (string), from source.labelField or a label step."""
KEY = "_key"
"""The split key (string) of method hash."""
TIME = "_time"
"""The timestamp of method time, as microseconds since the epoch (int64)."""
CONTENT_HASH = "_content_hash"
"""The exact-dedup key of each row (uint64), added by the first cleaning stage when exact dedup comes next and
dropped by it: computed while the text is being scanned anyway."""
PARTS = "_parts"
"""The roles of a conversation's segments (list<string>), whose texts the text column joins (chat.py)."""
CHAT_COLUMNS = ("input_ids", "labels")
"""The output columns of task chat (list<int32> each; docs/contracts.md), which the trainer reads too."""
PREFERENCE_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
"""The output columns of task preference (list<int32> each; docs/contracts.md), which the trainer reads too."""
NUMERIC_PREFIX = "_num."
"""Prefix of the numeric columns outlier filters test."""

RID_CHUNK_SHIFT = 32


def numeric_column(name: str) -> str:
    """The working-table column holding source column name for an outlier filter."""
    return NUMERIC_PREFIX + name


def make_rid(chunk_index: int, row: int) -> int:
    """The row id of row `row` of read chunk `chunk_index`."""
    return (chunk_index << RID_CHUNK_SHIFT) | row
