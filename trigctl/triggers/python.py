"""`python` triggers: a user callable referenced by dotted path (function, async function, or class)."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trigctl.dotted import ResolveError, resolve
from trigctl.triggers.base import (
    SKIPPED_NONE,
    PollContext,
    PollOutcome,
    TriggerType,
    normalize_result,
    register,
)

_PLAIN = (bool, dict, tuple, list)


#: Whether a plain function takes ``cursor``: asked once per function, not per trigger (50,000
#: triggers calling one function: 0.5 s of inspect.signature at start-up).
_CURSOR_PARAM: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _wants_cursor(fn: Any) -> bool:
    plain = inspect.isfunction(fn)
    if plain:
        known = _CURSOR_PARAM.get(fn)
        if known is not None:
            return known
    params: Mapping[str, Any]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    wants = "cursor" in params
    if plain:
        _CURSOR_PARAM[fn] = wants
    return wants


@register
class PythonTrigger(TriggerType):
    type_name = "python"
    blocking = False  # called on the fast lane; a call that runs long is handed off, not waited for

    def __init__(self, config, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        obj = resolve(self.options["callable"], base_dir)
        args = dict(self.options.get("args") or {})
        self._instance = None
        if inspect.isclass(obj):
            self._instance = obj(**args)
            fn = getattr(self._instance, "poll", None)
            if not callable(fn):
                raise ResolveError(f'"{self.options["callable"]}" is a class without a poll() method')
            self._fn = fn
            self._kwargs: dict[str, Any] = {}
        else:
            self._fn = obj
            self._kwargs = args
        self._wants_cursor = _wants_cursor(self._fn)
        if not self._wants_cursor:
            self.poll_bare = self._poll_bare

    def _poll_bare(self) -> Any:
        """poll() for a callable that takes no cursor: the context is not needed, so not built."""
        value = self._fn(**self._kwargs) if self._kwargs else self._fn()
        if value is None:
            return SKIPPED_NONE
        if value is False or type(value) in _PLAIN:
            return normalize_result(value)
        if inspect.isawaitable(value):
            return value
        return normalize_result(value)

    @classmethod
    def check(cls, options: Mapping[str, Any], base_dir: Path) -> list[tuple[tuple, str]]:
        try:
            obj = resolve(options["callable"], base_dir)
        except ResolveError as e:
            return [(("callable",), str(e))]
        if inspect.isclass(obj) and not callable(getattr(obj, "poll", None)):
            return [(("callable",), f'"{options["callable"]}" is a class without a poll() method')]
        return []

    def poll(self, ctx: PollContext) -> Any:
        if self._wants_cursor:
            value = self._fn(**self._kwargs, cursor=ctx.cursor)
        elif self._kwargs:
            value = self._fn(**self._kwargs)
        else:
            value = self._fn()
        if value is None:
            return SKIPPED_NONE  # normalize_result(None), without the call
        if value is False or type(value) in _PLAIN:
            return normalize_result(value)  # the common answers, without the awaitable check
        if inspect.isawaitable(value):
            return value  # the scheduler runs it on its event loop and calls finish()
        return normalize_result(value)

    def finish(self, value: Any) -> PollOutcome:
        return normalize_result(value)

    def close(self) -> None:
        close = getattr(self._instance, "close", None)
        if callable(close):
            close()
