"""The one JSON Schema (schemas/triggers.schema.json): loading it, validating a file against it
with each trigger checked against its type's flattened definition, and explaining each error.

jsonschema is imported only when a file is validated.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trigctl.durations import DurationError, parse_duration

if TYPE_CHECKING:
    from trigctl.config.yaml_loader import _Doc

@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    try:
        text = resources.files("trigctl").joinpath("schemas/triggers.schema.json").read_text()
    except (FileNotFoundError, OSError):  # a source checkout / editable install: the top-level schemas/
        text = (Path(__file__).resolve().parents[2] / "schemas" / "triggers.schema.json").read_text()
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
        from trigctl.cronexpr import problem

        why = problem(value)
        if why:
            raise ValueError(why)
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


def _shape(item: dict, without: str) -> tuple | None:
    """A mapping without one of its keys, hashable: equal for mappings of the same keys in the same
    order with the same values of the same types (1, 1.0 and true apart). None if a value cannot be
    hashed. For the checks that two triggers differing only by name share."""
    try:
        out = tuple([(k if k.__class__ is str else _frozen(k), v if v.__class__ is str else _frozen(v))
                     for k, v in item.items() if k != without])
        hash(out)
    except TypeError:
        return None
    return out


def _frozen(value: Any) -> Any:
    cls = value.__class__
    if cls is str:
        return value
    if cls is dict:
        return dict, tuple([(_frozen(k), _frozen(v)) for k, v in value.items()])
    if cls is list:
        return list, tuple([_frozen(v) for v in value])
    if cls is float:
        return float, repr(value)  # -0.0 and 0.0 apart, and nan equal to itself
    return cls, value


def _iter_schema_errors(validator: Any, data: Any):
    """Validate the file, each trigger against its type's flattened schema. Triggers that differ
    only by name are checked once (a generated file of 10,000 similar triggers)."""
    from trigctl.triggers.base import BUILTIN_TYPES  # the one list of types; cheap, and not needed at import

    triggers = data.get("triggers") if isinstance(data, dict) else None
    if not isinstance(triggers, list):
        yield from validator.iter_errors(data)
        return
    yield from validator.iter_errors({**data, "triggers": []})
    name_ok = re.compile(load_schema()["$defs"]["name"]["pattern"]).fullmatch
    clean: set[tuple] = set()
    for i, item in enumerate(triggers):
        ttype = item.get("type") if isinstance(item, dict) else None
        if ttype not in BUILTIN_TYPES:
            item_validator = validator.evolve(schema={**load_schema()["$defs"]["trigger"], "$defs": load_schema()["$defs"]})
            errors = list(item_validator.iter_errors(item))
        else:
            name = item.get("name")
            shape = _shape(item, "name")
            if shape is not None and shape in clean and isinstance(name, str) and len(name) <= 100 and name_ok(name):
                continue
            errors = list(validator.evolve(schema=_trigger_schema(ttype)).iter_errors(item))
            if not errors and shape is not None:
                clean.add(shape)
        for error in errors:
            error.path.appendleft(i)
            error.path.appendleft("triggers")
            yield error


def _schema_issues(data: Any, doc: _Doc) -> set[int] | None:
    """Record the schema's complaints in ``doc``; the indices of the triggers they concern (None:
    the trigger list itself is wrong), so that the other triggers can still be checked further."""
    from jsonschema import Draft202012Validator

    schema = load_schema()
    validator = Draft202012Validator(schema, format_checker=_format_checker())
    errors = sorted(_iter_schema_errors(validator, data), key=lambda e: [str(p) for p in e.absolute_path])
    bad_type_at = {tuple(e.absolute_path)[:-1] for e in errors if list(e.absolute_path)[-1:] == ["type"]}
    # A typo'd key ("evrey") is the cause; the missing key it was meant to be ("needs one of: cron,
    # every") only its consequence: the cause is reported, the consequence is not.
    meant: dict[tuple, set[str]] = {}
    explained = [(error, _explain(error, schema, data, bad_type_at, meant)) for error in errors]
    seen: set[tuple[tuple, str]] = set()
    bad_triggers: set[int] | None = set()
    for error, found in explained:
        path = tuple(error.absolute_path)
        if path[:1] == ("triggers",) and bad_triggers is not None:
            if len(path) > 1 and isinstance(path[1], int):
                bad_triggers.add(path[1])
            else:
                bad_triggers = None
        if path in doc.unset:
            continue  # "environment variable X is not set" says it
        if error.validator in ("required", "oneOf") and meant.get(path, set()) & set(_missing_choices(error)):
            continue
        for ipath, message, key in found:
            if (ipath, message) in seen:
                continue
            seen.add((ipath, message))
            doc.issue(ipath, message, key=key, data=data)
    return bad_triggers


def _missing_choices(error: Any) -> list[str]:
    """The keys a `required` or `oneOf` error asks for."""
    if error.validator == "required":
        return [k for k in error.validator_value if not (isinstance(error.instance, dict) and k in error.instance)]
    return [s["required"][0] for s in _as_list(error.validator_value) if isinstance(s, dict) and s.get("required")]


def _explain(error, schema, data, bad_type_at, meant: dict[tuple, set[str]] | None = None) -> list[tuple[tuple, str, bool]]:
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
                if close and meant is not None:
                    meant.setdefault(path, set()).add(close[0])
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

        return _explain(best_match(wrong), schema, data, bad_type_at, meant)
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

