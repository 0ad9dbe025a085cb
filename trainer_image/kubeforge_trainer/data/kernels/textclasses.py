r"""Whitespace, defined once: the Unicode White_Space characters (what GPT-2's pre-tokenizer and Python's str.split
take as spaces), as RE2 character classes and as UTF-8 byte sequences. RE2's \s is ASCII only ([\t\n\f\r ]); text
from the web and from PDFs also has no-break, ideographic and other Unicode spaces, so the operations use these."""

from __future__ import annotations

ASCII_SPACES = "\t\n\x0b\x0c\r "
"""The ASCII whitespace characters."""
NON_ASCII_SPACES = "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
"""The whitespace characters outside ASCII."""
NON_ASCII_SPACE_BYTES = tuple(c.encode() for c in NON_ASCII_SPACES)
"""Their UTF-8 encodings (two or three bytes each)."""


def _re2(chars: str) -> str:
    return "".join(f"\\x{{{ord(c):02X}}}" for c in chars)


_SPACE_CHARS = _re2(ASCII_SPACES.replace("\n", "") + NON_ASCII_SPACES)
_SPACE_CHARS_NOT_PLAIN = _re2(ASCII_SPACES.replace("\n", "").replace(" ", "") + NON_ASCII_SPACES)

WHITESPACE = rf"[\n{_SPACE_CHARS}]"
"""Any whitespace character, Unicode included."""
NOT_WHITESPACE = rf"[^\n{_SPACE_CHARS}]"
"""Any character that is not whitespace."""
COLLAPSE_SPACES = rf"[{_SPACE_CHARS}]{{2,}}|[{_SPACE_CHARS_NOT_PLAIN}]"
"""Runs of horizontal whitespace that collapse to one plain space: two or more, or a single one that is not a plain
space (matching every single space would make the replacement several times slower on prose)."""
COLLAPSE_ANY_WHITESPACE = rf"[\n{_SPACE_CHARS}]{{2,}}|[\n{_SPACE_CHARS_NOT_PLAIN}]"
"""Runs of any whitespace, line breaks included, that collapse to one plain space."""
