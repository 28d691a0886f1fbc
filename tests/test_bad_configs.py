"""A corpus of malformed and hostile triggers files: `trigctl validate` refuses every one with exit
code 2 and one `FILE:LINE:COL: ` line per problem on stderr: never a traceback, a hang, a crash or
an exit 0, within bounded time and memory.

tests/bad_configs/*.yaml are plain files named after what they test (badmods/ holds the Python
modules some of them point at); the megabyte-sized ones are written at test time by
:func:`generated`. tests/good_configs/*.yaml are the edge cases that must stay valid (CRLF, BOM...).
Every file runs in-process through the CLI; the hostile ones, the generated ones and a sample of
the rest also run as real `python -m trigctl validate` processes under a 1 GiB address-space limit.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from trigctl.cli import main
from trigctl.config import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES

HERE = Path(__file__).parent
BAD = HERE / "bad_configs"
GOOD = HERE / "good_configs"
CORPUS = sorted(BAD.glob("*.yaml"))
GOOD_FILES = sorted(GOOD.glob("*.yaml"))

CPU_LIMIT = 20  # seconds of CPU per validate process (RLIMIT_CPU: the bound holds however loaded the machine)
TIME_LIMIT = 60.0  # seconds of wall time: a hang (no CPU used) fails here
MEMORY_LIMIT = 1 << 30  # bytes of address space, per validate process

# Always through the real CLI: files that attack the parser, the loader or the process itself.
HOSTILE = {
    "alias_bomb", "alias_bomb_mapping_merge", "alias_depth_chain", "recursive_alias", "undefined_alias",
    "alias_as_key", "binary", "invalid_utf8", "utf16", "python_tag", "python_object_tag_mapping",
    "python_name_tag", "custom_tag", "bad_date_value", "bad_int_tag", "bad_float_tag", "multi_document",
    "python_module_raises_on_import", "python_module_exits_on_import", "python_class_without_poll",
    "python_traversal", "timezone_traversal", "newline_in_duration", "newline_in_trigger_name",
    "newline_in_key", "terminal_escape_in_value", "nul_in_string", "nul_in_run", "url_with_newline",
    "cron_never_due", "duration_absurd", "duration_float_overflow", "tabs_indent", "cron_unquoted_star_slash",
    "empty", "list_at_top", "scalar_at_top", "crlf_bad_interval", "bom_bad_interval", "on_key",
}
SAMPLE_EVERY = 40  # and every 40th other file, so the real CLI sees all kinds

# What some files must say (a substring of stderr): the messages users see for the common traps.
EXPECTED = {
    "empty": "the file is empty",
    "binary": "not a text file",
    "invalid_utf8": "not UTF-8",
    "utf16": "save the file as UTF-8",
    "tabs_indent": "tabs are not allowed",
    "alias_bomb": f"more than {MAX_NODES} values",
    "recursive_alias": "undefined alias",
    "alias_depth_chain": f"deeper than {MAX_DEPTH} levels",
    "python_tag": "could not determine a constructor",
    "multi_document": "remove this `---`",
    "bad_date_value": "cannot read '2024-13-45'",
    "list_at_top": "expected a mapping with `version: 1` at the top, got a list",
    "scalar_at_top": "got a string",
    "version_2": "unsupported version 2",
    "version_string": "write version: 1, unquoted",
    "duplicate_mapping_keys": "duplicate key 'version'",
    "duplicate_trigger_names": "duplicate trigger name 'a' (first at triggers[0])",
    "unknown_top_key": "did you mean 'triggers'?",
    "on_key": "YAML reads an unquoted on/off/yes/no key as a boolean; quote it",
    "yes_as_string_on_interrupt": "quote it",
    "yes_as_string_queue": "quote it",
    "duration_5_sec": '"5 sec" is not a duration',
    "duration_negative": '"-1s" is not a duration',
    "duration_year": '"1y" is not a duration',
    "duration_empty": '"" is not a duration',
    "duration_bool": "expected string or number, got a boolean",
    "duration_absurd": "at most 100 years",
    "cron_6_fields": "is not a 5-field cron expression",
    "cron_minute_61": '"61 * * * *" is not a valid cron expression',
    "cron_unquoted_star_slash": 'quote the value, e.g. cron: "*/5 * * * *"',
    "cron_never_due": "never comes due",
    "timezone_unknown": "is not a known time zone",
    "http_bad_jmespath_expect": "is not a valid JMESPath expression: Incomplete expression",
    "python_unimportable_module": "no module named 'no_such_module_xyz'",
    "python_not_callable": "is not callable",
    "python_module_raises_on_import": "RuntimeError: this module refuses to be imported",
    "python_module_exits_on_import": "the module called sys.exit(0)",
    "python_class_without_poll": "a class without a poll() method",
    "unset_var": "environment variable TRIGCTL_TEST_UNSET_INTERVAL is not set",
    "workflow_no_tasks": "this list is empty",
    "task_two_kinds": "use only one of run, argv, http, call (got run, argv)",
    "task_timeout_zero": "timeout must be greater than 0",
    "allow_concurrent_with_once": "allow_concurrent: true contradicts dedupe: once",
    "schedule_with_interval": "a schedule trigger has no interval",
    "queue_depth_no_above_below": "needs `above` or `below`",
    "http_body_and_json": "use either `body` or `json`, not both",
    "file_without_path": "missing required key 'path'",
    "trigger_name_uppercase": "'Inbox' is not a valid name",
    "trigger_name_spaces": "'my inbox' is not a valid name",
    "newline_in_duration": '"5\\nsec" is not a duration',
    "terminal_escape_in_value": "\\x1b[2J",
    "nul_in_string": "contains a NUL character",
    "url_with_newline": "contains whitespace or control characters",
    "merge_key_list_of_scalars": "`<<` (a merge key) needs a mapping",
}

# jsonschema's own wording: a message that still reads like this was not explained.
JARGON = ("valid under", "should be non-empty", "Additional properties", "nevaluated properties", "does not match '^",
          "Failed validating", "is too long", "has non-unique elements", "None is not")

SCRUBBED_ENV = {k: v for k, v in os.environ.items()
                if not k.startswith(("TRIGCTL_TEST_UNSET", "TRIGCTL_CONFIG", "TRIGCTL_STATE", "TRIGCTL_DEBUG"))}


GENERATED_EXPECTED = {
    "huge": "file too large",
    "many_values": f"more than {MAX_NODES} values",
    "wide_mapping": f"more than {MAX_NODES} values",
    "deep_flow": f"deeper than {MAX_DEPTH} levels",
    "deep_flow_mapping": f"deeper than {MAX_DEPTH} levels",
    "deep_block": f"deeper than {MAX_DEPTH} levels",
    "deep_indent": f"deeper than {MAX_DEPTH} levels",
    "long_scalar": "characters)...",  # the 5 MB value is shortened in the message
    "many_lines_of_comments": ":4000001:10: version: unsupported version 2",
    "many_triggers_with_errors": "triggers[299](t299).interval",
}


def generated(directory: Path, only: str | None = None) -> list[Path]:
    """The big ones, written at test time."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    files["huge"] = "version: 1\n# " + "x" * (MAX_FILE_BYTES + 1) + "\n"
    # Just under the size limit, with values far over the budget.
    files["many_values"] = "version: 1\nworkflows:\n" + "  - 1\n" * ((MAX_FILE_BYTES - 100) // 6)
    files["wide_mapping"] = "version: 1\nx: {" + ", ".join(f"k{i}: {i}" for i in range(MAX_NODES + 10)) + "}\n"
    files["deep_flow"] = "version: 1\nx: " + "[" * 1_000_000 + "]" * 1_000_000 + "\n"
    files["deep_flow_mapping"] = "version: 1\nx: " + "{a: " * 200_000 + "1" + "}" * 200_000 + "\n"
    files["deep_block"] = "version: 1\nx:\n  " + "- " * 1_000_000 + "a\n"
    files["deep_indent"] = "version: 1\n" + "".join(" " * i + f"k{i}:\n" for i in range(2000)) + " " * 2000 + "v\n"
    files["long_scalar"] = 'version: 1\ntriggers:\n  - name: a\n    interval: "' + "5" * 5_000_000 + ' sec"\n'
    files["many_lines_of_comments"] = "#\n" * 4_000_000 + "version: 2\n"
    files["many_triggers_with_errors"] = "version: 1\nworkflows: {wf: {tasks: [{run: x}]}}\ntriggers:\n" + "".join(
        f"  - {{name: t{i}, type: command, run: x, interval: 5 sec, workflow: wf}}\n" for i in range(300))
    paths = []
    for name, text in files.items():
        if only and name != only:
            continue
        p = directory / f"{name}.yaml"
        p.write_text(text)
        paths.append(p)
    return paths


def _limit_resources() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT + 5))  # SIGXCPU, then SIGKILL


def validate_process(path: Path, *extra: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trigctl", "validate", str(path), *extra], capture_output=True,
                          text=True, errors="replace", timeout=TIME_LIMIT, preexec_fn=_limit_resources,
                          env=SCRUBBED_ENV, cwd=cwd or path.parent)


def refusal_problems(shown: str, code: int, stdout: str, stderr: str) -> list[str]:
    """What is wrong with this refusal (empty: nothing)."""
    problems = []
    if code != 2:
        problems.append(f"exit code {code}, expected 2")
    if not stderr.strip():
        problems.append("stderr is empty")
    if "Traceback" in stdout + stderr or "internal error" in stderr:
        problems.append("a traceback or internal error")
    if stdout:
        problems.append(f"stdout is not empty: {stdout[:200]!r}")
    pattern = re.compile(rf"^{re.escape(shown)}:\d+:\d+: \S")
    for line in stderr.splitlines():
        if not pattern.match(line):
            problems.append(f"a line not in FILE:LINE:COL: form: {line[:300]!r}")
        if len(line) > 2000:
            problems.append(f"a line of {len(line)} characters")
    return problems


@pytest.fixture(scope="module")
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key not in SCRUBBED_ENV:
            monkeypatch.delenv(key)


def test_the_corpus_is_big_enough():
    assert len(CORPUS) >= 100, len(CORPUS)
    assert not set(EXPECTED) - {p.stem for p in CORPUS}, "EXPECTED names files that do not exist"
    assert not HOSTILE - {p.stem for p in CORPUS}, "HOSTILE names files that do not exist"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_config_is_refused_with_located_errors(cli, path):
    result = cli("validate", str(path))
    assert not refusal_problems(str(path), result.exit_code, result.stdout, result.stderr), result.stderr
    lines = result.stderr.splitlines()
    for line in lines:
        message = line.split(": ", 1)[1]
        assert not any(j in message for j in JARGON), f"unexplained jsonschema message: {line}"
    assert len(lines) == len(set(lines)), f"a problem reported twice: {result.stderr}"
    if path.stem in EXPECTED:
        assert EXPECTED[path.stem] in result.stderr, result.stderr

    # --json: the same problems, one JSON document on stdout.
    result_json = cli("validate", str(path), "--json")
    assert result_json.exit_code == 2
    doc = json.loads(result_json.stdout)
    assert doc["valid"] is False
    assert [set(e) for e in doc["errors"]] == [{"file", "line", "column", "path", "message"}] * len(doc["errors"])
    shown = [f"{e['file']}:{e['line']}:{e['column']}: " + (f"{e['path']}: " if e["path"] else "") + e["message"]
             for e in doc["errors"]]
    assert shown == lines


@pytest.mark.parametrize("path", GOOD_FILES, ids=[p.stem for p in GOOD_FILES])
def test_edge_case_that_is_valid(cli, path):
    result = cli("validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: ok")


def test_hostile_files_through_the_real_cli(tmp_path):
    """Real processes, 1 GiB of address space and 20 s of CPU each: exit 2 and located errors only."""
    sample = [p for i, p in enumerate(CORPUS) if p.stem in HOSTILE or i % SAMPLE_EVERY == 0]
    files = sample + generated(tmp_path / "generated")

    def check(path: Path) -> tuple[Path, float, list[str]]:
        started = time.monotonic()
        try:
            proc = validate_process(path, cwd=tmp_path)
        except subprocess.TimeoutExpired:
            return path, TIME_LIMIT, [f"still running after {TIME_LIMIT:g}s"]
        problems = refusal_problems(str(path), proc.returncode, proc.stdout, proc.stderr)
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            problems.append(f"used more than {CPU_LIMIT}s of CPU")
        expected = EXPECTED.get(path.stem) or GENERATED_EXPECTED.get(path.stem)
        if expected and expected not in proc.stderr:
            problems.append(f"does not say {expected!r}: {proc.stderr[:300]!r}")
        return path, time.monotonic() - started, problems

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(check, files))
    failures = {p.name: problems for p, _, problems in results if problems}
    assert not failures, json.dumps(failures, indent=1)
    assert not list(tmp_path.glob("pwned*")), "a YAML tag ran code"


def test_many_errors_are_all_reported_once(tmp_path, cli):
    [path] = generated(tmp_path, only="many_triggers_with_errors")
    lines = cli("validate", str(path)).stderr.splitlines()
    assert len(lines) == len(set(lines)) == 300


def test_json_output_of_the_real_cli(tmp_path):
    for name in ("duration_5_sec", "binary", "unset_var_in_header", "duplicate_trigger_names"):
        path = BAD / f"{name}.yaml"
        proc = validate_process(path, "--json")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == ""
        doc = json.loads(proc.stdout)
        assert doc["valid"] is False and doc["errors"], doc
        for error in doc["errors"]:
            assert error["file"] == str(path)
            assert isinstance(error["line"], int) and error["line"] >= 1
            assert isinstance(error["column"], int) and error["column"] >= 1
            assert isinstance(error["path"], str) and error["message"]
    path = BAD / "duration_5_sec.yaml"
    assert json.loads(validate_process(path, "--json").stdout)["errors"] == [{
        "file": str(path), "line": 10, "column": 15, "path": "triggers[0](a).interval",
        "message": '"5 sec" is not a duration (use e.g. 500ms, 5s, 2m, 1h, 1d)'}]


def test_the_file_is_named_as_given(cli, monkeypatch):
    """FILE in FILE:LINE:COL is the path as passed: relative stays relative."""
    monkeypatch.chdir(HERE)
    result = cli("validate", "bad_configs/duration_5_sec.yaml")
    assert result.stderr.startswith("bad_configs/duration_5_sec.yaml:10:15: triggers[0](a).interval: ")


def test_crlf_and_bom_do_not_move_positions(cli):
    def located(name: str) -> list[str]:
        result = cli("validate", str(BAD / f"{name}.yaml"))
        return [line.split(":", 1)[1] for line in result.stderr.splitlines()]

    assert located("crlf_bad_interval") == located("bom_bad_interval") == located("duration_5_sec")


def test_merge_keys_override_instead_of_duplicating(cli):
    """`<<: *base` then `name: b`: the mapping's own key wins (it is not a duplicate key)."""
    from trigctl.config import load_config

    cfg = load_config(GOOD / "anchors_and_merge.yaml")
    assert [(t.name, t.interval) for t in cfg.triggers] == [("a", 10.0), ("b", 20.0)]
    assert [t.name for t in cfg.workflows["wf"].tasks] == ["task1", "again"]


def test_a_module_that_exits_on_import_cannot_end_validate(cli):
    result = cli("validate", str(BAD / "python_module_exits_on_import.yaml"))
    assert result.exit_code == 2
    assert "the module called sys.exit(0)" in result.stderr
