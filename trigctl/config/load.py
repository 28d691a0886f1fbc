"""The pipeline: file -> YAML -> ${ENV} interpolation -> JSON Schema -> semantic checks -> Config.

Every problem becomes a :class:`ConfigIssue` with file, line and column; :class:`ConfigError`
carries all of a file's problems at once.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from trigctl.bounded import MAX_FILE_BYTES, TooLarge, read_at_most
from trigctl.config.cache import CACHE_AT, Entry, entry_for
from trigctl.config.model import Config, ConfigError, ConfigIssue
from trigctl.secrets import Redactor

if TYPE_CHECKING:
    from trigctl.config.yaml_loader import _Doc

# The parse and the checks (PyYAML, the schema tooling: ~0.3 s to import) are imported on first
# use: a config read from the cache needs none of them.


def load_config(path: str | os.PathLike, env: Mapping[str, str] | None = None, *, light: bool = False,
                cached: bool = True) -> Config:
    """Read, check and build a config; raise ConfigError listing every problem found.

    ``light`` skips the JSON Schema and the imports of callables (for read-only commands that must
    start fast); a file that does not build that way is checked fully, so errors read the same.
    A big file that passed the full check before is read from the config cache (trigctl/config/
    cache.py) unless ``cached`` is False (`validate`); a full check writes the cache in any case.
    """
    p = Path(path)
    filename = str(path)
    env = os.environ if env is None else env
    try:
        if p.is_dir():
            raise ConfigError([ConfigIssue(filename, 1, 1, "", "is a directory, not a YAML file")])
        raw = read_at_most(p, MAX_FILE_BYTES)
    except TooLarge as e:
        raise ConfigError([ConfigIssue(filename, 1, 1, "", e.describe())]) from None
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(filename, 1, 1, "", "no such file (create one with `trigctl init`)")]) from None
    except OSError as e:
        raise ConfigError([ConfigIssue(filename, 1, 1, "", f"cannot read: {e.strerror}")]) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError([ConfigIssue(filename, 1, 1, "", "UTF-16 text: save the file as UTF-8")])
    if b"\x00" in raw:
        raise ConfigError([ConfigIssue(filename, 1, 1, "", "not a text file (it contains NUL bytes)")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(filename, line, 1, "", "not UTF-8 text")]) from None
    entry = entry_for(p, raw, env) if len(raw) >= CACHE_AT * 16 else None  # no smaller file holds CACHE_AT triggers
    big = len(raw) >= GC_OFF_AT
    del raw
    if not big:
        return _load_text(text, filename, env, light, cached, entry)
    # The parse allocates millions of objects and frees few: the cyclic collector's passes over
    # them were half of the load (10,000 triggers: 2.2 -> 1.0 s). Refcounting frees the rest; the
    # few cycles wait for the collector to be on again.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_text(text, filename, env, light, cached, entry)
    finally:
        if was_enabled:
            gc.enable()


GC_OFF_AT = 256 * 1024  # bytes of YAML from which the load runs without the cyclic collector


def _load_text(text: str, filename: str, env: Mapping[str, str], light: bool, cached: bool, entry: Entry | None) -> Config:
    if entry is not None and cached:
        hit = entry.load()
        if hit is not None:
            return hit
    if light:
        try:
            return _compacted(parse_config(text, filename, env, light=True))
        except Exception:
            pass  # not valid enough to build without the schema: let the full check explain why
    record: list[tuple[tuple, str]] = []
    config = parse_config(text, filename, env, record=record)
    if entry is not None and len(config.triggers) >= CACHE_AT:
        saved = entry.save(config, record)
        if saved is not None:
            return saved
    return _compacted(config)


COMPACT_AT = 2000  # triggers: from here on a loaded config is copied into fresh memory (see _compacted)


def _compacted(config: Config) -> Config:
    """A big config, copied into fresh memory: the parse (YAML nodes, marks, the raw mappings) peaks
    at ~20x what the config keeps, and the few objects that survive it (names, option values) sit
    scattered through the parse's memory, so none of that memory could be given back to the system
    (~4.5 KB a trigger at 20,000). A pickle round trip rebuilds the survivors side by side and frees
    every arena the parse touched: 20,000 triggers 123 -> 51 MB RSS for ~40 µs a trigger."""
    if len(config.triggers) < COMPACT_AT:
        return config
    try:
        blob = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - a value that does not pickle: keep the config as built
        return config
    del config  # the last reference: the parse's memory is free before the copy is made
    return cast(Config, pickle.loads(blob))  # noqa: S301 - our own bytes, made a line above



def parse_config(text: str, filename: str, env: Mapping[str, str] | None = None, *, light: bool = False,
                 record: list[tuple[tuple, str]] | None = None) -> Config:
    """``record``: see :func:`interpolate`."""
    from trigctl.config.yaml_loader import _Doc, _fast_load, _NeedMarks, load_yaml

    env = os.environ if env is None else env
    # Without a `$` there is nothing to interpolate, and without a backslash (an escape in a
    # double-quoted string) no NUL to refuse: the walk over every value is skipped.
    plain = not ("$" in text or "\\" in text or "\x00" in text)
    try:
        data = _fast_load(text)
        if not isinstance(data, dict):
            raise _NeedMarks
        doc = _Doc(filename)
        doc.fast = True
        return _build(data, doc, filename, env, light, record, plain)
    except _NeedMarks:
        if record:
            record.clear()
    data, doc = load_yaml(text, filename)
    return _build(data, doc, filename, env, light, record, plain)


def _build(data: Any, doc: _Doc, filename: str, env: Mapping[str, str], light: bool,
           record: list[tuple[tuple, str]] | None = None, plain: bool = False) -> Config:
    from trigctl.config.interpolate import interpolate
    from trigctl.config.schema import _schema_issues, _type_name
    from trigctl.config.validate import _semantic, _semantic_despite_schema

    if doc.issues:
        raise ConfigError(doc.issues)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(filename, 1, 1, "", f"expected a mapping with `version: 1` at the top, got {_type_name(data)}")])
    secrets: set[str] = set()
    if not plain:
        data = interpolate(data, doc, env, secrets, record=record)
    if not light:
        bad_triggers = _schema_issues(data, doc)
        if doc.issues:
            _semantic_despite_schema(data, doc, bad_triggers)
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

