"""Workflow `http:` and `call:` tasks, end to end through `trigctl run --once`.

A `command` trigger (`echo` of a JSON object) starts each run, so the context is known.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import run_trigctl, wait_for
from test_http_trigger import LocalServer, free_port

from trigctl.config import load_config


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.close()


def write_config(tmp_path: Path, tasks_yaml: str, context: dict | None = None) -> Path:
    ctx = json.dumps(context if context is not None else {"id": 7, "name": "bob"})
    text = textwrap.dedent("""
        version: 1
        workflows:
          w:
            tasks:
        {tasks}
        triggers:
          - name: src
            type: command
            workflow: w
            argv: [printf, "%s", {ctx}]
        """).format(tasks=textwrap.indent(textwrap.dedent(tasks_yaml).strip("\n"), " " * 6), ctx=json.dumps(ctx))
    path = tmp_path / "triggers.yaml"
    path.write_text(text)
    load_config(path)  # the file is valid before it is run
    return path


def run_once(tmp_path: Path):
    return run_trigctl("run", "--once", "triggers.yaml", cwd=tmp_path)


def show(cli, run_id: int = 1) -> dict:
    """`trigctl show RUN_ID --json`, in-process (the `cli` fixture runs in tmp_path)."""
    result = cli("show", str(run_id), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def write_module(tmp_path: Path, source: str, name: str = "steps") -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)  # load_config (in this process) imports it to check the call: path


# ----------------------------------------------------------------------------------------- http


def test_http_task_posts_context_as_json(server, tmp_path, cli):
    server.respond(json_body={"ticket": 99})
    write_config(tmp_path, f"""
        - name: notify
          http: {{url: "{server.url}/hook", headers: {{X-Hook-Key: k-123}}}}
        - name: after
          run: 'printf "%s" "$TRIGCTL_CONTEXT" > ctx.json'
        """)
    proc = run_once(tmp_path)
    assert proc.returncode == 0, proc.stderr
    method, path, headers, body = server.requests[-1]
    assert (method, path) == ("POST", "/hook")
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Hook-Key"] == "k-123"
    assert json.loads(body) == {"id": 7, "name": "bob"}
    # A JSON object response is merged into later tasks' context as `http_response`.
    assert json.loads((tmp_path / "ctx.json").read_text()) == {"id": 7, "name": "bob", "http_response": {"ticket": 99}}
    task = show(cli)["tasks"][0]
    assert task["status"] == "succeeded" and task["exit_code"] == 200
    assert task["output_tail"].startswith("POST -> 200")


def test_http_task_method_and_non_2xx_fails_the_run(server, tmp_path, cli):
    server.respond(500, body="boom", content_type="text/plain")
    write_config(tmp_path, f"""
        - http: {{url: "{server.url}/x", method: PUT}}
        - run: touch not-reached
        """)
    proc = run_once(tmp_path)
    assert proc.returncode == 1
    assert server.requests[-1][0] == "PUT"
    assert not (tmp_path / "not-reached").exists()
    run = show(cli)
    assert run["status"] == "failed"
    assert run["tasks"][0]["exit_code"] == 500


def test_http_task_connection_error_never_shows_secrets(tmp_path, cli):
    write_config(tmp_path, f"""
        - http:
            url: "http://user:pa55word@127.0.0.1:{free_port()}/hook?api_key=qk-777"
            headers: {{Authorization: "Bearer hdr-secret-1"}}
        """)
    proc = run_once(tmp_path)
    assert proc.returncode == 1
    run = show(cli)
    text = proc.stderr + json.dumps(run)
    assert "connection failed" in text
    for secret in ("pa55word", "qk-777", "hdr-secret-1"):
        assert secret not in text


def test_http_task_invalid_header_value_not_leaked(server, tmp_path, cli):
    write_config(tmp_path, f"""
        - http: {{url: "{server.url}/", headers: {{X-Key: "leaky-value\\nX-Evil: 1"}}}}
        """)
    proc = run_once(tmp_path)
    assert proc.returncode == 1
    assert "leaky-value" not in proc.stderr + json.dumps(show(cli))
    assert server.requests == []


def test_http_task_timeout(server, tmp_path, cli):
    server.hold = 10
    write_config(tmp_path, f"""
        - http: {{url: "{server.url}/slow"}}
          timeout: 500ms
        """)
    started = time.monotonic()
    proc = run_once(tmp_path)
    assert proc.returncode == 1
    assert time.monotonic() - started < 8
    assert "task timed out after 0.5s" in show(cli)["tasks"][0]["output_tail"]


# ----------------------------------------------------------------------------------------- call


def test_call_task_result_is_merged_into_later_context(tmp_path):
    write_module(tmp_path, """
        import asyncio

        def enrich(context):
            return {"greeting": "hello " + context["name"], "id": context["id"] + 1}

        async def later(context):  # an async callable is awaited
            await asyncio.sleep(0)
            return {"async_ok": True}

        def nothing(context):  # None merges nothing
            return None
        """)
    write_config(tmp_path, """
        - call: steps:enrich
        - call: steps.nothing
        - call: steps:later
        - run: 'printf "%s|%s|%s|%s" "$TRIGCTL_GREETING" "$TRIGCTL_ID" "$TRIGCTL_NAME" "$TRIGCTL_ASYNC_OK" > out.txt'
        """)
    proc = run_once(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.txt").read_text() == "hello bob|8|bob|true"


def test_call_task_bad_return_or_exception_fails_the_run(tmp_path, cli):
    write_module(tmp_path, """
        def listy(context):
            return [1, 2]

        def broken(context):
            raise RuntimeError("no database today")
        """)
    (tmp_path / "triggers.yaml").write_text(textwrap.dedent("""
        version: 1
        workflows:
          bad-return: {tasks: [{call: "steps:listy"}, {run: touch not-reached-1}]}
          raises: {tasks: [{call: "steps:broken"}, {run: touch not-reached-2}]}
        triggers:
          - {name: a, type: command, workflow: bad-return, run: "true"}
          - {name: b, type: command, workflow: raises, run: "true"}
        """))
    proc = run_once(tmp_path)
    assert proc.returncode == 1
    runs = {r["trigger_name"]: show(cli, r["run_id"]) for r in json.loads(cli("history", "--json").stdout)}
    assert runs["a"]["status"] == runs["b"]["status"] == "failed"
    assert "expected a dict or None" in runs["a"]["tasks"][0]["output_tail"]
    assert "no database today" in runs["b"]["tasks"][0]["output_tail"]
    assert not list(tmp_path.glob("not-reached-*"))


def test_call_task_that_hangs_is_killed_at_task_timeout(tmp_path, cli):
    write_module(tmp_path, """
        import os, time
        def hang(context):
            with open("hang.pid", "w") as f:
                f.write(str(os.getpid()))
            time.sleep(120)
        """)
    write_config(tmp_path, """
        - call: steps:hang
          timeout: 1s
        """)
    started = time.monotonic()
    proc = run_once(tmp_path)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    # 1s timeout + the core's kill grace (5s: procs.kill_group waits it out while the leader is
    # an unreaped zombie) + start-up.
    assert elapsed < 12, elapsed
    run = show(cli)
    assert run["status"] == "failed"
    assert run["tasks"][0]["output_tail"] == "task timed out after 1s"
    pid = int((tmp_path / "hang.pid").read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return True
        return data[data.rfind(b")") + 2 :].split()[0] == b"Z"

    wait_for(gone, timeout=3, message="the hung call to be killed")
