r"""RE2 character classes for whitespace. RE2's \s is ASCII only ([\t\n\f\r ]); text from the web and from PDFs also
has no-break, ideographic and other Unicode spaces, so the operations use these classes instead."""

from __future__ import annotations

_SPACE_CHARS = r"\t\x{0B}\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"
_SPACE_CHARS_NOT_PLAIN = r"\t\x{0B}\f\r\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"

WHITESPACE = rf"[\n{_SPACE_CHARS}]"
"""Any whitespace character, Unicode included."""
NOT_WHITESPACE = rf"[^\n{_SPACE_CHARS}]"
"""Any character that is not whitespace."""
COLLAPSE_SPACES = rf"[{_SPACE_CHARS}]{{2,}}|[{_SPACE_CHARS_NOT_PLAIN}]"
"""Runs of horizontal whitespace that collapse to one plain space: two or more, or a single one that is not a plain
space (matching every single space would make the replacement several times slower on prose)."""
COLLAPSE_ANY_WHITESPACE = rf"[\n{_SPACE_CHARS}]{{2,}}|[\n{_SPACE_CHARS_NOT_PLAIN}]"
"""Runs of any whitespace, line breaks included, that collapse to one plain space."""
