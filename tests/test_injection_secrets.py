"""Nothing gets in: hostile context values reach tasks only as data, and secrets reach no output.

* File names, HTTP JSON bodies and Python contexts full of `$(...)`, backticks, `;`, quotes,
  newlines, `--options` and `../..` are fed to `run:` tasks (as `$TRIGCTL_NAME`) and `argv:` tasks
  (as `{{name}}`) by a real `trigctl run --once`: no `pwned*` file appears and each task saw the
  exact string. Hypothesis adds generated strings, in-process with the workflow runner.
* `${VAR}` secrets in headers, password/token/secret keys and URL passwords appear in no output of
  validate, run (text and JSON logs), history, show, list, poll, nor in the bytes of the state files.
* The state directory is created 0700 and the state file 0600; an existing directory keeps its mode.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import run_trigctl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_trigger import LocalServer

from trigctl.config import load_config
from trigctl.store.sqlite import SQLiteStore
from trigctl.workflows import WorkflowRunner

# Each would create a file named pwned* in the task's working directory if a shell ever parsed it.
HOSTILE = [
    "$(touch pwned1)",
    "`touch pwned2`",
    "; touch pwned3",
    "a && touch pwned4 || touch pwned4b",
    "| touch pwned5",
    "'; touch pwned6; '",
    '"; touch pwned7; "',
    "x\ntouch pwned8\n",
    "\\$(touch pwned9)",
    "> pwned10",
    "$(touch${IFS}pwned11)",
    "<(touch pwned12)",
    "--option=value",
    "-rf",
    "-n",
    "$HOME ${PATH} $TRIGCTL_RUN_ID $0",
    "{{name}}",
    "%s%n%x",
    "*",
    "~",
    " leading and trailing ",
    "tab\there",
    "émoji 🚀 ünïcode",
    "",
]
TRAVERSAL = ["../../etc/passwd", "/etc/passwd", "..", "a/../../b"]
NUL = "nul\x00$(touch pwned13)"

# The tasks under test: a shell string that quotes the variable, and an argv with a placeholder.
# record.py writes its argument byte for byte (surrogateescape keeps undecodable bytes).
RECORD_PY = """\
import os, sys
with open(os.path.join("out", sys.argv[1] + "-" + os.environ["TRIGCTL_RUN_ID"]), "wb") as f:
    f.write(os.fsencode(sys.argv[2]))
"""
TASKS = f"""\
      - name: shell
        run: 'printf "%s" "$TRIGCTL_NAME" > "out/shell-$TRIGCTL_RUN_ID"; cp "$TRIGCTL_CONTEXT_FILE" "out/ctx-$TRIGCTL_RUN_ID"'
      - name: argv
        argv: [{json.dumps(sys.executable)}, record.py, argv, "{{{{name}}}}"]
        continue_on_error: true
"""


def project(tmp_path: Path, triggers: str) -> Path:
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "record.py").write_text(RECORD_PY)
    (tmp_path / "triggers.yaml").write_text("version: 1\nworkflows:\n  wf:\n    tasks:\n" + TASKS + "triggers:\n"
                                             + textwrap.indent(textwrap.dedent(triggers).strip("\n"), "  ") + "\n")
    return tmp_path


def pwned(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith("pwned")]


def seen(root: Path, kind: str) -> list[str]:
    """What the `kind` task of every run wrote (shell, argv) or the context file it got (ctx)."""
    out = []
    for p in sorted((root / "out").glob(f"{kind}-*")):
        if kind == "ctx":
            out.append(json.loads(p.read_text())["name"])
        else:
            out.append(os.fsdecode(p.read_bytes()))
    return out


def run_once(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_trigctl("run", "--once", "triggers.yaml", *args, cwd=root, timeout=120, env=env)


def assert_data_only(root: Path, values: list[str]) -> None:
    assert not pwned(root), f"a context value was run as code: {pwned(root)}"
    plain = [v for v in values if "\x00" not in v]
    assert sorted(seen(root, "shell")) == sorted(plain + [""] * (len(values) - len(plain)))  # NUL: no variable
    assert sorted(seen(root, "argv")) == sorted(plain)  # NUL: the task cannot start (one argument cannot hold it)
    assert sorted(seen(root, "ctx")) == sorted(values)  # the context file holds every value exactly


# ----------------------------------------------------------------------------------- real processes


def test_file_names_reach_tasks_as_data(tmp_path):
    root = project(tmp_path, """
        - name: inbox
          type: file
          path: inbox
          settle: 0s
          watch: false
          workflow: wf
    """)
    names = [n for n in HOSTILE if n and "/" not in n] + ["-", "--", "x; touch pwned14 #"]
    inbox = root / "inbox"
    inbox.mkdir()
    for i, name in enumerate(names):
        (inbox / name).write_bytes(b"x" * i)
        os.utime(inbox / name, (time.time() - 60, time.time() - 60))
    proc = run_once(root)
    assert proc.returncode == 0, proc.stderr
    assert_data_only(root, names)


class JsonServer:
    """127.0.0.1, port 0: GET /N answers {"name": VALUES[N]}."""

    def __init__(self, values: list[str]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                body = json.dumps({"name": values[int(self.path.strip("/"))]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_json_values_reach_tasks_as_data(tmp_path):
    values = HOSTILE + TRAVERSAL + [NUL]
    server = JsonServer(values)
    try:
        root = project(tmp_path, "\n".join(
            f"- {{name: h{i}, type: http, url: '{server.url}/{i}', context: {{name: name}}, workflow: wf}}"
            for i in range(len(values))))
        proc = run_once(root)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    assert_data_only(root, values)


def test_python_context_values_reach_tasks_as_data(tmp_path):
    values = HOSTILE + TRAVERSAL + [NUL]
    root = project(tmp_path, """
        - name: py
          type: python
          callable: hostile:poll
          workflow: wf
    """)
    (root / "hostile.py").write_text(f"VALUES = {values!r}\n\ndef poll():\n    return [{{'name': v}} for v in VALUES]\n")
    proc = run_once(root)
    assert proc.returncode == 0, proc.stderr
    assert_data_only(root, values)


def test_trigger_names_and_keys_cannot_be_hostile():
    """The other way in, a trigger's name (it becomes $TRIGCTL_TRIGGER), is refused by the schema."""
    from trigctl.config import ConfigError, parse_config

    text = "version: 1\nworkflows: {wf: {tasks: [{run: x}]}}\ntriggers:\n  - {name: 'a;touch pwned', type: schedule, every: 1m, workflow: wf}\n"
    with pytest.raises(ConfigError, match="is not a valid name"):
        parse_config(text, "t.yaml", {})


# ------------------------------------------------------------------------------- hypothesis, in-process


FRAGMENTS = ["$(", ")", "`", ";", "&&", "|", "'", '"', "\n", "\\", "$", "${", "}", "--", "-", "../", "*", "?", "~",
             "touch pwned", " ", "\t", "{{name}}", "%s", "#", "!", "<", ">", "\r"]
hostile_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)),
    max_size=8,
).map("".join)


@pytest.fixture
def runner(tmp_path):
    project(tmp_path, "- {name: t, type: schedule, every: 1h, workflow: wf}")
    cfg = load_config(tmp_path / "triggers.yaml")
    store = SQLiteStore(cfg.state_location())
    store.sync_triggers(["t"])
    yield store, WorkflowRunner(cfg, store, kill_grace=1.0)
    store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=hostile_text)
def test_generated_values_reach_tasks_as_data(tmp_path, runner, value):
    store, workflow_runner = runner
    run_id = store.enqueue_run("t", "wf", {"name": value}, time.time()).run_id
    workflow_runner.pump()
    assert workflow_runner.join(60)
    run = store.get_run(run_id)
    out = tmp_path / "out"
    assert not pwned(tmp_path)
    assert json.loads((out / f"ctx-{run_id}").read_text())["name"] == value
    if "\x00" in value:
        assert (out / f"shell-{run_id}").read_bytes() == b""
        assert not (out / f"argv-{run_id}").exists()
    else:
        assert os.fsdecode((out / f"shell-{run_id}").read_bytes()) == value, run
        assert os.fsdecode((out / f"argv-{run_id}").read_bytes()) == value, run
    assert run.status == "succeeded", run


# ------------------------------------------------------------------------------------------ secrets

SECRETS = {
    "T_TOKEN": "tok-Q7f3Kx91ZzA",
    "T_PASSWORD": "pw-Lm28Rt55Vq",
    "T_DB_PASSWORD": "dbpw-Hh61Jk09",
    "T_HEADER": "hdr-Ww44Ee87Nn",
    "T_CLIENT_SECRET": "cs-Pp13Oo72Ii",
    "T_URLPW": "urlpw-Yy90Tt21",
}
LITERAL_URL_PASSWORD = "litpw-Gg58Ff30"  # typed into a URL by a trigger, not from ${VAR}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SECRET_YAML = """\
version: 1
workflows:
  wf:
    tasks:
      - name: echo
        run: 'echo "token=$API_TOKEN pw=$DB_PASSWORD p=$password"; echo "ctx=$TRIGCTL_CONTEXT"'
        env: {{API_TOKEN: "${{T_TOKEN}}", DB_PASSWORD: "${{T_DB_PASSWORD}}", password: "${{T_PASSWORD}}"}}
  hook:
    tasks:
      - name: call
        http:
          url: "http://hookuser:${{T_URLPW}}@127.0.0.1:{port}/hook?api_token=${{T_TOKEN}}"
          headers: {{Authorization: "Bearer ${{T_HEADER}}"}}
triggers:
  - name: web
    type: http
    url: "http://user:${{T_URLPW}}@127.0.0.1:{port}/health?token=${{T_TOKEN}}"
    headers: {{Authorization: "Bearer ${{T_HEADER}}", X-Client-Secret: "${{T_CLIENT_SECRET}}"}}
    on_error: {{after: 1, workflow: wf}}
    workflow: wf
  - name: leaky
    type: python
    callable: leaky:poll
    args: {{password: "${{T_PASSWORD}}", client_secret: "${{T_CLIENT_SECRET}}"}}
    workflow: hook
  - name: cmd
    type: command
    run: 'echo "failed with $API_TOKEN and $DB_PASSWORD" >&2; exit 3'
    env: {{API_TOKEN: "${{T_TOKEN}}", DB_PASSWORD: "${{T_DB_PASSWORD}}"}}
    workflow: wf
  - name: echoer
    type: http
    url: "{echo_url}"
    context: {{token: token, link: link}}
    fire_on: change
    workflow: wf
  - name: depth
    type: queue_depth
    queue: jobs
    above: 1
    source: {{http: {{url: "http://q:${{T_URLPW}}@127.0.0.1:{port}/api/queues", json: depth, headers: {{Authorization: "${{T_HEADER}}"}}}}}}
    workflow: wf
"""

LEAKY_PY = f"""\
import os

def poll(password, client_secret):
    return {{
        "password": password,
        "note": "uses " + client_secret + " and " + os.environ["T_TOKEN"],
        "url": "https://u:" + os.environ["T_URLPW"] + "@example.com/x",
        "literal": "https://u:{LITERAL_URL_PASSWORD}@example.com/y",
        "header": "Bearer " + os.environ["T_HEADER"],
        "db": os.environ["T_DB_PASSWORD"],
    }}
"""


def echo_server() -> LocalServer:
    """Answers every request with JSON that repeats the secrets (an API that echoes a token back)."""
    server = LocalServer()
    server.respond(json_body={"token": SECRETS["T_TOKEN"], "link": f"https://u:{SECRETS['T_PASSWORD']}@x/"})
    return server


@pytest.fixture
def secret_project(tmp_path):
    server = echo_server()
    (tmp_path / "triggers.yaml").write_text(SECRET_YAML.format(port=closed_port(), echo_url=server.url))
    (tmp_path / "leaky.py").write_text(LEAKY_PY)
    yield tmp_path
    server.close()


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [v for v in [*SECRETS.values(), LITERAL_URL_PASSWORD] if v.encode() in data]


def test_secrets_reach_no_output_and_no_state_byte(secret_project):
    root = secret_project
    env = dict(SECRETS)
    outputs: dict[str, str] = {}

    def cli(label: str, *args: str) -> subprocess.CompletedProcess:
        proc = run_trigctl(*args, cwd=root, env=env, timeout=120)
        outputs[label] = proc.stdout + proc.stderr
        return proc

    assert cli("validate", "validate", "triggers.yaml").returncode == 0
    assert cli("validate --json", "validate", "--json", "triggers.yaml").returncode == 0
    # Twice: text logs, then JSON logs (the echoer, fire_on: change, records its response in its state).
    first = cli("run text", "run", "--once", "triggers.yaml")
    second = cli("run json", "run", "--once", "--log-format", "json", "triggers.yaml")
    assert first.returncode == 1 and second.returncode == 1, first.stderr  # web and cmd poll errors; hook fails
    history = json.loads(cli("history", "history", "--json", "--limit", "1000").stdout)
    run_ids = sorted({h["run_id"] for h in history if h["run_id"]})
    assert len(run_ids) >= 3, history  # the leaky fire, the web alert, the echoer... ran
    for run_id in run_ids:
        cli(f"show {run_id}", "show", str(run_id), "--json")
        cli(f"show {run_id} text", "show", str(run_id))
    cli("history text", "history", "--limit", "1000")
    cli("list", "list", "--json")
    for name in ("web", "leaky", "cmd", "echoer", "depth"):
        cli(f"poll {name}", "poll", name, "--json")
        cli(f"poll {name} text", "poll", name)

    # The checks above ran with the secrets set: make sure they were used, and masked.
    assert "***" in outputs["run text"] and "***" in outputs["history"], outputs["history"]
    assert "Connection refused" in outputs["run text"] or "connection failed" in outputs["run text"]
    found = {label: leaks(text) for label, text in outputs.items() if leaks(text)}
    assert not found, {label: outputs[label][:2000] for label in found}
    state_files = [p for p in (root / ".trigctl").iterdir() if p.is_file()]
    assert any(p.name == "state.db" for p in state_files)
    found = {p.name: leaks(p.read_bytes()) for p in state_files if leaks(p.read_bytes())}
    assert not found, found


def test_secrets_in_validate_errors_are_masked(tmp_path):
    """An error may quote the value it refuses: a known secret in it is masked, and so is a URL password."""
    (tmp_path / "triggers.yaml").write_text(textwrap.dedent("""\
        version: 1
        workflows:
          wf: {tasks: [{run: x, env: {API_TOKEN: "${T_TOKEN}"}}]}
        triggers:
          - name: a
            type: http
            url: "http://user:${T_URLPW}@127.0.0.1:1/a b"
            headers: {Authorization: "${T_HEADER}"}
            timeout: "${T_HEADER}"
            interval: "${T_TOKEN}"
            workflow: wf
    """))
    for args in (("validate", "triggers.yaml"), ("validate", "--json", "triggers.yaml"), ("run", "--once", "triggers.yaml"),
                 ("list",), ("poll", "a")):
        proc = run_trigctl(*args, cwd=tmp_path, env=SECRETS, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        out = proc.stdout + proc.stderr
        assert "is not a duration" in out and "***" in out, out
        assert not leaks(out), (args, out)


def test_task_and_trigger_errors_at_a_closed_port_are_masked(tmp_path):
    port = closed_port()
    (tmp_path / "triggers.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        workflows:
          wf:
            tasks:
              - http:
                  url: "http://u:${{T_URLPW}}@127.0.0.1:{port}/hook?secret=${{T_CLIENT_SECRET}}"
                  headers: {{Authorization: "Bearer ${{T_HEADER}}", X-Token: "${{T_TOKEN}}"}}
        triggers:
          - name: tick
            type: python
            callable: tick:poll
            workflow: wf
    """))
    (tmp_path / "tick.py").write_text("def poll():\n    return True\n")
    proc = run_trigctl("run", "--once", "--log-format", "json", "triggers.yaml", cwd=tmp_path, env=SECRETS, timeout=60)
    assert proc.returncode == 1, proc.stderr
    [run] = [h for h in json.loads(run_trigctl("history", "--json", cwd=tmp_path, env=SECRETS).stdout) if h["run_id"]]
    assert run["status"] == "failed" and "connection failed" in run["error"], run
    assert f"127.0.0.1:{port}/hook" in run["error"] and "***" in run["error"], run
    shown = run_trigctl("show", str(run["run_id"]), "--json", cwd=tmp_path, env=SECRETS).stdout
    everything = proc.stdout + proc.stderr + json.dumps(run) + shown
    assert not leaks(everything), everything
    assert not any(leaks(p.read_bytes()) for p in (tmp_path / ".trigctl").iterdir() if p.is_file())


# -------------------------------------------------------------------------------------------- modes


def test_state_file_is_private_and_its_new_directory_too(tmp_path):
    (tmp_path / "triggers.yaml").write_text("version: 1\nworkflows: {wf: {tasks: [{run: 'true'}]}}\n"
                                            "triggers:\n  - {name: t, type: python, callable: tick:poll, workflow: wf}\n")
    (tmp_path / "tick.py").write_text("def poll():\n    return True\n")
    old = os.umask(0o022)  # the usual umask: without care, files would be 0644 and directories 0755
    try:
        proc = run_trigctl("run", "--once", "triggers.yaml", "--state", "deep/er/state.db", cwd=tmp_path)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "deep" / "er") == 0o700
    # Every directory trigctl creates on the way is owner-only too.
    assert mode(tmp_path / "deep") == 0o700
    state = tmp_path / "deep" / "er" / "state.db"
    assert mode(state) == 0o600
    assert mode(state.parent / "state.db.lock") == 0o600
    store = SQLiteStore(str(state))  # an open writer keeps -wal and -shm (a clean exit removes them)
    try:
        store.sync_triggers(["other"])
        for extra in ("state.db-wal", "state.db-shm"):  # SQLite gives them the database file's mode
            assert mode(state.parent / extra) == 0o600, extra
    finally:
        store.close()


def test_an_existing_state_directory_keeps_its_mode(tmp_path):
    """trigctl does not chmod a directory it did not create (it may be shared, e.g. /var/lib/app);
    the state file in it is still created 0600."""
    (tmp_path / "triggers.yaml").write_text("version: 1\nworkflows: {wf: {tasks: [{run: 'true'}]}}\n"
                                            "triggers:\n  - {name: t, type: python, callable: tick:poll, workflow: wf}\n")
    (tmp_path / "tick.py").write_text("def poll():\n    return True\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    proc = run_trigctl("run", "--once", "triggers.yaml", "--state", "shared/state.db", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(shared / "state.db").st_mode) == 0o600


def test_fire_on_change_remembers_a_digest_not_the_response(tmp_path):
    """The state of an `http` trigger with `fire_on: change` holds no response value (it may be a
    secret); a state written by an earlier trigctl, holding the context itself, still compares equal."""
    from trigctl.config import TriggerConfig
    from trigctl.triggers.base import PollContext
    from trigctl.triggers.http import STATE_KEY, HttpTrigger, context_digest

    server = echo_server()
    try:
        trigger = HttpTrigger(TriggerConfig(name="t", type="http", workflow="w", options={
            "url": server.url, "context": {"token": "token"}, "fire_on": "change"}), tmp_path)
        context = {"status": 200, "token": SECRETS["T_TOKEN"]}
        first = trigger.poll(PollContext(due_at=0, now=0, cursor=None, state={}, timeout=5))
        assert first.state_updates == {STATE_KEY: context_digest(context)}
        assert not leaks(json.dumps(first.state_updates))
        old = trigger.poll(PollContext(due_at=0, now=0, cursor=None, state={STATE_KEY: context}, timeout=5))
        assert not old.fired and old.state_updates == {STATE_KEY: context_digest(context)}
        trigger.close()
    finally:
        server.close()


# ----------------------------------------------------------------------- composed secrets

COMPOSED = {
    "BEARER_VALUE": "brr-Zq81Xc47Vb",  # a name that does not look secret, used inside a header
    "SVC_USERPW": "upw-Kk20Ll93",  # the password part of a URL
    "SVC_API_KEY": "key-Mn66Bv12",  # a secret-looking name in a query string
}

COMPOSED_YAML = """\
version: 1
workflows:
  wf:
    tasks:
      - name: echo
        run: 'echo "ctx=$TRIGCTL_CONTEXT"; echo "bare=$TRIGCTL_A $TRIGCTL_B $TRIGCTL_C"'
triggers:
  - name: echoer
    type: http
    url: "http://svc:${{SVC_USERPW}}@127.0.0.1:{port}/status?key=${{SVC_API_KEY}}"
    headers: {{X-Service-Auth: "Bearer ${{BEARER_VALUE}}"}}
    context: {{a: a, b: b, c: c, all: all}}
    workflow: wf
  - name: failing
    type: command
    run: 'echo "rejected $TOKEN_ISH" >&2; exit 3'
    env: {{TOKEN_ISH: "x-${{BEARER_VALUE}}-y"}}
    workflow: wf
"""


def test_each_expanded_secret_is_masked_not_only_the_whole_string(tmp_path):
    """A server that echoes the bare token from `Bearer ${VAR}` (or a URL's password) leaks it
    nowhere: logs, history, show, poll, the state file."""
    server = LocalServer()
    bare = list(COMPOSED.values())
    server.respond(json_body={"a": bare[0], "b": bare[1], "c": bare[2], "all": " / ".join(bare)})
    try:
        port = server.url.split(":")[2].split("/")[0]
        (tmp_path / "triggers.yaml").write_text(COMPOSED_YAML.format(port=port))
        outputs = {}
        for label, args in [("run", ("run", "--once", "triggers.yaml")),
                            ("run json", ("run", "--once", "--log-format", "json", "triggers.yaml")),
                            ("history", ("history", "--json")), ("history text", ("history",)),
                            ("show", ("show", "1", "--json")), ("show text", ("show", "1")),
                            ("poll", ("poll", "echoer", "--json")), ("poll failing", ("poll", "failing"))]:
            proc = run_trigctl(*args, cwd=tmp_path, env=COMPOSED, timeout=120)
            outputs[label] = proc.stdout + proc.stderr
        assert server.requests, "the trigger reached the server"
        method, path, headers, _ = server.requests[0]
        assert headers.get("X-Service-Auth") == f"Bearer {bare[0]}" and bare[2] in path  # really sent
        assert "***" in outputs["history"] and "***" in outputs["show"], outputs["show"]
        found = {label: [v for v in bare if v in text] for label, text in outputs.items()}
        assert not any(found.values()), {k: outputs[k][:1500] for k, v in found.items() if v}
        for p in (tmp_path / ".trigctl").iterdir():
            if p.is_file():
                data = p.read_bytes()
                assert not [v for v in bare if v.encode() in data], p
    finally:
        server.close()


def test_short_or_ordinary_expansions_are_not_masked(tmp_path):
    """Only secrets are masked: a path or a name from ${VAR} keeps its value in output."""
    (tmp_path / "triggers.yaml").write_text(
        "version: 1\nworkflows: {w: {tasks: [{run: 'true'}]}}\n"
        "triggers:\n  - {name: t, type: http, url: 'http://127.0.0.1:1/${SVC_PATH}', "
        "headers: {X-Id: 'id-${SHORT}'}, workflow: w}\n")
    cfg = load_config(tmp_path / "triggers.yaml", env={"SVC_PATH": "inbox-dir-name", "SHORT": "abc"})
    assert cfg.redactor.text("inbox-dir-name and abc") == "inbox-dir-name and abc"
    assert cfg.redactor.text("id-abc") == "***"
