"""A trigger type is declared once (BUILTIN_TYPES in trigctl/triggers/base.py); the packaged
schema must agree with the registered types, and each type's class with its schema definition."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest

from trigctl.config import load_schema
from trigctl.config.validate import COMMON_KEYS
from trigctl.triggers.base import BUILTIN_TYPES, TriggerType, trigger_class

ROOT = Path(__file__).resolve().parent.parent
DEFS = load_schema()["$defs"]
TRIGGER = DEFS["trigger"]
#: Keys of the `trigger` definition that are not options of a type.
FIXED = {"name", "type", "workflow"}


def test_the_schema_lists_exactly_the_registered_types():
    assert set(TRIGGER["properties"]["type"]["enum"]) == set(BUILTIN_TYPES)
    branches = {b["if"]["properties"]["type"]["const"]: b["then"]["$ref"] for b in TRIGGER["allOf"]}
    assert branches == {name: f"#/$defs/{name}" for name in BUILTIN_TYPES}
    for name in BUILTIN_TYPES:
        assert DEFS[name]["properties"], f"{name}: no per-type definition in the schema"


@pytest.mark.parametrize("name", sorted(BUILTIN_TYPES))
def test_each_builtin_module_registers_its_type(name):
    cls = trigger_class(name)
    assert cls is not None and issubclass(cls, TriggerType)
    assert cls.type_name == name and cls.__module__ == BUILTIN_TYPES[name]


def _options_read(cls: type) -> set[str]:
    """The option keys a type's module reads: ``options["k"]``, ``options.get("k")``, ``"k" in
    options``, where options is ``self.options``, an ``options`` argument or its alias ``o``."""
    tree = ast.parse(inspect.getsource(sys.modules[cls.__module__]))

    def is_options(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in ("o", "options")) or (
            isinstance(node, ast.Attribute) and node.attr == "options")

    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_options(node.value) and isinstance(node.slice, ast.Constant):
            keys.add(node.slice.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and is_options(node.func.value) and node.args and isinstance(node.args[0], ast.Constant)):
            keys.add(node.args[0].value)
        elif (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.In)
              and is_options(node.comparators[0]) and isinstance(node.left, ast.Constant)):
            keys.add(node.left.value)
    return keys


@pytest.mark.parametrize("name", sorted(BUILTIN_TYPES))
def test_each_type_reads_exactly_the_options_its_schema_defines(name):
    """An option the class reads but the schema refuses can never be set; one the schema accepts
    but the class ignores is silently without effect. (A type that reads its options some other
    way than the forms _options_read knows fails here: extend _options_read.)"""
    cls = trigger_class(name)
    assert cls is not None
    schema_keys = set(DEFS[name]["properties"])
    read = _options_read(cls)
    assert read - schema_keys == set(), f"{name} reads options the schema does not define"
    assert schema_keys - read == set(), f"{name}'s schema defines options the class never reads"
    assert not schema_keys & set(TRIGGER["properties"]), f"{name}: an option shadows a common key"
    assert set(DEFS[name].get("required", [])) <= schema_keys


def test_common_keys_and_defaults_agree_with_the_schema():
    assert set(TRIGGER["properties"]) - FIXED == COMMON_KEYS
    options = set().union(*(DEFS[name]["properties"] for name in BUILTIN_TYPES))
    unknown = set(DEFS["defaults"]["properties"]) - COMMON_KEYS - options
    assert unknown == set(), "defaults: keys that no trigger has"


def test_the_wheel_packages_the_schema_that_is_tested():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert build["force-include"]["schemas/triggers.schema.json"] == "trigctl/schemas/triggers.schema.json"
