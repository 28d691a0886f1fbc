"""`file` triggers: files matching a pattern appear in (or change in) a directory.

A file fires once its size and mtime have been stable for ``settle``; what fired is remembered in
the trigger's persistent state (absolute path -> [size, mtime]), so a file that stays put fires once,
a rewritten one fires again and one that disappears is forgotten.

Finding files is always a poll (one ``os.scandir`` pass, one ``stat`` per matching file). With
``watch: true`` a watchdog observer makes the trigger due at once on file events; the interval
poll stays as the backstop. An unsettled file is looked at again when it would have settled: a
one-shot timer calls ``wake()`` at that moment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from trigctl.durations import parse_duration
from trigctl.triggers.base import (
    MAX_CONTEXT_BYTES,
    PollContext,
    PollError,
    PollOutcome,
    TriggerType,
    register,
)

log = logging.getLogger("trigctl.triggers.file")


class _QuietStop(logging.Filter):
    """watchdog logs an error when an observer is stopped while its emitter reads: harmless noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStop())

INIT_KEY = "__initialized"  # state key: the first successful poll has happened
DEFAULT_SETTLE = 1.0
#: A file whose mtime is older than settle + this counts as settled at first sight (covers
#: filesystems that store mtime in whole seconds or coarser).
MTIME_SLACK = 1.0
TIMER_SLACK = 0.05  # the settle timer wakes the trigger this much after the file would have settled
WATCH_RETRY = 300.0  # seconds between attempts to start a watch that failed for another reason than a missing directory
WAKE_EVENTS = frozenset({"created", "modified", "moved", "closed", "attrib"})
BATCH_BUDGET = MAX_CONTEXT_BYTES - 10_000  # a batch context larger than this is split into several fires
# One poll's share of a big change (the first poll of an inbox holding 200,000 files): the loop
# records a poll's fires and remembered files in one transaction (~80 µs a fire, a few µs a
# remembered or forgotten file) while every other trigger waits. A poll fires at most
# FIRES_PER_POLL files (one run each) and remembers or forgets at most UPDATES_PER_POLL files
# (the files of batch fires included); the rest waits in the trigger's backlog, and the trigger is
# polled again at once (wake()), taking its next share without scanning the directory again.
FIRES_PER_POLL = 200
UPDATES_PER_POLL = 2000
_FIRE, _REMEMBER, _FORGET = 0, 1, 2


# ------------------------------------------------------------------------------------- patterns


def translate_glob(pattern: str) -> str:
    """A glob over a relative, /-separated path -> a regular expression (for ``fullmatch``).

    ``*``, ``?`` and ``[...]`` stay inside one path component; ``**`` as a whole component matches
    any number of directories (zero or more). As in the shell, a wildcard does not match a leading
    ``.`` of a component: ``*`` skips ``.hidden`` (write ``.*`` to match it).
    """
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    out: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(r"(?!\.)[^/]*(?:/(?!\.)[^/]*)*" if last else r"(?:(?!\.)[^/]*/)*")
            continue
        out.append(_component(part) + ("" if last else "/"))
    return "".join(out)


def _component(part: str) -> str:
    res: list[str] = [r"(?!\.)"] if part[:1] in ("*", "?", "[") else []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            while i < n and part[i] == "*":
                i += 1
            res.append("[^/]*")
        elif c == "?":
            res.append("[^/]")
        elif c == "[":
            j = i
            if j < n and part[j] in "!^":
                j += 1
            if j < n and part[j] == "]":
                j += 1
            while j < n and part[j] != "]":
                j += 1
            if j >= n:
                res.append(re.escape(c))  # no closing bracket: a literal [
                continue
            body = part[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            res.append(_char_class(body, negate))
        else:
            res.append(re.escape(c))
    return "".join(res)


def _char_class(body: str, negate: bool) -> str:
    items: list[str] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            lo, hi = body[k], body[k + 2]
            if lo <= hi:  # a reversed range matches nothing (as in fnmatch)
                items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            k += 3
        else:
            items.append(re.escape(body[k]))
            k += 1
    if not items:
        return "[^/]" if negate else "(?!)"
    return ("[^/" if negate else "[") + "".join(items) + "]"


def compile_patterns(patterns: str | list[str]) -> re.Pattern[str]:
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    return re.compile("|".join(f"(?:{translate_glob(p)})" for p in items), re.DOTALL)


def _patterns(options: Mapping[str, Any]) -> list[str]:
    value = options.get("pattern", "*")
    return [value] if isinstance(value, str) else list(value)


# -------------------------------------------------------------------------------------- trigger


@register
class FileTrigger(TriggerType):
    type_name = "file"
    blocking = True
    default_dedupe_key = ("path", "size", "mtime")

    def __init__(self, config, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        o = self.options
        raw = os.path.expanduser(str(o["path"]))
        self.root = os.path.normpath(os.path.join(str(base_dir), raw))
        self.recursive = bool(o.get("recursive", False))
        self.settle = parse_duration(o.get("settle", DEFAULT_SETTLE))
        self.watch = bool(o.get("watch", True))
        self.batch = bool(o.get("batch", False))
        self.ignore_existing = bool(o.get("ignore_existing", False))
        self._match = compile_patterns(_patterns(o)).fullmatch
        if self.batch:
            self.default_dedupe_key = None  # type: ignore[misc,assignment]  # a batch is keyed by its whole context
        # Unsettled files: path -> (size, mtime, when first seen with that size and mtime).
        self._pending: dict[str, tuple[int, float, float]] = {}
        self._pending_paths: frozenset[str] = frozenset()  # read by the watch thread
        # Close-after-write events since the last poll: path -> (size, mtime) right after the close.
        self._closed_files: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None
        self._timer: threading.Timer | None = None
        self._observer: Any = None
        self._watched_id: tuple[int, int] | None = None  # the watched directory's (device, inode)
        self._watch_warned = False
        self._watch_retry_at = 0.0
        self._stopped = False
        # Work a scan found beyond one poll's share: (kind, path, size, mtime), oldest fire first.
        self._backlog: list[tuple[int, str, int, float]] = []
        # The backlog is the first poll's and INIT_KEY is not written yet: with ignore_existing it is
        # written with the last share (until then, what is found counts as present at the first start).
        self._backlog_first = False
        # Wake-ups from events and settle timers, counted, and the count when the last scan began: a
        # wake taken by a backlog share (which does not scan) must still lead to a scan when it ends.
        self._changes = 0
        self._changes_at_scan = 0

    @classmethod
    def check(cls, options: Mapping[str, Any], base_dir: Path) -> list[tuple[tuple, str]]:
        issues: list[tuple[tuple, str]] = []
        raw = options.get("path")
        if isinstance(raw, str) and raw:
            root = os.path.join(str(base_dir), os.path.expanduser(raw))
            if os.path.exists(root) and not os.path.isdir(root):
                issues.append((("path",), f"{os.path.normpath(root)} is not a directory"))
        value = options.get("pattern")
        items = [value] if isinstance(value, str) else (value if isinstance(value, list) else [])
        for i, p in enumerate(items):
            where = ("pattern",) if isinstance(value, str) else ("pattern", i)
            if not isinstance(p, str):
                continue
            if ".." in p.split("/"):
                issues.append((where, f"{p!r}: a pattern matches paths inside `path`; `..` never matches"))
            elif p.startswith("/"):
                issues.append((where, f"{p!r}: a pattern is relative to `path`; it must not start with /"))
        return issues

    # ----------------------------------------------------------------------------- watching

    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        if self.watch:
            self._start_observer()

    def _start_observer(self) -> None:
        with self._lock:
            if self._observer is not None or self._stopped or time.monotonic() < self._watch_retry_at:
                return
            missing = not os.path.isdir(self.root)
            if missing:
                self._warn_watch("the directory does not exist (yet)")
                return
            from watchdog.observers import Observer

            observer = Observer()
            try:
                observer.schedule(_Handler(self), self.root, recursive=self.recursive)  # type: ignore[arg-type]
                observer.start()
            except Exception as e:  # inotify limits, permissions, a directory removed meanwhile...
                try:
                    observer.stop()
                except Exception:  # noqa: BLE001 - already broken; nothing to stop
                    pass
                if os.path.isdir(self.root):  # not a missing directory: don't retry on every poll
                    self._watch_retry_at = time.monotonic() + WATCH_RETRY
                self._warn_watch(f"{type(e).__name__}: {e}")
                return
            self._observer = observer
            try:
                st = os.stat(self.root)
                self._watched_id = (st.st_dev, st.st_ino)
            except OSError:
                self._watched_id = None
            if self._watch_warned:
                log.info("trigger %s: watching %s now", self.config.name, self.root)

    def _check_watch(self) -> None:
        """Before a poll: restart a watch whose directory was removed or replaced, or start a missing one."""
        observer = self._observer
        if observer is not None:
            try:
                st = os.stat(self.root)
                same = (st.st_dev, st.st_ino) == self._watched_id
            except OSError:
                same = False
            if same and observer.is_alive():
                return
            self._stop_observer()
        self._start_observer()

    def _warn_watch(self, why: str) -> None:  # called under self._lock
        if not self._watch_warned:
            self._watch_warned = True
            log.warning("trigger %s: cannot watch %s (%s); polling every %gs instead",
                        self.config.name, self.root, why, self.config.interval)

    def _stop_observer(self) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout=5)
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                log.debug("trigger %s: stopping the watch: %s", self.config.name, e)

    def _on_event(self, event: Any) -> None:
        """Called on the watchdog thread: make the trigger due now if the event may matter."""
        kind = event.event_type
        if kind not in WAKE_EVENTS or self._wake is None:
            return
        if event.is_directory:
            # A directory moved or created in a recursive tree brings files without file events.
            if self.recursive and kind in ("created", "moved"):
                self._wake_now()
            return
        path = os.fsdecode(event.dest_path if kind == "moved" else event.src_path)
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix) or not self._match(path[len(prefix):]):
            return
        if kind == "closed":
            try:
                st = os.stat(path)
            except OSError:
                return
            with self._lock:
                self._closed_files[path] = (st.st_size, st.st_mtime)
        elif kind in ("modified", "attrib") and path in self._pending_paths:
            return  # already settling: the settle timer looks again
        self._wake_now()

    def _wake_now(self) -> None:
        """Something in the directory may have changed (an event, a settle timer): poll now."""
        with self._lock:
            self._changes += 1  # a scan begun before this may not have seen it
        self._wake_next()

    def _wake_next(self) -> None:
        wake = self._wake
        if wake is not None and not self._stopped:
            wake()

    def _schedule_recheck(self, delay: float | None) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if delay is None or self._wake is None or self._stopped:
                return
            timer = threading.Timer(max(0.0, delay) + TIMER_SLACK, self._wake_now)
            timer.daemon = True
            timer.name = f"trigctl-settle-{self.config.name}"
            self._timer = timer
            timer.start()

    def close(self) -> None:
        self._stopped = True
        self._schedule_recheck(None)
        self._stop_observer()

    # ------------------------------------------------------------------------------ polling

    def scan(self) -> dict[str, tuple[int, float]]:
        """Every matching regular file under the root: absolute path -> (size, mtime)."""
        found: dict[str, tuple[int, float]] = {}
        match = self._match
        recursive = self.recursive
        stack: list[tuple[str, str]] = [(self.root, "")]
        while stack:
            directory, prefix = stack.pop()
            try:
                it = os.scandir(directory)
            except FileNotFoundError:
                if prefix:
                    continue  # a subdirectory that went away meanwhile
                raise PollError(f"directory {self.root} does not exist") from None
            except NotADirectoryError:
                if prefix:
                    continue
                raise PollError(f"{self.root} is not a directory") from None
            except PermissionError:
                if prefix:
                    log.debug("trigger %s: cannot read %s", self.config.name, directory)
                    continue
                raise PollError(f"cannot read directory {self.root}: permission denied") from None
            with it:
                if not recursive:  # the common case, kept lean: match the name first, stat only matches
                    for entry in it:
                        if match(entry.name):
                            try:
                                if entry.is_file():
                                    st = entry.stat()  # the one stat per file (scandir gives no size or mtime)
                                    found[entry.path] = (st.st_size, st.st_mtime)
                            except OSError:
                                pass  # removed between the listing and the stat
                    continue
                for entry in it:
                    rel = prefix + entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):  # symlinked directories are not followed
                            stack.append((entry.path, rel + "/"))
                        elif match(rel) and entry.is_file():
                            st = entry.stat()
                            found[entry.path] = (st.st_size, st.st_mtime)
                    except OSError:
                        pass
        return found

    def poll(self, ctx: PollContext) -> PollOutcome:
        if self._backlog:
            return self._poll_backlog(ctx)
        started = time.monotonic()
        if self.watch and self._wake is not None:
            self._check_watch()
        # Closes recorded before the scan are the ones the scan can confirm; taking them after it
        # would drop a close that lands in between, and its file would wait out the whole settle.
        with self._lock:
            closed, self._closed_files = self._closed_files, {}
            self._changes_at_scan = self._changes
        files = self.scan()

        state = ctx.state
        now = ctx.now
        settle = self.settle
        first = INIT_KEY not in state
        updates: dict[str, Any] = {}
        ready: list[tuple[str, int, float]] = []
        pending: dict[str, tuple[int, float, float]] = {}
        old_pending = self._pending
        next_settle: float | None = None
        for path, (size, mtime) in files.items():
            rec = state.get(path)
            if type(rec) is list and len(rec) == 2 and rec[0] == size and rec[1] == mtime:
                continue  # fired already, unchanged
            if first and self.ignore_existing:
                updates[path] = [size, mtime]  # present at the first start: remember, don't fire
                continue
            prev = old_pending.get(path)
            # min(): after the wall clock stepped back, a file seen "later" settles from now.
            since = min(prev[2], now) if prev is not None and prev[0] == size and prev[1] == mtime else now
            settles_at = since + settle
            if mtime <= now:
                settles_at = min(settles_at, mtime + settle + MTIME_SLACK)
            if settle <= 0 or now >= settles_at or closed.get(path) == (size, mtime):
                ready.append((path, size, mtime))  # remembered with its fire (PollOutcome.fire_state)
            else:
                pending[path] = (size, mtime, since)
                if next_settle is None or settles_at < next_settle:
                    next_settle = settles_at
        for key in state:
            if key not in files and key != INIT_KEY:
                updates[key] = None  # gone (or no longer matching): forget it
        self._pending = pending
        self._pending_paths = frozenset(pending)
        if next_settle is not None:
            self._schedule_recheck(next_settle - now - (time.monotonic() - started))
        else:
            self._schedule_recheck(None)

        ready.sort(key=lambda r: (r[2], r[0]))  # oldest first: the run queue is FIFO
        if len(updates) > UPDATES_PER_POLL or (len(ready) > FIRES_PER_POLL and not self.batch):
            fired = {p for p, _, _ in ready}
            work = [(_FIRE, p, s, m) for p, s, m in ready]
            work += [(_REMEMBER, p, v[0], v[1]) for p, v in updates.items() if v is not None and p not in fired]
            work += [(_FORGET, p, 0, 0.0) for p, v in updates.items() if v is None]
            self._backlog, self._backlog_first = work, first
            return self._poll_backlog(ctx)
        if first:
            updates[INIT_KEY] = True
        return self._outcome(ready, updates, pending)

    def _poll_backlog(self, ctx: PollContext) -> PollOutcome:
        """The next share of the backlog. A file to fire is looked at again (one stat): one that
        went away or changed since the scan is left to the next scan, which sees it settle."""
        ready: list[tuple[str, int, float]] = []
        updates: dict[str, Any] = {}
        fire_cap = FIRES_PER_POLL if not self.batch else UPDATES_PER_POLL
        taken = 0
        for kind, path, size, mtime in self._backlog:
            if len(updates) >= UPDATES_PER_POLL or (kind == _FIRE and len(ready) >= fire_cap):
                break
            taken += 1
            if kind == _FIRE:
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if st.st_size != size or st.st_mtime != mtime:
                    continue
                ready.append((path, size, mtime))  # remembered with its fire (PollOutcome.fire_state)
            elif kind == _REMEMBER:
                updates[path] = [size, mtime]
            else:
                updates[path] = None
        del self._backlog[:taken]
        if self._backlog:
            self._wake_next()  # the next share at once (a poll in flight is repeated when it returns)
        elif self._changes != self._changes_at_scan:
            # Events (or a settle timer) woke the trigger while the backlog was worked, and those
            # polls did not scan: scan now, not at the next interval (files written during a big
            # burst waited for it).
            self._wake_next()
        if self._backlog_first and (not self._backlog or not self.ignore_existing):
            self._backlog_first = False
            updates[INIT_KEY] = True
        left = f"{len(self._backlog)} file(s) left for the next polls" if self._backlog else ""
        return self._outcome(ready, updates, self._pending, left)

    def _outcome(self, ready: list[tuple[str, int, float]], updates: dict[str, Any],
                 pending: Mapping[str, Any], skip: str = "") -> PollOutcome:
        entries: list[dict[str, Any]] = [{"path": p, "name": os.path.basename(p), "size": s, "mtime": m} for p, s, m in ready]
        fires: list[dict[str, Any]]
        if self.batch and entries:
            chunks = list(_chunks(entries))
            fires = [{"paths": [e["path"] for e in chunk], "files": chunk} for chunk in chunks]
            fire_state = [{e["path"]: [e["size"], e["mtime"]] for e in chunk} for chunk in chunks]
        else:
            fires = entries
            fire_state = [{e["path"]: [e["size"], e["mtime"]]} for e in entries]
        if not fires and not skip:
            skip = f"{len(pending)} file(s) settling" if pending else "no new or changed files"
        # A file is remembered with its fire, not before: a fire that dedupe defers (the file was
        # rewritten while the run for its older content is active) leaves it to be offered again.
        return PollOutcome(fires=fires, skip_reason=skip, state_updates=updates, fire_state=fire_state)


def _chunks(entries: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Split a batch so that no context exceeds the context size limit."""
    chunk: list[dict[str, Any]] = []
    size = 32
    for e in entries:
        n = len(json.dumps(e)) + len(json.dumps(e["path"])) + 4
        if chunk and size + n > BATCH_BUDGET:
            yield chunk
            chunk, size = [], 32
        chunk.append(e)
        size += n
    if chunk:
        yield chunk


class _Handler:
    """A watchdog event handler that forwards every event to the trigger (filtering is done there)."""

    def __init__(self, trigger: FileTrigger) -> None:
        self._trigger = trigger

    def dispatch(self, event: Any) -> None:
        try:
            self._trigger._on_event(event)
        except Exception as e:  # noqa: BLE001 - never let the watch thread die
            log.debug("trigger %s: event handling failed: %s", self._trigger.config.name, e)
