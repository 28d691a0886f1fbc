"""The command line: parse, call the library, render. Domain errors become one line and exit 2."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time

import click

from trigctl import completion, render
from trigctl.cli_options import (
    config_only_option,
    config_option,
    debug_option,
    format_commands,
    group_options,
)

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

    def format_commands(self, ctx, formatter) -> None:
        format_commands(self, ctx, formatter)  # whole descriptions, wrapped: none cut with "..."


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


def _guard(fn):
    """Domain exceptions -> one line; anything else -> one line too, unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # The error classes are looked up only when something failed: importing trigctl.config
        # (YAML, schema helpers) costs ~40 ms that `history` and `show` do not need, and
        # trigctl.api (its records) a few ms that `--help` does not.
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:
            if not _output_closed():
                raise Fatal("internal error: BrokenPipeError (run with --debug for the traceback)", EXIT_FAILED) from None
            raise  # `trigctl history | head -1`: click ends quietly (exit 1), whatever was left unsaid
        except Exception as e:
            api_mod = sys.modules.get("trigctl.api")
            if api_mod is not None and isinstance(e, api_mod.Error):
                raise Fatal(str(e), EXIT_FAILED if isinstance(e, api_mod.Conflict) else EXIT_USAGE) from None
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


def _output_closed() -> bool:
    """Whether the reader of stdout or stderr has gone (a pipe into `head`), rather than some other
    pipe of the command's breaking."""
    import select

    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, ValueError, OSError):
            continue
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(events & select.POLLERR for _, events in poller.poll(0)):
            return True
    return False


def _debugging() -> bool:
    return bool(os.environ.get("TRIGCTL_DEBUG") or click.get_current_context().find_root().params.get("debug"))


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")(fn)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trigctl", prog_name="trigctl")
@group_options
def main(config_path: str | None, state: str | None, debug: bool) -> None:
    """trigctl: when X happens, run Y. Triggers and workflows in one YAML file, state in SQLite."""


# ------------------------------------------------------------------------------------------- init


@main.command()
@click.argument("path", required=False)
@config_only_option
@debug_option
@_guard
def init(path: str | None, config_path: str | None) -> None:
    """Write a commented starter triggers.yaml, or PATH (refuses to overwrite)."""
    from trigctl import api

    path = next((p for p in (path, config_path) if p is not None), "triggers.yaml")  # "" is an empty path
    api.init(path)
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
    from trigctl import api
    from trigctl.config import ConfigError

    try:
        result = api.validate(file, config_path=config_path, state=state)
    except ConfigError as e:
        if as_json:
            render.print_json({"valid": False, "errors": [i.as_dict() for i in e.issues]})
            raise click.exceptions.Exit(EXIT_USAGE) from None
        raise
    if as_json:
        render.print_json({"valid": True, "errors": []})
        return
    click.echo(f"{render.visible(result.config_path)}: ok ({result.triggers} triggers, {result.workflows} workflows)")


# -------------------------------------------------------------------------------------------- run


@main.command()
@click.argument("file", required=False)
@config_option
@click.option("--once", is_flag=True, help="Poll each enabled trigger once, wait for the runs, exit 1 if any failed.")
@click.option("--trigger", "only", multiple=True, metavar="NAME", help="Only these triggers (repeatable).")
@click.option("--grace", default="30s", show_default=True, metavar="DURATION", help="On SIGINT/SIGTERM, how long running runs may finish.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines as text or JSON (given explicitly: log lines also on a terminal, no live view).")
@click.option("--no-live", is_flag=True, help="On a terminal too: one log line per event, no live table.")
@click.option("--metrics", "metrics_address", metavar="HOST:PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464).")
@click.option("--label", "labels", multiple=True, metavar="NAME",
              help="PostgreSQL state: this process may lease triggers whose labels: it carries (repeatable).")
@click.option("--lease", default="10s", show_default=True, metavar="DURATION",
              help="PostgreSQL state: the lease period (a dead process's triggers move within it).")
@_guard
def run(file, config_path, state, once, only, grace, log_format, no_live, metrics_address, labels, lease) -> None:
    """Run the polling loop in the foreground (Ctrl-C stops it gracefully); on a terminal, a live table."""
    import contextlib

    from click.core import ParameterSource

    from trigctl import api
    from trigctl.durations import DurationError, parse_duration
    from trigctl.observe import live as live_view
    from trigctl.observe.logs import BatchingHandler, EventFormatter, foreign_logs

    try:
        grace_s = parse_duration(grace)
    except DurationError as e:
        raise Fatal(f"--grace: {e}") from None
    lease_s = _lease_option(lease, labels)
    plan = api.plan_run(file, config_path=config_path, state=state, only=only)
    metrics = _serve_metrics(metrics_address, plan) if metrics_address is not None else None
    log_format_given = click.get_current_context().get_parameter_source("log_format") != ParameterSource.DEFAULT
    live = live_view.LiveView() if live_view.wanted(once=once, opted_out=no_live or log_format_given) else None
    handler = BatchingHandler(live.log_stream if live else sys.stderr)
    handler.setFormatter(EventFormatter(log_format, debug=_debugging()))
    root = logging.getLogger("trigctl")
    saved = (root.handlers[:], root.level, root.propagate)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    try:
        with foreign_logs(handler):  # watchdog's (and any library's) warnings as trigctl log lines
            with live if live else contextlib.nullcontext():
                observers = [view.attach for view in (metrics, live) if view is not None]
                code = api.run(plan, once=once, grace=grace_s, labels=labels, lease=lease_s, observers=observers)
            hard_exit = _leaked_threads()
    finally:
        if metrics is not None:
            metrics.close()
        handler.flush()
        root.handlers[:], root.level, root.propagate = saved
    if hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise click.exceptions.Exit(code)


def _serve_metrics(address: str, plan):
    """Bind --metrics before anything starts: a bad address is one line and exit 2."""
    from trigctl.observe.metrics import MetricsError, MetricsServer

    try:
        return MetricsServer.serve(address, plan.config, plan.only, plan.state_location)
    except MetricsError as e:
        raise Fatal(str(e)) from None


def _lease_option(lease: str, labels: tuple[str, ...]) -> float:
    import re

    from trigctl.durations import DurationError, parse_duration

    try:
        seconds = parse_duration(lease)
    except DurationError as e:
        raise Fatal(f"--lease: {e}") from None
    if not 1 <= seconds <= 3600:
        raise Fatal(f"--lease: {lease!r} is outside 1s..1h")
    for label in labels:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", label):
            raise Fatal(f"--label: {label!r} is not a label name ([a-z0-9][a-z0-9_-]*)")
    return seconds


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
@click.argument("name", shell_complete=completion.trigger_names)
@config_option
@json_option
@_guard
def poll(name, config_path, state, as_json) -> None:
    """Evaluate one trigger now and show what it would fire. Starts nothing, records nothing."""
    from trigctl import api

    preview = api.poll_once(name, config_path=config_path, state=state)
    doc = preview.as_dict()
    if as_json:
        render.print_json(doc)
    else:
        render.poll_view(doc)
    if preview.result == "error":
        raise click.exceptions.Exit(EXIT_FAILED)


# ------------------------------------------------------------------------------------------- list


@main.command(name="list")
@config_option
@json_option
@_guard
def list_(config_path, state, as_json) -> None:
    """Each trigger: type, workflow, interval, enabled, last poll and result, next poll, runs, errors."""
    from trigctl import api

    if as_json:
        sys.stdout.write(api.list_json(config_path=config_path, state=state, indent=render.json_indent()) + "\n")
    else:
        render.trigger_table(api.list_triggers(config_path=config_path, state=state))


@main.command()
@config_option
@json_option
@_guard
def processes(config_path, state, as_json) -> None:
    """PostgreSQL state: each live `trigctl run` process, its host, labels, leases held, last heartbeat."""
    from trigctl import api

    rows = api.list_processes(config_path=config_path, state=state)
    if as_json:
        render.print_json([render.process_doc(p) for p in rows])
    else:
        render.process_table(rows)


# ------------------------------------------------------------------------------- enable / disable


@main.command()
@click.argument("names", nargs=-1, required=True, shell_complete=completion.trigger_names)
@config_option
@_guard
def enable(names, config_path, state) -> None:
    """Enable triggers (persisted; a running `trigctl run` honours it within a second)."""
    from trigctl import api

    done = api.set_enabled(list(names), True, config_path=config_path, state=state)
    click.echo(f"enabled: {render.visible(', '.join(done))}")


@main.command()
@click.argument("names", nargs=-1, required=True, shell_complete=completion.trigger_names)
@config_option
@_guard
def disable(names, config_path, state) -> None:
    """Disable triggers (persisted; survives restarts and YAML edits until `enable`)."""
    from trigctl import api

    done = api.set_enabled(list(names), False, config_path=config_path, state=state)
    click.echo(f"disabled: {render.visible(', '.join(done))}")


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
@click.argument("name", required=False, shell_complete=completion.trigger_names)
@config_option
@json_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--status", help="queued, running, succeeded, failed, interrupted, cancelled, duplicate or error (comma-separated).")
@click.option("--since", help="Only newer than this: a duration (1h, 2d) or an ISO time.")
@click.option("--wide", is_flag=True, help="Whole names, contexts and errors (folded), full times.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing rows as they are recorded or change (Ctrl-C stops).")
@_guard
def history(name, config_path, state, as_json, limit, status, since, wide, follow) -> None:
    """Newest first: fires with their runs' status and duration, suppressed duplicates, errors."""
    from trigctl import api

    statuses = [s.strip() for s in status.split(",")] if status else None
    known_statuses = api.history_statuses()
    for s in statuses or []:
        if s not in known_statuses:
            raise Fatal(f"--status: unknown status {s!r} (known: {', '.join(known_statuses)})")
    if follow:
        _follow_history(name, limit, statuses, _since(since), config_path, state, as_json)
        return
    entries = api.history(name, limit=limit, statuses=statuses, since=_since(since), config_path=config_path, state=state)
    if as_json:
        render.print_json([e.as_dict() for e in entries])
    else:
        render.history_table(entries, wide=wide)


def _follow_history(name, limit, statuses, since, config_path, state, as_json) -> None:
    """The last ``limit`` rows oldest first, then each row again whenever it is recorded or changes
    (a run finishing, a duplicate counted up): a table that grows, or JSON Lines with --json."""
    from trigctl import api

    printer = None if as_json else render.HistoryPrinter(render.FOLLOW_WIDTHS)
    if printer is not None:
        printer.header()
    try:
        for batch in api.follow_history(name, limit=limit, statuses=statuses, since=since,
                                        config_path=config_path, state=state):
            if printer is not None:
                printer.rows(batch, time.time())
            else:
                for entry in batch:
                    sys.stdout.write(render.json_text(entry.as_dict()) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------------------------ show/cancel


@main.command(context_settings=RUN_ID_ARGS)
@click.argument("run_id", type=RunId(), shell_complete=completion.run_ids)
@config_option
@json_option
@_guard
def show(run_id, config_path, state, as_json) -> None:
    """One run: context, each task's status, exit code, duration and last lines of output."""
    from trigctl import api

    run = api.show_run(run_id, config_path=config_path, state=state)
    if as_json:
        render.print_json(render.run_doc(run))
    else:
        render.run_view(run)


_CANCELLED = {
    "queued": "run {} cancelled (it was queued)",
    "requested": "run {}: cancel requested; the running trigctl stops it within a second",
    "killed": "run {} cancelled",
}


@main.command(context_settings=RUN_ID_ARGS)
@click.argument("run_id", type=RunId(), shell_complete=completion.active_run_ids)
@config_option
@_guard
def cancel(run_id, config_path, state) -> None:
    """Terminate a queued or running run (its whole process group); it ends `cancelled`."""
    from trigctl import api

    result = api.cancel_run(run_id, config_path=config_path, state=state)
    click.echo(_CANCELLED[result.how].format(result.run_id))


# ------------------------------------------------------------------------------------------ prune


@main.command()
@click.option("--older-than", "older_than", required=True, metavar="DURATION", help="With a unit: 30d, 12h, 90m.")
@click.option("--dry-run", is_flag=True, help="Only say how many history entries would go.")
@config_option
@_guard
def prune(older_than, dry_run, config_path, state) -> None:
    """Delete history older than --older-than (a unit is required); active runs and dedupe state are kept."""
    from trigctl import api
    from trigctl.durations import DurationError, parse_age

    try:
        age = parse_age(older_than)
    except DurationError as e:
        raise Fatal(f"--older-than: {e}") from None
    done = api.prune(age, dry_run=dry_run, config_path=config_path, state=state)
    what = f"{done.entries} history {'entry' if done.entries == 1 else 'entries'} older than {render.visible(older_than)}"
    since = f"(before {render.local(done.before)})"
    click.echo(f"would prune {what} {since}; nothing deleted" if dry_run else f"pruned {what} {since}")


if __name__ == "__main__":
    main()
