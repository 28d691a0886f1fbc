"""${VAR} interpolation, and the secret values it brings in (masked wherever trigctl prints)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trigctl.secrets import is_secret_key

if TYPE_CHECKING:
    from trigctl.config.yaml_loader import _Doc

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _interpolate_str(value: str, env: Mapping[str, str], missing: list[str],
                     expanded: list[tuple[str, str]] | None = None) -> tuple[str, bool]:
    """``value`` with every ${VAR} replaced; ``expanded`` collects (name, value) of each expansion."""
    used = False

    def sub(m: re.Match) -> str:
        nonlocal used
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        used = True
        value = env.get(name)
        if not value and default is not None:  # like the shell's ${VAR:-default}: unset or empty
            value = default
        if value is None:
            missing.append(name)
            return ""
        if expanded is not None:
            expanded.append((name, value))
        return value

    return _VAR.sub(sub, value), used


#: Environment variable names whose values are secrets wherever they are used.
_SECRET_VAR = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH(?!OR)|COOKIE",
                         re.IGNORECASE)
#: A part of a composed secret shorter than this is not masked on its own (it would mask ordinary
#: words); the whole composed value still is.
MIN_SECRET_PART = 4


def _secret_parts(out: str, expanded: list[tuple[str, str]], secret_position: bool) -> list[str]:
    """The values to mask from one interpolated string: the whole string in a secret position, and
    each ${VAR}'s own value where it is a secret (a secret position, a secret-looking variable name,
    or the password of a URL), so a server that echoes the bare token does not leak it."""
    from trigctl.secrets import url_passwords

    parts = [out] if secret_position else []
    in_urls = url_passwords(out)
    for name, value in expanded:
        if len(value) < MIN_SECRET_PART:
            continue
        if secret_position or _SECRET_VAR.search(name) or any(value in pw for pw in in_urls):
            parts.append(value)
    return parts


def _is_shell_string(path: tuple) -> bool:
    # `run:` of a task or of a command trigger: the shell expands its own variables.
    return bool(path) and path[-1] == "run"


def interpolate(data: Any, doc: _Doc, env: Mapping[str, str], secrets: set[str], path: tuple = (),
                root: Any = None, record: list[tuple[tuple, str]] | None = None) -> Any:
    """``data`` with ${VAR}s replaced; ``record`` collects (path, string as written) of each string
    that took a value from the environment (the config cache stores those, not their values)."""
    root = data if root is None else root
    # Copy on write: a file without ${...} keeps its one copy in memory (20,000 triggers: ~10 MB).
    if isinstance(data, dict):
        changed = None
        for k, v in data.items():
            new = interpolate(v, doc, env, secrets, path + (k,), root, record)
            if new is not v:
                if changed is None:
                    changed = dict(data)
                changed[k] = new
        return data if changed is None else changed
    if isinstance(data, list):
        out = [interpolate(v, doc, env, secrets, path + (i,), root, record) for i, v in enumerate(data)]
        return data if all(a is b for a, b in zip(out, data)) else out
    if isinstance(data, str) and "\x00" in data:  # "\0" in a double-quoted string
        doc.issue(path, "contains a NUL character, which no path, command or environment variable can hold", data=root)
        return data
    if isinstance(data, str) and not _is_shell_string(path) and "$" in data:
        missing: list[str] = []
        expanded: list[tuple[str, str]] = []
        text, used = _interpolate_str(data, env, missing, expanded)
        for name in missing:
            doc.unset.add(path)
            doc.issue(path, f"environment variable {name} is not set (use ${{{name}:-default}} for a default)", data=root)
        if used:
            secrets.update(_secret_parts(text, expanded, _secret_position(path)))
            if record is not None:
                record.append((path, data))
        return text
    return data


def reinterpolate(path: tuple, written: str, env: Mapping[str, str], secrets: set[str]) -> str | None:
    """One recorded string (``interpolate``'s ``record``) interpolated again, its secrets added to
    ``secrets``; None if a variable it reads is unset now."""
    missing: list[str] = []
    expanded: list[tuple[str, str]] = []
    text, _ = _interpolate_str(written, env, missing, expanded)
    if missing:
        return None
    secrets.update(_secret_parts(text, expanded, _secret_position(path)))
    return text


def _secret_position(path: tuple) -> bool:
    names = [p for p in path if isinstance(p, str)]
    return "headers" in names[:-1] or (bool(names) and is_secret_key(names[-1]))

