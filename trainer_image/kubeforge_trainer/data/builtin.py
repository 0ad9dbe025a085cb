"""The builtin corpus `system-docs`: text every machine (and the trainer image) already has, so the quickstart needs
no download.

Documents alternate between the two sources, in a fixed order: the docstrings of the Python standard library (modules,
classes and functions, read from the source files with `ast`, so nothing is imported or executed) and the files under
/usr/share/doc (plain text and gzipped changelogs and copyright files). The corpus holds natural exact and near
duplicates: licence texts shared by many packages, docstrings repeated across modules.

`derive: instructions` and `derive: preferences` turn the docstrings of the standard library's public functions into
conversations instead (the fine-tune example's data): "What does `json.dumps` do?" answered by the first paragraph of
its docstring, and for a preference pair that answer chosen and another function's rejected.
"""

from __future__ import annotations

import ast
import gzip
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from itertools import islice, zip_longest
from pathlib import Path

SHARE_DOC_ROOT = Path("/usr/share/doc")
MAX_FILE_BYTES = 64 * 1024
"""Larger files (long changelogs, mostly) are left out: one document should not dominate the quickstart."""
MIN_DOC_CHARS = 1


def stdlib_sources(stdlib_dir: str | Path | None = None) -> Iterator[Path]:
    """The .py files of the standard library's modules, modules in name order, package files in path order."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    for name in sorted(sys.stdlib_module_names):
        module = root / f"{name}.py"
        package = root / name
        if module.is_file():
            yield module
        elif package.is_dir():
            for dirpath, dirnames, filenames in os.walk(package):
                dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "__pycache__"))
                for filename in sorted(filenames):
                    if filename.endswith(".py"):
                        yield Path(dirpath) / filename


def docstrings(source: Path) -> Iterator[str]:
    """The docstrings of a module and of its classes and functions, in source order (nothing is imported)."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
        return
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc) >= MIN_DOC_CHARS:
            yield doc


def stdlib_docstrings(stdlib_dir: str | Path | None = None) -> Iterator[str]:
    """Every docstring of the standard library, file by file."""
    for source in stdlib_sources(stdlib_dir):
        yield from docstrings(source)


def share_doc_files(root: Path = SHARE_DOC_ROOT) -> Iterator[Path]:
    """The regular files (and links to files) under root, in path order."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if path.is_file():
                yield path


def read_share_doc(path: Path) -> str | None:
    """The text of a documentation file (gunzipped when .gz), or None for binary, unreadable or huge files."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=_Limited(data)) as f:
                data = f.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                return None
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if b"\0" in data[:8192]:
        return None
    text = data.decode("utf-8", errors="replace").strip()
    return text if len(text) >= MIN_DOC_CHARS else None


class _Limited:
    """A bytes object as a file for gzip.GzipFile (io.BytesIO without the copy)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._pos + size)
        chunk = self._view[self._pos : end].tobytes()
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos


def share_doc_texts(root: Path = SHARE_DOC_ROOT) -> Iterator[str]:
    """The text of every readable documentation file under root."""
    for path in share_doc_files(root):
        text = read_share_doc(path)
        if text is not None:
            yield text


def system_docs(
    max_documents: int, stdlib_dir: str | Path | None = None, share_root: Path = SHARE_DOC_ROOT
) -> Iterator[str]:
    """The system-docs corpus: up to max_documents texts, alternating docstrings and documentation files."""
    count = 0
    for pair in zip_longest(stdlib_docstrings(stdlib_dir), share_doc_texts(share_root)):
        for text in pair:
            if text is None:
                continue
            yield text
            count += 1
            if count >= max_documents:
                return


DERIVED_QUESTION = "What does `{name}` do?"
MAX_ANSWER_CHARS = 240
"""Answers are the docstring's first paragraph, cut at this length: short enough for a small model's context."""


def first_paragraph(doc: str) -> str:
    """The first paragraph of a docstring, whitespace collapsed, at most MAX_ANSWER_CHARS long."""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    return paragraph[:MAX_ANSWER_CHARS]


def function_docs(source: Path, module: str) -> Iterator[tuple[str, str]]:
    """(module.function, first docstring paragraph) of the public top-level functions of a source file."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
        return
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node, clean=True)
            answer = first_paragraph(doc) if doc else ""
            if answer:
                yield f"{module}.{node.name}", answer


def stdlib_function_docs(stdlib_dir: str | Path | None = None) -> Iterator[tuple[str, str]]:
    """(qualified name, answer) of every public function of the standard library's top-level modules, name order."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_"):
            continue
        module = root / name / "__init__.py" if (root / name).is_dir() else root / f"{name}.py"
        if module.is_file():
            yield from function_docs(module, name)


def instruction_records(functions: Iterable[tuple[str, str]], limit: int) -> Iterator[dict[str, str]]:
    """Up to limit {instruction, output} rows: the question about each function and its docstring."""
    for count, (name, answer) in enumerate(functions):
        if count >= limit:
            return
        yield {"instruction": DERIVED_QUESTION.format(name=name), "output": answer}


def preference_records(functions: Iterable[tuple[str, str]], limit: int) -> Iterator[dict[str, str]]:
    """Up to limit {prompt, chosen, rejected} rows: the question about each function, its docstring chosen and the
    different docstring of the function half the list further on (wrapping) rejected: in name order that is another
    module's, so the question's module name tells the answers apart, which a small model can learn."""
    items = list(islice(functions, limit))
    half = len(items) // 2
    for i, (name, answer) in enumerate(items):
        others = items[i + half :] + items[: i + half]
        rejected = next((a for n, a in others if a != answer and n != name), None)
        if rejected is not None:
            yield {"prompt": DERIVED_QUESTION.format(name=name), "chosen": answer, "rejected": rejected}


def derived_records(derive: str, max_documents: int, stdlib_dir: str | Path | None = None) -> Iterator[dict[str, str]]:
    """The rows of derive instructions or preferences, from the standard library's function docstrings."""
    derivation = {"instructions": instruction_records, "preferences": preference_records}[derive]
    return derivation(stdlib_function_docs(stdlib_dir), max_documents)
