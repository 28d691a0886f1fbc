"""YAML -> ${ENV} interpolation -> JSON Schema -> semantic checks -> frozen, typed config.

Every problem becomes a :class:`ConfigIssue` with file, line and column; :class:`ConfigError`
carries all of a file's problems at once.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trigctl.durations import DurationError, parse_duration
from trigctl.secrets import Redactor, is_secret_key

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BACKOFF = 600.0
MAX_NODES = 200_000  # alias expansion budget: a "billion laughs" file stops here
MAX_DEPTH = 100
MAX_FILE_BYTES = 10 * 1024 * 1024
TRIGGER_TYPES = ("file", "http", "queue_depth", "command", "schedule", "python")

Path_ = tuple  # a location in the document: ("triggers", 1, "interval")


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path, "message": self.message}


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class TaskConfig:
    name: str
    kind: str  # run | argv | http | call
    run: str | None = None
    argv: tuple[str, ...] | None = None
    http: Mapping[str, Any] | None = None
    call: str | None = None
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 5.0
    continue_on_error: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass(frozen=True)
class WorkflowConfig:
    name: str
    tasks: tuple[TaskConfig, ...]
    timeout: float | None = None


@dataclass(frozen=True)
class TriggerConfig:
    name: str
    type: str
    workflow: str
    interval: float = DEFAULT_INTERVAL
    enabled: bool = True
    timeout: float = DEFAULT_TIMEOUT
    dedupe: str = "running"  # running | once | none
    dedupe_key: tuple[str, ...] | None = None  # None: the type's default
    jitter: float = 0.0
    max_backoff: float = DEFAULT_MAX_BACKOFF
    on_error_after: int | None = None
    on_error_workflow: str | None = None
    on_interrupt: str = "rerun"
    max_attempts: int = 3
    options: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0


@dataclass(frozen=True)
class Config:
    path: Path
    base_dir: Path
    state: str | None
    max_concurrent_runs: int
    workflows: Mapping[str, WorkflowConfig]
    triggers: tuple[TriggerConfig, ...]
    redactor: Redactor
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def trigger(self, name: str) -> TriggerConfig | None:
        for t in self.triggers:
            if t.name == name:
                return t
        return None

    def state_location(self) -> str:
        """The state: the file's `state:` (relative to the file) or .trigctl/state.db beside it."""
        if self.state and "://" in self.state:
            return self.state
        return str(self.base_dir / (self.state or ".trigctl/state.db"))


# --------------------------------------------------------------------------------------------- YAML


class _Doc:
    """A YAML document turned into plain Python, with the line:col of every value and key."""

    def __init__(self, filename: str):
        self.filename = filename
        self.value_marks: dict[tuple, tuple[int, int]] = {}
        self.key_marks: dict[tuple, tuple[int, int]] = {}
        self.issues: list[ConfigIssue] = []
        self.nodes = 0

    def mark(self, path: tuple, key: bool = False) -> tuple[int, int]:
        marks = self.key_marks if key else self.value_marks
        p = path
        while p:
            if p in marks:
                return marks[p]
            if not key and p in self.key_marks:
                return self.key_marks[p]
            p = p[:-1]
        return marks.get((), (1, 1))

    def issue(self, path: tuple, message: str, key: bool = False, data: Any = None) -> None:
        line, col = self.mark(path, key)
        self.issues.append(ConfigIssue(self.filename, line, col, format_path(path, data), message))


def format_path(path: tuple, data: Any = None) -> str:
    """("triggers", 1, "interval") -> "triggers[1](inbox).interval" (list items named where they can be)."""
    out = ""
    node = data
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            item = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                out += f"({item['name']})"
            node = item
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


class _Budget(Exception):
    pass


def _to_python(doc: _Doc, loader: yaml.SafeLoader, node: yaml.Node, path: tuple, depth: int) -> Any:
    doc.nodes += 1
    if doc.nodes > MAX_NODES:
        raise _Budget(f"document too large: more than {MAX_NODES} values (alias expansion?)")
    if depth > MAX_DEPTH:
        raise _Budget(f"document nested deeper than {MAX_DEPTH} levels")
    doc.value_marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(doc, loader, child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # merge keys (<<)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                doc.issues.append(ConfigIssue(doc.filename, line, col, format_path(path), "a key must be a plain value"))
                continue
            key = loader.construct_object(key_node, deep=True)
            kpath = path + (key if isinstance(key, str) else str(key),)
            if key in out:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                doc.issues.append(
                    ConfigIssue(doc.filename, line, col, format_path(kpath), f"duplicate key {key!r}")
                )
                continue
            doc.key_marks[kpath] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _to_python(doc, loader, value_node, kpath, depth + 1)
        return out
    raise _Budget(f"unsupported YAML node {node!r}")


def _yaml_hint(problem: str, text_line: str) -> str:
    if "\t" in text_line and ("tab" in problem or "cannot start any token" in problem):
        return " (tabs are not allowed in YAML indentation: use spaces)"
    if ("alias" in problem or "anchor" in problem or "alphabetic or numeric" in problem) and "*" in text_line:
        return ' (an unquoted * starts a YAML alias: quote the value, e.g. cron: "*/5 * * * *")'
    return ""


def load_yaml(text: str, filename: str) -> tuple[Any, _Doc]:
    doc = _Doc(filename)
    # libyaml's parser when present (10x faster on big files); its nodes carry the same marks.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            doc.issues.append(ConfigIssue(filename, 1, 1, "", "the file is empty (expected a mapping starting with version: 1)"))
            return None, doc
        data = _to_python(doc, loader, node, (), 0)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        lines = text.splitlines()
        src = lines[line - 1] if 0 < line <= len(lines) else ""
        problem = (e.problem or e.context or "invalid YAML").strip()
        doc.issues.append(ConfigIssue(filename, line, col, "", f"invalid YAML: {problem}{_yaml_hint(problem, src)}"))
        return None, doc
    except yaml.YAMLError as e:
        doc.issues.append(ConfigIssue(filename, 1, 1, "", f"invalid YAML: {e}"))
        return None, doc
    except (_Budget, RecursionError) as e:
        doc.issues.append(ConfigIssue(filename, 1, 1, "", str(e) if isinstance(e, _Budget) else "document nested too deeply"))
        return None, doc
    finally:
        loader.dispose()
    return data, doc


# ------------------------------------------------------------------------------------ interpolation

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _interpolate_str(value: str, env: Mapping[str, str], missing: list[str]) -> tuple[str, bool]:
    used = False

    def sub(m: re.Match) -> str:
        nonlocal used
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        used = True
        value = env.get(name)
        if value:
            return value
        if default is not None:  # like the shell's ${VAR:-default}: unset or empty
            return default
        if value is not None:
            return value
        missing.append(name)
        return ""

    return _VAR.sub(sub, value), used


def _is_shell_string(path: tuple) -> bool:
    # `run:` of a task or of a command trigger: the shell expands its own variables.
    return bool(path) and path[-1] == "run"


def interpolate(data: Any, doc: _Doc, env: Mapping[str, str], secrets: set[str], path: tuple = (),
                root: Any = None) -> Any:
    root = data if root is None else root
    if isinstance(data, dict):
        return {k: interpolate(v, doc, env, secrets, path + (k,), root) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, doc, env, secrets, path + (i,), root) for i, v in enumerate(data)]
    if isinstance(data, str) and not _is_shell_string(path) and "$" in data:
        missing: list[str] = []
        out, used = _interpolate_str(data, env, missing)
        for name in missing:
            doc.issue(path, f"environment variable {name} is not set (use ${{{name}:-default}} for a default)", data=root)
        if used and _secret_position(path):
            secrets.add(out)
        return out
    return data


def _secret_position(path: tuple) -> bool:
    names = [p for p in path if isinstance(p, str)]
    return "headers" in names[:-1] or (bool(names) and is_secret_key(names[-1]))


# ------------------------------------------------------------------------------------------- schema


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    try:
        text = resources.files("trigctl").joinpath("schemas/triggers.schema.json").read_text()
    except (FileNotFoundError, OSError):  # a source checkout / editable install: the top-level schemas/
        text = (Path(__file__).resolve().parent.parent / "schemas" / "triggers.schema.json").read_text()
    return json.loads(text)


def _format_checker():
    from jsonschema import FormatChecker

    checker = FormatChecker(formats=())

    @checker.checks("duration", raises=DurationError)
    def _duration(value: object) -> bool:
        parse_duration(value)
        return True

    @checker.checks("dotted-path", raises=ValueError)
    def _dotted(value: object) -> bool:
        if not isinstance(value, str):
            return True
        from trigctl.dotted import ResolveError, split

        try:
            module, qual = split(value)
        except ResolveError as e:
            raise ValueError(str(e)) from None
        ident = r"[A-Za-z_][A-Za-z0-9_]*"
        if not re.fullmatch(rf"{ident}(\.{ident})*", module) or not re.fullmatch(rf"{ident}(\.{ident})*", qual):
            raise ValueError(f'"{value}" is not a dotted path (use "package.module:name")')
        return True

    @checker.checks("cron", raises=ValueError)
    def _cron(value: object) -> bool:
        if not isinstance(value, str):
            return True
        from croniter import croniter

        if len(value.split()) != 5:
            raise ValueError(f'"{value}" is not a 5-field cron expression (minute hour day month weekday)')
        if not croniter.is_valid(value):
            raise ValueError(f'"{value}" is not a valid cron expression')
        return True

    @checker.checks("timezone", raises=ValueError)
    def _tz(value: object) -> bool:
        if not isinstance(value, str):
            return True
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except Exception:
            raise ValueError(f'"{value}" is not a known time zone (use an IANA name such as Europe/Berlin)') from None
        return True

    @checker.checks("jmespath", raises=ValueError)
    def _jmespath(value: object) -> bool:
        if not isinstance(value, str):
            return True
        import jmespath
        from jmespath.exceptions import JMESPathError

        try:
            jmespath.compile(value)
        except JMESPathError as e:
            raise ValueError(f'"{value}" is not a valid JMESPath expression: {str(e).splitlines()[0]}') from None
        return True

    @checker.checks("http-url", raises=ValueError)
    def _url(value: object) -> bool:
        if isinstance(value, str) and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f'"{value}" is not an http:// or https:// URL')
        return True

    return checker


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _allowed_keys(schema: dict, path: tuple, data: Any) -> list[str]:
    defs = schema["$defs"]
    if len(path) == 2 and path[0] == "triggers":
        item = data["triggers"][path[1]] if isinstance(data, dict) else {}
        keys = list(defs["trigger"]["properties"])
        t = item.get("type") if isinstance(item, dict) else None
        if t in defs:
            keys += list(defs[t].get("properties", {}))
        return keys
    return []


def _schema_issues(data: Any, doc: _Doc) -> None:
    from jsonschema import Draft202012Validator

    schema = load_schema()
    validator = Draft202012Validator(schema, format_checker=_format_checker())
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    bad_type_at = {tuple(e.absolute_path)[:-1] for e in errors if list(e.absolute_path)[-1:] == ["type"]}
    seen: set[tuple[tuple, str]] = set()
    for error in errors:
        for path, message, key in _explain(error, schema, data, bad_type_at):
            if (path, message) in seen:
                continue
            seen.add((path, message))
            doc.issue(path, message, key=key, data=data)


def _explain(error, schema, data, bad_type_at) -> list[tuple[tuple, str, bool]]:
    path = tuple(error.absolute_path)
    v = error.validator
    inst = error.instance
    if v in ("additionalProperties", "unevaluatedProperties"):
        if v == "unevaluatedProperties" and path in bad_type_at:
            return []  # the unknown type already explains it
        allowed = _allowed_keys(schema, path, data) or list(error.schema.get("properties", {}))
        known = set(allowed)
        out = []
        for k in inst if isinstance(inst, dict) else []:
            if k in known:
                continue
            if v == "additionalProperties" and "properties" in error.schema and k in error.schema["properties"]:
                continue
            if isinstance(k, bool) or k in ("True", "False"):
                msg = f"unknown key {k!r}: YAML reads an unquoted on/off/yes/no key as a boolean; quote it"
            else:
                close = difflib.get_close_matches(str(k), allowed, n=1)
                msg = f"unknown key {k!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            out.append((path + (str(k),), msg, True))
        return out
    if v == "format":
        fmt = error.validator_value
        cause = str(error.cause) if error.cause else ""
        if fmt == "duration":
            return [(path, cause or f"{json.dumps(inst)} is not a duration", False)]
        return [(path, cause or f"{inst!r} is not a valid {fmt}", False)]
    if v == "required":
        missing = [k for k in error.validator_value if not (isinstance(inst, dict) and k in inst)]
        if path and path[0] == "triggers" and "cron" in missing and "every" in missing:
            return [(path, "a schedule trigger needs `cron` or `every`", False)]
        return [(path, f"missing required key {m!r}", False) for m in missing[:1]]
    if v == "type":
        expected = error.validator_value
        exp = " or ".join(expected) if isinstance(expected, list) else expected
        msg = f"expected {exp}, got {_type_name(inst)}"
        if isinstance(inst, bool) and "string" in str(expected):
            msg += " (YAML reads unquoted yes/no/on/off as booleans: quote it)"
        if isinstance(inst, (int, float)) and "string" in str(expected) and not isinstance(inst, bool):
            msg += " (quote it to make it a string)"
        return [(path, msg, False)]
    if v == "enum":
        allowed = ", ".join(str(x) for x in error.validator_value if not (isinstance(x, str) and x.islower() and x.upper() in error.validator_value))
        msg = f"{json.dumps(inst) if not isinstance(inst, bool) else inst} is not one of: {allowed}"
        if isinstance(inst, bool):
            msg += " (YAML reads unquoted yes/no/on/off as booleans: quote it)"
        return [(path, msg, False)]
    if v == "const" and path == ("version",):
        return [(path, f"unsupported version {inst!r} (the only version is 1)", False)]
    if v == "pattern":
        if path and (path[-1] in ("name", "workflow") or path == ("workflows",)):
            return [(path, f"{inst!r} is not a valid name (lowercase letters, digits, _ and -; starting with a letter or digit)", False)]
        return [(path, f"{inst!r} does not match {error.validator_value}", False)]
    if v == "oneOf" and isinstance(inst, dict):
        choices = [s.get("required", [None])[0] for s in error.validator_value if "required" in s]
        if choices:
            present = [c for c in choices if c in inst]
            if len(present) > 1:
                return [(path, f"use only one of {', '.join(choices)} (got {', '.join(present)})", False)]
            return [(path, f"needs one of: {', '.join(choices)}", False)]
    if v == "anyOf" and isinstance(inst, dict) and path and path[0] == "triggers":
        return [(path, "a queue_depth trigger needs `above` or `below`", False)]
    if v == "not" and isinstance(inst, dict):
        return [(path, "use either `body` or `json`, not both", False)]
    if v in ("minItems", "minProperties", "maxProperties"):
        what = "list" if v == "minItems" else "mapping"
        if path and path[-1] == "source":
            return [(path, "source must have exactly one of: directory, command, http, sqlite", False)]
        return [(path, f"this {what} is {'empty' if not inst else 'too large'}: {error.message}", False)]
    if v in ("minimum", "maximum"):
        return [(path, f"{inst} is {'less' if v == 'minimum' else 'more'} than the {v} {error.validator_value}", False)]
    return [(path, error.message, False)]


# ----------------------------------------------------------------------------------------- building


def _trigger_config(i: int, item: dict, defaults: dict, doc: _Doc, data: Any, light: bool = False) -> TriggerConfig | None:
    from trigctl.triggers.base import BUILTIN_TYPES, trigger_class

    common = {
        "interval", "enabled", "timeout", "dedupe", "allow_concurrent", "dedupe_key", "jitter", "max_backoff",
        "on_error", "on_interrupt", "max_attempts", "description",
    }
    path = ("triggers", i)
    ttype = item["type"]
    cls = None if light else trigger_class(ttype)
    type_keys = set(load_schema()["$defs"].get(ttype, {}).get("properties", {}))
    merged = {k: v for k, v in defaults.items() if k in common or k in type_keys}
    merged.update(item)
    options = {k: v for k, v in merged.items() if k in type_keys}
    dedupe = merged.get("dedupe", "running")
    if merged.get("allow_concurrent") is True:
        if "dedupe" in item and item["dedupe"] != "none":
            doc.issue(path + ("allow_concurrent",), f"allow_concurrent: true contradicts dedupe: {item['dedupe']}", data=data)
        dedupe = "none"
    on_error = merged.get("on_error") or {}
    interval = parse_duration(merged.get("interval", DEFAULT_INTERVAL))
    if ttype == "schedule" and "interval" in item:
        doc.issue(path + ("interval",), "a schedule trigger has no interval: use `cron` or `every`", key=True, data=data)
    if interval <= 0 and ttype != "schedule":
        doc.issue(path + ("interval",), "interval must be greater than 0", data=data)
    if parse_duration(merged.get("timeout", DEFAULT_TIMEOUT)) <= 0:
        doc.issue(path + ("timeout",), "timeout must be greater than 0", data=data)
    if ttype not in BUILTIN_TYPES or (cls is None and not light):
        doc.issue(path + ("type",), f"trigger type {ttype!r} is not available", data=data)
        return None
    for subpath, message in ([] if cls is None else cls.check(options, doc_base_dir(doc))):
        doc.issue(path + tuple(subpath), message, data=data)
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
        max_backoff=parse_duration(merged.get("max_backoff", DEFAULT_MAX_BACKOFF)),
        on_error_after=int(on_error.get("after", 3)) if on_error else None,
        on_error_workflow=on_error.get("workflow"),
        on_interrupt=merged.get("on_interrupt", "rerun"),
        max_attempts=int(merged.get("max_attempts", 3)),
        options=options,
        index=i,
    )


def doc_base_dir(doc: _Doc) -> Path:
    return Path(doc.filename).resolve().parent


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
            if tc.call and not light:
                try:
                    resolve(tc.call, doc_base_dir(doc))
                except ResolveError as e:
                    doc.issue(("workflows", wname, "tasks", j, "call"), str(e), data=data)
            tasks.append(tc)
        timeout = parse_duration(wf["timeout"]) if "timeout" in wf else None
        workflows[wname] = WorkflowConfig(name=wname, tasks=tuple(tasks), timeout=timeout)

    defaults = data.get("defaults") or {}
    triggers: list[TriggerConfig] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(data.get("triggers") or []):
        path = ("triggers", i)
        name = item["name"]
        if name in first_seen:
            doc.issue(path + ("name",), f"duplicate trigger name {name!r} (first at triggers[{first_seen[name]}])", data=data)
            continue
        first_seen[name] = i
        for key in ("workflow",):
            if item[key] not in workflows:
                close = difflib.get_close_matches(item[key], list(workflows), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else (" (no workflows are defined)" if not workflows else "")
                doc.issue(path + (key,), f"unknown workflow {item[key]!r}{hint}", data=data)
        on_error = item.get("on_error") or defaults.get("on_error")
        if on_error and on_error.get("workflow") not in workflows:
            doc.issue(path + ("on_error", "workflow"), f"unknown workflow {on_error.get('workflow')!r}", data=data)
        for key in item.get("dedupe_key") or []:
            if not isinstance(key, str):
                doc.issue(path + ("dedupe_key",), "dedupe_key entries must be strings", data=data)
        tc = _trigger_config(i, item, defaults, doc, data, light)
        if tc is not None:
            triggers.append(tc)
    return workflows, triggers


def load_config(path: str | os.PathLike, env: Mapping[str, str] | None = None, *, light: bool = False) -> Config:
    """Read, check and build a config; raise ConfigError listing every problem found.

    ``light`` skips the JSON Schema and the imports of callables (for read-only commands that must
    start fast); a file that does not build that way is checked fully, so errors read the same.
    """
    p = Path(path)
    filename = str(path)
    env = os.environ if env is None else env
    try:
        if p.is_dir():
            raise ConfigError([ConfigIssue(filename, 1, 1, "", "is a directory, not a YAML file")])
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(filename, 1, 1, "", "no such file (create one with `trigctl init`)")]) from None
    except OSError as e:
        raise ConfigError([ConfigIssue(filename, 1, 1, "", f"cannot read: {e.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([ConfigIssue(filename, 1, 1, "", f"file too large ({len(raw)} bytes; limit {MAX_FILE_BYTES})")])
    if b"\x00" in raw:
        raise ConfigError([ConfigIssue(filename, 1, 1, "", "not a text file (it contains NUL bytes)")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(filename, line, 1, "", "not UTF-8 text")]) from None
    if light:
        try:
            return parse_config(text, filename, env, light=True)
        except Exception:
            pass  # not valid enough to build without the schema: let the full check explain why
    return parse_config(text, filename, env)


def parse_config(text: str, filename: str, env: Mapping[str, str] | None = None, *, light: bool = False) -> Config:
    env = os.environ if env is None else env
    data, doc = load_yaml(text, filename)
    if doc.issues:
        raise ConfigError(doc.issues)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(filename, 1, 1, "", f"expected a mapping with `version: 1` at the top, got {_type_name(data)}")])
    secrets: set[str] = set()
    data = interpolate(data, doc, env, secrets)
    if not light:
        _schema_issues(data, doc)
    if doc.issues:
        raise ConfigError(_redacted(doc.issues, secrets))
    workflows, triggers = _semantic(data, doc, light)
    if doc.issues:
        raise ConfigError(_redacted(doc.issues, secrets))
    base_dir = Path(filename).resolve().parent
    return Config(
        path=Path(filename).resolve(),
        base_dir=base_dir,
        state=data.get("state"),
        max_concurrent_runs=int(data.get("max_concurrent_runs", 8)),
        workflows=workflows,
        triggers=tuple(triggers),
        redactor=Redactor(secrets),
        raw=data,
    )


def _redacted(issues: list[ConfigIssue], secrets: set[str]) -> list[ConfigIssue]:
    """Sorted by position, with secret values masked (an error may quote the value it refuses)."""
    redactor = Redactor(secrets)
    return [
        ConfigIssue(i.file, i.line, i.column, i.path, redactor.text(i.message))
        for i in sorted(issues, key=lambda i: (i.line, i.column))
    ]
