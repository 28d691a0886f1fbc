"""Issue 13, "first contact": what a new user trips over in the first hour, and its siblings."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from trigctl.config import TriggerConfig
from trigctl.triggers.base import trigger_types
from trigctl.triggers.schedule import iso_utc

UTC = timezone.utc
ROOT = Path(__file__).resolve().parent.parent


def ts(*args) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def schedule(**options):
    tc = TriggerConfig(name="s", type="schedule", workflow="w", options=options)
    return trigger_types()["schedule"](tc, Path("."))


SCHEDULE_YAML = """\
version: 1
workflows:
  w:
    tasks:
      - argv: ['true']
triggers:
  - name: nightly
    type: schedule
    workflow: w
    cron: "{cron}"
    timezone: UTC
"""


# ------------------------------------------------------------------------------ 5. cron nicknames


@pytest.mark.parametrize(("nickname", "after", "expected"), [
    ("@hourly", ts(2024, 6, 1, 10, 5), "2024-06-01T11:00:00Z"),
    ("@daily", ts(2024, 6, 1, 10, 5), "2024-06-02T00:00:00Z"),
    ("@midnight", ts(2024, 6, 1, 10, 5), "2024-06-02T00:00:00Z"),
    ("@weekly", ts(2024, 6, 1, 10, 5), "2024-06-02T00:00:00Z"),  # 2024-06-01 is a Saturday
    ("@monthly", ts(2024, 6, 1, 10, 5), "2024-07-01T00:00:00Z"),
    ("@yearly", ts(2024, 6, 1, 10, 5), "2025-01-01T00:00:00Z"),
    ("@annually", ts(2024, 6, 1, 10, 5), "2025-01-01T00:00:00Z"),
    ("@Daily", ts(2024, 6, 1, 10, 5), "2024-06-02T00:00:00Z"),
])
def test_cron_nicknames_come_due_when_cron_says(nickname, after, expected):
    trig = schedule(cron=nickname, timezone="UTC")
    assert iso_utc(trig.next_due(None, after)) == expected


def test_cron_nickname_validates_and_lists_as_written(cli, tmp_path):
    (tmp_path / "triggers.yaml").write_text(SCHEDULE_YAML.format(cron="@daily"))
    result = cli("validate")
    assert result.exit_code == 0, result.output
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[0]["name"] == "nightly"


def test_unknown_cron_nickname_names_the_known_ones(cli, tmp_path):
    (tmp_path / "triggers.yaml").write_text(SCHEDULE_YAML.format(cron="@reboot"))
    result = cli("validate")
    assert result.exit_code == 2
    assert '"@reboot" is not a cron nickname (known: @yearly, @annually, @monthly, @weekly, @daily' in result.stderr
    assert result.stderr.count("\n") == 1


# ------------------------------------------------------------------------- 6. YAML hints


@pytest.mark.parametrize(("text", "expected"), [
    ("version: 1\ntriggers:\n  - name: inbox\n      type: file\n",
     "triggers.yaml:4:11: invalid YAML: mapping values are not allowed in this context (this line is indented deeper"
     " than `name:` above it, so YAML reads it as part of that value: indent it as far as that key)"),
    ("version: 1\nworkflows:\n  w:\n    tasks:\n      - run: echo a: b\n",
     'triggers.yaml:5:20: invalid YAML: mapping values are not allowed in this context (usually an unquoted value'
     ' that contains ": ": quote the value, e.g. run: "echo a: b")'),
    ("version: 1\ntriggers:\n  - name: inbox\n    type: file\n   path: x\n",
     "triggers.yaml:5:4: invalid YAML: while parsing a block collection: did not find expected '-' indicator (the"
     " indentation of this line matches no mapping above it: indent it as far as its sibling keys)"),
    ("version: 1\ntriggers:\n  - name: a\n    cron: @daily\n",
     'triggers.yaml:4:11: invalid YAML: while scanning for the next token: found character that cannot start any'
     ' token (YAML reserves @ and ` at the start of a value: quote it, e.g. cron: "@daily")'),
])
def test_yaml_syntax_errors_name_the_usual_cause(cli, tmp_path, text, expected):
    (tmp_path / "triggers.yaml").write_text(text)
    result = cli("validate")
    assert result.exit_code == 2
    assert result.stderr == expected + "\n"


# ------------------------------------------------ 6. the cause, not its consequence; all at once

ALL_AT_ONCE = """\
version: 1
workflows:
  w:
    tasks:
      - argv: ['true']
triggers:
  - name: tick
    type: schedule
    workflow: w
    evrey: 5m
  - name: feb
    type: schedule
    workflow: w
    cron: "0 0 31 2 *"
  - name: lost
    type: schedule
    workflow: nowhere
    every: 1h
  - name: bad
    type: file
    workflow: w
    path: .
    interval: 5 sec
"""


def test_every_error_of_a_file_at_once_and_the_cause_of_a_typo(cli, tmp_path):
    (tmp_path / "triggers.yaml").write_text(ALL_AT_ONCE)
    result = cli("validate")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "triggers.yaml:10:5: triggers[0](tick).evrey: unknown key 'evrey' (did you mean 'every'?)",
        'triggers.yaml:14:11: triggers[1](feb).cron: cron "0 0 31 2 *" never comes due',
        "triggers.yaml:17:15: triggers[2](lost).workflow: unknown workflow 'nowhere'",
        'triggers.yaml:23:15: triggers[3](bad).interval: "5 sec" is not a duration (use e.g. 500ms, 5s, 2m, 1h, 1d)',
    ]


def test_a_missing_key_without_a_typo_is_still_reported(cli, tmp_path):
    text = ALL_AT_ONCE.replace("    evrey: 5m\n", "    colour: red\n")
    (tmp_path / "triggers.yaml").write_text(text)
    lines = cli("validate").stderr.splitlines()
    assert "triggers.yaml:7:5: triggers[0](tick): needs one of: cron, every" in lines
    assert "triggers.yaml:10:5: triggers[0](tick).colour: unknown key 'colour'" in lines
