"""Counted nouns in messages ("1 token", "2 tokens"): one helper for every user-facing text."""

from __future__ import annotations


def plural(count: int | float, noun: str, plural_form: str | None = None) -> str:
    """`count noun`, with the noun in the plural unless count is exactly 1 (`plural(1, "token")` -> "1 token")."""
    word = noun if count == 1 else (plural_form or f"{noun}s")
    return f"{count} {word}"
