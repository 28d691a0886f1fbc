"""`schedule` triggers: a cron expression or an `every:` period comes due.

The trigger computes its own due times (:meth:`ScheduleTrigger.next_due`); the scheduler polls it at
each slot and the poll fires ``{"scheduled_for": <the slot, ISO 8601 UTC>}``. The last fired slot is
kept in the trigger's state (``last_slot``), so a restart never fires a slot twice.

Cron expressions are evaluated on the wall clock of ``timezone`` and mapped to instants:

- a wall time that does not exist (a DST gap) runs once, at the instant the gap ends;
- a wall time that occurs twice (the repeated hour) runs once, at its first occurrence, unless the
  expression's minute or hour field starts with ``*`` (a job that repeats through the day), which
  keeps its rhythm in real time through the repeated hour (what Vixie cron does).

``every:`` slots are the multiples of the period counted from 1970-01-01 00:00 UTC, so they do not
drift across restarts and do not depend on the time zone.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from trigctl.durations import DurationError, parse_duration
from trigctl.triggers.base import PollContext, PollOutcome, TriggerType, register

log = logging.getLogger("trigctl.triggers.schedule")

STATE_KEY = "last_slot"
MAX_CATCH_UP = 1000  # with catch_up: true, at most this many missed slots fire at once (the latest ones)
DST_REACH = 3 * 3600  # no zone moves its clock by more than this at once (DST shifts are 30 min to 2 h)
_EPOCH = datetime(1970, 1, 1)


# -------------------------------------------------------------------------------------- zones


def host_zone() -> tzinfo:
    """The host's zone with its DST rules: $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            if name.startswith("/"):
                with open(name, "rb") as f:
                    return ZoneInfo.from_file(f, key=name)
            return ZoneInfo(name)
        except (OSError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return timezone.utc


def zone(name: str | None) -> tzinfo:
    if not name:
        return host_zone()
    try:
        return ZoneInfo(name)
    except Exception:
        raise ValueError(f'"{name}" is not a known time zone (use an IANA name such as Europe/Berlin)') from None


def iso_utc(ts: float) -> str:
    spec = "seconds" if ts == int(ts) else "milliseconds"
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")


# ---------------------------------------------------------------------------------- schedules


class Every:
    """Slots at k * period seconds since the Unix epoch."""

    def __init__(self, period: float) -> None:
        if not period > 0:
            raise ValueError("`every` must be greater than 0")
        self.period = period

    def _at(self, n: int) -> float:
        return round(n * self.period, 6)

    def after(self, t: float) -> float:
        n = math.floor(t / self.period) + 1
        while self._at(n) <= t:
            n += 1
        while self._at(n - 1) > t:
            n -= 1
        return self._at(n)

    def descending(self, t: float) -> Iterator[float]:
        """Slots <= t, latest first."""
        n = math.floor(t / self.period)
        while self._at(n) > t:
            n -= 1
        while self._at(n + 1) <= t:
            n += 1
        while True:
            yield self._at(n)
            n -= 1


class Cron:
    """A 5-field cron expression (or a nickname such as ``@daily``) on the wall clock of a time zone."""

    def __init__(self, expr: str, tz: tzinfo) -> None:
        from trigctl.cronexpr import expand, problem

        why = problem(expr)
        if why:
            raise ValueError(why)
        fields = expand(expr).split()
        self.expr = expr  # as written, for messages
        self.fields = " ".join(fields)
        self.tz = tz
        # Vixie cron's rule: a job whose minute or hour field starts with * is a "wildcard" job
        # that runs by elapsed time through a repeated hour; other jobs run once.
        self.wild = fields[0].startswith("*") or fields[1].startswith("*")

    def _iter(self, start: datetime, forward: bool) -> Iterator[datetime]:
        from croniter import croniter

        it = croniter(self.fields, start, ret_type=datetime)
        step = it.get_next if forward else it.get_prev
        while True:
            try:
                yield step()
            except Exception:  # past the range croniter can represent / a date that never comes
                return

    def _offset(self, ts: float) -> float:
        return datetime.fromtimestamp(ts, self.tz).utcoffset().total_seconds()  # type: ignore[union-attr]

    def _wall(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, self.tz).replace(tzinfo=None)

    def instants(self, wall: datetime) -> tuple[float, ...]:
        """The instants at which a wall time occurs: one, two (repeated hour) or the end of a gap."""
        o0 = wall.replace(tzinfo=self.tz).utcoffset().total_seconds()  # type: ignore[union-attr]
        o1 = wall.replace(tzinfo=self.tz, fold=1).utcoffset().total_seconds()  # type: ignore[union-attr]
        base = (wall - _EPOCH).total_seconds()
        if o0 == o1:
            return (base - o0,)
        if o0 > o1:  # ambiguous: fold=0 is the first occurrence
            return (base - o0, base - o1) if self.wild else (base - o0,)
        return (self._transition(base - o1, base - o0),)  # in a gap: when the gap ends

    def _transition(self, lo: float, hi: float) -> float:
        """The instant in (lo, hi] at which the UTC offset changes."""
        a, b = math.floor(lo), math.ceil(hi)
        before = self._offset(a)
        while b - a > 1:
            mid = (a + b) // 2
            if self._offset(mid) == before:
                a = mid
            else:
                b = mid
        return float(b)

    def ascending(self, t: float) -> Iterator[float]:
        """Slots > t, in order, each once.

        The earliest instant of a wall time never decreases as the wall time grows, so an instant
        no later than the current wall time's earliest one is final.
        """
        reach = max(0.0, self._offset(t) - self._offset(t + DST_REACH))  # a fall-back coming soon
        start = self._wall(t - reach) - timedelta(minutes=1)
        heap: list[float] = []
        last = None
        for wall in self._iter(start, forward=True):
            found = self.instants(wall)
            for x in found:
                if x > t:
                    heapq.heappush(heap, x)
            floor = min(found)
            while heap and heap[0] <= floor:
                x = heapq.heappop(heap)
                if x != last:
                    last = x
                    yield x
        while heap:
            x = heapq.heappop(heap)
            if x != last:
                last = x
                yield x

    def descending(self, t: float) -> Iterator[float]:
        """Slots <= t, latest first, each once."""
        reach = max(0.0, self._offset(t - DST_REACH) - self._offset(t))  # a fall-back just before
        start = self._wall(t + reach) + timedelta(minutes=1)
        heap: list[float] = []  # negated: a max-heap
        last = None
        for wall in self._iter(start, forward=False):
            found = self.instants(wall)
            for x in found:
                if x <= t:
                    heapq.heappush(heap, -x)
            ceiling = max(found)
            while heap and -heap[0] >= ceiling:
                x = -heapq.heappop(heap)
                if x != last:
                    last = x
                    yield x
        while heap:
            x = -heapq.heappop(heap)
            if x != last:
                last = x
                yield x

    def after(self, t: float) -> float:
        for x in self.ascending(t):
            return x
        raise ValueError(f'cron "{self.expr}" never comes due')


def make_schedule(options: Mapping[str, Any]) -> Every | Cron:
    if options.get("cron") is not None:
        return Cron(str(options["cron"]), zone(options.get("timezone")))
    if options.get("every") is None:
        raise ValueError("a schedule trigger needs `cron` or `every`")
    return Every(parse_duration(options["every"]))


# -------------------------------------------------------------------------------------- trigger


@register
class ScheduleTrigger(TriggerType):
    type_name = "schedule"
    blocking = False  # pure computation
    default_dedupe_key: ClassVar[tuple[str, ...] | None] = ()  # one fixed key: a slow run never overlaps the next slot
    has_own_schedule = True

    def __init__(self, config, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        self.schedule = make_schedule(self.options)
        self.catch_up = bool(self.options.get("catch_up", False))
        if self.catch_up:
            # Every missed slot is meant to run: each is its own key (runs of different slots may overlap).
            self.default_dedupe_key = ("scheduled_for",)  # type: ignore[misc]
        self._covered = float("-inf")  # this instance's last poll looked at every slot up to here
        self.schedule.after(0.0)  # a cron that never comes due ("0 0 31 2 *") fails here, not in the loop

    @classmethod
    def check(cls, options: Mapping[str, Any], base_dir: Path) -> list[tuple[tuple, str]]:
        try:
            if options.get("every") is not None and parse_duration(options["every"]) <= 0:
                return [(("every",), "`every` must be greater than 0")]
            sched = make_schedule(options)
            sched.after(0.0)
        except DurationError:
            return []  # the schema reports a bad duration
        except ValueError as e:
            where = ("timezone",) if "time zone" in str(e) else (("cron",) if "cron" in options else ("every",))
            return [(where, str(e))]
        return []

    def next_due(self, previous_due: float | None, now: float) -> float:
        if previous_due is None:
            return self.schedule.after(now)
        nxt = self.schedule.after(max(previous_due, self._covered))
        if nxt > now:
            return nxt
        # Slots went by meanwhile (downtime, a stalled loop): one poll now covers them all.
        return max(nxt, self._latest(now) or nxt)

    def resumed(self, now: float, state: Mapping[str, Any]) -> dict[str, Any]:
        # Disabled means skipped: the slots up to now count as done (not fired, not caught up, also
        # with catch_up: true, which is about downtime); the next one is the first after now.
        self._covered = max(self._covered, now)
        latest = self._latest(now)
        last = state.get(STATE_KEY)
        if latest is None or (isinstance(last, (int, float)) and not isinstance(last, bool) and last >= latest):
            return {}
        return {STATE_KEY: latest}

    def clock_stepped_back(self, now: float, state: Mapping[str, Any]) -> dict[str, Any]:
        # The last fired slot may lie "in the future" now: the slots from `now` on come round
        # again, as they do for cron. Without this the trigger would wait until the clock is back.
        self._covered = min(self._covered, now)
        last = state.get(STATE_KEY)
        if isinstance(last, (int, float)) and not isinstance(last, bool) and last > now:
            latest = self._latest(now)
            return {STATE_KEY: latest}
        return {}

    def _latest(self, t: float) -> float | None:
        for x in self.schedule.descending(t):
            return x
        return None

    def poll(self, ctx: PollContext) -> PollOutcome:
        last = ctx.state.get(STATE_KEY)
        if not isinstance(last, (int, float)) or isinstance(last, bool):
            last = None
        # The slots to fire: after the last fired one; on the first poll, from the slot being polled.
        limit = MAX_CATCH_UP if self.catch_up else 1
        slots: list[float] = []
        truncated = False
        for x in self.schedule.descending(ctx.now):
            if (last is not None and x <= last) or (last is None and x < ctx.due_at):
                break
            if len(slots) == limit:
                truncated = True
                break
            slots.append(x)
        slots.reverse()
        self._covered = ctx.now
        if not slots:
            updates: dict[str, Any] = {}
            if last is None:
                # A poll that is not at a slot (`run --once`) on a fresh state: remember where we
                # are, so the next slot that passes is seen as due.
                latest = self._latest(ctx.now)
                if latest is not None:
                    updates[STATE_KEY] = latest
            nxt = self.schedule.after(ctx.now)
            return PollOutcome(skip_reason=f"no slot due (next: {iso_utc(nxt)})", state_updates=updates)
        if truncated and self.catch_up:
            log.warning("trigger %s: more than %d slots were missed; running the latest %d, from %s",
                        self.config.name, MAX_CATCH_UP, MAX_CATCH_UP, iso_utc(slots[0]))
        fires = [{"scheduled_for": iso_utc(x)} for x in slots]
        return PollOutcome(fires=fires, state_updates={STATE_KEY: slots[-1]})
