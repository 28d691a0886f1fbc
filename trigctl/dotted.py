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
    module = sys.modules.get(module_name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        # Imported already (50,000 triggers naming one module): what import_module would return,
        # without the sys.path change around it.
        return _attribute(module, module_name, qual, path)
    with on_sys_path(base_dir):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise ResolveError(f'cannot import "{path}": no module named {e.name!r}') from None
        except SystemExit as e:  # sys.exit() at import time must not end trigctl (`validate` would exit 0)
            raise ResolveError(f'cannot import "{path}": the module called sys.exit({_text(repr, e.code)})') from None
        except BaseException as e:  # noqa: BLE001 - the user's module raised while importing, even
            # KeyboardInterrupt or GeneratorExit: a config error, not the end of trigctl
            raise ResolveError(f'cannot import "{path}": {_described(e)}') from None
        return _attribute(module, module_name, qual, path)


def _attribute(module: Any, module_name: str, qual: str, path: str) -> Any:
    obj: Any = module
    for part in qual.split("."):
        try:
            obj = getattr(obj, part)  # a module's __getattr__ is user code too
        except AttributeError:
            raise ResolveError(f'cannot import "{path}": module {module_name!r} has no attribute {part!r}') from None
        except BaseException as e:  # noqa: BLE001
            raise ResolveError(f'cannot import "{path}": {_described(e)}') from None
    if not callable(obj):
        raise ResolveError(f'"{path}" is not callable (it is a {type(obj).__name__})')
    return obj


def _text(fn: Any, value: Any) -> str:
    """``fn(value)`` (str, repr) of a user object, or a placeholder if that raises too."""
    try:
        return str(fn(value))
    except BaseException as e:  # noqa: BLE001
        return f"(unreadable: {type(e).__name__})"


def _described(error: BaseException) -> str:
    """ "TypeError: message", or just the type's name when there is no message."""
    text = _text(str, error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
