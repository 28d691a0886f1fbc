"""The one resolver for dotted paths: ``pkg.module:qualname`` (or ``pkg.module.name``)."""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class ResolveError(Exception):
    pass


@contextmanager
def on_sys_path(directory: Path | None):
    """Put ``directory`` first on sys.path while importing user code."""
    if directory is None:
        yield
        return
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            try:
                sys.path.remove(entry)
            except ValueError:
                pass


def split(path: str) -> tuple[str, str]:
    if ":" in path:
        module, _, qual = path.partition(":")
    else:
        module, _, qual = path.rpartition(".")
    if not module or not qual:
        raise ResolveError(f'"{path}" is not a dotted path (use "package.module:name")')
    return module, qual


def resolve(path: str, base_dir: Path | None = None) -> Any:
    """Import and return the object; ResolveError with a specific message otherwise."""
    module_name, qual = split(path)
    with on_sys_path(base_dir):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise ResolveError(f'cannot import "{path}": no module named {e.name!r}') from None
        except Exception as e:  # the user's module raised while importing
            raise ResolveError(f'cannot import "{path}": {type(e).__name__}: {e}') from None
        except SystemExit as e:  # sys.exit() at import time must not end trigctl (`validate` would exit 0)
            raise ResolveError(f'cannot import "{path}": the module called sys.exit({e.code!r})') from None
    obj: Any = module
    for part in qual.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ResolveError(f'cannot import "{path}": module {module_name!r} has no attribute {part!r}') from None
    if not callable(obj):
        raise ResolveError(f'"{path}" is not callable (it is a {type(obj).__name__})')
    return obj
