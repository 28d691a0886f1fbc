"""Prometheus metrics for ``trigctl run --metrics HOST:PORT`` (the list is in docs/metrics.md).

Two halves, on two threads:

* :class:`Metrics` subscribes to the run's event bus and keeps plain numbers per trigger and per
  (workflow, status). Its callbacks run on the loop's owner thread, one per poll at 10,000 polls a
  second, so each is a few attribute updates: no lock, no prometheus_client object per event.
* At scrape time (a thread of the HTTP server) the same object turns those numbers into samples:
  as a prometheus_client collector in a private ``CollectorRegistry`` (:meth:`Metrics.collect`, for
  code that embeds the runner) and as the text /metrics serves (:meth:`Metrics.exposition`, the same
  samples written directly: prometheus_client's renderer would hold the GIL for about a second per
  scrape of 10,000 triggers). The gauges the loop publishes no events for come from places that are
  safe to read from another thread: the workflow runner's active count (behind its own lock) and
  the queue depth from a store reader of the scrape's own (its own SQLite connection), never the
  loop's scheduler or connection.

Sharing without a lock: only the loop's owner writes the numbers (there is one owner at a time;
a handed-off owner publishes nothing); a scrape reads ints and floats, which it cannot see half
written. Structures that change shape (a reload's added triggers, a workflow first seen in a run)
are replaced whole, never edited while a scrape may iterate them. A scrape may see one poll in a
histogram's buckets and not yet in its sum; its count is the buckets' total, as Prometheus expects.

No label ever holds a context, a run id or a dedupe key: labels are trigger names, workflow names
(both ``[a-z0-9][a-z0-9_-]*``), fixed results and statuses, and the version.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import math
import re
import socket
import socketserver
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from trigctl import events as ev

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from trigctl.config import Config
    from trigctl.runner import Runner
    from trigctl.store.base import Store

log = logging.getLogger("trigctl.metrics")

RESULTS = ("fired", "skipped", "duplicate", "error")
_RESULT_INDEX = {result: i for i, result in enumerate(RESULTS)}
#: a run's end as counted by trigctl_runs_total; ``interrupted``: marked so at start (a crash cut it short)
RUN_STATUSES = ("succeeded", "failed", "cancelled", "interrupted")
#: seconds. Polls last from a millisecond (a Python check) to minutes (a command, a slow HTTP
#: endpoint), and run late by as little as the loop's 2 ms timer or as much as a stalled machine:
#: roughly 1-2.5-5 per decade from 1 ms to 5 min, 17 buckets (not the web defaults, 5 ms-10 s).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BOUNDS = (*BUCKETS, math.inf)
_LE = (*(repr(float(b)) for b in BUCKETS), "+Inf")  # as prometheus_client writes them: 0.001 ... 1.0 ... 300.0


class MetricsError(ValueError):
    """A --metrics value that cannot be served: its message is the one line the user sees."""


class _Histogram:
    """Bucket counts (not cumulative: one increment per observation) and a sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(_BOUNDS)
        self.sum = 0.0

    def cumulative(self) -> tuple[list[tuple[str, int]], float]:
        counts, total_sum = list(self.counts), self.sum
        out, running = [], 0
        for le, n in zip(_LE, counts):
            running += n
            out.append((le, running))
        return out, total_sum


class _TriggerSeries:
    __slots__ = ("label", "polls", "enabled", "consecutive_errors", "last_success")

    def __init__(self, name: str, enabled: bool, consecutive_errors: int = 0, last_success: float = 0.0) -> None:
        self.label = _label_value(name)  # escaped once, for the text a scrape writes
        self.polls = dict.fromkeys(RESULTS, 0)
        self.enabled = 1 if enabled else 0
        self.consecutive_errors = consecutive_errors
        self.last_success = last_success  # wall-clock seconds; 0: no successful poll known


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    """A sample value as the text format writes it (ints as they are, floats as Go would)."""
    if type(value) is int:
        return str(value)
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


#: name -> (type, help), for both renderings: the prometheus_client collector and the fast text
FAMILIES = {
    "trigctl_polls_total": ("counter", "Polls by trigger and result."),
    "trigctl_runs_total": ("counter", "Workflow runs that ended, by workflow and status "
                           "(interrupted: marked so at start after a crash)."),
    "trigctl_poll_duration_seconds": ("histogram", "How long polls took, start to recorded."),
    "trigctl_poll_lateness_seconds": ("histogram", "How late polls started after their due time."),
    "trigctl_runs_active": ("gauge", "Runs executing in this process now."),
    "trigctl_queue_depth": ("gauge", "Runs waiting in the queue (queued, not yet started)."),
    "trigctl_trigger_consecutive_errors": ("gauge", "Errors in a row of this trigger's latest polls (0 after a success)."),
    "trigctl_trigger_enabled": ("gauge", "1 if the trigger is enabled, else 0."),
    "trigctl_trigger_last_success_timestamp_seconds": (
        "gauge", "Unix time of the trigger's last poll that did not fail (0: none known)."),
    "trigctl_build_info": ("gauge", "The trigctl version serving these metrics (always 1)."),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trigctl")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """The numbers behind /metrics, fed by the event bus (see the module's docstring).

    ``config`` and ``only`` give the label sets before the loop has loaded its state, so that every
    series exists, at zero, from the first scrape; ``attach`` connects it to a runner and its bus.
    Two renderings of the same numbers: :meth:`collect` (a prometheus_client collector, registered
    in the private :attr:`registry`) and :meth:`exposition` (the same samples as text, written
    directly: what /metrics serves, ~40x faster at 10,000 triggers; a test holds them equal)."""

    def __init__(self, config: Config, only: Iterable[str] | None = None) -> None:
        from prometheus_client import CollectorRegistry

        chosen = None if only is None else set(only)
        self._triggers: dict[str, _TriggerSeries] = {
            tc.name: _TriggerSeries(tc.name, tc.enabled) for tc in config.triggers if chosen is None or tc.name in chosen}
        self._runs: dict[tuple[str, str], int] = {(wf, st): 0 for wf in config.workflows for st in RUN_STATUSES}
        self._duration = _Histogram()
        self._lateness = _Histogram()
        self._runner: Runner | None = None
        self._reader: Store | None = None
        self._reader_lock = threading.Lock()  # scrapes may come in parallel; the reader is one connection
        self._reader_failed = False
        self._version = _version()
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ------------------------------------------------------------------------- the loop's side

    def attach(self, runner: Runner, reader: Store | None = None) -> None:
        """Subscribe to ``runner``'s bus (before ``runner.run()``). ``reader``: a store connection of
        the scrape's own, for the queue depth (None: the gauge reads NaN)."""
        self._runner = runner
        self._reader = reader
        bus = runner.bus
        bus.subscribe(self._poll_completed, [ev.PollCompleted])
        bus.subscribe(self._poll_failed, [ev.PollFailed])
        bus.subscribe(self._run_finished, [ev.RunFinished])
        bus.subscribe(self._run_interrupted, [ev.RunInterrupted])
        bus.subscribe(self._enabled, [ev.TriggerEnabled, ev.TriggerDisabled])
        bus.subscribe(self._reshape, [ev.LoopStarted, ev.ConfigReloaded])

    def _poll_completed(self, event: ev.PollCompleted, bisect=bisect_left, bounds=_BOUNDS) -> None:
        # One call per poll (10,000 a second at scale): arithmetic only, names bound as locals.
        duration = event.duration
        if duration < 0.0:  # the wall clock stepped back during the poll
            duration = 0.0
        late = event.started_at - event.due_at
        if late < 0.0:
            late = 0.0
        h = self._duration
        h.counts[bisect(bounds, duration)] += 1
        h.sum += duration
        h = self._lateness
        h.counts[bisect(bounds, late)] += 1
        h.sum += late
        series = self._triggers.get(event.trigger)
        if series is None:  # removed by a reload while its poll was in flight
            return
        outcome = event.outcome
        series.polls[outcome] += 1
        if outcome != "error":
            series.consecutive_errors = 0
            series.last_success = event.started_at + duration

    def _poll_failed(self, event: ev.PollFailed) -> None:
        series = self._triggers.get(event.trigger)
        if series is not None:
            series.consecutive_errors = event.consecutive_errors

    def _count_run(self, workflow: str, status: str) -> None:
        key = (workflow, status)
        runs = self._runs
        if key in runs:
            runs[key] += 1
            return
        # A workflow a reload removed while its run went on, or a status not known here: a new
        # label set, added to a copy (a scrape may be iterating the dict).
        grown = dict(runs)
        for st in RUN_STATUSES:
            grown.setdefault((workflow, st), 0)
        grown[key] = grown.get(key, 0) + 1
        self._runs = grown

    def _run_finished(self, event: ev.RunFinished) -> None:
        self._count_run(event.workflow, event.status)

    def _run_interrupted(self, event: ev.RunInterrupted) -> None:
        if event.workflow:
            self._count_run(event.workflow, "interrupted")

    def _enabled(self, event: ev.TriggerEnabled | ev.TriggerDisabled) -> None:
        series = self._triggers.get(event.trigger)
        if series is not None:
            series.enabled = 1 if type(event) is ev.TriggerEnabled else 0

    def _reshape(self, event: ev.Event) -> None:
        """At start and after a reload, on the loop's thread: the label sets follow the scheduler's
        triggers and the config's workflows; a trigger's gauges are read from its slot."""
        runner = self._runner
        if runner is None:
            return
        started = type(event) is ev.LoopStarted
        old = self._triggers
        triggers: dict[str, _TriggerSeries] = {}
        for name, slot in runner.scheduler.slots.items():
            stats = slot.stats
            series = old.get(name)
            if series is None:
                series = _TriggerSeries(name, slot.enabled)
            if started or name not in old:
                # What the state knew before this process: a last poll that did not fail was a success.
                if stats.last_poll_at and stats.last_result in ("fired", "skipped", "duplicate"):
                    series.last_success = float(stats.last_poll_at)
            series.enabled = 1 if slot.enabled else 0
            series.consecutive_errors = stats.consecutive_errors
            triggers[name] = series
        self._triggers = triggers
        self._runs = {(wf, st): self._runs.get((wf, st), 0) for wf in runner.config.workflows for st in RUN_STATUSES}

    # ------------------------------------------------------------------------ the scrape's side

    def _snapshot(self) -> dict[str, Any]:
        """The numbers of one scrape. Each shared structure is referenced once (see the module's
        docstring); a trigger's numbers are copied as they are read."""
        runner = self._runner
        return {
            "triggers": [(name, s.label, dict(s.polls), s.consecutive_errors, s.enabled, s.last_success)
                         for name, s in list(self._triggers.items())],
            "runs": list(self._runs.items()),
            "histograms": [("trigctl_poll_duration_seconds", *self._duration.cumulative()),
                           ("trigctl_poll_lateness_seconds", *self._lateness.cumulative())],
            "runs_active": runner.workflows.count() if runner is not None else 0,
            "queue_depth": self._queue_depth(),
        }

    def describe(self) -> list[Metric]:
        return []  # names are not checked against other collectors: the registry is ours alone

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self._snapshot()

        def doc(name: str) -> str:
            return FAMILIES[name][1]

        polls = CounterMetricFamily("trigctl_polls", doc("trigctl_polls_total"), labels=["trigger", "result"])
        per_trigger = [GaugeMetricFamily(name, doc(name), labels=["trigger"]) for name in _PER_TRIGGER_GAUGES]
        for name, _label, counts, errors, enabled, last_success in snap["triggers"]:
            for result in RESULTS:
                polls.add_metric([name, result], counts[result])
            for family, v in zip(per_trigger, (errors, enabled, last_success)):
                family.add_metric([name], v)
        yield polls
        runs = CounterMetricFamily("trigctl_runs", doc("trigctl_runs_total"), labels=["workflow", "status"])
        for (workflow, status), n in snap["runs"]:
            runs.add_metric([workflow, status], n)
        yield runs
        for name, buckets, total in snap["histograms"]:
            yield HistogramMetricFamily(name, doc(name), buckets=buckets, sum_value=total)
        for name in ("trigctl_runs_active", "trigctl_queue_depth"):
            yield GaugeMetricFamily(name, doc(name), value=snap[name.removeprefix("trigctl_")])
        yield from per_trigger
        info = GaugeMetricFamily("trigctl_build_info", doc("trigctl_build_info"), labels=["version"])
        info.add_metric([self._version], 1)
        yield info

    def exposition(self) -> str:
        """The Prometheus text format (0.0.4) of :meth:`collect`'s samples, in the same order.
        prometheus_client's renderer costs ~15 µs a sample (about a second of the GIL, which the loop
        needs, for the 70,000 samples of 10,000 triggers); this one a fraction of that."""
        snap = self._snapshot()
        out: list[str] = []
        add = out.append

        def head(name: str) -> None:
            kind, text = FAMILIES[name]
            add(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")

        head("trigctl_polls_total")
        for _name, label, counts, *_ in snap["triggers"]:
            for result in RESULTS:
                add(f'trigctl_polls_total{{trigger="{label}",result="{result}"}} {counts[result]}\n')
        head("trigctl_runs_total")
        for (workflow, status), n in snap["runs"]:
            add(f'trigctl_runs_total{{workflow="{_label_value(workflow)}",status="{_label_value(status)}"}} {n}\n')
        for name, buckets, total in snap["histograms"]:
            head(name)
            for le, n in buckets:
                add(f'{name}_bucket{{le="{le}"}} {_number(n)}\n')
            add(f"{name}_count {_number(buckets[-1][1])}\n{name}_sum {_number(total)}\n")
        for name in ("trigctl_runs_active", "trigctl_queue_depth"):
            head(name)
            add(f"{name} {_number(snap[name.removeprefix('trigctl_')])}\n")
        for i, name in enumerate(_PER_TRIGGER_GAUGES):
            head(name)
            for _name, label, _counts, *gauges in snap["triggers"]:
                add(f'{name}{{trigger="{label}"}} {_number(gauges[i])}\n')
        head("trigctl_build_info")
        add(f'trigctl_build_info{{version="{_label_value(self._version)}"}} 1\n')
        return "".join(out)

    def _queue_depth(self) -> float | int:
        reader = self._reader
        if reader is None:
            return math.nan
        try:
            with self._reader_lock:
                return reader.queued_runs()
        except Exception as e:  # noqa: BLE001 - a failed read must not fail the whole scrape
            if not self._reader_failed:
                self._reader_failed = True
                log.warning("metrics: cannot read the queue depth (%s); trigctl_queue_depth reads NaN "
                            "until it can (further failures are not logged)", e)
            return math.nan


_PER_TRIGGER_GAUGES = ("trigctl_trigger_consecutive_errors", "trigctl_trigger_enabled",
                       "trigctl_trigger_last_success_timestamp_seconds")


# ----------------------------------------------------------------------------------- the server


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6; an empty host, ``:9464``, is every IPv4 interface;
    port 0 picks a free one) -> (host, port). A bad value raises :class:`MetricsError`."""
    example = "expected HOST:PORT, such as 127.0.0.1:9464"
    text = text.strip()
    m = re.fullmatch(r"\[([^\]]*)\]:([^:]*)|([^:\[\]]*):([^:]*)", text)
    if not m:
        raise MetricsError(f"--metrics {text!r}: {example}")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port_text = m.group(2) if m.group(1) is not None else m.group(4)
    if m.group(1) is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise MetricsError(f"--metrics {text!r}: {host!r} in brackets is not an IPv6 address") from None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise MetricsError(f"--metrics {text!r}: the port must be a number from 0 to 65535 ({example})")
    return host or "0.0.0.0", int(port_text)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request: a stalled one frees its thread


def _make_http_server(host: str, port: int, metrics: Metrics) -> ThreadingHTTPServer:
    """A threaded HTTP server on (host, port) whose GET /metrics is ``metrics.exposition()``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT
        server_version = "trigctl"

        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            if self.path.split("?", 1)[0] != "/metrics":
                self._reply(404, b"not found: metrics are at /metrics\n", "text/plain; charset=utf-8")
                return
            body = metrics.exposition().encode()
            gzipped = "gzip" in (self.headers.get("Accept-Encoding") or "")
            if gzipped:
                body = gzip.compress(body, compresslevel=1)  # zlib lets go of the GIL while it works
            self._reply(200, body, CONTENT_TYPE, gzipped)

        def _reply(self, status: int, body: bytes, content_type: str, gzipped: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # a scrape every few seconds is not worth a log line

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

        def server_bind(self) -> None:
            # HTTPServer's own looks up the host's FQDN (a DNS query that can hang): not needed here.
            socketserver.TCPServer.server_bind(self)

    return Server((str(sockaddr[0]), int(sockaddr[1])), Handler)


class MetricsServer:
    """The /metrics endpoint over a :class:`Metrics`, on daemon threads. :meth:`serve` binds the
    port at once, so a port in use is known before the loop starts anything."""

    def __init__(self, metrics: Metrics, httpd: ThreadingHTTPServer, state_location: str) -> None:
        self.metrics = metrics
        self._httpd = httpd
        self._state_location = state_location
        self._reader: Store | None = None
        host, port = httpd.server_address[:2]
        self.host, self.port = str(host), int(port)
        self._thread = threading.Thread(target=httpd.serve_forever, name="trigctl-metrics", daemon=True)
        self._thread.start()

    @classmethod
    def serve(cls, address: str, config: Config, only: Iterable[str] | None, state_location: str) -> MetricsServer:
        host, port = parse_address(address)
        metrics = Metrics(config, only)
        try:
            httpd = _make_http_server(host, port, metrics)
        except OSError as e:  # a host that does not resolve (gaierror), a port in use, an address not ours
            reason = e.strerror or str(e)
            raise MetricsError(f"--metrics {address!r}: cannot listen on {host}:{port}: {reason}") from None
        return cls(metrics, httpd, state_location)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def attach(self, runner: Runner) -> None:
        """Feed the metrics from ``runner`` (called by :func:`trigctl.api.run` before the loop starts,
        once the state exists): the queue depth is read through a reader connection of its own."""
        from trigctl.api import open_state

        try:
            self._reader = open_state(self._state_location, readonly=True)
        except Exception as e:  # noqa: BLE001 - metrics without the queue depth rather than no run
            log.warning("metrics: cannot open a reader of the state (%s); trigctl_queue_depth reads NaN", e)
        self.metrics.attach(runner, self._reader)
        log.info("metrics: serving Prometheus metrics at %s", self.url)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        if self._reader is not None:
            self._reader.close()
