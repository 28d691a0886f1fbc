"""Other libraries' log records and Python warnings come out as trigctl log lines while `run` runs,
rate-limited, and the logging setup is as it was afterwards."""

from __future__ import annotations

import json
import logging
import warnings

from trigctl.observe.logs import EventFormatter, ForeignHandler, foreign_logs


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _record(name: str, msg: str, *args, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeats_of_one_template_are_written_once_per_window_then_counted(clock):
    target = Collect()
    h = ForeignHandler(target, clock=clock)
    for i in range(1000):
        h.handle(_record("watchdog.observers.inotify", "Inotify queue overflowed; below %r", f"/d{i}"))
    assert [r.getMessage() for r in target.records] == [
        "watchdog.observers.inotify: Inotify queue overflowed; below '/d0'"]
    clock.advance(ForeignHandler.WINDOW)
    h.handle(_record("watchdog.observers.inotify", "Inotify queue overflowed; below %r", "/x"))
    assert target.records[-1].getMessage() == ("watchdog.observers.inotify: Inotify queue overflowed; below '/x' "
                                               "(999 more like it in the last 60s not shown)")


def test_a_flood_of_different_messages_is_bounded_by_the_budget(clock):
    target = Collect()
    h = ForeignHandler(target, clock=clock)
    for i in range(10_000):
        h.handle(_record("chatty", f"message {i}"))
    assert len(target.records) == ForeignHandler.BUDGET
    clock.advance(ForeignHandler.WINDOW)
    h.handle(_record("chatty", "later"))
    assert target.records[-1].getMessage() == (
        f"chatty: later ({10_000 - ForeignHandler.BUDGET} other library messages not shown "
        f"(over {ForeignHandler.BUDGET} in 60s))")


def test_info_and_debug_records_are_not_written(clock):
    target = Collect()
    h = ForeignHandler(target, clock=clock)
    logger = logging.getLogger("some.lib.quiet")
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("hello")
        logger.debug("hello")
        logger.error("bad %s", "thing")
    finally:
        logger.removeHandler(h)
        logger.setLevel(logging.NOTSET)
    assert [r.getMessage() for r in target.records] == ["some.lib.quiet: bad thing"]


def test_foreign_logs_routes_the_root_logger_last_resort_and_warnings_and_restores_them():
    target = Collect()
    root = logging.getLogger()
    before = (root.handlers[:], logging.lastResort, warnings.showwarning)
    lonely = logging.getLogger("lonely.lib")
    lonely.propagate = False
    try:
        with foreign_logs(target), warnings.catch_warnings():
            logging.getLogger("watchdog.observers.inotify").warning("Inotify queue overflowed")
            logging.warning("from the root logger")
            lonely.warning("no handler anywhere")
            warnings.simplefilter("always")
            warnings.warn("careful\nnow", UserWarning, stacklevel=1)
    finally:
        lonely.propagate = True
    messages = [r.getMessage() for r in target.records]
    assert messages[:3] == ["watchdog.observers.inotify: Inotify queue overflowed", "from the root logger",
                            "lonely.lib: no handler anywhere"]
    assert messages[3].startswith("py.warnings: ") and "UserWarning: careful now" in messages[3]
    assert "\n" not in messages[3]
    assert (root.handlers[:], logging.lastResort, warnings.showwarning) == before


def test_json_lines_of_foreign_records_are_the_log_event():
    target = Collect()
    target.setFormatter(EventFormatter("json"))
    out: list[str] = []
    target.emit = lambda record: out.append(target.format(record))  # type: ignore[method-assign]
    with foreign_logs(target):
        logging.getLogger("watchdog.observers.inotify").warning("Inotify queue overflowed; below %r", b"/x")
    (doc,) = [json.loads(line) for line in out]
    assert (doc["event"], doc["level"]) == ("log", "warning")
    assert doc["message"] == "watchdog.observers.inotify: Inotify queue overflowed; below b'/x'"


def test_run_writes_library_warnings_as_json_lines_and_restores_logging(cli, write_yaml, callables):
    callables("""
        import logging, warnings
        def noisy():
            for i in range(500):
                logging.getLogger("somelib").warning("queue overflowed %d", i)
            logging.warning("root says hi")
            warnings.warn("a library warning", UserWarning)
            return {"ok": 1}
    """)
    write_yaml("""
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: n, type: python, callable: "mytriggers:noisy", workflow: w}
    """)
    root = logging.getLogger()
    before = (root.handlers[:], logging.lastResort, warnings.showwarning)
    result = cli("run", "--once", "--log-format", "json")
    assert result.exit_code == 0, result.stderr
    docs = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    logs = [d["message"] for d in docs if d["event"] == "log"]
    assert logs.count("somelib: queue overflowed 0") == 1
    assert not any("queue overflowed 1" in m for m in logs)
    assert "root says hi" in logs
    assert any(m.startswith("py.warnings: ") and "a library warning" in m for m in logs)
    assert (root.handlers[:], logging.lastResort, warnings.showwarning) == before
