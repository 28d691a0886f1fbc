"""Reading a file the user names, without trusting it to end: `/dev/zero`, `/dev/urandom` or a
sparse 3 GiB file must be refused after at most the limit, not read into memory first.

Kept free of YAML and the schema tooling, so that the snapshot fingerprint can use it too."""

from __future__ import annotations

import os
import stat

MAX_FILE_BYTES = 10 * 1024 * 1024  # a config larger than this is refused before it is parsed


class TooLarge(Exception):
    """The file holds more than the limit; ``size`` is its size when known (a regular file), else None."""

    def __init__(self, limit: int, size: int | None):
        super().__init__(f"more than {limit} bytes")
        self.limit = limit
        self.size = size

    def describe(self) -> str:
        if self.size is not None:
            return f"file too large ({self.size} bytes; limit {self.limit})"
        return f"file too large (more than the limit of {self.limit} bytes)"


def read_at_most(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, reading at most ``limit`` + 1 of them; raise TooLarge beyond ``limit``.

    OSError as from open()/read(). A FIFO blocks like any reader (`validate <(...)` is legitimate)."""
    with open(path, "rb") as f:
        try:
            st = os.fstat(f.fileno())
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise TooLarge(limit, st.st_size)  # no need to read a byte of it
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = f.read(min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if total > limit:
        raise TooLarge(limit, None)  # a stream, or a file that grew while it was read
    return b"".join(chunks)
