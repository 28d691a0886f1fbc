"""The `file` trigger: real files in tmp_path, polls with explicit `now`, a real watchdog observer."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from watchdog.events import FileClosedEvent

from trigctl.config import TriggerConfig
from trigctl.triggers.base import PollContext, PollError, PollOutcome, trigger_types
from trigctl.triggers.file import FIRES_PER_POLL, INIT_KEY, FileTrigger, compile_patterns

ROOT = Path(__file__).resolve().parent.parent


def make(tmp_path: Path, **options) -> FileTrigger:
    options.setdefault("path", "inbox")
    tc = TriggerConfig(name="t", type="file", workflow="w", options=options)
    return trigger_types()["file"](tc, tmp_path)


def ctx(now: float, state: dict | None = None) -> PollContext:
    return PollContext(due_at=now, now=now, cursor=None, state=state if state is not None else {}, timeout=10)


def apply(state: dict, out: PollOutcome) -> dict:
    """What the scheduler does with state_updates after recording the fires."""
    for k, v in out.applied_state().items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    return state


def put(path: Path, data: bytes = b"x", mtime: float | None = None) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return os.stat(path).st_mtime


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    d = tmp_path / "inbox"
    d.mkdir()
    return d


# ------------------------------------------------------------------------------------ patterns


@pytest.mark.parametrize(
    "pattern, path, expected",
    [
        ("*", "a.csv", True),
        ("*", ".hidden", False),
        (".*", ".hidden", True),
        ("*.csv", "a.csv", True),
        ("*.csv", "a.CSV", False),
        ("*.csv", "sub/a.csv", False),
        ("**/*.csv", "a.csv", True),
        ("**/*.csv", "x/y/a.csv", True),
        ("**/*.csv", ".git/a.csv", False),
        ("sub/*.csv", "sub/a.csv", True),
        ("sub/**", "sub/x/y.txt", True),
        ("report-[0-9][0-9].txt", "report-07.txt", True),
        ("report-[!0-9]*", "report-07.txt", False),
        ("data?.json", "data1.json", True),
        ("a[b", "a[b", True),
        ("./*.csv", "a.csv", True),
    ],
)
def test_pattern(pattern, path, expected):
    assert bool(compile_patterns(pattern).fullmatch(path)) is expected


def test_pattern_list_matches_any():
    m = compile_patterns(["*.csv", "*.json"]).fullmatch
    assert m("a.csv") and m("b.json") and not m("c.txt")


_names = st.text(alphabet="ab.-x_", min_size=1, max_size=8).filter(lambda s: not s.startswith("."))
_globs = st.text(alphabet="ab.*?x[]!-", min_size=1, max_size=8).filter(lambda s: not s.startswith("."))


@settings(max_examples=300, deadline=None)
@given(_globs, _names)
def test_pattern_agrees_with_fnmatch_within_one_component(pattern, name):
    """Inside one path component (no leading dot), a glob means what fnmatch says it means."""
    assert bool(compile_patterns(pattern).fullmatch(name)) == fnmatch.fnmatchcase(name, pattern)


# ------------------------------------------------------------------------------------- firing


def test_new_file_fires_once_settled_with_its_context(tmp_path, inbox):
    trig = make(tmp_path, settle="1s")
    m = put(inbox / "a.csv", b"hello")
    state: dict = {}
    out = trig.poll(ctx(m + 0.1, state))
    assert out.fires == [] and "settling" in out.skip_reason
    apply(state, out)
    assert trig.poll(ctx(m + 1.0, state)).fires == []  # seen at +0.1: not yet stable for 1s
    out = trig.poll(ctx(m + 1.2, state))
    path = str(inbox / "a.csv")
    assert out.fires == [{"path": path, "name": "a.csv", "size": 5, "mtime": m}]
    assert out.applied_state()[path] == [5, m]
    apply(state, out)
    # A file that stays put fires once.
    assert trig.poll(ctx(m + 100, state)).fires == []


def test_a_file_still_being_written_does_not_fire(tmp_path, inbox):
    trig = make(tmp_path, settle="1s")
    f = inbox / "big.bin"
    t = 1_000_000.0
    put(f, b"a" * 10, mtime=t)
    state: dict = {}
    assert apply(state, trig.poll(ctx(t, state))).get(str(f)) is None
    put(f, b"a" * 20, mtime=t + 0.9)  # grew: the settle clock restarts
    assert trig.poll(ctx(t + 1.05, state)).fires == []
    put(f, b"a" * 30, mtime=t + 1.5)
    assert trig.poll(ctx(t + 2.0, state)).fires == []
    assert trig.poll(ctx(t + 2.9, state)).fires == []  # stable since 2.0, not for 1s yet
    out = trig.poll(ctx(t + 3.01, state))
    assert [(x["size"], x["mtime"]) for x in out.fires] == [(30, t + 1.5)]


def test_an_old_file_is_settled_at_first_sight(tmp_path, inbox):
    """An inbox holds pending work: a file written long ago fires on the very first poll."""
    trig = make(tmp_path, settle="5s")
    m = put(inbox / "old.txt", mtime=time.time() - 3600)
    out = trig.poll(ctx(time.time()))
    assert [f["mtime"] for f in out.fires] == [m]


def test_settle_zero_fires_at_once(tmp_path, inbox):
    trig = make(tmp_path, settle=0)
    m = put(inbox / "a")
    assert len(trig.poll(ctx(m)).fires) == 1


def test_rewritten_file_fires_again_and_gone_file_is_forgotten(tmp_path, inbox):
    trig = make(tmp_path, settle="1s")
    f = inbox / "a.txt"
    m1 = put(f, b"one", mtime=1_000_000)
    state: dict = {}
    out = trig.poll(ctx(2_000_000, state))
    assert len(out.fires) == 1
    apply(state, out)
    m2 = put(f, b"two!", mtime=1_000_100)  # rewritten: new size and mtime
    out = trig.poll(ctx(2_000_001, state))
    assert [(x["size"], x["mtime"]) for x in out.fires] == [(4, m2)]
    assert m2 != m1
    apply(state, out)
    os.utime(f, (1_000_200, 1_000_200))  # same size, new mtime (touch): fires again too
    out = trig.poll(ctx(2_000_002, state))
    assert len(out.fires) == 1
    apply(state, out)
    f.unlink()
    out = trig.poll(ctx(2_000_003, state))
    assert out.fires == [] and out.state_updates == {str(f): None}
    apply(state, out)
    assert str(f) not in state
    put(f, b"two!", mtime=1_000_100)  # back with an old size and mtime: it is new again
    assert len(trig.poll(ctx(2_000_004, state)).fires) == 1


def test_fires_oldest_first(tmp_path, inbox):
    trig = make(tmp_path)
    put(inbox / "b", mtime=1000)
    put(inbox / "a", mtime=2000)
    put(inbox / "c", mtime=1000)
    assert [f["name"] for f in trig.poll(ctx(10_000)).fires] == ["b", "c", "a"]


def test_ignore_existing(tmp_path, inbox):
    trig = make(tmp_path, ignore_existing=True)
    old = put(inbox / "old.csv", mtime=1000)
    state: dict = {}
    out = trig.poll(ctx(5000, state))
    assert out.fires == []
    assert out.state_updates == {str(inbox / "old.csv"): [1, old], INIT_KEY: True}
    apply(state, out)
    put(inbox / "new.csv", mtime=4000)
    out = trig.poll(ctx(5001, state))
    assert [f["name"] for f in out.fires] == ["new.csv"]
    # A restart (a new instance, the same stored state) does not ignore files again.
    apply(state, out)
    put(inbox / "newer.csv", mtime=4001)
    assert [f["name"] for f in make(tmp_path, ignore_existing=True).poll(ctx(5002, state)).fires] == ["newer.csv"]


def test_first_start_fires_existing_files_by_default(tmp_path, inbox):
    put(inbox / "pending.csv", mtime=1000)
    out = make(tmp_path).poll(ctx(5000))
    assert [f["name"] for f in out.fires] == ["pending.csv"]
    assert out.state_updates[INIT_KEY] is True


def test_pattern_and_recursive(tmp_path, inbox):
    for rel in ("a.csv", "a.txt", "sub/b.csv", "sub/deep/c.csv", ".hidden.csv"):
        put(inbox / rel, mtime=1000)
    names = lambda **o: sorted(f["path"][len(str(inbox)) + 1:] for f in make(tmp_path, **o).poll(ctx(5000)).fires)  # noqa: E731
    assert names(pattern="*.csv") == ["a.csv"]
    assert names(pattern="*.csv", recursive=True) == ["a.csv"]  # `*` stays in one directory
    assert names(pattern="**/*.csv", recursive=True) == ["a.csv", "sub/b.csv", "sub/deep/c.csv"]
    assert names(pattern="sub/*.csv", recursive=True) == ["sub/b.csv"]
    assert names(pattern="**/*.csv") == ["a.csv"]  # without recursive, only the top directory is read
    assert names() == ["a.csv", "a.txt"]  # default `*`: files, not directories, not dotfiles


def test_symlinked_directories_are_not_followed(tmp_path, inbox):
    put(tmp_path / "elsewhere" / "x.csv", mtime=1000)
    (inbox / "link").symlink_to(tmp_path / "elsewhere")
    (inbox / "loop").symlink_to(inbox)
    assert make(tmp_path, pattern="**/*", recursive=True).poll(ctx(5000)).fires == []


def test_relative_and_absolute_paths(tmp_path, inbox):
    assert make(tmp_path).root == str(inbox)
    assert make(tmp_path, path="./inbox/").root == str(inbox)
    assert make(Path("/somewhere/else"), path=str(inbox)).root == str(inbox)


def test_missing_directory_is_a_poll_error(tmp_path):
    trig = make(tmp_path, path="nope/inbox")
    with pytest.raises(PollError, match=rf"^directory {tmp_path}/nope/inbox does not exist$"):
        trig.poll(ctx(1000))
    (tmp_path / "nope" / "inbox").mkdir(parents=True)
    assert trig.poll(ctx(1001)).fires == []


def test_a_file_as_path_is_a_poll_error(tmp_path):
    put(tmp_path / "inbox")
    with pytest.raises(PollError, match="is not a directory"):
        make(tmp_path).poll(ctx(1000))


def test_batch(tmp_path, inbox):
    trig = make(tmp_path, batch=True)
    assert trig.default_dedupe_key is None  # the whole context
    assert make(tmp_path).default_dedupe_key == ("path", "size", "mtime")
    put(inbox / "a", b"1", mtime=1000)
    put(inbox / "b", b"22", mtime=1001)
    state: dict = {}
    out = trig.poll(ctx(5000, state))
    assert len(out.fires) == 1
    fire = out.fires[0]
    assert fire["paths"] == [str(inbox / "a"), str(inbox / "b")]
    assert [(f["name"], f["size"]) for f in fire["files"]] == [("a", 1), ("b", 2)]
    apply(state, out)
    assert trig.poll(ctx(5001, state)).fires == []
    put(inbox / "c", mtime=1002)
    assert trig.poll(ctx(5002, state)).fires[0]["paths"] == [str(inbox / "c")]


def test_a_huge_batch_is_split_below_the_context_limit(tmp_path, inbox, monkeypatch):
    import trigctl.triggers.file as filemod

    monkeypatch.setattr(filemod, "BATCH_BUDGET", 2000)
    for i in range(30):
        put(inbox / f"file-{i:03d}.dat", mtime=1000 + i)
    fires = make(tmp_path, batch=True).poll(ctx(5000)).fires
    assert len(fires) > 1
    assert all(len(json.dumps(f)) <= 2000 for f in fires)
    assert sum(len(f["paths"]) for f in fires) == 30


def test_check(tmp_path):
    check = trigger_types()["file"].check
    assert check({"path": "inbox"}, tmp_path) == []
    put(tmp_path / "afile")
    assert check({"path": "afile"}, tmp_path) == [(("path",), f"{tmp_path}/afile is not a directory")]
    assert check({"path": "x", "pattern": ["*.csv", "../*.csv"]}, tmp_path)[0][0] == ("pattern", 1)
    assert check({"path": "x", "pattern": "/abs/*.csv"}, tmp_path)[0][0] == ("pattern",)


def test_many_files_poll_in_linear_time(tmp_path, inbox):
    n = 2_000
    for i in range(n):
        os.close(os.open(inbox / f"f{i:05d}.csv", os.O_CREAT | os.O_WRONLY, 0o644))
    os.utime(inbox / "f00000.csv", (1000, 1000))
    trig = make(tmp_path, pattern="*.csv", settle=0)
    state: dict = {}
    t0 = time.perf_counter()
    fired = 0
    for _ in range(n // FIRES_PER_POLL + 1):  # the first pass is spread over polls (a share each)
        out = trig.poll(ctx(time.time() + 10, state))
        assert len(out.fires) <= FIRES_PER_POLL
        fired += len(out.fires)
        apply(state, out)
    first = time.perf_counter() - t0
    assert fired == n
    t0 = time.perf_counter()
    out = trig.poll(ctx(time.time() + 11, state))
    again = time.perf_counter() - t0
    assert out.fires == [] and out.state_updates == {}
    assert first < 2 and again < 1, (first, again)  # quadratic work would show here


# ----------------------------------------------------------------------------------- watching


class Waker:
    def __init__(self):
        self.event = threading.Event()
        self.count = 0

    def __call__(self):
        self.count += 1
        self.event.set()

    def wait(self, timeout: float = 5.0) -> bool:
        ok = self.event.wait(timeout)
        self.event.clear()
        return ok


def test_a_wake_taken_by_a_backlog_share_still_leads_to_a_scan(tmp_path, inbox):
    # More files than one poll fires: the rest is a backlog, worked a share a poll without scanning.
    # A file that arrives meanwhile wakes the trigger, but that wake is spent on a share: when the
    # backlog ends, the trigger asks for a scan at once (it used to wait for the next interval).
    for i in range(FIRES_PER_POLL + 50):
        put(inbox / f"f{i:05d}.csv")
    trig = make(tmp_path, pattern="*.csv", settle=0, watch=False)
    wake = Waker()
    trig.start(wake)
    try:
        state: dict = {}
        out = trig.poll(ctx(time.time() + 10, state))
        assert len(out.fires) == FIRES_PER_POLL and wake.count == 1  # the next share asked for
        apply(state, out)
        late = inbox / "late.csv"
        put(late)
        trig._on_event(FileClosedEvent(str(late)))  # what the watch thread does for its close
        assert wake.count == 2
        out = trig.poll(ctx(time.time() + 10, state))  # the last share: the wake went to it
        assert len(out.fires) == 50
        apply(state, out)
        assert wake.count == 3, "the end of the backlog did not ask for a scan"
        assert [f["name"] for f in trig.poll(ctx(time.time() + 10, state)).fires] == ["late.csv"]
        # With nothing new meanwhile, the end of a backlog asks for nothing more.
        for i in range(FIRES_PER_POLL + 1):
            put(inbox / f"g{i:05d}.csv")
        before = wake.count
        out = trig.poll(ctx(time.time() + 10, state))
        apply(state, out)
        assert wake.count == before + 1
        trig.poll(ctx(time.time() + 10, state))
        assert wake.count == before + 1
        # A file closed while the big scan itself runs (after it listed the directory) is counted
        # against that scan: the backlog's end asks for another.
        for i in range(FIRES_PER_POLL + 1):
            put(inbox / f"h{i:05d}.csv")
        during = inbox / "during.csv"
        scan = trig.scan

        def scan_then_a_close():
            files = scan()
            put(during)
            trig._on_event(FileClosedEvent(str(during)))
            return files

        trig.scan = scan_then_a_close  # type: ignore[method-assign]
        out = trig.poll(ctx(time.time() + 10, state))
        trig.scan = scan  # type: ignore[method-assign]
        assert len(out.fires) == FIRES_PER_POLL and "during.csv" not in [f["name"] for f in out.fires]
        apply(state, out)
        before = wake.count
        apply(state, trig.poll(ctx(time.time() + 10, state)))  # the last share
        assert wake.count == before + 1, "a close during the scan was not followed by a scan"
        assert [f["name"] for f in trig.poll(ctx(time.time() + 10, state)).fires] == ["during.csv"]
        # A settle timer that goes off during a share (it calls _wake_now) counts the same way.
        for i in range(FIRES_PER_POLL + 1):
            put(inbox / f"k{i:05d}.csv")
        apply(state, trig.poll(ctx(time.time() + 10, state)))
        trig._wake_now()
        before = wake.count
        apply(state, trig.poll(ctx(time.time() + 10, state)))
        assert wake.count == before + 1, "a settle timer's wake during the backlog was lost"
    finally:
        trig.close()


def test_watch_event_wakes_the_trigger_and_close_stops_the_watch(tmp_path, inbox):
    trig = make(tmp_path, pattern="*.csv")
    wake = Waker()
    trig.start(wake)
    try:
        observer = trig._observer
        assert observer is not None and observer.is_alive()
        put(inbox / "ignored.txt")  # does not match the pattern: no wake for it
        put(inbox / "a.csv")
        assert wake.wait(5)
    finally:
        trig.close()
    assert trig._observer is None and not observer.is_alive()


def test_close_after_write_ends_settle_early(tmp_path, inbox):
    trig = make(tmp_path, settle="1h")
    wake = Waker()
    trig.start(wake)
    try:
        f = inbox / "done.csv"
        with open(f, "wb") as fh:
            fh.write(b"complete")
        m = os.stat(f).st_mtime
        deadline = time.monotonic() + 5
        fires: list = []
        while not fires:  # each wake (created, modified, closed) is followed by a poll, as in the loop
            assert wake.wait(max(0.0, deadline - time.monotonic())), "no close event"
            fires = trig.poll(ctx(m + 0.01)).fires  # long before the 1h settle
        assert fires[0]["size"] == 8
    finally:
        trig.close()


def test_unsettled_file_is_looked_at_again_when_it_would_have_settled(tmp_path, inbox):
    trig = make(tmp_path, settle="300ms", watch=False)
    wake = Waker()
    trig.start(wake)
    try:
        put(inbox / "a")
        now = time.time()
        t0 = time.monotonic()
        out = trig.poll(ctx(now))
        assert out.fires == []
        assert wake.wait(5), "no re-poll was requested"
        assert time.monotonic() - t0 >= 0.25  # not before it would have settled
        assert len(trig.poll(ctx(time.time())).fires) == 1
    finally:
        trig.close()
    assert trig._timer is None


def test_watch_of_a_missing_directory_warns_once_and_starts_when_it_appears(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("trigctl"), "propagate", True)  # `run` in another test may turn it off
    trig = make(tmp_path)
    wake = Waker()
    with caplog.at_level(logging.WARNING, logger="trigctl.triggers.file"):
        trig.start(wake)
        for now in (1000, 1001):
            with pytest.raises(PollError, match="does not exist"):
                trig.poll(ctx(now))
    assert len([r for r in caplog.records if "cannot watch" in r.getMessage()]) == 1
    try:
        (tmp_path / "inbox").mkdir()
        assert trig.poll(ctx(1002)).fires == []
        assert trig._observer is not None
        put(tmp_path / "inbox" / "x")
        assert wake.wait(5)
    finally:
        trig.close()


def test_a_replaced_directory_is_watched_again(tmp_path, inbox):
    trig = make(tmp_path)
    wake = Waker()
    trig.start(wake)
    try:
        first = trig._observer
        inbox.rmdir()
        with pytest.raises(PollError, match="does not exist"):
            trig.poll(ctx(1000))
        inbox.mkdir()
        wake.wait(0)  # forget the wakes of the removal
        assert trig.poll(ctx(1001)).fires == []
        assert trig._observer is not None and trig._observer is not first and not first.is_alive()
        put(inbox / "x")
        assert wake.wait(5)
    finally:
        trig.close()


# --------------------------------------------------------------------------------- end to end


def test_end_to_end_through_the_cli(tmp_path, run_yaml_env):
    (tmp_path / "triggers.yaml").write_text(
        "version: 1\n"
        "workflows:\n"
        "  w:\n"
        "    tasks:\n"
        "      - run: 'echo \"$TRIGCTL_NAME\" >> seen.txt'\n"
        "triggers:\n"
        "  - name: inbox\n"
        "    type: file\n"
        "    path: inbox\n"
        "    pattern: '*.csv'\n"
        "    workflow: w\n"
    )
    put(tmp_path / "inbox" / "report.csv", b"a,b\n", mtime=time.time() - 60)
    put(tmp_path / "inbox" / "notes.txt", b"no", mtime=time.time() - 60)
    r = run_yaml_env("run", "--once", "triggers.yaml")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "seen.txt").read_text() == "report.csv\n"
    r = run_yaml_env("history", "--json")
    assert r.returncode == 0, r.stderr
    hist = json.loads(r.stdout)
    assert [(h["trigger_name"], h["kind"], h["status"]) for h in hist] == [("inbox", "fire", "succeeded")]
    assert hist[0]["context"]["path"] == str(tmp_path / "inbox" / "report.csv")
    # Run again: the file stayed put, so nothing fires.
    r = run_yaml_env("run", "--once", "triggers.yaml")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "seen.txt").read_text() == "report.csv\n"


@pytest.fixture
def run_yaml_env(tmp_path):
    from conftest import run_trigctl

    def run(*args: str):
        return run_trigctl(*args, cwd=tmp_path, env={"TRIGCTL_CONFIG": str(tmp_path / "triggers.yaml")})

    return run


@pytest.mark.parametrize("name", ["file_watcher.yaml"])
def test_example_validates(name):
    from conftest import run_trigctl

    r = run_trigctl("validate", str(ROOT / "examples" / name), cwd=ROOT)
    assert r.returncode == 0, r.stderr + r.stdout
