"""YAML text -> plain Python with the line:col of every value, within budgets.

Two paths: a fast, position-free parse for the common valid file, and a bounded, iterative
composer (:class:`_Composer`) that keeps positions, for files with anchors, with problems, or that
might exceed the depth and size budgets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from trigctl.bounded import MAX_FILE_BYTES as MAX_FILE_BYTES
from trigctl.config.model import ConfigIssue

MAX_NODES = 200_000  # alias expansion budget: a "billion laughs" file stops here
# A file without anchors or aliases has no expansion: the fast, position-free parse takes it up to
# this many values (counted from above, cheaply, before parsing), 50,000 triggers of five keys
# (~550,000). The careful parse (positions, for a file with a problem to report) holds a file the
# fast parse would take to FAST_MAX_VALUES too, and every other file (aliases, flow style) to MAX_NODES.
FAST_MAX_VALUES = 600_000
MAX_DEPTH = 100




class _Doc:
    """A YAML document turned into plain Python, with the line:col of every value and key."""

    def __init__(self, filename: str):
        self.filename = filename
        self.value_marks: dict[tuple, tuple[int, int]] = {}
        self.key_marks: dict[tuple, tuple[int, int]] = {}
        self.issues: list[ConfigIssue] = []
        self.nodes = 0
        self.max_nodes = MAX_NODES  # FAST_MAX_VALUES for a file the fast parse would take (load_yaml)
        self.unset: set[tuple] = set()  # values that used an unset ${VAR}: already explained
        self.fast = False
        self.base_dir: Path | None = None  # the file's folder, resolved once (validate.doc_base_dir)

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
        if self.doc.nodes > self.doc.max_nodes:
            raise _Budget(f"document too large: more than {self.doc.max_nodes} values"
                          + (" (alias expansion?)" if self.doc.max_nodes == MAX_NODES else ""))
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


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _yaml_hint(problem: str, lines: list[str], line: int) -> str:
    text_line = lines[line - 1] if 0 < line <= len(lines) else ""
    if "mapping values are not allowed" in problem:
        above = next((x for x in reversed(lines[: max(0, line - 1)]) if x.strip() and not x.lstrip().startswith("#")), "")
        key_above = re.match(r"\s*(?:-\s+)?([^\s:#][^:#]*):\s+\S", above)
        if key_above and _indent(text_line) > key_above.start(1):
            return (f" (this line is indented deeper than `{key_above.group(1).strip()}:` above it, so YAML reads it as"
                    " part of that value: indent it as far as that key)")
        return ' (usually an unquoted value that contains ": ": quote the value, e.g. run: "echo a: b")'
    if "expected '-' indicator" in problem or "expected <block end>" in problem:
        return " (the indentation of this line matches no mapping above it: indent it as far as its sibling keys)"
    if "cannot start any token" in problem and re.search(r":\s+[@`]", text_line):
        return ' (YAML reserves @ and ` at the start of a value: quote it, e.g. cron: "@daily")'
    if "\t" in text_line and ("tab" in problem or "cannot start any token" in problem):
        return " (tabs are not allowed in YAML indentation: use spaces)"
    if ("alias" in problem or "anchor" in problem or "alphabetic or numeric" in problem) and "*" in text_line:
        return ' (an unquoted * starts a YAML alias: quote the value, e.g. cron: "*/5 * * * *")'
    if "another document" in problem:
        return " (a triggers file holds one YAML document: remove this `---`)"
    return ""


def load_yaml(text: str, filename: str) -> tuple[Any, _Doc]:
    doc = _Doc(filename)
    if _fast_parse_applies(text):
        # Block style, no anchors: as big as it looks, so the fast parse's budget. A big file with
        # one mistake (the reason it is parsed again here) hears of its mistake, not of its size.
        doc.max_nodes = FAST_MAX_VALUES
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
        problem = (e.problem or e.context or "invalid YAML").strip()
        if "maximum nesting depth" in problem:  # PyYAML >= 6.0.4's own guard, met before ours
            doc.issues.append(ConfigIssue(filename, line, col, "", f"document nested deeper than {MAX_DEPTH} levels"))
            return None, doc
        if e.context and e.problem:
            problem = f"{e.context.strip()}{', ' if problem.startswith('but ') else ': '}{problem}"
        doc.issues.append(ConfigIssue(filename, line, col, "", f"invalid YAML: {problem}{_yaml_hint(problem, lines, line)}"))
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



class _NeedMarks(Exception):
    pass


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    def resolve(self, kind, value, implicit):
        # PyYAML's resolver tries its regular expressions, in Python, for every scalar (16 % of a
        # 10,000-trigger load); a file repeats its keys and most values: each is resolved once.
        if kind is not yaml.ScalarNode or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        tags = self.__dict__.get("_tags")
        if tags is None:
            tags = self._tags = {}
        key = (value, implicit)
        tag = tags.get(key)
        if tag is None:
            tag = tags[key] = super().resolve(kind, value, implicit)
        return tag

    def construct_mapping(self, node, deep=False):
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        if len(keys) != len(set(keys)) or len(keys) != len(node.value):
            raise _NeedMarks
        return super().construct_mapping(node, deep)


def _may_exceed_budgets(text: str) -> bool:
    """Cheap upper bounds of a file's nesting depth and number of values (quotes only inflate them):
    flow brackets, plus two levels per column of block indentation; one value per line, comma,
    bracket or `- ` (against FAST_MAX_VALUES: the file has no aliases)."""
    flow = text.count("[") + text.count("{")
    commas = text.count(",")
    if flow + 2 > MAX_DEPTH or commas + flow > MAX_NODES:  # flow-style values: the careful budget
        return True
    if text.count("\n") + commas + flow + text.count("- ") + 1 > FAST_MAX_VALUES:
        return True
    indent = (MAX_DEPTH - flow - 2) // 2 + 1  # an indentation this deep could nest too deep
    return re.search(rf"^[ ?:-]{{{indent}}}", text, re.M) is not None


def _fast_parse_applies(text: str) -> bool:
    """No anchors or aliases, and within the fast parse's depth and size bounds."""
    return not ("&" in text or "*" in text or "<<" in text) and not _may_exceed_budgets(text)


def _fast_load(text: str) -> Any:
    """Plain, position-free parsing for the common case: a valid file without anchors or aliases.

    Keeping a line:col for every value costs memory (~100 MB at 20,000 triggers); positions are
    only needed to report problems, so a file with any problem is parsed again, slowly, with them.
    """
    if not _fast_parse_applies(text):
        # aliases need the guarded, budgeted loader; libyaml's composer recurses (100,000 levels
        # crash it) and has no size budget
        raise _NeedMarks
    # The fastest parse that reads the file (each leaves what it does not read to the next).
    for load in (_block_load, _plain_load, _pyyaml_load):
        try:
            return load(text)
        except _Unusual:
            continue
        except Exception:  # any trouble at all: the careful loader explains it
            raise _NeedMarks from None
    raise AssertionError("unreachable: PyYAML reads any file or refuses it")


def _pyyaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader


class _Unusual(Exception):
    """Something a fast parse leaves to the next (_block_load to libyaml's events, _plain_load to
    PyYAML's own constructor: an explicit collection tag...)."""


_STR = "tag:yaml.org,2002:str"
_PLAIN_IMPLICIT = (True, False)  # a plain scalar's `implicit`, as libyaml's events give it


class _Scalars:
    """Scalars as PyYAML reads them: the tag its resolver gives one as written (cached: a file
    repeats its keys and most values), the value its constructor makes of one that is no plain
    string (each distinct one made once: they are immutable)."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.tags: dict[tuple, str] = {}
        self.constructed: dict[tuple[str, str], Any] = {}

    def tag(self, raw: str, implicit: tuple[bool, bool]) -> str:
        key = (raw, implicit)
        tag = self.tags.get(key)
        if tag is None:
            tag = self.tags[key] = self.loader.resolve(yaml.ScalarNode, raw, implicit)
        return tag

    def value(self, raw: str, tag: str) -> Any:
        value = self.constructed.get((tag, raw), _NO_KEY)
        if value is _NO_KEY:
            node = yaml.ScalarNode(tag, raw)
            try:
                value = self.loader.construct_object(node, deep=True)
            except Exception:  # a `=` or `<<` key, !!int abc: PyYAML's own way decides
                raise _Unusual from None
            finally:
                self.loader.constructed_objects.pop(node, None)
            self.constructed[(tag, raw)] = value
        return value
_PLAIN_COLLECTION_TAGS = (None, "!", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")


# The block subset _block_load reads: keys of ASCII letters, digits, _ and -; values plain (ASCII
# words without ": " or a comment) or quoted without a quote, backslash or anything but printable
# ASCII inside.
_WORD = r"[A-Za-z0-9_./:@=+~^-]"
_NOT_PRINTABLE_ASCII = re.compile(r"[^\n -~]")
_BLOCK_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")
_BLOCK_VALUE = re.compile(rf"-?[A-Za-z0-9_./~]{_WORD}*(?: +{_WORD}+)*" + r"|'[ -&(-~]*'" + r'|"[ !#-\[\]-~]*"')


def _block_load(text: str) -> Any:
    """``_plain_load(text)`` for the plain block style most files are written in (and generated
    files of many triggers are), read line by line without libyaml's events: a mapping at the top;
    nested mappings and lists by indentation (a list also at its key's indentation); scalars on
    their key's line, plain or quoted as _BLOCK_KEY and _BLOCK_VALUE allow, typed
    by PyYAML's resolver and constructors (_Scalars). Any other line (flow style, block scalars, a
    trailing comment, a tab, a value continued on the next line, `---`...) or any indentation
    this does not expect raises _Unusual: libyaml reads the file. A repeated key raises _NeedMarks."""
    if _NOT_PRINTABLE_ASCII.search(text):
        raise _Unusual  # a tab, a CR, a control character (an error libyaml explains), UTF-8
    loader = _UniqueKeyLoader("")
    try:
        scalars = _Scalars(loader)
        good_key = _BLOCK_KEY.fullmatch
        keys_seen: set[str] = set()  # keys that passed good_key
        built: dict[str, Any] = {}  # a key or value as written -> as built (a file repeats most)
        # The open mappings and lists, innermost last: (indentation, the dict or list, its keys as
        # written (None: a list)); `pending` is a key of the innermost mapping whose value comes on
        # the next lines (a nested mapping or list) or not at all (null).
        stack: list[tuple[int, Any, set | None]] = []
        pending: Any = _NO_KEY
        for line in text.split("\n"):
            rest = line.lstrip(" ")
            if not rest or rest[0] == "#":
                continue  # blank, or a comment
            indent = len(line) - len(rest)
            dash = rest[:2] == "- "
            if dash:
                rest = rest[2:]
            key: str | None
            keyed_value: str | None
            item: str | None = None
            key, colon, keyed_value = rest.partition(": ")
            if not colon:
                if rest[-1:] == ":":
                    key, keyed_value = rest[:-1], None
                else:
                    key, item = None, rest
            if key is not None and key not in keys_seen:
                if not good_key(key):
                    raise _Unusual
                keys_seen.add(key)
            if pending is not _NO_KEY:
                top_indent, top, _ = stack[-1]
                if not dash and indent > top_indent:
                    stack.append((indent, {}, set()))
                    top[pending] = stack[-1][1]
                elif dash and indent >= top_indent:
                    stack.append((indent, [], None))
                    top[pending] = stack[-1][1]
                pending = _NO_KEY  # else it stays null
            elif not stack:
                if indent or dash or key is None:
                    raise _Unusual  # the top is no mapping, or starts indented
                stack.append((0, {}, set()))
            while stack[-1][0] > indent or (stack[-1][2] is None and stack[-1][0] == indent and not dash):
                stack.pop()
                if not stack:
                    raise _Unusual
            top_indent, container, written = stack[-1]
            if top_indent != indent:
                raise _Unusual
            if dash:
                if written is not None:
                    raise _Unusual  # a list item where a mapping's key belongs
                if item is not None:
                    value = built.get(item, _NO_KEY)
                    if value is _NO_KEY:
                        value = built[item] = _block_scalar(item, scalars)
                    container.append(value)
                    continue
                mapping: dict = {}
                container.append(mapping)
                written = set()
                stack.append((indent + 2, mapping, written))
                container = mapping
            elif written is None:
                raise _Unusual  # a key in a list
            if key is None:
                raise _Unusual  # a bare value in a mapping
            if key in written:
                raise _NeedMarks  # a duplicate key: the careful loader reports it
            written.add(key)
            name = built.get(key, _NO_KEY)
            if name is _NO_KEY:
                name = built[key] = _block_scalar(key, scalars)
            if keyed_value is None:
                pending = name
                container[name] = None  # its place among the keys; the value follows (or stays null)
            else:
                value = built.get(keyed_value, _NO_KEY)
                if value is _NO_KEY:
                    value = built[keyed_value] = _block_scalar(keyed_value, scalars)
                container[name] = value
        if not stack:
            raise _Unusual  # nothing but comments
        return stack[0][1]
    finally:
        loader.dispose()


def _block_scalar(text: str, scalars: _Scalars) -> Any:
    if not _BLOCK_VALUE.fullmatch(text):
        raise _Unusual  # flow style, a comment, an escape, a tag, a space too many...
    first = text[0]
    if first == "'" or first == '"':
        return text[1:-1]
    if ": " in text or text[-1] == ":":
        raise _Unusual  # a mapping on one line, or a key, in a place for a value
    tag = scalars.tag(text, _PLAIN_IMPLICIT)
    return text if tag == _STR else scalars.value(text, tag)


def _plain_load(text: str) -> Any:
    """What ``yaml.load(text, Loader=_UniqueKeyLoader)`` returns, built straight from libyaml's
    events: PyYAML's node graph and its constructor, in Python, were two thirds of a 50,000-trigger
    load (5.1 of 7.8 s). The same resolver (cached per scalar as written) and the same constructors
    for scalars that are no plain strings (each distinct one constructed once: they are immutable).
    A repeated key (as written) or a key that is no scalar raises _NeedMarks, as _UniqueKeyLoader
    does; what this does not build itself (aliases, explicit collection tags, a scalar its
    constructor refuses or that PyYAML treats apart, like a `=` or `<<` key) raises _Unusual, for
    PyYAML to build or refuse."""
    loader = _UniqueKeyLoader(text)
    try:
        get_event = loader.get_event
        scalars = _Scalars(loader)
        scalar_event, seq_start, map_start = yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent
        seq_end, map_end = yaml.SequenceEndEvent, yaml.MappingEndEvent
        stack: list[Any] = []  # the open lists and dicts
        keys: list[Any] = []  # per open dict: the key waiting for its value (_NO_KEY: none)
        written: list[set | None] = []  # per open dict: its keys as written; None for a list
        get_event()  # StreamStart
        if loader.check_event(yaml.StreamEndEvent):
            return None
        get_event()  # DocumentStart
        result: Any = _NO_KEY
        while True:
            event = get_event()
            kind = type(event)
            if kind is scalar_event:
                raw = event.value
                tag = event.tag
                if tag is None or tag == "!":
                    tag = scalars.tag(raw, event.implicit)
                value = raw if tag == _STR else scalars.value(raw, tag)
                if not stack:
                    result = value
                    break
                seen = written[-1]
                if seen is None:
                    stack[-1].append(value)
                elif keys[-1] is _NO_KEY:
                    if raw in seen:
                        raise _NeedMarks  # a duplicate key: the careful loader reports it
                    seen.add(raw)
                    keys[-1] = value
                else:
                    stack[-1][keys[-1]] = value
                    keys[-1] = _NO_KEY
            elif kind is map_start or kind is seq_start:
                if event.tag not in _PLAIN_COLLECTION_TAGS:
                    raise _Unusual
                if stack and written[-1] is not None and keys[-1] is _NO_KEY:
                    raise _NeedMarks  # a mapping or list as a key
                if kind is map_start:
                    stack.append({})
                    written.append(set())
                else:
                    stack.append([])
                    written.append(None)
                keys.append(_NO_KEY)
            elif kind is map_end or kind is seq_end:
                value = stack.pop()
                written.pop()
                keys.pop()
                if not stack:
                    result = value
                    break
                if written[-1] is None:
                    stack[-1].append(value)
                else:
                    stack[-1][keys[-1]] = value
                    keys[-1] = _NO_KEY
            else:
                raise _Unusual  # an alias
        get_event()  # DocumentEnd
        if not loader.check_event(yaml.StreamEndEvent):
            raise _NeedMarks  # a second document
        return result
    finally:
        loader.dispose()

