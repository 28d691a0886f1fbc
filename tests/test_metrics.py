"""`trigctl run --metrics`: a real `trigctl run` process scraped over HTTP, parsed with
prometheus_client's parser, checked by promtool where it is installed."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from realproc import RunProc

from trigctl.config import load_config
from trigctl.observe.metrics import BUCKETS, RESULTS, RUN_STATUSES, Metrics, parse_address

ROOT = Path(__file__).resolve().parent.parent
MARKER = "CTX-MARKER-7d1e0c"  # in every context the firing trigger returns: must never reach a label
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus; .ci/run does it as root)")

WORKFLOWS = """
version: 1
max_concurrent_runs: 1
workflows:
  handle:
    tasks:
      # Holds the one run slot until the test creates `gate`: the next fires wait in the queue.
      - run: 'while [ ! -e gate ]; do sleep 0.02; done'
  alert:
    tasks:
      - run: "true"
"""
EXTRA_WORKFLOW = """
  extra:
    tasks:
      - run: "true"
"""
TRIGGERS = {
    "ticker": f"""
  - name: ticker
    type: command
    run: "echo '{{\\"marker\\": \\"{MARKER}\\", \\"n\\": 1}}'"
    workflow: handle
    interval: 200ms
    dedupe: none
""",
    "broken": """
  - name: broken
    type: command
    run: "echo down >&2; exit 3"
    workflow: handle
    interval: 200ms
    max_backoff: 200ms
    on_error: {after: 2, workflow: alert}
""",
    "paused": """
  - name: paused
    type: command
    run: "true"
    workflow: handle
    interval: 200ms
    enabled: false
""",
    "added": """
  - name: added
    type: command
    run: "exit 3"
    workflow: extra
    interval: 200ms
""",
}


def project_yaml(triggers: tuple[str, ...] = ("ticker", "broken", "paused"), extra: bool = False) -> str:
    blocks = [WORKFLOWS.strip("\n") + "\n", EXTRA_WORKFLOW.strip("\n") + "\n" if extra else "", "triggers:\n"]
    return "".join(blocks + [TRIGGERS[t].strip("\n") + "\n" for t in triggers])


# ------------------------------------------------------------------------------------- helpers


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed, name: str, **labels) -> float | None:
    return parsed.get((name, frozenset(labels.items())))


def scrape_until(url: str, predicate, timeout: float = 20.0, what: str = "") -> tuple[str, dict]:
    """Scrape until ``predicate(parsed)`` holds: a condition with a deadline, not a fixed wait."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(url)
        parsed = samples(text)
        if predicate(parsed):
            return text, parsed
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last scrape:\n{text}")
        time.sleep(0.05)


def served_url(proc: RunProc) -> str:
    line = proc.lines[proc.wait_line("serving Prometheus metrics at")]
    m = re.search(r"(http://\S+/metrics)", line)
    assert m, line
    return m.group(1)


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trigctl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "triggers.yaml").write_text(project_yaml())
    return tmp_path


@pytest.fixture
def running(project):
    proc = RunProc(project, "triggers.yaml", "--metrics", "127.0.0.1:0", "--grace", "5s")
    try:
        yield proc, served_url(proc)
    finally:
        (project / "gate").touch()  # the held run ends, so the stop is quick
        if proc.proc.poll() is None:
            proc.stop(30)
        proc.cleanup()


# ----------------------------------------------------------------------------------- the process


@pytest.mark.slow
def test_a_running_process_serves_every_series_from_the_event_stream(running, project):
    proc, url = running
    start = time.time()
    text, parsed = scrape_until(url, lambda p: (value(p, "trigctl_queue_depth") or 0) >= 2
                                and (value(p, "trigctl_trigger_consecutive_errors", trigger="broken") or 0) >= 2,
                                what="runs queued behind the held one, and broken's error streak")

    # Every trigger x result and every workflow x status exists, zeros included.
    for trigger in ("ticker", "broken", "paused"):
        for result in RESULTS:
            assert value(parsed, "trigctl_polls_total", trigger=trigger, result=result) is not None, (trigger, result)
    for workflow in ("handle", "alert"):
        for status in RUN_STATUSES:
            assert value(parsed, "trigctl_runs_total", workflow=workflow, status=status) is not None
    assert value(parsed, "trigctl_polls_total", trigger="paused", result="fired") == 0
    assert value(parsed, "trigctl_polls_total", trigger="ticker", result="error") == 0
    assert value(parsed, "trigctl_polls_total", trigger="broken", result="fired") == 0
    assert value(parsed, "trigctl_runs_total", workflow="handle", status="failed") == 0

    assert value(parsed, "trigctl_polls_total", trigger="ticker", result="fired") >= 2
    assert value(parsed, "trigctl_polls_total", trigger="broken", result="error") >= 2
    assert value(parsed, "trigctl_trigger_enabled", trigger="paused") == 0
    assert value(parsed, "trigctl_trigger_enabled", trigger="ticker") == 1
    assert value(parsed, "trigctl_trigger_consecutive_errors", trigger="ticker") == 0
    assert value(parsed, "trigctl_runs_active") == 1  # the held run; the rest wait
    assert value(parsed, "trigctl_trigger_last_success_timestamp_seconds", trigger="ticker") >= start - 5
    assert value(parsed, "trigctl_trigger_last_success_timestamp_seconds", trigger="broken") == 0
    assert value(parsed, "trigctl_trigger_last_success_timestamp_seconds", trigger="paused") == 0
    assert value(parsed, "trigctl_build_info", version=version("trigctl")) == 1

    # Histograms: the buckets chosen for polls (ms to minutes), cumulative, count = +Inf.
    for hist in ("trigctl_poll_duration_seconds", "trigctl_poll_lateness_seconds"):
        les = [repr(float(b)) for b in BUCKETS] + ["+Inf"]
        assert {dict(k[1])["le"] for k in parsed if k[0] == f"{hist}_bucket"} == set(les)
        counts = [value(parsed, f"{hist}_bucket", le=le) for le in les]
        assert counts == sorted(counts) and counts[-1] == value(parsed, f"{hist}_count") >= 4
        assert value(parsed, f"{hist}_sum") >= 0

    # No label carries a context, a run id or a key: only these label names, only known values.
    assert MARKER not in text
    allowed = {"trigger": {"ticker", "broken", "paused"}, "result": set(RESULTS), "workflow": {"handle", "alert"},
               "status": set(RUN_STATUSES), "le": None, "version": {version("trigctl")}}
    for _name, labels in parsed:
        for key, val in labels:
            assert key in allowed, key
            assert allowed[key] is None or val in allowed[key], (key, val)

    # The held run ends: the queue drains into runs_total.
    (project / "gate").touch()
    scrape_until(url, lambda p: value(p, "trigctl_queue_depth") == 0
                 and value(p, "trigctl_runs_total", workflow="handle", status="succeeded") >= 3
                 and value(p, "trigctl_runs_total", workflow="alert", status="succeeded") >= 1,
                 what="the queue drained")
    if PROMTOOL is not None:
        check = promtool("check", "metrics", stdin=scrape(url))
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
def test_enable_and_disable_from_another_shell_and_a_reload_show_in_the_series(running, project):
    proc, url = running
    (project / "gate").touch()
    scrape_until(url, lambda p: value(p, "trigctl_polls_total", trigger="ticker", result="fired") >= 1,
                 what="ticker's first fire")

    assert cli(project, "disable", "ticker").returncode == 0
    assert cli(project, "enable", "paused").returncode == 0
    _, parsed = scrape_until(url, lambda p: value(p, "trigctl_trigger_enabled", trigger="ticker") == 0
                             and value(p, "trigctl_trigger_enabled", trigger="paused") == 1
                             and value(p, "trigctl_polls_total", trigger="paused", result="fired") >= 1,
                             what="ticker disabled, paused enabled and firing")

    # Reload: a trigger and a workflow are added (their series at zero), `broken` is removed.
    (project / "triggers.yaml").write_text(project_yaml(("ticker", "paused", "added"), extra=True))
    assert load_config(project / "triggers.yaml").trigger("added") is not None
    mark = len(proc.lines)
    proc.signal(signal.SIGHUP)
    proc.wait_line("reloaded", start=mark)
    _, parsed = scrape_until(url, lambda p: value(p, "trigctl_polls_total", trigger="added", result="error") is not None,
                             what="the added trigger's series")
    for result in RESULTS:
        assert value(parsed, "trigctl_polls_total", trigger="added", result=result) is not None
    for status in RUN_STATUSES:
        assert value(parsed, "trigctl_runs_total", workflow="extra", status=status) == 0
    assert value(parsed, "trigctl_trigger_enabled", trigger="added") == 1
    assert not any(dict(labels).get("trigger") == "broken" for _, labels in parsed)
    # Counters of the triggers that stayed go on from where they were (not reset by the reload).
    assert value(parsed, "trigctl_polls_total", trigger="paused", result="fired") >= 1
    scrape_until(url, lambda p: value(p, "trigctl_trigger_consecutive_errors", trigger="added") >= 1,
                 what="the added trigger's errors")


@pytest.mark.slow
def test_after_a_restart_the_gauges_start_from_the_state(project):
    """Disabled triggers do not poll: what the second process shows of them comes from the state."""
    (project / "gate").touch()
    first = RunProc(project, "triggers.yaml", "--metrics", "127.0.0.1:0", "--grace", "5s")
    try:
        url = served_url(first)
        scrape_until(url, lambda p: value(p, "trigctl_polls_total", trigger="ticker", result="fired") >= 1
                     and value(p, "trigctl_trigger_consecutive_errors", trigger="broken") >= 2, what="a fire, 2 errors")
        assert cli(project, "disable", "ticker", "broken").returncode == 0
        _, before = scrape_until(url, lambda p: value(p, "trigctl_trigger_enabled", trigger="ticker") == 0
                                 and value(p, "trigctl_trigger_enabled", trigger="broken") == 0, what="both disabled")
        assert first.stop() == 0
    finally:
        first.cleanup()
    stored_errors = cli(project, "list", "--json")
    errors = {t["name"]: t["consecutive_errors"] for t in json.loads(stored_errors.stdout)}
    second = RunProc(project, "triggers.yaml", "--metrics", "127.0.0.1:0", "--grace", "5s")
    try:
        url = served_url(second)
        _, parsed = scrape_until(url, lambda p: value(p, "trigctl_trigger_consecutive_errors", trigger="broken") > 0,
                                 what="broken's stored error streak")
        assert value(parsed, "trigctl_trigger_consecutive_errors", trigger="broken") == errors["broken"] >= 2
        success = value(parsed, "trigctl_trigger_last_success_timestamp_seconds", trigger="ticker")
        assert success >= value(before, "trigctl_trigger_last_success_timestamp_seconds", trigger="ticker") - 1
        assert value(parsed, "trigctl_trigger_last_success_timestamp_seconds", trigger="broken") == 0
        assert value(parsed, "trigctl_trigger_enabled", trigger="ticker") == 0
        # Counters are this process's: they start at zero.
        assert value(parsed, "trigctl_polls_total", trigger="ticker", result="fired") == 0
    finally:
        second.stop()
        second.cleanup()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("[::1]", marks=pytest.mark.skipif(
    not _ipv6_loopback(), reason="no IPv6 loopback here"))])
def test_run_once_serves_while_it_runs_and_frees_the_port(project, host):
    (project / "gate").touch()
    with socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        port = s.getsockname()[1]
    r = cli(project, "run", "--once", "--metrics", f"{host}:{port}")
    assert r.returncode == 1, r.stderr  # broken's poll errored
    assert f"serving Prometheus metrics at http://{host}:{port}/metrics" in r.stderr
    with socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET) as s:
        s.bind((host.strip("[]"), port))  # the server is closed with the run


@pytest.mark.slow
def test_run_trigger_serves_only_those_triggers(project):
    proc = RunProc(project, "triggers.yaml", "--trigger", "broken", "--metrics", "127.0.0.1:0")
    try:
        _, parsed = scrape_until(served_url(proc), lambda p: (value(p, "trigctl_polls_total", trigger="broken",
                                                                      result="error") or 0) >= 1,
                                 what="a counted poll of broken")
        assert proc.stop() == 0, proc.stderr
    finally:
        proc.cleanup()
    assert {dict(labels)["trigger"] for _, labels in parsed if "trigger" in dict(labels)} == {"broken"}


def test_before_any_event_every_series_is_zero(project):
    metrics = Metrics(load_config(project / "triggers.yaml"))
    from prometheus_client import generate_latest

    parsed = samples(generate_latest(metrics.registry).decode())
    polls = {dict(k[1])["trigger"] + "/" + dict(k[1])["result"]: v for k, v in parsed.items()
             if k[0] == "trigctl_polls_total"}
    assert polls == {f"{t}/{r}": 0 for t in ("ticker", "broken", "paused") for r in RESULTS}
    runs = {k: v for k, v in parsed.items() if k[0] == "trigctl_runs_total"}
    assert len(runs) == 2 * len(RUN_STATUSES) and set(runs.values()) == {0}
    assert value(parsed, "trigctl_trigger_enabled", trigger="paused") == 0
    assert value(parsed, "trigctl_poll_duration_seconds_count") == 0
    # The registry is private: no process_/python_ collectors of prometheus_client's global one.
    assert all(k[0].startswith("trigctl_") for k in parsed)


def _comparable(parsed: dict) -> dict:
    return {k: ("NaN" if v != v else v) for k, v in parsed.items()}


def test_the_served_text_is_prometheus_clients_rendering_of_the_same_samples(project):
    """/metrics is written by Metrics.exposition (fast); it must say exactly what prometheus_client
    renders from the collector, sample for sample, in the same order, whatever the numbers."""
    from prometheus_client import generate_latest

    from trigctl import events as ev

    metrics = Metrics(load_config(project / "triggers.yaml"))
    for i, (outcome, duration) in enumerate([("fired", 0.0004), ("skipped", 0.003), ("error", 12.5),
                                             ("duplicate", 400.0), ("skipped", -0.5), ("fired", 0.001)]):
        trigger = ("ticker", "broken", "paused")[i % 3]
        metrics._poll_completed(ev.PollCompleted(trigger, 1000.0 + i, 1000.0 + i + 0.01 * i, duration, outcome))
    metrics._poll_failed(ev.PollFailed("broken", "boom", 7))
    metrics._run_finished(ev.RunFinished(1, "ticker", "handle", "succeeded", 0.5, None))
    metrics._run_finished(ev.RunFinished(2, "ticker", "gone-by-reload", "failed", 0.5, "x"))
    metrics._run_interrupted(ev.RunInterrupted("ticker", 3, "marked", workflow="alert"))

    fast = metrics.exposition()
    reference = generate_latest(metrics.registry).decode()
    assert list(_comparable(samples(fast)).items()) == list(_comparable(samples(reference)).items())
    parsed = samples(fast)
    assert value(parsed, "trigctl_runs_total", workflow="gone-by-reload", status="failed") == 1
    assert value(parsed, "trigctl_runs_total", workflow="gone-by-reload", status="succeeded") == 0
    assert value(parsed, "trigctl_runs_total", workflow="alert", status="interrupted") == 1
    assert value(parsed, "trigctl_trigger_consecutive_errors", trigger="broken") == 7
    assert value(parsed, "trigctl_poll_duration_seconds_bucket", le="0.001") == 3  # 0.0004, the clamped -0.5, 0.001
    assert value(parsed, "trigctl_poll_duration_seconds_bucket", le="300.0") == 5
    assert value(parsed, "trigctl_poll_duration_seconds_count") == 6
    assert value(parsed, "trigctl_poll_lateness_seconds_bucket", le="0.05") == 6
    if PROMTOOL is not None:
        check = promtool("check", "metrics", stdin=fast)
        assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr


# ------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("address, says", [
    ("127.0.0.1", "expected HOST:PORT"),
    ("9464", "expected HOST:PORT"),
    ("127.0.0.1:99999", "port must be a number"),
    ("127.0.0.1:http", "port must be a number"),
    ("no-such-host.invalid:9464", "cannot listen on"),
    ("[not-v6]:9464", "not an IPv6 address"),
    ("", "expected HOST:PORT"),
])
def test_a_bad_metrics_value_is_one_line_and_exit_2_with_nothing_started(project, address, says):
    r = cli(project, "run", "--metrics", address)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    assert not (project / ".trigctl").exists()  # no state opened, no loop started


def test_a_port_in_use_is_one_line_and_exit_2(project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli(project, "run", "--metrics", f"127.0.0.1:{port}")
    assert r.returncode == 2
    assert r.stderr.startswith(f"trigctl: --metrics '127.0.0.1:{port}': cannot listen on 127.0.0.1:{port}: ")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (project / ".trigctl").exists()


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("localhost:0", ("localhost", 0)),
    (":9464", ("0.0.0.0", 9464)),
    ("[::1]:9464", ("::1", 9464)),
    (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
])
def test_addresses(text, expected):
    assert parse_address(text) == expected


# ---------------------------------------------------------------------------------------- promtool


@needs_promtool
@pytest.mark.slow
def test_promtool_accepts_the_scrape_of_a_running_process(running):
    proc, url = running
    text, _ = scrape_until(url, lambda p: (value(p, "trigctl_polls_total", trigger="broken", result="error") or 0) >= 1,
                           what="a first error")
    check = promtool("check", "metrics", stdin=text)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == "", "promtool lint findings: " + check.stdout + check.stderr


def alert_rules_block() -> str:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    blocks = re.findall(r"```yaml\n(groups:.*?)```", doc, re.S)
    assert len(blocks) == 1, "docs/metrics.md has one ```yaml block of alert rules (groups: ...)"
    return blocks[0]


def test_the_documented_alert_rules_use_only_metrics_that_exist():
    rules = alert_rules_block()
    used = set(re.findall(r"\btrigctl_[a-z_]+", rules))
    known = {"trigctl_polls_total", "trigctl_runs_total", "trigctl_runs_active", "trigctl_queue_depth",
             "trigctl_trigger_consecutive_errors", "trigctl_trigger_enabled",
             "trigctl_trigger_last_success_timestamp_seconds", "trigctl_build_info",
             *(f"{h}_{s}" for h in ("trigctl_poll_duration_seconds", "trigctl_poll_lateness_seconds")
               for s in ("bucket", "sum", "count"))}
    assert used and used <= known, used - known


@needs_promtool
def test_promtool_accepts_the_documented_alert_rules(tmp_path):
    path = tmp_path / "trigctl-rules.yml"
    path.write_text(alert_rules_block())
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


@needs_promtool
def test_the_documented_alerts_fire_on_the_series_trigctl_serves(tmp_path):
    """promtool's rule unit tests: the alerts fire (and stay quiet) on series shaped as trigctl
    serves them."""
    (tmp_path / "trigctl-rules.yml").write_text(alert_rules_block())
    tests = (ROOT / "docs" / "metrics.md").read_text()
    block = re.findall(r"```yaml promtool-test\n(.*?)```", tests, re.S)
    assert len(block) == 1, "docs/metrics.md has one ```yaml promtool-test block"
    (tmp_path / "trigctl-rules.test.yml").write_text(block[0])
    check = promtool("test", "rules", str(tmp_path / "trigctl-rules.test.yml"))
    assert check.returncode == 0, check.stdout + check.stderr


# ------------------------------------------------------------------------------ a real Prometheus


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus server is not installed (Debian: apt-get install prometheus)")
@pytest.mark.slow
def test_a_real_prometheus_scrapes_it(running, tmp_path):
    proc, url = running
    target = url.removeprefix("http://").removesuffix("/metrics")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        web_port = s.getsockname()[1]
    (tmp_path / "prometheus.yml").write_text(textwrap.dedent(f"""
        global: {{scrape_interval: 500ms, evaluation_interval: 500ms}}
        scrape_configs:
          - job_name: trigctl
            static_configs: [{{targets: ["{target}"]}}]
        """))
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))  # noqa: SIM115
    try:
        query = f"http://127.0.0.1:{web_port}/api/v1/query?query="
        deadline = time.monotonic() + 60
        result: list = []
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(query + "trigctl_polls_total%7Bresult%3D%22error%22%7D", timeout=5) as r:
                    result = json.load(r)["data"]["result"]
            except OSError:
                result = []
            if any(sample["metric"].get("trigger") == "broken" and float(sample["value"][1]) >= 1 for sample in result):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("Prometheus never stored trigctl_polls_total: " + (tmp_path / "prometheus.log").read_text()[-3000:])
        with urllib.request.urlopen(query + "up%7Bjob%3D%22trigctl%22%7D", timeout=5) as r:
            up = json.load(r)["data"]["result"]
        assert [float(s["value"][1]) for s in up] == [1.0]
        assert {s["metric"]["trigger"] for s in result} == {"ticker", "broken", "paused"}
    finally:
        prom.send_signal(signal.SIGTERM)
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(10)
