"""The messages the docs show are the ones trigctl prints.

Every ```sh block marked `checked` (```` ```sh checked ````) in docs/*.md and README.md is a
session: `$ trigctl ...` lines and the output they print (stdout and stderr, in order). Each block
runs in a fresh directory: an empty one if it starts with `trigctl init`, else a copy of
tests/doc_project (the project the examples show). Local times are compared as <TIME>.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Path(__file__).resolve().parent / "doc_project"
DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}")


def sessions() -> list[tuple[str, list[tuple[str, list[str]]]]]:
    found = []
    for doc in DOC_FILES:
        for n, block in enumerate(re.findall(r"^```sh checked\n(.*?)^```", doc.read_text(), flags=re.M | re.S)):
            steps: list[tuple[str, list[str]]] = []
            for line in block.splitlines():
                if line.startswith("$ "):
                    steps.append((line[2:], []))
                else:
                    steps[-1][1].append(line)
            found.append((f"{doc.name}#{n}:{steps[0][0]}", steps))
    return found


SESSIONS = sessions()


def test_there_are_checked_sessions():
    assert len(SESSIONS) >= 4
    assert any(cmd.startswith("trigctl init") for _, steps in SESSIONS for cmd, _ in steps)


@pytest.mark.parametrize(("name", "steps"), SESSIONS, ids=[name for name, _ in SESSIONS])
def test_the_docs_session_prints_what_the_docs_show(tmp_path, name, steps):
    work = tmp_path / "project"
    if steps[0][0].startswith("trigctl init"):
        work.mkdir()
    else:
        shutil.copytree(PROJECT, work, ignore=shutil.ignore_patterns("__pycache__"))
        for d in ("inbox", "backlog"):
            (work / d).mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGCTL_")}
    env["COLUMNS"] = "100"
    for command, expected in steps:
        argv = shlex.split(command)
        assert argv[0] == "trigctl", command
        done = subprocess.run([sys.executable, "-m", "trigctl", *argv[1:]], cwd=work, env=env, timeout=60,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        got = LOCAL_TIME.sub("<TIME>", done.stdout).splitlines()
        assert got == [LOCAL_TIME.sub("<TIME>", line) for line in expected], f"{name}: $ {command}"


def test_the_starter_file_points_at_what_an_installed_trigctl_has():
    starter = (ROOT / "trigctl" / "starter.yaml").read_text()
    assert "docs/" not in starter
    assert "trigctl --help" in starter
