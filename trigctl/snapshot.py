"""A YAML file's fingerprint: lets `list` reuse what `run` saved instead of parsing a big file.

Kept apart from the config loader (trigctl/config/load.py) so that checking it imports neither YAML nor the schema tooling."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping


def config_fingerprint(path: str | os.PathLike) -> str | None:
    """Changes whenever what the file means may change: its bytes, and the environment variables it
    reads. None if the file cannot be read, or is too large to be a config (the loader says so)."""
    from trigctl.bounded import TooLarge, read_at_most

    try:
        raw = read_at_most(path)
    except (OSError, TooLarge):
        return None
    return bytes_fingerprint(raw, os.environ)


def bytes_fingerprint(raw: bytes, env: Mapping[str, str]) -> str:
    """The fingerprint of a file's bytes ``raw`` read with the environment ``env``."""
    import hashlib

    from trigctl import __version__

    digest = hashlib.sha256(raw)
    digest.update(b"\0trigctl " + __version__.encode())  # another trigctl may summarise otherwise
    for name in sorted(set(re.findall(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)", raw))):
        value = env.get(name.decode())
        digest.update(b"\0" + name + b"=" + (b"\1" + value.encode("utf-8", "replace") if value is not None else b"\2"))
    return digest.hexdigest()
