"""Turning a growing token sequence into streamed text: stop strings and incomplete characters are held back."""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT_CHAR = "\ufffd"  # what a byte-level decoder yields for a UTF-8 sequence cut in the middle


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index of the earliest occurrence of any stop string in text at or after start, or None."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string (it may still become one)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def text_step(decoded: str, emitted: int, stops: Sequence[str], final: bool) -> tuple[str, bool]:
    """(text to send after the first `emitted` characters of decoded, whether a stop string ended the text).

    The stop string itself is never sent. Until `final`, a tail that could still grow into a stop string and a
    trailing partial character are held back, so nothing sent ever has to be taken back.
    """
    stop_at = find_stop(decoded, stops, emitted)
    if stop_at is not None:
        return decoded[emitted:stop_at], True
    if final:
        return decoded[emitted:], False
    safe = len(decoded) - stop_holdback(decoded[emitted:], stops)
    while safe > emitted and decoded[safe - 1] == REPLACEMENT_CHAR:
        safe -= 1
    return decoded[emitted:safe], False
