"""The config cache: a big YAML file that passed the full check, kept built, so that the next start
(`trigctl run`, a SIGHUP reload, any command that loads it) skips the parse and the checks.

50,000 triggers take ~20 s to parse and check and ~2 s to read back from here. An entry is used only
for the same bytes, read with the same values of the environment variables the file names, by the
same trigctl (its version and the stamp of its code), at the same resolved path; anything else is
a miss and the file is loaded in full (and the entry replaced). What neither the bytes nor the
environment can tell — a module a `python` trigger or a `call:` task imports, a `file` trigger's
path — is checked again at every hit, by the checks `validate` runs; any problem: the full load,
with `validate`'s errors.

Secrets: a string that takes a value from the environment is stored as written (``${API_TOKEN}``)
and interpolated again when read, and an entry is not written at all if any secret value would
still be in it (a value the config transformed). The key covers the values through a SHA-256
only, as the state's snapshot fingerprint does (trigctl/snapshot.py).

Where: ``$TRIGCTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/trigctl``, else ``~/.cache/trigctl``; one
file per config path (``config-<hash>.bin``), mode 0600 in a 0700 directory. Safe to delete at any
time (entries unused for 30 days are deleted); ``TRIGCTL_CONFIG_CACHE=off`` turns it off. An
entry is ignored (and replaced by the next full load) unless it is a regular file owned by this
user, not readable or writable by others, with the right magic, key, length and checksum; and it
is unpickled with only the config's own classes allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import stat
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from trigctl.config.model import Config, ConfigIssue, TriggerConfig

CACHE_AT = 1000  # triggers: smaller files load in a fraction of a second, not worth a file
MAGIC = b"trigctl config cache 2\n"
MAX_ENTRY_BYTES = 2 * 1024 * 1024 * 1024
UNUSED_DAYS = 30  # an entry not read or written for this long is deleted at the next write

_OUTSIDE = frozenset({"python", "file"})  # trigger types whose checks look beyond the options

#: The globals an entry may name: the config's classes and the plain types YAML values can be
#: (a date). Nothing that reaches further (getattr, a module) is allowed.
_ALLOWED = {
    ("trigctl.config.model", "Config"), ("trigctl.config.model", "TriggerConfig"),
    ("trigctl.config.model", "WorkflowConfig"), ("trigctl.config.model", "TaskConfig"),
    ("pathlib", "PosixPath"), ("pathlib._local", "PosixPath"),
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "timezone"), ("datetime", "timedelta"),
}


def cache_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The cache's directory (None: the cache is turned off)."""
    env = os.environ if env is None else env
    if env.get("TRIGCTL_CONFIG_CACHE", "").lower() in ("off", "0", "no", "false"):
        return None
    if env.get("TRIGCTL_CACHE_DIR"):
        return Path(env["TRIGCTL_CACHE_DIR"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "trigctl"
    home = env.get("HOME")
    return Path(home) / ".cache" / "trigctl" if home else None


@lru_cache(maxsize=1)
def code_stamp() -> bytes:
    """Which trigctl builds the config: its version, the Python, and each of its modules' size and
    modification time (an edited checkout is another trigctl)."""
    import trigctl

    digest = hashlib.sha256(f"{trigctl.__version__}\0{sys.version}\0{pickle.HIGHEST_PROTOCOL}".encode())
    from importlib import resources

    root = Path(trigctl.__file__).parent
    try:  # the schema: at the top of a checkout, inside an installed package
        digest.update(resources.files("trigctl").joinpath("schemas/triggers.schema.json").read_bytes())
    except OSError:
        pass
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith((".py", ".json")):
                st = os.stat(os.path.join(dirpath, name))
                digest.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.digest()


class Entry:
    """The cache entry of one config file, for the bytes ``raw`` read from it with ``env``."""

    def __init__(self, directory: Path, path: Path, raw: bytes, env: Mapping[str, str]):
        from trigctl.snapshot import bytes_fingerprint

        self.directory = directory
        self.resolved = path.resolve()
        self.env = env
        name = hashlib.sha256(str(self.resolved).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        self.file = directory / f"config-{name}.bin"
        self.key = hashlib.sha256(code_stamp() + b"\0" + str(self.resolved).encode("utf-8", "surrogateescape")
                                  + b"\0" + bytes_fingerprint(raw, env).encode()).digest()

    # --------------------------------------------------------------------------------- reading

    def load(self) -> Config | None:
        """The cached config, checked again against what its bytes cannot tell; None on any doubt."""
        try:
            payload = self._read()
            if payload is None:
                return None
            config = self._unpickle(payload)
        except Exception:  # noqa: BLE001 - a bad entry is a miss: the full load decides
            return None
        if config is None or not isinstance(config, Config) or config.path != self.resolved:
            return None
        if outside_issues(config):
            return None
        return config

    def _read(self) -> bytes | None:
        if not _private_dir(self.directory):
            return None
        try:
            fd = os.open(self.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077 \
                    or st.st_size > MAX_ENTRY_BYTES:
                return None
            head = f.read(len(MAGIC) + 32 + 32 + 8)
            if len(head) != len(MAGIC) + 72 or not head.startswith(MAGIC):
                return None
            key, checksum = head[len(MAGIC):len(MAGIC) + 32], head[len(MAGIC) + 32:len(MAGIC) + 64]
            length = int.from_bytes(head[-8:], "big")
            if key != self.key or length != st.st_size - len(head):
                return None
            payload = f.read(length + 1)
            if len(payload) != length or hashlib.sha256(payload).digest() != checksum:
                return None
            try:
                os.utime(f.fileno())  # used now: kept by the clean-up of unused entries
            except OSError:
                pass
        return payload

    def _unpickle(self, payload: bytes) -> Config | None:
        from trigctl.config.interpolate import reinterpolate
        from trigctl.secrets import Redactor

        split = payload.index(b"\n")
        recorded = json.loads(payload[:split])
        secrets: set[str] = set()
        texts = []
        for path, written in recorded:
            text = reinterpolate(tuple(path), written, self.env, secrets)
            if text is None:
                return None
            texts.append(text)
        return _loads(memoryview(payload)[split + 1:], texts, Redactor(secrets))

    # --------------------------------------------------------------------------------- writing

    def save(self, config: Config, record: list[tuple[tuple, str]]) -> Config | None:
        """Write ``config`` (fully checked, built from these bytes with ``record``, see
        interpolate); return it copied into fresh memory (see load._compacted), or None if it
        cannot be cached."""
        from trigctl.config.interpolate import reinterpolate

        secrets: set[str] = set()
        texts = []
        for path, written in record:
            text = reinterpolate(path, written, self.env, secrets)
            if text is None:
                return None
            texts.append(text)
        try:
            blob = _dumps(config, texts)
            # A secret the config transformed (not a string as interpolated) would be written in clear.
            if any(s.encode("utf-8", "surrogatepass") in blob for s in secrets if s):
                return None
            copy = _loads(blob, texts, config.redactor)
        except Exception:  # noqa: BLE001 - a value that does not pickle, or not with the allowed classes
            return None
        if copy != config:
            return None
        # A path's keys matter only as names (a secret position, interpolate._secret_position): a
        # key YAML made a number, a date or null is kept as 0, which JSON can hold.
        header = json.dumps([[[p if isinstance(p, str) else 0 for p in path], written] for path, written in record],
                            ensure_ascii=True).encode() + b"\n"
        self._write(header + blob)
        return copy

    def _write(self, payload: bytes) -> None:
        tmp = None
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private_dir(self.directory):
                return
            tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + self.key + hashlib.sha256(payload).digest() + len(payload).to_bytes(8, "big"))
                f.write(payload)
            os.replace(tmp, self.file)
            tmp = None
            _forget_unused(self.directory)
        except OSError:
            pass  # a cache: a read-only home, a full disk only cost the next start its speed
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def entry_for(path: Path, raw: bytes, env: Mapping[str, str]) -> Entry | None:
    directory = cache_dir(env)
    if directory is None:
        return None
    try:
        return Entry(directory, path, raw, env)
    except (OSError, RuntimeError, ValueError):
        return None


def _forget_unused(directory: Path) -> None:
    """Delete the entries not used for UNUSED_DAYS (YAML files moved or deleted since)."""
    import time

    cutoff = time.time() - UNUSED_DAYS * 86400
    with os.scandir(directory) as it:
        for entry in it:
            if entry.name.startswith("config-") and entry.name.endswith(".bin") and entry.is_file(follow_symlinks=False):
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                except OSError:
                    pass


def _private_dir(directory: Path) -> bool:
    """The directory is this user's and nobody else may write in it."""
    try:
        st = os.stat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


_TRIGGER_FIELDS = tuple(f.name for f in dataclasses.fields(TriggerConfig) if f.init)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        # A frozen dataclass with slots unpickles through a Python __setstate__ that asks for its
        # fields each time (~40 µs a trigger); its constructor takes ~3 µs.
        if type(obj) is TriggerConfig:
            return TriggerConfig, tuple([getattr(obj, name) for name in _TRIGGER_FIELDS])
        return NotImplemented


class _TextPickler(_Pickler):
    """For a config with interpolated strings: each is written as its index in ``texts`` (a
    persistent id, which pickle asks for of every object: a file without them is pickled without)."""

    def __init__(self, file: io.BytesIO, texts: list[str]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._index = {text: i for i, text in enumerate(texts)}

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is str:
            return self._index.get(obj)
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, texts: list[str]):
        super().__init__(file)
        self._texts = texts

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is int and 0 <= pid < len(self._texts):
            return self._texts[pid]
        raise pickle.UnpicklingError("unknown persistent id")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a config")
        return super().find_class(module, name)


#: Config's fields but its Redactor (which holds the secret values): an entry holds these; the
#: Redactor is made again from the environment when it is read.
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "redactor")


def _dumps(config: Config, texts: list[str]) -> bytes:
    out = io.BytesIO()
    pickler = _TextPickler(out, texts) if texts else _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dump(tuple([getattr(config, name) for name in _CONFIG_FIELDS]))
    return out.getvalue()


def _loads(blob: bytes | memoryview, texts: list[str], redactor: Any) -> Any:
    fields = _Unpickler(io.BytesIO(blob), texts).load()
    if type(fields) is not tuple or len(fields) != len(_CONFIG_FIELDS):
        raise pickle.UnpicklingError("not a config")
    return Config(**dict(zip(_CONFIG_FIELDS, fields)), redactor=redactor)


def outside_issues(config: Config) -> list[ConfigIssue]:
    """What `validate` checks beyond the file's bytes and the environment, checked again: a
    `python` trigger's callable imports (once per callable: the same path resolves to the same
    object), a `file` trigger's path is a directory, a `call:` task imports. The other checks
    read only the options, which the key covers."""
    from trigctl.dotted import ResolveError, resolve
    from trigctl.triggers.base import trigger_class

    issues = []
    filename = str(config.path)
    callables: dict[str, list[tuple[tuple, str]]] = {}
    for tc in config.triggers:
        if tc.type not in _OUTSIDE:
            continue
        cls = trigger_class(tc.type)
        if cls is None:
            issues.append(ConfigIssue(filename, 1, 1, tc.name, "type not available"))
            continue
        if tc.type == "python":
            name = tc.options["callable"]
            found = callables.get(name)
            if found is None:
                found = callables[name] = cls.check({"callable": name}, config.base_dir)
        else:
            found = cls.check(tc.options, config.base_dir)
        issues.extend(ConfigIssue(filename, 1, 1, tc.name, message) for _, message in found)
    for wf in config.workflows.values():
        for task in wf.tasks:
            if task.call:
                try:
                    resolve(task.call, config.base_dir)
                except ResolveError as e:
                    issues.append(ConfigIssue(filename, 1, 1, wf.name, str(e)))
    return issues
