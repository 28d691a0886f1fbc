"""The config cache (trigctl/config/cache.py): a big YAML that passed the full check is read back
built; any change of its bytes, of an environment variable it reads, of trigctl, or of what its
checks look at outside the file is a miss; a damaged or foreign entry is ignored; secrets are
never written to it; a bad YAML is refused as `validate` refuses it."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import trigctl
import trigctl.config.cache as cache_module
import trigctl.config.load as load_module
from trigctl.config import ConfigError, load_config
from trigctl.config.cache import CACHE_AT, MAGIC, Entry

N = CACHE_AT  # the smallest config that is cached


def write_project(directory: Path, n: int = N, extra_task: str = "", trigger_extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cache_callables.py").write_text("def noop():\n    return None\n")
    lines = ["version: 1", "workflows:", "  wf:", "    tasks:", "      - run: 'true'" + extra_task, "triggers:"]
    for i in range(n):
        lines += [f"  - name: t{i}", "    type: python", "    callable: cache_callables:noop", "    workflow: wf",
                  "    interval: 30s" + trigger_extra]
    path = directory / "triggers.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("TRIGCTL_CACHE_DIR", str(d))
    monkeypatch.delenv("TRIGCTL_CONFIG_CACHE", raising=False)
    return d


@pytest.fixture
def parses(monkeypatch):
    """How many times the YAML was parsed and checked (a cache hit parses nothing)."""
    calls = []
    real = load_module.parse_config

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(load_module, "parse_config", counting)
    return calls


def same(a, b) -> bool:
    """Equal configs, the secrets their redactors mask included."""
    return (a.path, a.base_dir, a.state, a.max_concurrent_runs, dict(a.workflows), a.triggers,
            a.redactor._secrets, a.redactor._short) == (b.path, b.base_dir, b.state, b.max_concurrent_runs,
                                                        dict(b.workflows), b.triggers, b.redactor._secrets, b.redactor._short)


def entries(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith("config-")) if d.exists() else []


def test_second_load_is_a_hit_and_equal(tmp_path, cache_dir, parses):
    path = write_project(tmp_path / "p")
    first = load_config(path)
    assert len(parses) == 1
    [entry] = entries(cache_dir)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    second = load_config(path)
    assert len(parses) == 1, "the second load parsed the YAML again"
    assert same(second, first)
    assert [t.index for t in second.triggers] == list(range(N))
    assert second.path == first.path and second.base_dir == first.base_dir


def test_smaller_configs_are_not_cached(tmp_path, cache_dir, parses):
    path = write_project(tmp_path / "p", n=N - 1)
    load_config(path)
    load_config(path)
    assert len(parses) == 2
    assert entries(cache_dir) == []


def test_turned_off(tmp_path, cache_dir, parses, monkeypatch):
    monkeypatch.setenv("TRIGCTL_CONFIG_CACHE", "off")
    path = write_project(tmp_path / "p")
    load_config(path)
    load_config(path)
    assert len(parses) == 2
    assert entries(cache_dir) == []


def test_changed_bytes_miss(tmp_path, cache_dir, parses):
    path = write_project(tmp_path / "p")
    load_config(path)
    path.write_text(path.read_text().replace("name: t7\n", "name: renamed\n"))
    cfg = load_config(path)
    assert len(parses) == 2
    assert cfg.triggers[7].name == "renamed"
    load_config(path)
    assert len(parses) == 2  # the new bytes are cached in turn
    assert len(entries(cache_dir)) == 1  # one entry per config path, replaced


def test_changed_env_value_miss_and_the_new_value_is_used(tmp_path, cache_dir, parses, monkeypatch):
    monkeypatch.setenv("CACHE_GREETING", "hello")
    path = write_project(tmp_path / "p", extra_task="\n        env: {GREETING: '${CACHE_GREETING}'}")
    assert load_config(path).workflows["wf"].tasks[0].env == {"GREETING": "hello"}
    assert load_config(path).workflows["wf"].tasks[0].env == {"GREETING": "hello"}
    assert len(parses) == 1
    monkeypatch.setenv("CACHE_GREETING", "bonjour")
    assert load_config(path).workflows["wf"].tasks[0].env == {"GREETING": "bonjour"}
    assert len(parses) == 2
    monkeypatch.delenv("CACHE_GREETING")
    with pytest.raises(ConfigError, match="CACHE_GREETING is not set"):
        load_config(path)


def test_other_trigctl_version_miss(tmp_path, cache_dir, parses, monkeypatch):
    path = write_project(tmp_path / "p")
    load_config(path)
    monkeypatch.setattr(trigctl, "__version__", trigctl.__version__ + ".post1")
    cache_module.code_stamp.cache_clear()
    try:
        load_config(path)
        assert len(parses) == 2
    finally:
        cache_module.code_stamp.cache_clear()


def test_edited_trigctl_code_miss(tmp_path, cache_dir, parses, monkeypatch):
    """An edited checkout is another trigctl: the stamp covers each module's size and mtime."""
    path = write_project(tmp_path / "p")
    load_config(path)
    real_stat = os.stat
    model = os.path.join(os.path.dirname(trigctl.__file__), "config", "model.py")

    def touched(p, *args, **kwargs):
        st = real_stat(p, *args, **kwargs)
        if os.fspath(p) == model:
            return os.stat_result((*st[:8], st.st_mtime + 1, st.st_ctime))
        return st

    cache_module.code_stamp.cache_clear()
    monkeypatch.setattr(cache_module.os, "stat", touched)
    try:
        load_config(path)
        assert len(parses) == 2
    finally:
        cache_module.code_stamp.cache_clear()


def test_same_bytes_elsewhere_miss(tmp_path, cache_dir, parses):
    """The entry is the file's at its resolved path: a copy elsewhere has another base directory."""
    a = write_project(tmp_path / "a")
    load_config(a)
    b = tmp_path / "b"
    shutil.copytree(tmp_path / "a", b)
    cfg = load_config(b / "triggers.yaml")
    assert len(parses) == 2
    assert cfg.base_dir == b.resolve()


def _damage(entry: Path, how: str) -> None:
    data = bytearray(entry.read_bytes())
    if how == "truncated":
        entry.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flipped":
        data[-10] ^= 0xFF
        entry.write_bytes(bytes(data))
    elif how == "magic":
        entry.write_bytes(b"X" + bytes(data[1:]))
    elif how == "empty":
        entry.write_bytes(b"")
    elif how == "garbage":
        entry.write_bytes(os.urandom(len(data)))


@pytest.mark.parametrize("how", ["truncated", "flipped", "magic", "empty", "garbage"])
def test_damaged_entry_ignored_and_replaced(tmp_path, cache_dir, parses, how):
    path = write_project(tmp_path / "p")
    good = load_config(path)
    [entry] = entries(cache_dir)
    _damage(entry, how)
    assert same(load_config(path), good)
    assert len(parses) == 2
    load_config(path)
    assert len(parses) == 2  # the full load wrote a good entry again


def test_entry_others_may_write_or_read_is_ignored(tmp_path, cache_dir, parses):
    path = write_project(tmp_path / "p")
    load_config(path)
    [entry] = entries(cache_dir)
    entry.chmod(0o644)
    load_config(path)
    assert len(parses) == 2
    assert stat.S_IMODE(entries(cache_dir)[0].stat().st_mode) == 0o600  # replaced by a private one


def test_directory_others_may_write_is_neither_read_nor_written(tmp_path, cache_dir, parses):
    path = write_project(tmp_path / "p")
    load_config(path)
    [entry] = entries(cache_dir)
    before = entry.read_bytes()
    cache_dir.chmod(0o777)
    load_config(path)
    load_config(path)
    assert len(parses) == 3
    assert entry.read_bytes() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_entry_owned_by_someone_else_is_ignored(tmp_path, cache_dir, parses):
    path = write_project(tmp_path / "p")
    load_config(path)
    [entry] = entries(cache_dir)
    os.chown(entry, 12345, 12345)
    load_config(path)
    assert len(parses) == 2


def test_symlinked_entry_is_ignored(tmp_path, cache_dir, parses):
    path = write_project(tmp_path / "p")
    load_config(path)
    [entry] = entries(cache_dir)
    real = tmp_path / "elsewhere.bin"
    entry.rename(real)
    entry.symlink_to(real)
    load_config(path)
    assert len(parses) == 2


def test_forged_entry_with_the_right_key_cannot_run_code(tmp_path, cache_dir, parses):
    """An entry with a valid header and checksum (someone with this user's rights could write it)
    still unpickles only the config's classes: a pickle that calls os.system is refused."""
    path = write_project(tmp_path / "p")
    good = load_config(path)
    [file] = entries(cache_dir)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    entry = Entry(cache_dir, path, path.read_bytes(), os.environ)
    assert entry.file == file
    payload = b"[]\n" + pickle.dumps(Evil(), protocol=pickle.HIGHEST_PROTOCOL)
    file.unlink()
    entry._write(payload)
    assert entry.file.read_bytes().startswith(MAGIC + entry.key)
    assert same(load_config(path), good)
    assert len(parses) == 2
    assert not marker.exists()


def test_secrets_are_not_written(tmp_path, cache_dir, parses, monkeypatch):
    secret, password = "tok-5up3r-s3cr3t-value", "pw-hunter2-hunter2"
    monkeypatch.setenv("CACHE_API_TOKEN", secret)
    monkeypatch.setenv("CACHE_DB_PASSWORD", password)
    path = write_project(tmp_path / "p", extra_task=(
        "\n        env: {TOKEN: '${CACHE_API_TOKEN}', DSN: 'postgres://app:${CACHE_DB_PASSWORD}@db/app'}"))
    first = load_config(path)
    [entry] = entries(cache_dir)
    for f in cache_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert secret.encode() not in data and password.encode() not in data, f
    assert b"${CACHE_API_TOKEN}" in entry.read_bytes()  # stored as written, interpolated on read
    second = load_config(path)
    assert len(parses) == 1
    assert second.workflows["wf"].tasks[0].env == {"TOKEN": secret, "DSN": f"postgres://app:{password}@db/app"}
    assert second.redactor.text(f"got {secret} and {password}") == "got *** and ***"
    assert same(second, first)


def test_a_secret_that_would_be_written_in_clear_is_not_cached(tmp_path, cache_dir, parses, monkeypatch):
    """The value also inside another string of the file: it would be in the entry, so none is
    written. (A string equal to an interpolated one is stored as that one's template.)"""
    secret = "tok-5up3r-s3cr3t-value"
    monkeypatch.setenv("CACHE_API_TOKEN", secret)
    path = write_project(tmp_path / "p", extra_task=(
        f"\n        env: {{TOKEN: '${{CACHE_API_TOKEN}}', SAME: '{secret}', NOTE: 'the token is {secret}'}}"))
    load_config(path)
    cfg = load_config(path)
    assert len(parses) == 2
    assert entries(cache_dir) == []
    assert cfg.workflows["wf"].tasks[0].env["NOTE"] == f"the token is {secret}"
    path.write_text(path.read_text().replace(", NOTE: 'the token is tok-5up3r-s3cr3t-value'", ""))
    load_config(path)
    assert load_config(path).workflows["wf"].tasks[0].env == {"TOKEN": secret, "SAME": secret}
    assert len(parses) == 3
    assert secret.encode() not in entries(cache_dir)[0].read_bytes()


def test_deleted_callable_module_is_refused_as_validate_does(tmp_path, cache_dir, parses):
    """What the key cannot see is checked at each hit: the full load then says what `validate` says."""
    path = write_project(tmp_path / "p")
    load_config(path)
    (tmp_path / "p" / "cache_callables.py").write_text("def other():\n    return None\n")
    sys.modules.pop("cache_callables", None)
    try:
        with pytest.raises(ConfigError) as hit:
            load_config(path)
        with pytest.raises(ConfigError) as full:
            load_config(path, cached=False)
    finally:
        sys.modules.pop("cache_callables", None)
    assert [str(i) for i in hit.value.issues] == [str(i) for i in full.value.issues]
    assert "has no attribute 'noop'" in str(hit.value.issues[0])


def test_file_trigger_path_now_a_file_is_refused(tmp_path, cache_dir, parses):
    d = tmp_path / "p"
    path = write_project(d)
    (d / "inbox").mkdir()
    path.write_text(path.read_text() + "  - name: files\n    type: file\n    path: inbox\n    workflow: wf\n")
    load_config(path)
    (d / "inbox").rmdir()
    (d / "inbox").write_text("not a directory\n")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_config(path)
    assert len(parses) == 2


def test_validate_always_checks_fully(tmp_path, cache_dir, parses):
    path = write_project(tmp_path / "p")
    load_config(path)
    load_config(path, cached=False)
    assert len(parses) == 2


def _cli(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trigctl", *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_yaml_after_a_cached_good_one_is_refused_like_validate(tmp_path, cache_dir):
    d = tmp_path / "p"
    path = write_project(d)
    env = {"TRIGCTL_CACHE_DIR": str(cache_dir)}
    assert _cli("validate", cwd=d, env=env).returncode == 0
    assert len(entries(cache_dir)) == 1  # validate writes the entry (it never reads one)
    # The bytes change: no entry matches, every command checks fully and says what validate says.
    path.write_text(path.read_text().replace("interval: 30s", "interval: soon", 1))
    expected = _cli("validate", cwd=d, env=env)
    assert expected.returncode == 2
    for args in (["run", "--once"], ["list"], ["list", "--json"], ["enable", "t1"]):
        got = _cli(*args, cwd=d, env=env)
        assert got.returncode == 2, (args, got.stderr)
        assert got.stderr == expected.stderr, args
        assert "Traceback" not in got.stderr


def test_cli_run_reads_the_entry_and_refuses_a_deleted_callable(tmp_path, cache_dir):
    d = tmp_path / "p"
    write_project(d)
    env = {"TRIGCTL_CACHE_DIR": str(cache_dir)}
    first = _cli("run", "--once", cwd=d, env=env)
    assert first.returncode == 0, first.stderr
    [entry] = entries(cache_dir)
    inode = entry.stat().st_ino
    second = _cli("run", "--once", cwd=d, env=env)
    assert second.returncode == 0, second.stderr
    assert entry.stat().st_ino == inode  # read, not written again (a write replaces the file)
    (d / "cache_callables.py").unlink()
    expected = _cli("validate", cwd=d, env=env)
    assert expected.returncode == 2 and "no module named 'cache_callables'" in expected.stderr
    got = _cli("run", "--once", cwd=d, env=env)
    assert got.returncode == 2
    assert got.stderr == expected.stderr


def test_reload_reads_the_entry(tmp_path, cache_dir, parses):
    """SIGHUP's reload goes through the same load: an unchanged file is not parsed again."""
    from trigctl.runner import Runner
    from trigctl.store.sqlite import SQLiteStore

    path = write_project(tmp_path / "p")
    cfg = load_config(path)
    store = SQLiteStore(str(tmp_path / "p" / "state.db"))
    try:
        runner = Runner(cfg, store, install_signals=False)
        runner.scheduler.load(1_800_000_000.0)
        runner.reload(1_800_000_000.0)
        assert len(parses) == 1
        assert same(runner.config, cfg)
    finally:
        store.close()


def test_entries_unused_for_a_month_are_deleted_at_the_next_write(tmp_path, cache_dir, parses):
    a = write_project(tmp_path / "a")
    b = write_project(tmp_path / "b")
    load_config(a)
    [old] = entries(cache_dir)
    month = 31 * 86400
    os.utime(old, (old.stat().st_atime - month, old.stat().st_mtime - month))
    load_config(b)
    assert [p.name for p in entries(cache_dir)] != [old.name] and not old.exists()
    load_config(b)
    stamp = entries(cache_dir)[0].stat().st_mtime
    os.utime(entries(cache_dir)[0], (stamp - month, stamp - month))
    load_config(b)  # a hit marks the entry used
    assert entries(cache_dir)[0].stat().st_mtime > stamp - 60
    assert len(parses) == 2


def test_interpolated_values_under_keys_that_are_not_strings(tmp_path, cache_dir, parses, monkeypatch):
    """YAML keys can be numbers, dates or null: an interpolated value below one is still cached."""
    monkeypatch.setenv("CACHE_API_TOKEN", "tok-5up3r-s3cr3t-value")
    path = write_project(tmp_path / "p", trigger_extra=(
        "\n    args: {2024-01-01: '${CACHE_API_TOKEN}', 7: '${CACHE_API_TOKEN}', null: {api_token: '${CACHE_API_TOKEN}'}}"))
    (tmp_path / "p" / "cache_callables.py").write_text("def noop(**kwargs):\n    return None\n")
    first = load_config(path)
    second = load_config(path)
    assert len(parses) == 1
    assert same(second, first)
    assert second.triggers[0].options["args"][7] == "tok-5up3r-s3cr3t-value"
    assert second.redactor.text("x tok-5up3r-s3cr3t-value") == "x ***"
    assert b"tok-5up3r" not in entries(cache_dir)[0].read_bytes()
