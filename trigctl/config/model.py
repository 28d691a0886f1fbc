"""The configuration as the rest of trigctl sees it: frozen, typed dataclasses, and the problems
found while building them (:class:`ConfigIssue`, :class:`ConfigError`).

A leaf: it imports no YAML, JSON Schema or trigger code, so trigger types and the scheduler can
import it freely.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trigctl.secrets import Redactor

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BACKOFF = 600.0
# A trigger with `on_recover` is a health check: its user wants "back up" seen soon, so without a
# `max_backoff` of its own its cap is 4 intervals, at least 30s (never above the general default).
RECOVER_BACKOFF_INTERVALS = 4
RECOVER_BACKOFF_MIN = 30.0


def default_max_backoff(interval: float | None, has_on_recover: bool) -> float:
    if not has_on_recover or interval is None:
        return DEFAULT_MAX_BACKOFF
    return min(DEFAULT_MAX_BACKOFF, max(RECOVER_BACKOFF_MIN, RECOVER_BACKOFF_INTERVALS * interval))


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
    run_on: str = "poller"  # poller | any (scale-out: any live process with room may run it)


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
    on_recover: str | None = None  # a workflow run when an error streak that reached on_error_after ends
    cooldown: float = 0.0  # seconds after a fire in which no new fire of this trigger is recorded
    on_interrupt: str = "rerun"
    max_attempts: int = 3
    labels: tuple[str, ...] = ()  # scale-out: only processes carrying all these --label's lease it
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The trigger's position in the file. Not compared: a reload keeps a trigger whose settings are
    #: unchanged (its slot, its instance, its watcher, a command it runs) when others are inserted above.
    index: int = field(default=0, compare=False)
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

