"""Semantic checks beyond the schema (references, duplicates, each type's own check) and the
building of the model from checked data.

The trigger types are imported only here, lazily, where a trigger's type is checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trigctl.config.model import (
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    TaskConfig,
    TriggerConfig,
    WorkflowConfig,
    default_max_backoff,
)
from trigctl.config.schema import _shape, load_schema
from trigctl.durations import parse_duration

if TYPE_CHECKING:
    from trigctl.config.yaml_loader import _Doc

#: The keys every trigger type has (the schema's `trigger` properties but name, type, workflow).
COMMON_KEYS = frozenset({
    "interval", "enabled", "timeout", "dedupe", "allow_concurrent", "dedupe_key", "jitter", "max_backoff",
    "on_error", "on_interrupt", "max_attempts", "description", "on_recover", "cooldown", "labels",
})

#: TriggerConfig's fields in the order its constructor takes them.
_TRIGGER_FIELDS = tuple(f.name for f in dataclasses.fields(TriggerConfig))
_NAME_AT, _OPTIONS_AT, _INDEX_AT = (_TRIGGER_FIELDS.index(n) for n in ("name", "options", "index"))

#: A shape (schema._shape of a trigger without its name) -> the field values of the config built
#: for it (None: none was) and the problems found, per load: a generated file repeats a few shapes
#: thousands of times.
_Memo = dict[tuple, tuple[list | None, list[tuple[tuple, str, bool]]]]


def _trigger_config(i: int, item: dict, defaults: dict, doc: _Doc, data: Any, light: bool = False,
                    memo: _Memo | None = None) -> TriggerConfig | None:
    """The trigger's config, its problems recorded in ``doc``. A trigger that differs from one
    built before (``memo``) only by its name is not checked and built again (~40 µs): the checks and
    every field but the name and the position depend on the rest of the item, the defaults and
    the file's folder only, which are the same for the whole load."""
    path = ("triggers", i)
    shape = _shape(item, "name") if memo is not None else None
    hit = memo.get(shape) if memo is not None and shape is not None else None
    if hit is None:
        found: list[tuple[tuple, str, bool]] = []
        built = _built_trigger_config(i, item, defaults, doc, light, found)
        if memo is not None and shape is not None:
            memo[shape] = (None if built is None else [getattr(built, f) for f in _TRIGGER_FIELDS], found)
    else:
        values, found = hit
        built = None
        if values is not None:
            values = values.copy()
            values[_NAME_AT], values[_OPTIONS_AT], values[_INDEX_AT] = item["name"], dict(values[_OPTIONS_AT]), i
            built = TriggerConfig(*values)
    for subpath, message, key in found:
        doc.issue(path + subpath, message, key=key, data=data)
    return built


def _built_trigger_config(i: int, item: dict, defaults: dict, doc: _Doc, light: bool,
                          found: list[tuple[tuple, str, bool]]) -> TriggerConfig | None:
    """_trigger_config's work: its problems go to ``found`` as (path below the trigger, message, at the key)."""
    from trigctl.triggers.base import BUILTIN_TYPES, trigger_class

    ttype = item["type"]
    cls = None if light else trigger_class(ttype)
    type_keys = _type_keys(ttype)
    merged = {k: v for k, v in defaults.items() if k in COMMON_KEYS or k in type_keys}
    merged.update(item)
    options = {k: v for k, v in merged.items() if k in type_keys}
    dedupe = merged.get("dedupe", "running")
    if merged.get("allow_concurrent") is True:
        if "dedupe" in item and item["dedupe"] != "none":
            found.append((("allow_concurrent",), f"allow_concurrent: true contradicts dedupe: {item['dedupe']}", False))
        dedupe = "none"
    on_error = merged.get("on_error") or {}
    interval = parse_duration(merged.get("interval", DEFAULT_INTERVAL))
    if ttype == "schedule" and "interval" in item:
        found.append((("interval",), "a schedule trigger has no interval: use `cron` or `every`", True))
    if interval <= 0 and ttype != "schedule":
        found.append((("interval",), "interval must be greater than 0", False))
    if parse_duration(merged.get("timeout", DEFAULT_TIMEOUT)) <= 0:
        found.append((("timeout",), "timeout must be greater than 0", False))
    if ttype not in BUILTIN_TYPES or (cls is None and not light):
        found.append((("type",), f"trigger type {ttype!r} is not available", False))
        return None
    for subpath, message in ([] if cls is None else cls.check(options, doc_base_dir(doc))):
        found.append((tuple(subpath), message, False))
    return TriggerConfig(
        name=item["name"],
        type=ttype,
        workflow=item["workflow"],
        interval=interval,
        enabled=bool(merged.get("enabled", True)),
        timeout=parse_duration(merged.get("timeout", DEFAULT_TIMEOUT)),
        dedupe=dedupe,
        dedupe_key=tuple(merged["dedupe_key"]) if merged.get("dedupe_key") else None,
        jitter=parse_duration(merged.get("jitter", 0)),
        max_backoff=(parse_duration(merged["max_backoff"]) if "max_backoff" in merged
                     else default_max_backoff(interval, bool(merged.get("on_recover")))),
        on_error_after=int(on_error.get("after", 3)) if on_error else None,
        on_error_workflow=on_error.get("workflow"),
        on_recover=merged.get("on_recover"),
        cooldown=parse_duration(merged.get("cooldown", 0)),
        on_interrupt=merged.get("on_interrupt", "rerun"),
        max_attempts=int(merged.get("max_attempts", 3)),
        labels=tuple(merged.get("labels") or ()),
        options=options,
        description=item.get("description"),
        index=i,
    )


@functools.lru_cache(maxsize=64)
def _type_keys(ttype: str) -> frozenset[str]:
    """The option keys of a trigger type (its schema properties): read once per type, not per trigger."""
    return frozenset(load_schema()["$defs"].get(ttype, {}).get("properties", {}))


def doc_base_dir(doc: _Doc) -> Path:
    base = doc.base_dir
    if base is None:  # resolved once per document: a resolve() is a few system calls
        base = doc.base_dir = Path(doc.filename).resolve().parent
    return base


def _env_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _task_config(j: int, task: dict) -> TaskConfig:
    kind = next(k for k in ("run", "argv", "http", "call") if k in task)
    return TaskConfig(
        name=str(task.get("name") or f"task{j + 1}"),
        kind=kind,
        run=task.get("run"),
        argv=tuple(str(a) for a in task["argv"]) if "argv" in task else None,
        http=task.get("http"),
        call=task.get("call"),
        timeout=parse_duration(task["timeout"]) if "timeout" in task else None,
        retries=int(task.get("retries", 0)),
        retry_delay=parse_duration(task.get("retry_delay", 5)),
        continue_on_error=bool(task.get("continue_on_error", False)),
        env={str(k): _env_text(v) for k, v in (task.get("env") or {}).items()},
        cwd=task.get("cwd"),
    )


def _semantic(data: dict, doc: _Doc, light: bool = False) -> tuple[dict[str, WorkflowConfig], list[TriggerConfig]]:
    from trigctl.dotted import ResolveError, resolve

    workflows: dict[str, WorkflowConfig] = {}
    for wname, wf in (data.get("workflows") or {}).items():
        tasks = []
        names: set[str] = set()
        for j, task in enumerate(wf["tasks"]):
            tc = _task_config(j, task)
            if tc.name in names:
                doc.issue(("workflows", wname, "tasks", j, "name"), f"duplicate task name {tc.name!r}", data=data)
            names.add(tc.name)
            if tc.timeout is not None and tc.timeout <= 0:  # it would fail every run at once
                doc.issue(("workflows", wname, "tasks", j, "timeout"), "timeout must be greater than 0", data=data)
            if tc.call and not light:
                try:
                    resolve(tc.call, doc_base_dir(doc))
                except ResolveError as e:
                    doc.issue(("workflows", wname, "tasks", j, "call"), str(e), data=data)
            tasks.append(tc)
        timeout = parse_duration(wf["timeout"]) if "timeout" in wf else None
        if timeout is not None and timeout <= 0:
            doc.issue(("workflows", wname, "timeout"), "timeout must be greater than 0", data=data)
        workflows[wname] = WorkflowConfig(name=wname, tasks=tuple(tasks), timeout=timeout,
                                          run_on=wf.get("run_on", "poller"))

    return workflows, _triggers(data, doc, set(workflows), light)


def _semantic_despite_schema(data: dict, doc: _Doc, bad_triggers: set[int] | None) -> None:
    """The semantic checks of the triggers the schema found nothing wrong with, so that a file's
    errors are reported at once (a cron that never comes due, an unknown workflow) rather than one
    stage after the other. Checks that need what the schema refused are left out."""
    triggers = data.get("triggers")
    workflows = data.get("workflows")
    if bad_triggers is None or not isinstance(triggers, list) or not isinstance(workflows, dict):
        return
    defaults = data.get("defaults")
    if defaults is not None and not isinstance(defaults, dict):
        return
    _triggers(data, doc, set(workflows), light=False, skip=bad_triggers)


def _triggers(data: dict, doc: _Doc, workflows: set[str], light: bool, skip: set[int] | None = None) -> list[TriggerConfig]:
    """The triggers' semantic checks and configs. ``skip``: the schema refused these items, check
    the others as far as the refused parts (a bad default) allow."""
    triggers: list[TriggerConfig] = []
    first_seen: dict[str, int] = {}
    memo: _Memo = {}
    for i, item in enumerate(data.get("triggers") or []):
        if skip is None:
            _trigger(i, item, data, doc, workflows, light, first_seen, triggers, memo)
        elif i in skip:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                first_seen.setdefault(item["name"], i)
        else:
            try:
                _trigger(i, item, data, doc, workflows, light, first_seen, triggers, memo)
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # a default the schema refused: that error says it
    return triggers


def _trigger(i: int, item: dict, data: dict, doc: _Doc, workflows: set[str], light: bool,
             first_seen: dict[str, int], triggers: list[TriggerConfig], memo: _Memo | None = None) -> None:
    defaults = data.get("defaults") or {}
    path = ("triggers", i)
    name = item["name"]
    if name in first_seen:
        doc.issue(path + ("name",), f"duplicate trigger name {name!r} (first at triggers[{first_seen[name]}])", data=data)
        return
    first_seen[name] = i
    for key in ("workflow",):
        if item[key] not in workflows:
            close = difflib.get_close_matches(item[key], list(workflows), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else (" (no workflows are defined)" if not workflows else "")
            doc.issue(path + (key,), f"unknown workflow {item[key]!r}{hint}", data=data)
    on_error = item.get("on_error") or defaults.get("on_error")
    if on_error and on_error.get("workflow") not in workflows:
        doc.issue(path + ("on_error", "workflow"), f"unknown workflow {on_error.get('workflow')!r}", data=data)
    on_recover = item.get("on_recover") or defaults.get("on_recover")
    if on_recover and on_recover not in workflows:
        where = path + ("on_recover",) if "on_recover" in item else ("defaults", "on_recover")
        doc.issue(where, f"unknown workflow {on_recover!r}", data=data)
    for key in item.get("dedupe_key") or []:
        if not isinstance(key, str):
            doc.issue(path + ("dedupe_key",), "dedupe_key entries must be strings", data=data)
    trigger_cfg = _trigger_config(i, item, defaults, doc, data, light, memo)
    if trigger_cfg is not None:
        triggers.append(trigger_cfg)
