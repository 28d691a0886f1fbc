from __future__ import annotations

import re

import pytest

from trigctl.config import ConfigError, load_config, parse_config

GOOD = """\
version: 1
defaults:
  interval: 5s
workflows:
  wf:
    tasks:
      - run: echo hi
triggers:
  - name: a
    type: python
    callable: os.getcwd
    workflow: wf
"""


def errors(text: str, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "t.yaml", env or {})
    lines = [str(i) for i in exc.value.issues]
    for line in lines:
        assert re.match(r"^t\.yaml:\d+:\d+: ", line), line
        assert "\n" not in line
    return lines


def test_good_config_builds_frozen_objects():
    cfg = parse_config(GOOD, "t.yaml", {})
    t = cfg.triggers[0]
    assert (t.name, t.type, t.workflow, t.interval, t.dedupe, t.timeout) == ("a", "python", "wf", 5.0, "running", 30.0)
    assert cfg.workflows["wf"].tasks[0].run == "echo hi"
    with pytest.raises(AttributeError):
        t.name = "b"  # frozen


def test_bad_duration_points_at_line_and_column():
    text = GOOD.replace("    workflow: wf\n", "    workflow: wf\n    interval: 5 sec\n")
    assert errors(text) == ['t.yaml:13:15: triggers[0](a).interval: "5 sec" is not a duration (use e.g. 500ms, 5s, 2m, 1h, 1d)']


def test_all_errors_are_reported_at_once():
    text = GOOD.replace("    workflow: wf\n", "    workflow: wf\n    interval: soon\n    timeout: never\n    colour: red\n")
    out = errors(text)
    assert len(out) == 3, out
    assert any("interval" in e for e in out) and any("timeout" in e for e in out)
    assert any("unknown key 'colour'" in e for e in out)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "expected a mapping"),
        ("version: 1\ntriggers:\n\t- name: a\n", "tabs are not allowed"),
        ("version: 2\n", "unsupported version 2"),
        ("workflows: {}\n", "missing required key 'version'"),
        ("version: 1\nworkflows:\n  wf:\n    tasks: []\n", "empty"),
        ("version: 1\nversion: 1\n", "duplicate key 'version'"),
        ("version: 1\nmax_concurrent_runs: many\n", "expected integer, got a string"),
        ("version: 1\nworkflows:\n  Bad Name:\n    tasks: [{run: x}]\n", "not a valid name"),
        ("version: [1\n", "invalid YAML"),
    ],
)
def test_nasty_files(text, expected):
    out = errors(text)
    assert any(expected in e for e in out), out


def test_unknown_key_suggests_the_close_one():
    out = errors(GOOD.replace("    workflow: wf\n", "    workflow: wf\n    intervall: 5s\n"))
    assert out == ["t.yaml:13:5: triggers[0](a).intervall: unknown key 'intervall' (did you mean 'interval'?)"]


def test_duplicate_trigger_names_and_missing_workflow():
    text = GOOD + "  - name: a\n    type: python\n    callable: os.getcwd\n    workflow: nope\n"
    out = errors(text)
    assert any("duplicate trigger name 'a'" in e for e in out), out


def test_unknown_workflow_is_named():
    out = errors(GOOD.replace("workflow: wf", "workflow: wf2"))
    assert out == ["t.yaml:12:15: triggers[0](a).workflow: unknown workflow 'wf2' (did you mean 'wf'?)"]


def test_unimportable_and_non_callable_dotted_paths():
    out = errors(GOOD.replace("os.getcwd", "no_such_module_xyz:fn"))
    assert any("cannot import" in e and "no_such_module_xyz" in e for e in out), out
    out = errors(GOOD.replace("os.getcwd", "os:sep"))
    assert any("is not callable" in e for e in out), out
    out = errors(GOOD.replace("os.getcwd", "not a path"))
    assert any("not a dotted path" in e for e in out), out


def test_unset_env_var_is_an_error_naming_it():
    text = GOOD.replace("callable: os.getcwd", "callable: os.getcwd\n    description: ${UNSET_VAR_XYZ}")
    out = errors(text)
    assert any("UNSET_VAR_XYZ is not set" in e for e in out), out


def test_env_interpolation_default_and_literal_and_run_untouched():
    text = GOOD.replace("callable: os.getcwd", "callable: os.getcwd\n    description: '${A}-${B:-dflt}-$${C}'")
    text = text.replace("run: echo hi", "run: echo ${HOME_X}")
    cfg = parse_config(text, "t.yaml", {"A": "x"})
    assert cfg.triggers[0].description == "x-dflt-${C}"
    assert cfg.workflows["wf"].tasks[0].run == "echo ${HOME_X}"  # the shell expands its own


def test_unquoted_cron_star_suggests_quoting():
    text = GOOD + "  - name: nightly\n    type: schedule\n    cron: */5 * * * *\n    workflow: wf\n"
    out = errors(text)
    assert any("quote" in e for e in out), out


def test_yaml_boolean_trap_suggests_quoting():
    text = GOOD.replace("    workflow: wf\n", "    workflow: wf\n    dedupe: no\n")
    out = errors(text)
    assert any("quote it" in e for e in out), out


def test_alias_bomb_is_refused_quickly():
    lines = ["version: 1", 'a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    prev = "a"
    for i in range(9):
        lines.append(f"b{i}: &b{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
        prev = f"b{i}"
    out = errors("\n".join(lines) + "\n")
    assert any("too large" in e for e in out), out


def test_allow_concurrent_means_dedupe_none():
    cfg = parse_config(GOOD.replace("    workflow: wf\n", "    workflow: wf\n    allow_concurrent: true\n"), "t.yaml", {})
    assert cfg.triggers[0].dedupe == "none"


def test_defaults_apply_and_trigger_overrides():
    text = GOOD.replace("  interval: 5s\n", "  interval: 5s\n  timeout: 7s\n  max_backoff: 1m\n")
    cfg = parse_config(text, "t.yaml", {})
    assert (cfg.triggers[0].timeout, cfg.triggers[0].max_backoff) == (7.0, 60.0)


def test_secrets_from_env_are_redacted():
    text = GOOD.replace("callable: os.getcwd", "callable: os.getcwd\n    args: {api_token: '${TOK}'}")
    cfg = parse_config(text, "t.yaml", {"TOK": "s3cr3t-value"})
    assert cfg.redactor.text("failed with s3cr3t-value") == "failed with ***"
    assert cfg.redactor.text("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ConfigError, match="NUL"):
        load_config(tmp_path / "bin.yaml")
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


def test_state_location_is_relative_to_the_file(tmp_path):
    p = tmp_path / "sub" / "t.yaml"
    p.parent.mkdir()
    p.write_text(GOOD + "state: st/x.db\n")
    assert load_config(p).state_location() == str(tmp_path / "sub" / "st" / "x.db")


def test_a_secret_in_an_error_message_is_masked():
    text = GOOD.replace("    workflow: wf\n", "    workflow: wf\n    args: {api_token: '${TOK}'}\n    interval: '${TOK}'\n")
    out = errors(text, {"TOK": "hunter2-secret"})
    assert out and all("hunter2" not in e for e in out), out
    assert any("*** is not a duration" in e or '"***" is not a duration' in e for e in out), out


def test_default_applies_to_empty_variables_and_unset_errors_name_the_item():
    text = GOOD.replace("callable: os.getcwd", "callable: os.getcwd\n    description: '${EMPTY:-d}'")
    assert parse_config(text, "t.yaml", {"EMPTY": ""}).triggers[0].description == "d"
    out = errors(GOOD.replace("callable: os.getcwd", "callable: os.getcwd\n    description: '${NOPE_X}'"))
    assert any("triggers[0](a).description" in e for e in out), out


def test_zero_timeout_is_refused():
    out = errors(GOOD.replace("    workflow: wf\n", "    workflow: wf\n    timeout: 0s\n"))
    assert any("timeout must be greater than 0" in e for e in out), out


def _many(item: str, n: int) -> str:
    """GOOD's header and n triggers t0..t{n-1} that differ only by name (``item``: their other lines)."""
    head = GOOD.split("triggers:\n")[0] + "triggers:\n"
    return head + "".join(f"  - name: t{i}\n{item}" for i in range(n))


def test_triggers_that_differ_only_by_name_each_get_their_own_config_and_errors():
    # The checks of a trigger like one checked before are not run again (validate._trigger_config):
    # every trigger still gets its own name, position, options and error at its own line.
    cfg = parse_config(_many("    type: python\n    callable: os.getcwd\n    workflow: wf\n    args: {x: 1}\n", 3), "t.yaml", {})
    assert [(t.name, t.index) for t in cfg.triggers] == [("t0", 0), ("t1", 1), ("t2", 2)]
    assert cfg.triggers[0].options == cfg.triggers[2].options and cfg.triggers[0].options is not cfg.triggers[2].options
    out = errors(_many("    type: python\n    callable: os:sep\n    workflow: wf\n", 3))
    assert [e.split(": ")[0:2] for e in out] == [["t.yaml:11:15", "triggers[0](t0).callable"],
                                                 ["t.yaml:15:15", "triggers[1](t1).callable"],
                                                 ["t.yaml:19:15", "triggers[2](t2).callable"]], out
    out = errors(_many("    type: python\n    callable: os.getcwd\n    workflow: wf\n    interval: 0s\n", 2))
    assert [e.split(": ")[0] for e in out] == ["t.yaml:13:15", "t.yaml:18:15"], out


def test_triggers_whose_values_differ_only_in_type_are_built_apart():
    # 1, 1.0 and true are equal in Python: a shape tells them apart by type.
    text = _many("    type: python\n    callable: os.getcwd\n    workflow: wf\n    args: {x: 1}\n", 1) + \
        "  - name: u\n    type: python\n    callable: os.getcwd\n    workflow: wf\n    args: {x: true}\n" + \
        "  - name: v\n    type: python\n    callable: os.getcwd\n    workflow: wf\n    args: {x: 1.0}\n"
    xs = [t.options["args"]["x"] for t in parse_config(text, "t.yaml", {}).triggers]
    assert [(type(x), x) for x in xs] == [(int, 1), (bool, True), (float, 1.0)]


@pytest.mark.parametrize("text", [
    "a: 1\nb: 01\nc: 0x1F\nd: 1_000\ne: .inf\nf: ~\ng: yes\nh: On\ni: '1'\nj: !!str 2\nk: !!float 3\n",
    "a: 2024-01-01\nb: 2024-01-01 10:00:00+02:00\nc: [1, {d: e}, [f]]\nd: {}\ne: []\n",
    "1: a\n01: b\ntrue: c\nnull: d\nyes: e\n",
    "a: |\n  lit\n  x\nb: >\n  fold\n  ed\nc: \"q\\u00e9\\n\"\nd: plain\n  continued\n",
    "- 1\n- [2]\n", "plain scalar\n", "", "a: !!binary aGVsbG8=\n", "=: 1\n", "a: !!set {x, y}\n",
    # lines the line-by-line parse leaves to libyaml (or that are errors)
    "- - x\n", "a:\n-\n", "a:\n- b\n c: d\n", "a:\n  - b\n  c: d\n",
    "a: b\n  c\n", "a: b # c\n", "a:  two spaces\n", "a: x\n b: y\n", "a:\tb\n", "a: b\r\nc: d\r\n",
    "a: caf\u00e9\n", "a: x\n---\nb: y\n", "key:value\n", "on: 1\ntrue: 2\n", "a: =\n", "a: 'it''s'\n",
])
def test_the_fast_yaml_parses_read_what_pyyaml_reads(text):
    import yaml

    from trigctl.config.yaml_loader import _block_load, _NeedMarks, _plain_load, _UniqueKeyLoader, _Unusual

    def typed(v):  # == with the types: 1 == True == 1.0
        if isinstance(v, dict):
            return [(typed(k), typed(x)) for k, x in v.items()]
        if isinstance(v, (list, set)):
            return [typed(x) for x in v]
        return (type(v), v)

    try:
        expected = typed(yaml.load(text, Loader=_UniqueKeyLoader))  # noqa: S506 - a safe loader
    except Exception:  # noqa: BLE001 - the fast parses must not read it either
        expected = "error"
    for load in (_block_load, _plain_load):
        try:
            got = typed(load(text))
        except _Unusual:  # left to the next parse, down to PyYAML's own
            continue
        except (_NeedMarks, yaml.YAMLError):
            got = "error"
        assert got == expected, load.__name__


@pytest.mark.parametrize("text", [
    _many("    type: python\n    callable: os.getcwd\n    workflow: wf\n    interval: 1s\n", 3),
    # nesting, lists at their key's indentation or deeper, null values, comments, quotes, keys and
    # values typed by the resolver
    "version: 1\n# c\nworkflows:\n  wf:\n    tasks:\n      - run: 'true'\n        name: \"a #b\"\n   # c\n"
    "triggers:\n- name: t0\n  type: python\n  interval: 1s\n  labels:\n  - x\n  - 2\n  on_error:\n\n    after: 3\n"
    "- name: t1\n  enabled: false\n  empty:\n  nested:\n    k: v\nlast:\n",
    "a:\n  b:\n    c: 1:20\n  d: -1\ne:\n- x\n- 2024-01-01\non: ~\nk: .5\n",
    "a:\n- b:\n  - c\n  d: http://h:80/p x=y\n- e: ''\n",
])
def test_the_line_by_line_parse_reads_the_block_style_itself_as_pyyaml_does(text):
    import yaml

    from trigctl.config.yaml_loader import _block_load

    def typed(v):
        if isinstance(v, dict):
            return [(typed(k), typed(x)) for k, x in v.items()]
        if isinstance(v, list):
            return [typed(x) for x in v]
        return (type(v), v)

    assert typed(_block_load(text)) == typed(yaml.safe_load(text))


@pytest.mark.parametrize("text", ["a: 1\na: 2\n", "a: {b: 1, b: 2}\n", "? [a]\n: b\n", "a: 1\n---\nb: 2\n"])
def test_the_fast_yaml_parse_leaves_duplicates_complex_keys_and_documents_to_the_careful_one(text):
    from trigctl.config.yaml_loader import _block_load, _NeedMarks, _plain_load

    with pytest.raises(_NeedMarks):
        _plain_load(text)
    if text == "a: 1\na: 2\n":  # the one in the block style the line-by-line parse reads itself
        with pytest.raises(_NeedMarks):
            _block_load(text)
