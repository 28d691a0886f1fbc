from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from trigctl.cli import main
from trigctl.config import load_config
from trigctl.store.sqlite import SQLiteStore

HERE = Path(__file__).parent

# The config cache (trigctl/config/cache.py) of the tests' big YAML files: in a directory of this
# session, not the user's ~/.cache (subprocesses inherit it).
if not os.environ.get("TRIGCTL_CACHE_DIR"):
    import atexit
    import shutil
    import tempfile

    os.environ["TRIGCTL_CACHE_DIR"] = _CACHE = tempfile.mkdtemp(prefix="trigctl-test-cache-")
    atexit.register(shutil.rmtree, _CACHE, True)


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def write_yaml(tmp_path):
    def write(text: str, name: str = "triggers.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip("\n"))
        return p

    return write


@pytest.fixture
def callables(tmp_path):
    """A module of trigger callables beside the YAML (the YAML's directory is on sys.path)."""

    def write(source: str, name: str = "mytriggers") -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        return name

    yield write


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIGCTL_CONFIG", raising=False)
    monkeypatch.delenv("TRIGCTL_STATE", raising=False)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)

    return invoke


def cli_json(cli, *args):
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def open_state(config_path: Path) -> SQLiteStore:
    return SQLiteStore(load_config(config_path).state_location())


def trigctl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trigctl", *args]


def run_trigctl(*args: str, cwd: Path, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(trigctl_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.02, message: str = "condition"):
    """Wait on a condition with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


# --------------------------------------------------------------------------- PostgreSQL (issue 11)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server on 127.0.0.1 for the session (tests/pg.py); skips, saying
    why, where PostgreSQL or psycopg is not installed."""
    from pg import Cluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests: {reason}")
    cluster = Cluster()
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a fresh, empty database of its own for this test."""
    return pg_cluster.new_database()


@pytest.fixture
def fleet(tmp_path, pg_url, pg_cluster):
    """`trigctl run` processes on one fresh PostgreSQL database (tests/pg.py: Fleet), stopped at the end."""
    from pg import Fleet

    f = Fleet(tmp_path, pg_url, pg_cluster)
    yield f
    f.cleanup()
