"""The command line: parse, call the library, render. Domain errors become one line and exit 2."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from trigctl.config import Config

from trigctl import render

EXIT_FAILED = 1
EXIT_USAGE = 2


class Fatal(click.ClickException):
    """One line on stderr, then exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click reads it per instance; its ClassVar is the default

    def show(self, file=None) -> None:
        # Messages quote names, paths and values from the command line, the YAML and the state.
        click.echo(f"trigctl: {render.visible(self.format_message())}", err=True)


class Issues(click.ClickException):
    """Config problems: one FILE:LINE:COL line each."""

    exit_code = EXIT_USAGE

    def __init__(self, issues):
        super().__init__("\n".join(str(i) for i in issues))
        self.lines = [render.visible(str(i)) for i in issues]  # one line each, whatever the YAML holds

    def show(self, file=None) -> None:
        click.echo("\n".join(self.lines), err=True)


class OneLineUsage(click.UsageError):
    """Click's usage errors (a bad option value, a missing argument) as one line, like every other
    error: `trigctl: Invalid value for '--limit': ... (see `trigctl history -h`)`."""

    def __init__(self, error: click.UsageError):
        super().__init__(error.format_message(), error.ctx)

    def show(self, file=None) -> None:
        where = self.ctx.command_path if self.ctx is not None else "trigctl"
        message = self.format_message().rstrip(".")
        click.echo(f"trigctl: {render.visible(message)} (see `{render.visible(where)} -h`)", err=True)


class Group(click.Group):
    """The command group: usage errors, of the group and of each command, are one line."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except (OneLineUsage, click.exceptions.NoArgsIsHelpError):
            raise
        except click.UsageError as e:
            raise OneLineUsage(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (OneLineUsage, click.exceptions.NoArgsIsHelpError):
            raise
        except click.UsageError as e:
            raise OneLineUsage(e) from None


# The largest rowid SQLite stores: a larger id names no run (and cannot even be a query parameter).
MAX_RUN_ID = 2**63 - 1


class RunId(click.ParamType):
    """A run id: ASCII digits (click's int would take " 1", "١" or "1_0"). Out-of-range ids are
    accepted here and are "no run N" later, like any id that names no run."""

    name = "run_id"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        import re

        text = str(value).strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,4000}", text):
            self.fail(f"{render.visible(repr(value))} is not a run id (a number such as 42)", param, ctx)
        return int(text)


# `show -1` is the run id -1 (no such run), not an unknown option -1.
RUN_ID_ARGS = {"ignore_unknown_options": True}


def _get_run(store, run_id: int):
    return store.get_run(run_id) if 0 < run_id <= MAX_RUN_ID else None


def _guard(fn):
    """Domain exceptions -> one line; anything else -> one line too, unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # ConfigError and StateError are looked up only when something failed: importing
        # trigctl.config (YAML, schema helpers) costs ~40 ms that `history` and `show` do not need.
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except Exception as e:
            config_mod = sys.modules.get("trigctl.config")
            if config_mod is not None and isinstance(e, config_mod.ConfigError):
                raise Issues(e.issues) from None
            store_mod = sys.modules.get("trigctl.store.base")
            if store_mod is not None and isinstance(e, store_mod.StateError):
                raise Fatal(str(e)) from None
            if isinstance(e, UnicodeEncodeError) and isinstance(e.object, str) and "surrogates" in e.reason:
                # An argument with bytes that are not UTF-8 (a name matching such a row): SQLite
                # text is UTF-8, so it cannot even be looked up.
                raise Fatal(f"{e.object!r} is not UTF-8 text: the state cannot store or look it up") from None
            if os.environ.get("TRIGCTL_DEBUG") or click.get_current_context().find_root().params.get("debug"):
                raise
            raise Fatal(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", EXIT_FAILED) from None

    return wrapper


def _debugging() -> bool:
    return bool(os.environ.get("TRIGCTL_DEBUG") or click.get_current_context().find_root().params.get("debug"))


def config_option(fn):
    fn = click.option("--state", "state", metavar="PATH_OR_URL", envvar="TRIGCTL_STATE",
                      help="State: SQLite path or postgresql:// URL [env TRIGCTL_STATE; default: the file's state:]")(fn)
    fn = click.option("-c", "--config", "config_path", metavar="PATH", envvar="TRIGCTL_CONFIG",
                      help="The triggers YAML [env TRIGCTL_CONFIG; default ./triggers.yaml]")(fn)
    return fn


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")(fn)


_NOT_A_PATH = {"", "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n"}


def _state_from_yaml(path: str) -> str | None:
    """The state location of a YAML file, found without parsing it (commands that need only the
    state, such as `history` and `show`, skip loading the whole file: ~0.1 s at 1,000 triggers).

    Only the plain cases: one top-level `state: PATH` line, a plain or simply quoted value, no
    `${...}`; or no `state` anywhere in the file (the default). Anything else returns None and the
    caller loads the file, which gives the same answer (or the error)."""
    import re

    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    base = Path(path).resolve().parent
    found = re.findall(r"(?m)^state[ \t]*:(.*)$", text)
    if not found:
        return None if "state" in text else str(base / ".trigctl/state.db")
    if len(found) > 1:
        return None
    value = re.sub(r"(^|[ \t])#.*$", "", found[0]).strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
        if not value or any(c in value for c in "'\"\\"):
            return None
    elif value.lower() in _NOT_A_PATH or not re.fullmatch(r"[A-Za-z0-9_./@%+=,-][A-Za-z0-9_./@%+=,:~-]*", value) \
            or re.fullmatch(r"[-+]?[0-9_.]+(?:[eE][-+]?[0-9]+)?", value):
        return None
    if "$" in value:
        return None
    return value if "://" in value else str(base / value)


class Env:
    """Finds the config and the state for a command."""

    def __init__(self, config_path: str | None, state: str | None, file_arg: str | None = None):
        # An empty environment variable counts as unset (click); an empty argument is a mistake.
        for value, what in ((file_arg, "FILE"), (config_path, "-c/--config"), (state, "--state")):
            if value == "":
                raise Fatal(f"{what}: empty path")
        self.explicit_config = file_arg or config_path
        self.config_path = self.explicit_config or "triggers.yaml"
        self.state_arg = state
        self._config: Config | None = None

    def config(self, light: bool = False):
        if self._config is None:
            from trigctl.config import load_config

            self._config = load_config(self.config_path, light=light)
        return self._config

    def has_config(self) -> bool:
        return Path(self.config_path).is_file()

    def state_location(self, need_config: bool = True) -> str:
        if self.state_arg:
            return self.state_arg
        if not need_config and not self.has_config():
            if self.explicit_config and os.path.lexists(self.config_path):
                self.config(light=True)  # a directory, a device...: the loader says what is wrong with it
            if self.explicit_config:
                raise Fatal(f"{self.config_path}: no such file (or give --state PATH to read a state without its YAML)")
            raise Fatal(f"no {self.config_path} here: give -c/--config PATH or --state PATH")
        if not need_config and self._config is None:
            quick = _state_from_yaml(self.config_path)
            if quick is not None:
                return quick
        return self.config(light=True).state_location()

    def store(self, readonly: bool = False, need_config: bool = True):
        return open_state(self.state_location(need_config), readonly=readonly)


def open_state(location: str, *, readonly: bool = False):
    """The store at ``location``, once the path is something a SQLite file can be: SQLite itself
    says "unable to open database file" of a directory and "disk I/O error" of a FIFO or a device."""
    import stat

    from trigctl.store import open_store

    if "://" not in location and location != ":memory:":
        try:
            mode = os.stat(location).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None  # created by writers (or "cannot create state directory"); readers answer empty
        except (OSError, ValueError) as e:
            raise Fatal(f"state {location}: {getattr(e, 'strerror', None) or e}") from None
        if mode is not None and stat.S_ISDIR(mode):
            raise Fatal(f"state {location} is a directory, not a state file (give a file path such as {location}/state.db)")
        if mode is not None and not stat.S_ISREG(mode):
            raise Fatal(f"state {location} is not a regular file (a FIFO, a socket or a device): give the path of a state file")
    return open_store(location, readonly=readonly)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trigctl", prog_name="trigctl")
@click.option("--debug", is_flag=True, help="Show tracebacks for internal errors.")
def main(debug: bool) -> None:
    """trigctl: when X happens, run Y. Triggers and workflows in one YAML file, state in SQLite."""


# ------------------------------------------------------------------------------------------- init

STARTER = Path(__file__).with_name("starter.yaml")


@main.command()
@click.argument("path", default="triggers.yaml", required=False)
@_guard
def init(path: str) -> None:
    """Write a commented starter triggers.yaml (refuses to overwrite)."""
    if not path:
        raise Fatal("PATH: empty path")
    target = Path(path)
    if os.path.lexists(target):
        raise Fatal(f"{path} already exists; not overwriting it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "x") as f:  # "x": a file that appeared meanwhile is not overwritten either
            f.write(STARTER.read_text())
        (target.parent / "inbox").mkdir(exist_ok=True)  # the starter's file trigger watches it
    except FileExistsError:
        raise Fatal(f"{path} already exists; not overwriting it") from None
    except OSError as e:
        raise Fatal(f"cannot write {e.filename or path}: {e.strerror or e}") from None
    path = render.visible(path)
    click.echo(f"wrote {path} (and inbox/): edit it, then `trigctl validate {path}` and `trigctl run {path}`")


# --------------------------------------------------------------------------------------- validate


@main.command()
@click.argument("file", required=False)
@config_option
@json_option
@_guard
def validate(file: str | None, config_path: str | None, state: str | None, as_json: bool) -> None:
    """Check FILE (schema, workflows, names, crons, callables, env vars); exit 0 or 2."""
    from trigctl.config import ConfigError, load_config

    env = Env(config_path, state, file)
    try:
        cfg = load_config(env.config_path)
    except ConfigError as e:
        if as_json:
            render.print_json({"valid": False, "errors": [i.as_dict() for i in e.issues]})
            raise click.exceptions.Exit(EXIT_USAGE) from None
        raise
    if as_json:
        render.print_json({"valid": True, "errors": []})
        return
    click.echo(f"{render.visible(env.config_path)}: ok ({len(cfg.triggers)} triggers, {len(cfg.workflows)} workflows)")


# -------------------------------------------------------------------------------------------- run


@main.command()
@click.argument("file", required=False)
@config_option
@click.option("--once", is_flag=True, help="Poll each enabled trigger once, wait for the runs, exit 1 if any failed.")
@click.option("--trigger", "only", multiple=True, metavar="NAME", help="Only these triggers (repeatable).")
@click.option("--grace", default="30s", show_default=True, help="On SIGINT/SIGTERM, how long running runs may finish.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_guard
def run(file, config_path, state, once, only, grace, log_format) -> None:
    """Run the polling loop in the foreground (Ctrl-C stops it gracefully)."""
    from trigctl.durations import DurationError, parse_duration
    from trigctl.runner import BatchingHandler, EventFormatter, Runner

    try:
        grace_s = parse_duration(grace)
    except DurationError as e:
        raise Fatal(f"--grace: {e}") from None
    env = Env(config_path, state, file)
    cfg = env.config()
    for name in only:
        if cfg.trigger(name) is None:
            raise Fatal(f"unknown trigger {name!r} (known: {', '.join(t.name for t in cfg.triggers) or 'none'})")
    handler = BatchingHandler(sys.stderr)
    handler.setFormatter(EventFormatter(log_format, debug=_debugging()))
    root = logging.getLogger("trigctl")
    saved = (root.handlers[:], root.level, root.propagate)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    try:
        store = open_state(env.state_location())
        try:
            code = Runner(cfg, store, only=set(only) if only else None, once=once, grace=grace_s).run()
        finally:
            store.close()
        hard_exit = _leaked_threads()
    finally:
        handler.flush()
        root.handlers[:], root.level, root.propagate = saved
    if hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise click.exceptions.Exit(code)


def _leaked_threads() -> bool:
    """Non-daemon threads that trigger code started would keep the interpreter alive after `stopped`.
    A real `trigctl run` process exits without them (logged); in-process callers (CliRunner, whose
    stdout has no file descriptor) return normally."""
    import io
    import threading

    main_thread = threading.main_thread()
    left = [t for t in threading.enumerate() if t is not main_thread and not t.daemon and t.is_alive()]
    if not left or threading.current_thread() is not main_thread:
        return False
    try:
        sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
    names = ", ".join(sorted({t.name for t in left}))
    logging.getLogger("trigctl").warning("not waiting for %d thread(s) left running by trigger code (%s)", len(left), names)
    return True


# ------------------------------------------------------------------------------------------- poll


@main.command()
@click.argument("name")
@config_option
@json_option
@_guard
def poll(name, config_path, state, as_json) -> None:
    """Evaluate one trigger now and show what it would fire. Starts nothing, records nothing."""
    from trigctl.scheduler import Poll, Scheduler
    from trigctl.triggers.base import PollOutcome

    env = Env(config_path, state)
    cfg = env.config()
    tc = cfg.trigger(name)
    if tc is None:
        raise Fatal(f"unknown trigger {name!r}")
    store = env.store(readonly=True)
    sched = Scheduler(cfg, store, only={name})
    rows = store.trigger_rows()
    now = time.time()
    slot = sched._add(tc, rows.get(name), now)
    started = time.monotonic()
    poll_ = Poll(slot, now, now, now + tc.timeout)
    fires: list[dict[str, Any]] = []
    result, error = "skipped", None
    try:
        if slot.impl is None:
            raise RuntimeError(slot.load_error)
        value = _poll_with_timeout(sched, poll_, tc.timeout)
        if not isinstance(value, PollOutcome):
            value = slot.impl.finish(value)
        requests = sched.fire_requests(slot, value.fires)
        any_fired = False
        for ctx, req in zip(value.fires, requests):
            suppressed, reason = store.dedupe_status(name, req.context_hash, req.dedupe)
            any_fired = any_fired or not suppressed
            fires.append({"context": cfg.redactor.scrub(ctx), "dedupe_key": req.context_hash, "suppressed": suppressed,
                          "reason": reason or None})
        if fires:
            result = "fired" if any_fired else "duplicate"
    except Exception as e:
        from trigctl.scheduler import _describe

        result, error = "error", cfg.redactor.text(_describe(e))
    finally:
        if slot.impl is not None:
            slot.impl.close()
    duration = time.monotonic() - started
    doc = {"trigger_name": name, "result": result, "fires": fires, "duration": round(duration, 6)}
    if error:
        doc["error"] = error
    if as_json:
        render.print_json(doc)
    else:
        render.poll_view(doc)
    if result == "error":
        raise click.exceptions.Exit(EXIT_FAILED)


def _poll_with_timeout(sched, poll_, timeout: float):
    import asyncio
    import inspect
    import threading

    from trigctl.scheduler import Awaited

    box: dict[str, Any] = {}

    def target():
        try:
            value = sched.execute(poll_)
            if inspect.isawaitable(value):
                async def wrap():
                    return await value
                value = Awaited(asyncio.run(wrap()))
            box["value"] = value
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"poll timed out after {timeout:g}s")
    if "error" in box:
        raise box["error"]
    value = box["value"]
    if type(value) is Awaited:
        return poll_.slot.impl.finish(value.value)
    return value


# ------------------------------------------------------------------------------------------- list


@main.command(name="list")
@config_option
@json_option
@_guard
def list_(config_path, state, as_json) -> None:
    """Each trigger: type, workflow, interval, enabled, last poll and result, next poll, runs, errors."""
    env = Env(config_path, state)
    summaries, store = _listing_source(env)
    rows = store.trigger_rows()
    out = []
    for tc in summaries:
        row = rows.get(tc["name"])
        enabled = tc["enabled"] if row is None or row.enabled is None else row.enabled
        out.append({
            "name": tc["name"], "type": tc["type"], "workflow": tc["workflow"], "interval": tc["interval"],
            "enabled": enabled, "dedupe": tc["dedupe"], "last_poll_at": render.iso(row.last_poll_at) if row else None,
            "last_result": row.last_result if row else None,
            "next_poll_at": render.iso(row.next_poll_at) if row and enabled else None,
            "active_runs": row.active_runs if row else 0, "fires": row.fires if row else 0,
            "consecutive_errors": row.consecutive_errors if row else 0,
            "_last_poll_at": row.last_poll_at if row else None, "_next_poll_at": row.next_poll_at if row else None,
            "_schedule": tc["schedule"],
        })
    if as_json:
        render.print_json([{k: v for k, v in r.items() if not k.startswith("_")} for r in out])
    else:
        render.trigger_table(out)


def _listing_source(env: Env):
    """The triggers to list and the state. A big YAML is parsed only when it changed since `run`
    last saved what list shows of it (same bytes, same environment variables)."""
    if env.has_config():
        location = env.state_arg or _state_from_yaml(env.config_path)
        if location is not None and ("://" in location or Path(location).exists()):
            from trigctl.snapshot import config_fingerprint

            store = open_state(location, readonly=True)
            fingerprint = config_fingerprint(env.config_path)
            cached = store.config_snapshot(str(Path(env.config_path).resolve()), fingerprint) if fingerprint else None
            if cached is not None:
                return cached, store
            store.close()
    from trigctl.config import trigger_summaries

    return trigger_summaries(env.config(light=True)), env.store(readonly=True)


# ------------------------------------------------------------------------------- enable / disable


def _set_enabled(names, config_path, state, value: bool) -> None:
    env = Env(config_path, state)
    if env.has_config() or not state:
        known = {t.name for t in env.config(light=True).triggers}
    else:
        known = set(env.store(readonly=True, need_config=False).trigger_rows())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise Fatal(f"unknown trigger {unknown[0]!r}" + (f" (known: {', '.join(sorted(known))})" if known else ""))
    store = env.store(need_config=False)
    try:
        store.set_enabled(names, value)
    finally:
        store.close()
    click.echo(f"{'enabled' if value else 'disabled'}: {render.visible(', '.join(names))}")


@main.command()
@click.argument("names", nargs=-1, required=True)
@config_option
@_guard
def enable(names, config_path, state) -> None:
    """Enable triggers (persisted; a running `trigctl run` honours it within a second)."""
    _set_enabled(list(names), config_path, state, True)


@main.command()
@click.argument("names", nargs=-1, required=True)
@config_option
@_guard
def disable(names, config_path, state) -> None:
    """Disable triggers (persisted; survives restarts and YAML edits until `enable`)."""
    _set_enabled(list(names), config_path, state, False)


# ---------------------------------------------------------------------------------------- history


def _since(value: str | None) -> float | None:
    if not value:  # an empty --since (an unset variable in a script) is no --since
        return None
    import re
    from datetime import datetime

    from trigctl.durations import DurationError, parse_duration

    try:
        return time.time() - parse_duration(value)
    except DurationError as e:
        # Digits with duration units (or none) are meant as a duration: say what is wrong with it,
        # rather than reading "1111111111" as the year 1111 (fromisoformat takes basic ISO forms).
        if re.fullmatch(r"[0-9.]+(?:ms|s|m|h|d|w)?(?:[0-9.]+(?:ms|s|m|h|d|w))*", value.strip()):
            raise Fatal(f"--since: {e}") from None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Fatal(f"--since: {value!r} is neither a duration (1h, 2d) nor an ISO time") from None
    try:
        return dt.timestamp()
    except (OverflowError, OSError, ValueError):
        # Beyond what this platform's clock can express (the year 1, 9999-12-31 in a zone east of UTC)
        return None if dt.year < 1970 else float("inf")


@main.command()
@click.argument("name", required=False)
@config_option
@json_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--status", help="queued, running, succeeded, failed, interrupted, cancelled, duplicate or error (comma-separated).")
@click.option("--since", help="Only newer than this: a duration (1h, 2d) or an ISO time.")
@_guard
def history(name, config_path, state, as_json, limit, status, since) -> None:
    """Newest first: fires with their runs' status and duration, suppressed duplicates, errors."""
    from trigctl.store.base import RUN_STATUSES

    statuses = [s.strip() for s in status.split(",")] if status else None
    known_statuses = RUN_STATUSES + ("duplicate", "error")
    for s in statuses or []:
        if s not in known_statuses:
            raise Fatal(f"--status: unknown status {s!r} (known: {', '.join(known_statuses)})")
    since_ts = _since(since)
    env = Env(config_path, state)
    store = env.store(readonly=True, need_config=False)
    if name is not None:
        known = set(store.trigger_rows())
        if name not in known and env.has_config():  # a trigger of the file that has no row yet
            known |= {t.name for t in env.config(light=True).triggers}
        if name not in known:
            raise Fatal(f"unknown trigger {name!r}")
    rows = store.history(name, limit, statuses, since_ts)
    out = [history_doc(r) for r in rows]
    if as_json:
        render.print_json([{k: v for k, v in r.items() if not k.startswith("_")} for r in out])
    else:
        render.history_table(out)


def history_doc(r: dict[str, Any]) -> dict[str, Any]:
    import json

    is_fire = r["kind"] == "fire"
    started = (r["run_started"] if is_fire else None) or r["created_at"]
    completed = r["run_completed"] if is_fire else None
    return {
        "id": r["id"], "trigger_name": r["trigger_name"], "kind": r["kind"],
        "context": json.loads(r["context"]) if r["context"] else None, "context_hash": r["context_hash"],
        "run_id": r["run_id"], "status": r["run_status"] if is_fire else None,
        "started_at": render.iso(started), "completed_at": render.iso(completed),
        "duration": round(completed - started, 6) if completed and started else None,
        "error": r["run_error"] if is_fire else r["error"], "count": r["count"],
        "_when": r["updated_at"] if r["kind"] != "fire" else r["created_at"],
    }


# ------------------------------------------------------------------------------------ show/cancel


@main.command(context_settings=RUN_ID_ARGS)
@click.argument("run_id", type=RunId())
@config_option
@json_option
@_guard
def show(run_id, config_path, state, as_json) -> None:
    """One run: context, each task's status, exit code, duration and last lines of output."""
    store = Env(config_path, state).store(readonly=True, need_config=False)
    run = _get_run(store, run_id)
    if run is None:
        raise Fatal(f"no run {run_id}")
    tasks = [
        {"name": t["name"], "status": t["status"], "exit_code": t["exit_code"], "started_at": render.iso(t["started_at"]),
         "completed_at": render.iso(t["completed_at"]),
         "duration": round(t["completed_at"] - t["started_at"], 6) if t["completed_at"] and t["started_at"] else None,
         "output_tail": t["output_tail"] or ""}
        for t in run.tasks
    ]
    doc = {"id": run.id, "trigger_name": run.trigger_name, "workflow": run.workflow, "status": run.status,
           "context": run.context, "started_at": render.iso(run.started_at), "completed_at": render.iso(run.completed_at),
           "tasks": tasks}
    if as_json:
        render.print_json(doc)
    else:
        render.run_view({**doc, "_started_at": run.started_at, "_completed_at": run.completed_at}, run.error)


@main.command(context_settings=RUN_ID_ARGS)
@click.argument("run_id", type=RunId())
@config_option
@_guard
def cancel(run_id, config_path, state) -> None:
    """Terminate a queued or running run (its whole process group); it ends `cancelled`."""
    from trigctl.procs import kill_recorded_group
    from trigctl.store import StateLocked

    store = Env(config_path, state).store(need_config=False)
    try:
        run = _get_run(store, run_id)
        if run is None:
            raise Fatal(f"no run {run_id}")
        if run.status not in ("queued", "running"):
            raise Fatal(f"run {run_id} already ended ({run.status}); nothing to cancel", EXIT_FAILED)
        if run.status == "queued":
            if store.finish_run(run_id, "cancelled", time.time(), "cancelled by `trigctl cancel`", only_if="queued"):
                click.echo(f"run {run_id} cancelled (it was queued)")
                return
            run = store.get_run(run_id)  # started meanwhile: cancel it as a running run
            if run is None or run.status != "running":
                raise Fatal(f"run {run_id} already ended ({run.status if run else 'gone'}); nothing to cancel", EXIT_FAILED)
        store.request_cancel(run_id, time.time())
        try:
            store.lock_for_run()  # no `trigctl run` alive: this process ends the run itself
        except StateLocked:
            click.echo(f"run {run_id}: cancel requested; the running trigctl stops it within a second")
            return
        for t in run.tasks:
            kill_recorded_group(t.get("pid"), t.get("pgid"), t.get("proc_start"))
        store.finish_run(run_id, "cancelled", time.time(), "cancelled by `trigctl cancel`")
        click.echo(f"run {run_id} cancelled")
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ prune


@main.command()
@click.option("--older-than", "older_than", required=True, help="A duration: 30d, 12h...")
@config_option
@_guard
def prune(older_than, config_path, state) -> None:
    """Delete history older than that; active runs and dedupe state are kept."""
    from trigctl.durations import DurationError, parse_duration

    try:
        age = parse_duration(older_than)
    except DurationError as e:
        raise Fatal(f"--older-than: {e}") from None
    store = Env(config_path, state).store(need_config=False)
    try:
        n = store.prune(time.time() - age)
    finally:
        store.close()
    click.echo(f"pruned {n} history entries older than {render.visible(older_than)}")


if __name__ == "__main__":
    main()
