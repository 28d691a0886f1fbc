"""What a trigger is: the result types a poll returns and the interface every trigger type implements.

A trigger type is one module under ``trigctl/triggers/`` with one :class:`TriggerType` subclass,
registered with :func:`register` (the registry refuses duplicates).
"""

from __future__ import annotations

import itertools
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from trigctl.config.model import TriggerConfig

MAX_CONTEXT_BYTES = 1_000_000  # a context larger than this is refused as an error, not stored
MAX_FIRES = 100_000  # results one Python poll may return (a list, or a generator that may never end)
#: Contexts nested deeper than this are refused: a context is a few keys for a task to read, and
#: every walker of it (the JSON encoder, the secret masker, JMESPath) must not meet a recursion limit.
MAX_CONTEXT_DEPTH = 64


@dataclass(frozen=True)
class Fire:
    """Start a run with ``context``. ``cursor`` (optional) is stored with the fire, atomically."""

    context: Mapping[str, Any] = field(default_factory=dict)
    cursor: str | None = None


@dataclass(frozen=True)
class Skip:
    """Nothing to do this time. ``cursor`` (optional) is stored."""

    reason: str = ""
    cursor: str | None = None


class PollError(Exception):
    """A poll failed in a way the trigger understood (connection refused, bad exit code...)."""


@dataclass
class PollOutcome:
    """The normalised result of one poll."""

    fires: list[dict[str, Any]] = field(default_factory=list)
    skip_reason: str = ""
    cursor: str | None = None  # None: unchanged
    state_updates: dict[str, Any] = field(default_factory=dict)  # key -> JSON value, or None to delete
    #: Per fire (parallel to ``fires``), state that records what that fire consumed: applied with the
    #: fire, but not when the fire is deferred (its key is held by an active run of another context),
    #: so the trigger offers it again instead of forgetting it (a file rewritten while its run is active).
    fire_state: list[dict[str, Any]] | None = None

    @property
    def fired(self) -> bool:
        return bool(self.fires)

    def applied_state(self) -> dict[str, Any]:
        """The state this outcome leaves when none of its fires is deferred."""
        if not self.fire_state:
            return self.state_updates
        merged = dict(self.state_updates)
        for st in self.fire_state:
            merged.update(st)
        return merged


EDGE_KEY = "in_condition"  # fire_on: change (queue_depth, command): the last poll was in the condition


def edge_outcome(ctx: PollContext, in_condition: bool, context: dict[str, Any] | None, reason: str) -> PollOutcome:
    """`fire_on: change` for a level condition: fire once per transition into it (a first poll
    already in it counts). ``reason`` says why the poll is not in the condition. The flag goes with
    the fire (``fire_state``), so a deferred or held-back fire is offered again."""
    was = bool(ctx.state.get(EDGE_KEY))
    if not in_condition:
        return PollOutcome(skip_reason=reason, state_updates={EDGE_KEY: None} if was else {})
    if was:
        return PollOutcome(skip_reason="still in the condition (fire_on: change fires once per transition)")
    return PollOutcome(fires=[context or {}], fire_state=[{EDGE_KEY: True}])


@dataclass(slots=True)
class PollContext:
    """What the scheduler hands a trigger for one poll."""

    due_at: float
    now: float
    cursor: str | None
    state: dict[str, Any]  # the trigger's persisted key/value state (read-only view for the poll)
    timeout: float


class TriggerType(ABC):
    """One kind of trigger. Instantiated once per configured trigger.

    ``blocking`` types (I/O: files, HTTP, subprocesses) are polled on a thread pool; the others
    (Python callables) on the scheduler's fast lane, which hands off a call that runs long.
    """

    type_name: ClassVar[str]
    blocking: ClassVar[bool] = True
    #: default dedupe key: None = the whole context, a list of keys, or () = one fixed key.
    default_dedupe_key: ClassVar[tuple[str, ...] | None] = None
    #: schedule-like types compute their own due times instead of the interval grid.
    has_own_schedule: ClassVar[bool] = False
    #: A poll that needs no PollContext (a Python callable that takes no cursor): the scheduler calls
    #: it instead of ``poll(ctx)``, so the hot path builds no context. Same contract as ``poll``.
    poll_bare: Callable[[], Any] | None = None

    def __init__(self, config: TriggerConfig, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir
        self.options: Mapping[str, Any] = config.options  # read-only: shared, not copied per trigger

    @classmethod
    def check(cls, options: Mapping[str, Any], base_dir: Path) -> list[tuple[tuple, str]]:
        """Semantic checks beyond the schema, run by `validate`: [(sub-path, message)]."""
        return []

    @abstractmethod
    def poll(self, ctx: PollContext) -> Any:
        """Look once. Return a PollOutcome; raise an exception (PollError for a clean message) on error."""

    def finish(self, value: Any) -> PollOutcome:
        """Turn what an awaitable returned by poll() resolved to into a PollOutcome."""
        return value

    def start(self, wake: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Called once when the loop starts; ``wake()`` makes the trigger due now (thread-safe)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called on shutdown or when the trigger is removed by a reload."""

    def next_due(self, previous_due: float | None, now: float) -> float:
        """Only for ``has_own_schedule`` types: the next due time after ``previous_due``."""
        raise NotImplementedError

    def resumed(self, now: float, state: Mapping[str, Any]) -> dict[str, Any]:
        """Only for ``has_own_schedule`` types: the trigger was enabled again at ``now``. Return the
        state updates that skip the slots that passed while it was disabled."""
        return {}

    def clock_stepped_back(self, now: float, state: Mapping[str, Any]) -> dict[str, Any]:
        """Only for ``has_own_schedule`` types: the wall clock was just set back (NTP, a VM restore)
        to ``now``. Return the state updates that let the schedule go on from ``now`` (instead of
        waiting until the wall clock is back where it was)."""
        return {}


_REGISTRY: dict[str, type[TriggerType]] = {}

#: The built-in types and their modules, imported only when a type is needed (so `trigctl --help`
#: and `trigctl list` don't pay for them). The one list of built-in types: the config's checks
#: derive theirs from it, and tests/test_trigger_types.py proves that the schema agrees. A new
#: built-in is one module, one line here and its definition in schemas/triggers.schema.json.
BUILTIN_TYPES: dict[str, str] = {
    "python": "trigctl.triggers.python",
    "file": "trigctl.triggers.file",
    "http": "trigctl.triggers.http",
    "queue_depth": "trigctl.triggers.queue_depth",
    "command": "trigctl.triggers.command",
    "schedule": "trigctl.triggers.schedule",
}


def register(cls: type[TriggerType]) -> type[TriggerType]:
    """Add a trigger type to the registry; a second, different class for one name is refused."""
    name = cls.type_name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"trigger type {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def trigger_class(name: str) -> type[TriggerType] | None:
    if name not in _REGISTRY and name in BUILTIN_TYPES:
        import importlib

        importlib.import_module(BUILTIN_TYPES[name])
    return _REGISTRY.get(name)


def trigger_types() -> dict[str, type[TriggerType]]:
    for name in BUILTIN_TYPES:
        trigger_class(name)
    return dict(_REGISTRY)


def check_context(value: Any, what: str = "context") -> dict[str, Any]:
    """A context must be a JSON object of JSON values; return a plain-dict copy or raise TypeError."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    depth = nesting_depth(value, MAX_CONTEXT_DEPTH + 1)
    if depth > MAX_CONTEXT_DEPTH:
        raise TypeError(f"{what} is nested deeper than {MAX_CONTEXT_DEPTH} levels")
    try:
        text = json.dumps(dict(value), default=_refuse, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serialisable: {e}") from None
    if len(text) > MAX_CONTEXT_BYTES:
        raise TypeError(f"{what} is too large ({len(text)} bytes; the limit is {MAX_CONTEXT_BYTES})")
    return json.loads(text)


def nesting_depth(value: Any, stop: int, max_nodes: int = 1_000_000) -> int:
    """How deeply dicts/lists/tuples nest in ``value`` (a scalar is 0), counting at most to ``stop``.

    Iterative, so a structure nested a million levels deep cannot exhaust the stack; a cycle
    counts as ``stop``, and so does a structure of more than ``max_nodes`` containers (shared
    sub-lists that would expand exponentially in JSON)."""
    if not isinstance(value, (Mapping, list, tuple)):
        return 0
    deepest = 0
    nodes = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return stop
        if depth > deepest:
            deepest = depth
            if deepest >= stop:
                return deepest
        children = item.values() if isinstance(item, Mapping) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (Mapping, list, tuple)))
    return deepest


def _refuse(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError("NaN/Infinity")
    raise TypeError(f"{type(obj).__name__} is not a JSON value")


#: What a callable's ``None`` / ``False`` becomes: one shared outcome each, not a new one per poll
#: (building a PollOutcome costs more than the rest of a skipped poll's dispatch). Outcomes are never
#: changed once returned (the scheduler and the stores copy what they keep), so sharing is safe.
SKIPPED_NONE = PollOutcome([], "the callable returned None")
SKIPPED_FALSE = PollOutcome([], "the callable returned False")


def normalize_result(value: Any) -> PollOutcome:
    """Turn whatever a Python trigger returned into a PollOutcome (SPEC §1, "It may return").

    Raises TypeError for a value that is none of the accepted forms.
    """
    if value is None:  # the common case first: nothing to do (one shared outcome, see SKIPPED_NONE)
        return SKIPPED_NONE
    if value is False:
        return SKIPPED_FALSE
    out = PollOutcome()
    items: Iterable[Any]
    if isinstance(value, (list, Iterable)) and not isinstance(value, (tuple, dict, str, bytes, Mapping)):
        # At most MAX_FIRES (+1 to tell): an endless generator is an error, not the end of memory.
        items = list(value) if type(value) is list else list(itertools.islice(value, MAX_FIRES + 1))
        if len(items) > MAX_FIRES:
            raise TypeError(f"more than {MAX_FIRES} results from one poll")
        if not items:
            out.skip_reason = "empty list"
            return out
    else:
        items = [value]
    for item in items:
        _add_one(out, item)
    if not out.fires and not out.skip_reason:
        out.skip_reason = _no_fire_reason(value)
    return out


def _no_fire_reason(value: Any) -> str:
    """Why a result that fired nothing and gave no Skip(reason) skipped: what the callable returned."""
    if isinstance(value, tuple):
        return "the callable returned (False, ...)"
    if isinstance(value, Skip):
        return "the callable returned Skip() without a reason"
    if isinstance(value, list) or not isinstance(value, Mapping):
        return "the callable returned no fires (only None, False or Skip() in its list)"
    return "the callable returned nothing to fire"


def _add_one(out: PollOutcome, item: Any) -> None:
    if item is None or item is False:
        return
    if item is True:
        out.fires.append({})
    elif isinstance(item, Fire):
        out.fires.append(check_context(item.context))
        if item.cursor is not None:
            out.cursor = _cursor(item.cursor)
    elif isinstance(item, Skip):
        out.skip_reason = str(item.reason)
        if item.cursor is not None:
            out.cursor = _cursor(item.cursor)
    elif isinstance(item, Mapping):
        out.fires.append(check_context(item))
    elif isinstance(item, tuple):
        if len(item) != 2 or not isinstance(item[0], bool):
            raise TypeError("a tuple must be (should_fire: bool, context: dict | None)")
        should_fire, ctx = item
        if should_fire:
            out.fires.append(check_context(ctx if ctx is not None else {}))
    else:
        raise TypeError(
            f"unsupported return value of type {type(item).__name__}: "
            "return bool, dict, (bool, dict), Fire, Skip, or a list of these"
        )


def _cursor(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"cursor must be a string, got {type(value).__name__}")
    if len(value) > MAX_CONTEXT_BYTES:
        raise TypeError(f"cursor is too large ({len(value)} characters; the limit is {MAX_CONTEXT_BYTES})")
    return value
