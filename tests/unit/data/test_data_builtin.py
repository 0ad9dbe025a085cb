"""The builtin system-docs corpus: nothing imported, deterministic, capped, with natural duplicates."""

from __future__ import annotations

import collections
import gzip
import sys

from kubeforge_trainer.data import builtin

SIDE_EFFECT_MODULE = '''"""A module whose import would write a file."""
open(__file__ + ".imported", "w").write("imported")


def greet():
    """Say hello."""


class Greeter:
    """Greets people."""

    def wave(self):
        """Wave a hand."""
'''


def test_docstrings_are_read_with_ast_without_importing(tmp_path):
    module = tmp_path / "sideeffect.py"
    module.write_text(SIDE_EFFECT_MODULE)
    assert list(builtin.docstrings(module)) == [
        "A module whose import would write a file.",
        "Say hello.",
        "Greets people.",
        "Wave a hand.",
    ]
    assert not (tmp_path / "sideeffect.py.imported").exists()
    (tmp_path / "broken.py").write_text("def (:\n")
    assert list(builtin.docstrings(tmp_path / "broken.py")) == []


def test_stdlib_sources_follow_the_module_names(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdlib_module_names", frozenset({"zeta", "alpha", "pkg", "missing"}))
    (tmp_path / "zeta.py").write_text('"""Z."""')
    (tmp_path / "alpha.py").write_text('"""A."""')
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text('"""P."""')
    (tmp_path / "pkg" / "tests" / "test_x.py").write_text('"""T."""')
    assert list(builtin.stdlib_docstrings(tmp_path)) == ["A.", "P.", "Z."]


def test_share_doc_files_plain_gzipped_binary_and_huge(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "copyright").write_text("Licence text\n")
    (tmp_path / "pkg" / "changelog.Debian.gz").write_bytes(gzip.compress(b"pkg (1.0) unstable; urgency=low\n"))
    (tmp_path / "pkg" / "logo.png").write_bytes(b"\x89PNG\0\0binary")
    (tmp_path / "pkg" / "huge.txt").write_text("x" * (builtin.MAX_FILE_BYTES + 1))
    (tmp_path / "pkg" / "corrupt.gz").write_bytes(b"not gzip")
    assert list(builtin.share_doc_texts(tmp_path)) == ["pkg (1.0) unstable; urgency=low", "Licence text"]


def test_system_docs_alternate_sources_stop_at_max_and_repeat_identically(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdlib_module_names", frozenset({"a", "b"}))
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.py").write_text('"""Doc a."""\ndef f():\n    """Doc f."""\n')
    (tmp_path / "lib" / "b.py").write_text('"""Doc b."""')
    share = tmp_path / "share"
    (share / "x").mkdir(parents=True)
    (share / "x" / "copyright").write_text("Same licence")
    (share / "x" / "README").write_text("Readme")
    docs = list(builtin.system_docs(10, tmp_path / "lib", share))
    assert docs == ["Doc a.", "Readme", "Doc f.", "Same licence", "Doc b."]  # files in byte order: README first
    assert list(builtin.system_docs(3, tmp_path / "lib", share)) == docs[:3]


def test_the_real_corpus_on_this_machine_is_deterministic_and_has_natural_duplicates():
    first = list(builtin.system_docs(1500))
    assert first == list(builtin.system_docs(1500))
    assert len(first) == 1500
    repeats = sum(n - 1 for n in collections.Counter(first).values())
    assert repeats > 0


DOCUMENTED_MODULE = '''"""Module docstring: not a function."""


def first(x):
    """Return the first item.

    Details that the answer leaves out.
    """


def _private():
    """Hidden."""


def undocumented():
    pass


class Thing:
    def method(self):
        """Methods are not top-level functions."""


async def fetch():
    """Fetch   something
    over two lines."""
'''


def test_function_docs_are_public_top_level_functions_first_paragraph(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(DOCUMENTED_MODULE)
    assert list(builtin.function_docs(source, "mod")) == [
        ("mod.first", "Return the first item."),
        ("mod.fetch", "Fetch something over two lines."),
    ]


def test_first_paragraph_is_capped():
    assert builtin.first_paragraph("word " * 200) == ("word " * 200)[: builtin.MAX_ANSWER_CHARS]


FUNCTIONS = [("m.a", "Does A."), ("m.b", "Does A."), ("m.c", "Does C."), ("m.d", "Does D.")]


def test_instruction_records_ask_about_each_function_up_to_the_limit():
    assert list(builtin.instruction_records(FUNCTIONS, 2)) == [
        {"instruction": "What does `m.a` do?", "output": "Does A."},
        {"instruction": "What does `m.b` do?", "output": "Does A."},
    ]


def test_preference_records_reject_a_different_docstring_half_the_list_away():
    rows = list(builtin.preference_records(FUNCTIONS, 10))
    assert rows == [
        {"prompt": "What does `m.a` do?", "chosen": "Does A.", "rejected": "Does C."},
        {"prompt": "What does `m.b` do?", "chosen": "Does A.", "rejected": "Does D."},
        {"prompt": "What does `m.c` do?", "chosen": "Does C.", "rejected": "Does A."},  # wraps to the first
        {"prompt": "What does `m.d` do?", "chosen": "Does D.", "rejected": "Does A."},
    ]
    assert list(builtin.preference_records(FUNCTIONS, 1)) == []  # one function has no other docstring


def test_derived_records_come_from_the_stdlib_without_importing(tmp_path):
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "__init__.py").write_text(DOCUMENTED_MODULE)
    rows = list(builtin.derived_records("instructions", 10, stdlib_dir=tmp_path))
    assert rows[0] == {"instruction": "What does `json.first` do?", "output": "Return the first item."}
    assert not list(tmp_path.glob("**/*.imported"))
    assert len(list(builtin.derived_records("preferences", 10, stdlib_dir=tmp_path))) == 2
