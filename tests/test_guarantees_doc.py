"""docs/guarantees.md names, for each promise, the tests that prove it: every test it names exists, and
no promise is left as a TODO.

References are `tests/FILE.py::test_name` (a parametrized id such as `test_x[param]` names `test_x`;
`tests/FILE.py::TestClass::test_name` names a method), and the continuation form `::test_other`, which
refers to the file of the last full reference before it on the same line (one table row). The test
files are parsed with `ast`, never imported.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "guarantees.md"

# A full reference (tests/FILE.py::name) or a continuation (`::name`, in backticks), with an optional
# `::method` and an optional parametrize id.
REF = re.compile(r"(?P<file>tests/[\w./-]+?\.py)?::(?P<name>\w+)(?:::(?P<method>\w+))?(?:\[[^\]`]*\])?")
FILE_ONLY = re.compile(r"tests/[\w./-]+?\.py")


def references() -> list[tuple[int, str, str, str | None]]:
    """(line number, file, name, method) of every test reference, in the order of the doc."""
    out = []
    for lineno, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1):
        current = None
        for m in REF.finditer(line):
            if m.group("file"):
                current = m.group("file")
            else:
                # A continuation must stand in backticks right after a full reference on its line.
                if line[m.start() - 1 : m.start()] != "`":
                    continue
                assert current is not None, (
                    f"guarantees.md:{lineno}: `::{m.group('name')}` follows no tests/FILE.py::"
                )
            out.append((lineno, current, m.group("name"), m.group("method")))
    return out


@cache
def definitions(file: str) -> dict[str, set[str]]:
    """Module-level functions (as name -> empty set) and classes (name -> their method names) of a file."""
    tree = ast.parse((ROOT / file).read_text(encoding="utf-8"), filename=file)
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            out[node.name] = {
                n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
    return out


REFS = references()


def test_the_doc_names_tests():
    assert len(REFS) >= 50, f"only {len(REFS)} test references found in {DOC}: is the parsing still right?"
    assert any(name.startswith("test_") for _, _, name, _ in REFS)


@pytest.mark.parametrize(
    "lineno,file,name,method", REFS, ids=[f"{f}::{n}" + (f"::{m}" if m else "") for _, f, n, m in REFS]
)
def test_every_named_test_exists(lineno, file, name, method):
    where = f"guarantees.md:{lineno}"
    assert (ROOT / file).is_file(), f"{where}: {file} does not exist"
    defs = definitions(file)
    if method is None:
        assert name.startswith("test") and name in defs and not defs[name], (
            f"{where}: {file} has no test function {name}"
        )
    else:
        assert name in defs and method in defs[name], f"{where}: {file} has no test {name}::{method}"


def test_every_named_test_file_exists():
    for lineno, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1):
        for m in FILE_ONLY.finditer(line):
            assert (ROOT / m.group()).is_file(), f"guarantees.md:{lineno}: {m.group()} does not exist"


def test_no_promise_is_left_as_todo():
    text = DOC.read_text(encoding="utf-8")
    assert "TODO" not in text
    assert "being written" not in text
