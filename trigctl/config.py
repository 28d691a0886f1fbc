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
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

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

    def __post_init__(self) -> None:
        # One line per issue, whatever the file quotes: no newlines, no terminal escapes.
        object.__setattr__(self, "path", _one_line(self.path))
        object.__setattr__(self, "message", _one_line(self.message))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path, "message": self.message}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    if not isinstance(text, str):
        return text
    if len(text) > 1000:  # a message quoting a 5 MB value stays readable
        text = f"{text[:600]}...({len(text) - 800} characters)...{text[-200:]}"
    if not _CONTROL.search(text):
        return text
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return _CONTROL.sub(lambda m: named.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                             else f"\\u{ord(m.group()):04x}"), text)


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


@dataclass(frozen=True, slots=True)
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
    description: str | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    base_dir: Path
    state: str | None
    max_concurrent_runs: int
    workflows: Mapping[str, WorkflowConfig]
    triggers: tuple[TriggerConfig, ...]
    redactor: Redactor

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
        self.unset: set[tuple] = set()  # values that used an unset ${VAR}: already explained
        self.fast = False

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
        if self.fast:
            raise _NeedMarks  # the fast parse kept no positions: parse again with them
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
            if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
                out += f"({item['name']})"
            node = item
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


class _Budget(Exception):
    pass


_NO_KEY = object()  # a mapping waits for a key
_SKIP = object()  # the value after a duplicate or non-plain key: parsed, then dropped
_MERGE = object()  # the value after `<<`: mappings merged into this one
_COLLECTION_TAGS = {
    "seq": (None, "!", "tag:yaml.org,2002:seq"),
    "map": (None, "!", "tag:yaml.org,2002:map"),
}


@dataclass
class _Frame:
    """A sequence or mapping being built."""

    value: Any  # list | dict
    path: tuple | None  # None: a non-plain key or a dropped value, built only to be thrown away
    anchor: str | None
    first_node: int  # doc.nodes when it started: its size, for aliases, is the difference
    mark: tuple[int, int]
    is_key: bool = False
    key: Any = _NO_KEY
    key_mark: tuple[int, int] = (1, 1)
    height: int = 1  # levels below it, for aliases (an alias adds its target's height)
    merges: list = field(default_factory=list)
    merge_mark: tuple[int, int] = (1, 1)


def _mark(m: Any) -> tuple[int, int]:
    return (m.line + 1, m.column + 1) if m is not None else (1, 1)


class _Composer:
    """Builds plain Python from parser events, iteratively, with the line:col of every value.

    Events, not yaml's node graph: libyaml's composer recurses (a file nested 100,000 levels deep
    crashes the interpreter) and its node graph of a 10 MB file takes ~15 s and ~600 MB. Here the
    depth and size budgets stop the parse as soon as they are exceeded.
    """

    def __init__(self, doc: _Doc, loader: Any):
        self.doc = doc
        self.loader = loader
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # anchor -> (value, size, height)
        self.stack: list[_Frame] = []
        self.result: Any = None
        self.done = False

    def count(self, n: int, height: int) -> None:
        self.doc.nodes += n
        if self.doc.nodes > MAX_NODES:
            raise _Budget(f"document too large: more than {MAX_NODES} values (alias expansion?)")
        if len(self.stack) + height > MAX_DEPTH:
            raise _Budget(f"document nested deeper than {MAX_DEPTH} levels")

    def child_path(self) -> tuple | None:
        """Where the next value goes; None for a key or a dropped value."""
        if not self.stack:
            return ()
        f = self.stack[-1]
        if f.path is None:
            return None
        if isinstance(f.value, list):
            return f.path + (len(f.value),)
        if f.key is _NO_KEY or f.key is _SKIP or f.key is _MERGE:
            return None
        return f.path + (f.key if isinstance(f.key, str) else str(f.key),)

    def in_key_position(self) -> bool:
        return bool(self.stack) and isinstance(self.stack[-1].value, dict) and self.stack[-1].key is _NO_KEY

    def issue(self, mark: tuple[int, int], path: tuple, message: str) -> None:
        self.doc.issues.append(ConfigIssue(self.doc.filename, mark[0], mark[1], format_path(path), message))

    def compose(self) -> Any:
        loader = self.loader
        loader.get_event()  # StreamStart
        if loader.check_event(yaml.StreamEndEvent):
            return _NO_KEY  # no document at all
        start = loader.get_event()  # DocumentStart
        while not self.done:
            self.event(loader.get_event())
        loader.get_event()  # DocumentEnd
        if not loader.check_event(yaml.StreamEndEvent):
            raise yaml.composer.ComposerError("expected a single document in the stream", start.start_mark,
                                              "but found another document", loader.get_event().start_mark)
        return self.result

    def event(self, event: Any) -> None:
        if isinstance(event, yaml.ScalarEvent):
            self.scalar(event)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in self.anchors:
                raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}", cast(Any, event.start_mark))
            value, size, height = self.anchors[event.anchor]
            self.count(size, height)
            path = self.child_path()
            if path is not None:
                self.doc.value_marks.setdefault(path, _mark(event.start_mark))
            self.attach(value, _mark(event.start_mark), height, plain=not isinstance(value, (list, dict)))
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            kind = "seq" if isinstance(event, yaml.SequenceStartEvent) else "map"
            if event.tag not in _COLLECTION_TAGS[kind]:
                raise yaml.constructor.ConstructorError(
                    None, None, f"could not determine a constructor for the tag {event.tag!r}", cast(Any, event.start_mark))
            self.count(1, 0)
            mark = _mark(event.start_mark)
            is_key = self.in_key_position()
            if is_key:
                self.issue(mark, self.stack[-1].path or (), "a key must be a plain value")
            path = self.child_path()
            if path is not None:
                self.doc.value_marks.setdefault(path, mark)
            self.stack.append(_Frame([] if kind == "seq" else {}, path, event.anchor, self.doc.nodes, mark, is_key))
            if len(self.stack) > MAX_DEPTH:
                raise _Budget(f"document nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            f = self.stack.pop()
            value = self.merged(f) if f.merges else f.value
            if f.anchor is not None:
                self.anchors[f.anchor] = (value, self.doc.nodes - f.first_node + 1, f.height)
            if f.is_key:
                self.stack[-1].key = _SKIP
            else:
                self.attach(value, f.mark, f.height, plain=False)
        else:
            raise yaml.composer.ComposerError(None, None, f"unexpected {type(event).__name__}", event.start_mark)

    def scalar(self, event: Any) -> None:
        if not self.in_key_position():  # the budget counts values, as aliases expand them
            self.count(1, 0)
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        mark = _mark(event.start_mark)
        if tag == "tag:yaml.org,2002:merge" and self.in_key_position():
            f = self.stack[-1]
            f.key, f.merge_mark = _MERGE, mark
            return
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        try:
            value = event.value if tag == "tag:yaml.org,2002:str" else self.loader.construct_object(node, deep=True)
        except (ValueError, TypeError, OverflowError) as e:  # 2024-13-45, !!int abc
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {event.value!r} as {tag.rsplit(':', 1)[-1]}: {e}", event.start_mark) from None
        finally:
            self.loader.constructed_objects.pop(node, None)
        path = self.child_path()
        if path is not None:
            self.doc.value_marks.setdefault(path, mark)
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, 1, 0)
        self.attach(value, mark, 0, plain=True)

    def attach(self, value: Any, mark: tuple[int, int], height: int, plain: bool) -> None:
        if not self.stack:
            self.result, self.done = value, True
            return
        f = self.stack[-1]
        f.height = max(f.height, height + 1)
        if isinstance(f.value, list):
            f.value.append(value)
            return
        if f.key is _NO_KEY:  # this value is a key
            if not plain:
                self.issue(mark, f.path or (), "a key must be a plain value")
                f.key = _SKIP
                return
            kpath = (f.path or ()) + (value if isinstance(value, str) else str(value),)
            if value in f.value:
                self.issue(mark, kpath, f"duplicate key {value!r}")
                f.key = _SKIP
                return
            if f.path is not None:
                self.doc.key_marks[kpath] = mark
            f.key = value
            return
        key, f.key = f.key, _NO_KEY
        if key is _SKIP:
            return
        if key is _MERGE:
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(m, dict) for m in items):
                self.issue(f.merge_mark, f.path or (), "`<<` (a merge key) needs a mapping or a list of mappings")
                return
            f.merges.extend(items)
            return
        f.value[key] = value

    def merged(self, f: _Frame) -> dict:
        """`<<: *base` keys first (of several merged mappings, the first wins), then the mapping's own."""
        out: dict[Any, Any] = {}
        for m in f.merges:
            for k, v in m.items():
                if k not in out:
                    out[k] = v
                    if f.path is not None:
                        kpath = f.path + (k if isinstance(k, str) else str(k),)
                        self.doc.key_marks.setdefault(kpath, f.merge_mark)
                        self.doc.value_marks.setdefault(kpath, f.merge_mark)
        for k, v in f.value.items():
            out.pop(k, None)
            out[k] = v
        return out


def _yaml_hint(problem: str, text_line: str) -> str:
    if "\t" in text_line and ("tab" in problem or "cannot start any token" in problem):
        return " (tabs are not allowed in YAML indentation: use spaces)"
    if ("alias" in problem or "anchor" in problem or "alphabetic or numeric" in problem) and "*" in text_line:
        return ' (an unquoted * starts a YAML alias: quote the value, e.g. cron: "*/5 * * * *")'
    if "another document" in problem:
        return " (a triggers file holds one YAML document: remove this `---`)"
    return ""


def load_yaml(text: str, filename: str) -> tuple[Any, _Doc]:
    doc = _Doc(filename)
    # libyaml's parser when present (10x faster on big files); its events carry the same marks.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        data = _Composer(doc, loader).compose()
        if data is _NO_KEY:
            doc.issues.append(ConfigIssue(filename, 1, 1, "", "the file is empty (expected a mapping starting with version: 1)"))
            return None, doc
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if e.context_mark is not None and "end of stream" in str(e.problem):
            mark = e.context_mark  # an unclosed quote or bracket: where it was opened
        line, col = _mark(mark)
        lines = text.splitlines()
        src = lines[line - 1] if 0 < line <= len(lines) else ""
        problem = (e.problem or e.context or "invalid YAML").strip()
        if "maximum nesting depth" in problem:  # PyYAML >= 6.0.4's own guard, met before ours
            doc.issues.append(ConfigIssue(filename, line, col, "", f"document nested deeper than {MAX_DEPTH} levels"))
            return None, doc
        if e.context and e.problem:
            problem = f"{e.context.strip()}{', ' if problem.startswith('but ') else ': '}{problem}"
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


def _interpolate_str(value: str, env: Mapping[str, str], missing: list[str],
                     expanded: list[tuple[str, str]] | None = None) -> tuple[str, bool]:
    """``value`` with every ${VAR} replaced; ``expanded`` collects (name, value) of each expansion."""
    used = False

    def sub(m: re.Match) -> str:
        nonlocal used
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        used = True
        value = env.get(name)
        if not value and default is not None:  # like the shell's ${VAR:-default}: unset or empty
            value = default
        if value is None:
            missing.append(name)
            return ""
        if expanded is not None:
            expanded.append((name, value))
        return value

    return _VAR.sub(sub, value), used


#: Environment variable names whose values are secrets wherever they are used.
_SECRET_VAR = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH(?!OR)|COOKIE",
                         re.IGNORECASE)
#: A part of a composed secret shorter than this is not masked on its own (it would mask ordinary
#: words); the whole composed value still is.
MIN_SECRET_PART = 4


def _secret_parts(out: str, expanded: list[tuple[str, str]], secret_position: bool) -> list[str]:
    """The values to mask from one interpolated string: the whole string in a secret position, and
    each ${VAR}'s own value where it is a secret (a secret position, a secret-looking variable name,
    or the password of a URL), so a server that echoes the bare token does not leak it."""
    from trigctl.secrets import url_passwords

    parts = [out] if secret_position else []
    in_urls = url_passwords(out)
    for name, value in expanded:
        if len(value) < MIN_SECRET_PART:
            continue
        if secret_position or _SECRET_VAR.search(name) or any(value in pw for pw in in_urls):
            parts.append(value)
    return parts


def _is_shell_string(path: tuple) -> bool:
    # `run:` of a task or of a command trigger: the shell expands its own variables.
    return bool(path) and path[-1] == "run"


def interpolate(data: Any, doc: _Doc, env: Mapping[str, str], secrets: set[str], path: tuple = (),
                root: Any = None) -> Any:
    root = data if root is None else root
    # Copy on write: a file without ${...} keeps its one copy in memory (20,000 triggers: ~10 MB).
    if isinstance(data, dict):
        changed = None
        for k, v in data.items():
            new = interpolate(v, doc, env, secrets, path + (k,), root)
            if new is not v:
                if changed is None:
                    changed = dict(data)
                changed[k] = new
        return data if changed is None else changed
    if isinstance(data, list):
        out = [interpolate(v, doc, env, secrets, path + (i,), root) for i, v in enumerate(data)]
        return data if all(a is b for a, b in zip(out, data)) else out
    if isinstance(data, str) and "\x00" in data:  # "\0" in a double-quoted string
        doc.issue(path, "contains a NUL character, which no path, command or environment variable can hold", data=root)
        return data
    if isinstance(data, str) and not _is_shell_string(path) and "$" in data:
        missing: list[str] = []
        expanded: list[tuple[str, str]] = []
        text, used = _interpolate_str(data, env, missing, expanded)
        for name in missing:
            doc.unset.add(path)
            doc.issue(path, f"environment variable {name} is not set (use ${{{name}:-default}} for a default)", data=root)
        if used:
            secrets.update(_secret_parts(text, expanded, _secret_position(path)))
        return text
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
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return True  # the type error explains it
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
            reason = (str(e).splitlines() or [type(e).__name__])[0].rstrip(":").removesuffix(", for expression")
            for prefix in ("Invalid jmespath expression: ", "Bad jmespath expression: "):
                reason = reason.removeprefix(prefix)
            raise ValueError(f'"{value}" is not a valid JMESPath expression: {reason}') from None
        return True

    @checker.checks("http-url", raises=ValueError)
    def _url(value: object) -> bool:
        if isinstance(value, str) and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f'"{value}" is not an http:// or https:// URL')
        if isinstance(value, str) and re.search(r"[\s\x00-\x1f\x7f]", value):  # a request line cannot carry them
            raise ValueError(f'"{value}" is not a valid URL: it contains whitespace or control characters (write a space as %20)')
        return True

    return checker


_TYPE_WORDS = {"string": "a string", "array": "a list", "integer": "an integer", "number": "a number",
               "object": "a mapping", "boolean": "a boolean"}


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _type_name(value: Any) -> str:
    import datetime

    if isinstance(value, datetime.date):  # an unquoted 2024-01-01 (or with a time)
        return "a date"
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


@cache
def _trigger_schema(ttype: str) -> dict[str, Any]:
    """The one schema's trigger definition, flattened for one type: the same rules without the
    if/then branches and unevaluatedProperties, which cost ~3 ms a trigger in jsonschema."""
    schema = load_schema()
    defs = schema["$defs"]
    base, extra = defs["trigger"], dict(defs[ttype])
    flat: dict[str, Any] = {
        "type": "object",
        "properties": {**base["properties"], **extra.pop("properties", {})},
        "required": base["required"] + extra.pop("required", []),
        "additionalProperties": False,
        "$defs": defs,
    }
    flat.update(extra)  # oneOf / anyOf / not of the type
    return flat


def _iter_schema_errors(validator: Any, data: Any):
    """Validate the file, each trigger against its type's flattened schema. Triggers that differ
    only by name are checked once (a generated file of 10,000 similar triggers)."""
    triggers = data.get("triggers") if isinstance(data, dict) else None
    if not isinstance(triggers, list):
        yield from validator.iter_errors(data)
        return
    yield from validator.iter_errors({**data, "triggers": []})
    name_ok = re.compile(load_schema()["$defs"]["name"]["pattern"]).fullmatch
    clean: set[str] = set()
    for i, item in enumerate(triggers):
        ttype = item.get("type") if isinstance(item, dict) else None
        if ttype not in TRIGGER_TYPES:
            item_validator = validator.evolve(schema={**load_schema()["$defs"]["trigger"], "$defs": load_schema()["$defs"]})
            errors = list(item_validator.iter_errors(item))
        else:
            name = item.get("name")
            try:
                shape = json.dumps({k: v for k, v in item.items() if k != "name"}, sort_keys=True)
            except (TypeError, ValueError):
                shape = None
            if shape is not None and shape in clean and isinstance(name, str) and len(name) <= 100 and name_ok(name):
                continue
            errors = list(validator.evolve(schema=_trigger_schema(ttype)).iter_errors(item))
            if not errors and shape is not None:
                clean.add(shape)
        for error in errors:
            error.path.appendleft(i)
            error.path.appendleft("triggers")
            yield error


def _schema_issues(data: Any, doc: _Doc) -> None:
    from jsonschema import Draft202012Validator

    schema = load_schema()
    validator = Draft202012Validator(schema, format_checker=_format_checker())
    errors = sorted(_iter_schema_errors(validator, data), key=lambda e: [str(p) for p in e.absolute_path])
    bad_type_at = {tuple(e.absolute_path)[:-1] for e in errors if list(e.absolute_path)[-1:] == ["type"]}
    seen: set[tuple[tuple, str]] = set()
    for error in errors:
        if tuple(error.absolute_path) in doc.unset:
            continue  # "environment variable X is not set" says it
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
        if v == "unevaluatedProperties" and (path in bad_type_at or (isinstance(inst, dict) and "type" not in inst)):
            return []  # the unknown or missing type already explains it
        allowed = _allowed_keys(schema, path, data) or list(error.schema.get("properties", {}))
        known = set(allowed)
        out = []
        for k in inst if isinstance(inst, dict) else []:
            if k in known:
                continue
            if v == "additionalProperties" and "properties" in error.schema and k in error.schema["properties"]:
                continue
            if k is None:
                msg = "unknown key null (an empty or ~ key)"
            elif isinstance(k, bool) or k in ("True", "False"):
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
        if _type_name(inst) == "a date" and "string" in str(expected):
            msg += " (YAML reads an unquoted date as a date: quote it)"
        return [(path, msg, False)]
    if v == "enum":
        allowed_text = ", ".join(str(x) for x in error.validator_value if not (isinstance(x, str) and x.islower() and x.upper() in error.validator_value))
        msg = f"{json.dumps(inst) if not isinstance(inst, bool) else inst} is not one of: {allowed_text}"
        if isinstance(inst, bool):
            msg += " (YAML reads unquoted yes/no/on/off as booleans: quote it)"
        return [(path, msg, False)]
    if v == "const" and path == ("version",):
        if isinstance(inst, int) and not isinstance(inst, bool):
            return [(path, f"unsupported version {inst} (the only version is 1)", False)]
        hint = " (write version: 1, unquoted)" if isinstance(inst, str) else ""
        return [(path, f"expected 1, got {_type_name(inst)}{hint}", False)]
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
    if v in ("oneOf", "anyOf", "not") and all("type" not in s for s in _as_list(error.validator_value)):
        return []  # key combinations of a mapping: this value is no mapping, and a type error says so
    if v in ("oneOf", "anyOf"):  # alternatives of types: `pattern` (a glob or a list), `expect.status`
        wrong = [e for e in error.context if e.validator != "type"]
        if not wrong:
            kinds = " or ".join(_TYPE_WORDS.get(s.get("type"), str(s.get("type"))) for s in error.validator_value)
            return [(path, f"expected {kinds}, got {_type_name(inst)}", False)]
        from jsonschema.exceptions import best_match

        return _explain(best_match(wrong), schema, data, bad_type_at)
    if v in ("minItems", "minProperties", "maxProperties"):
        what = "list" if v == "minItems" else "mapping"
        if path and path[-1] == "source":
            return [(path, "source must have exactly one of: directory, command, http, sqlite", False)]
        return [(path, f"this {what} is empty" if not inst else f"this {what} is too large: {error.message}", False)]
    if v == "minLength":
        return [(path, "must not be empty", False)]
    if v == "maxLength":
        return [(path, f"too long: {len(inst)} characters (at most {error.validator_value})", False)]
    if v == "uniqueItems":
        return [(path, "lists an entry more than once", False)]
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
        description=item.get("description"),
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
        trigger_cfg = _trigger_config(i, item, defaults, doc, data, light)
        if trigger_cfg is not None:
            triggers.append(trigger_cfg)
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
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError([ConfigIssue(filename, 1, 1, "", "UTF-16 text: save the file as UTF-8")])
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


class _NeedMarks(Exception):
    pass


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    def construct_mapping(self, node, deep=False):
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        if len(keys) != len(set(keys)) or len(keys) != len(node.value):
            raise _NeedMarks
        return super().construct_mapping(node, deep)


def _may_exceed_budgets(text: str) -> bool:
    """Cheap upper bounds of a file's nesting depth and number of values (quotes only inflate them):
    flow brackets, plus two levels per column of block indentation; one value per line, comma,
    bracket or `- `."""
    flow = text.count("[") + text.count("{")
    if flow + 2 > MAX_DEPTH or text.count("\n") + text.count(",") + flow + text.count("- ") + 1 > MAX_NODES:
        return True
    indent = (MAX_DEPTH - flow - 2) // 2 + 1  # an indentation this deep could nest too deep
    return re.search(rf"^[ ?:-]{{{indent}}}", text, re.M) is not None


def _fast_load(text: str) -> Any:
    """Plain, position-free parsing for the common case: a valid file without anchors or aliases.

    Keeping a line:col for every value costs memory (~100 MB at 20,000 triggers); positions are
    only needed to report problems, so a file with any problem is parsed again, slowly, with them.
    """
    if "&" in text or "*" in text or "<<" in text:
        raise _NeedMarks  # aliases need the guarded, budgeted loader
    if _may_exceed_budgets(text):
        raise _NeedMarks  # libyaml's composer recurses (100,000 levels crash it) and has no size budget
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except Exception:  # any trouble at all: the careful loader explains it
        raise _NeedMarks from None


def parse_config(text: str, filename: str, env: Mapping[str, str] | None = None, *, light: bool = False) -> Config:
    env = os.environ if env is None else env
    try:
        data = _fast_load(text)
        if not isinstance(data, dict):
            raise _NeedMarks
        doc = _Doc(filename)
        doc.fast = True
        return _build(data, doc, filename, env, light)
    except _NeedMarks:
        pass
    data, doc = load_yaml(text, filename)
    return _build(data, doc, filename, env, light)


def _build(data: Any, doc: _Doc, filename: str, env: Mapping[str, str], light: bool) -> Config:
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
    )


def _redacted(issues: list[ConfigIssue], secrets: set[str]) -> list[ConfigIssue]:
    """Sorted by position, with secret values masked (an error may quote the value it refuses)."""
    redactor = Redactor(secrets)
    return [
        ConfigIssue(i.file, i.line, i.column, i.path, redactor.text(i.message))
        for i in sorted(issues, key=lambda i: (i.line, i.column))
    ]


def trigger_summaries(config: Config) -> list[dict[str, Any]]:
    """What `trigctl list` shows of each trigger's configuration."""
    out = []
    for tc in config.triggers:
        every = tc.options.get("every")
        out.append({
            "name": tc.name, "type": tc.type, "workflow": tc.workflow,
            "interval": None if tc.type == "schedule" else tc.interval, "enabled": tc.enabled, "dedupe": tc.dedupe,
            "schedule": tc.options.get("cron") or (f"every {every}" if every else None),
        })
    return out

