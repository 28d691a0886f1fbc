"""The config package's shape: the model is a leaf, config and the trigger types import each other
in one direction only, and the loader's heavy imports happen only where they are used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "trigctl"


def _imports(tree: ast.Module, *, module_level_only: bool) -> list[tuple[str, bool]]:
    """(module name, under `if TYPE_CHECKING:`) of each absolute import; module level only: not
    inside a function (a lazy import)."""
    type_checking, functions = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            type_checking.append((node.body[0].lineno, node.body[-1].end_lineno))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append((node.lineno, node.end_lineno))

    def within(line: int, spans: list) -> bool:
        return any(a <= line <= b for a, b in spans)

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        if module_level_only and within(node.lineno, functions):
            continue
        out += [(name, within(node.lineno, type_checking)) for name in names]
    return out


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def test_the_model_is_a_leaf():
    for name, type_checking in _imports(_parse(PKG / "config" / "model.py"), module_level_only=False):
        if name.startswith("trigctl"):
            assert type_checking and name == "trigctl.secrets", name
        assert name.split(".")[0] not in ("yaml", "jsonschema"), name


def test_trigger_types_import_only_the_model_and_only_for_types():
    for path in (PKG / "triggers").glob("*.py"):
        for name, type_checking in _imports(_parse(path), module_level_only=False):
            if name == "trigctl.config" or name.startswith("trigctl.config."):
                assert name == "trigctl.config.model" and type_checking, f"{path.name} imports {name}"


def test_config_does_not_import_triggers_at_import_time():
    for path in (PKG / "config").glob("*.py"):
        for name, type_checking in _imports(_parse(path), module_level_only=True):
            assert type_checking or not name.startswith("trigctl.triggers"), f"{path.name} imports {name}"


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_importing_the_model_costs_no_yaml_or_schema_tooling():
    out = _run("import sys, trigctl.config, trigctl.config.model, trigctl.triggers.base\n"
               "print(sorted(m for m in ('yaml', 'jsonschema', 'trigctl.config.load') if m in sys.modules))\n"
               "from trigctl.config import load_config\n"
               "print(sorted(m for m in ('yaml', 'jsonschema') if m in sys.modules))\n"
               "from trigctl.config import parse_config\n"
               "parse_config('version: 1\\n', 'x.yaml')\n"
               "print(sorted(m for m in ('yaml', 'jsonschema') if m in sys.modules))")
    # YAML when a file is parsed (not one read from the config cache); jsonschema when it is validated
    assert out.splitlines() == ["[]", "[]", "['jsonschema', 'yaml']"]


def _names_imported_from_config() -> set[str]:
    names: set[str] = set()
    for folder in ("trigctl", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(_parse(path)):
                if isinstance(node, ast.ImportFrom) and node.module == "trigctl.config":
                    names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("name", sorted(_names_imported_from_config()))
def test_every_name_imported_from_trigctl_config_is_there(name):
    import trigctl.config

    assert getattr(trigctl.config, name) is not None
    assert name in trigctl.config.__all__
