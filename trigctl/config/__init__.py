"""The configuration: a YAML file checked and built into frozen, typed dataclasses.

    model.py        the dataclasses (Config, TriggerConfig, ...) and ConfigIssue/ConfigError: a leaf
    yaml_loader.py  YAML -> plain Python with line:col, within depth and size budgets
    interpolate.py  ${VAR} interpolation and the secrets it brings in
    schema.py       the JSON Schema, per-type flattened validation, readable errors
    validate.py     semantic checks, and the model built from checked data
    load.py         the pipeline: load_config / parse_config

The model's names are imported here at once (cheap); the loader's are imported on first use, so
that importing the model (trigger types, the scheduler) costs no YAML or JSON Schema import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trigctl.config.model import (
    DEFAULT_INTERVAL,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_TIMEOUT,
    Config,
    ConfigError,
    ConfigIssue,
    TaskConfig,
    TriggerConfig,
    WorkflowConfig,
    trigger_summaries,
)

if TYPE_CHECKING:  # for type checkers; at run time __getattr__ below imports them on first use
    from trigctl.config.interpolate import interpolate as interpolate
    from trigctl.config.load import load_config as load_config
    from trigctl.config.load import parse_config as parse_config
    from trigctl.config.schema import load_schema as load_schema
    from trigctl.config.yaml_loader import MAX_DEPTH as MAX_DEPTH
    from trigctl.config.yaml_loader import MAX_FILE_BYTES as MAX_FILE_BYTES
    from trigctl.config.yaml_loader import MAX_NODES as MAX_NODES
    from trigctl.config.yaml_loader import format_path as format_path
    from trigctl.config.yaml_loader import load_yaml as load_yaml

#: name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "load_config": "load",
    "parse_config": "load",
    "interpolate": "interpolate",
    "load_schema": "schema",
    "load_yaml": "yaml_loader",
    "format_path": "yaml_loader",
    "MAX_DEPTH": "yaml_loader",
    "MAX_FILE_BYTES": "yaml_loader",
    "MAX_NODES": "yaml_loader",
}

__all__ = [
    "DEFAULT_INTERVAL", "DEFAULT_MAX_BACKOFF", "DEFAULT_TIMEOUT", "Config", "ConfigError", "ConfigIssue",
    "TaskConfig", "TriggerConfig", "WorkflowConfig", "trigger_summaries", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
