"""Example Python triggers for trigctl. Referenced from the root triggers.yaml as examples.callables:NAME."""

from __future__ import annotations

import os
from pathlib import Path

from trigctl import Fire, Skip


def new_files(directory: str = "inbox", cursor: str | None = None):
    """Fire once per file that appeared in ``directory`` since the last poll (the cursor is the
    newest mtime seen, so a restart does not fire old files again)."""
    since = float(cursor) if cursor else 0.0
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)  # a demo inbox is created on first use
    newest = since
    fires = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.stat().st_mtime):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        mtime = entry.stat().st_mtime
        if mtime > since:
            fires.append(Fire({"path": str(Path(entry.path)), "name": entry.name, "size": entry.stat().st_size},
                              cursor=repr(mtime)))
            newest = max(newest, mtime)
    return fires or Skip("nothing new", cursor=repr(newest) if cursor else None)


def heartbeat():
    """Fire every poll with no context: with the default dedupe, a run never overlaps the last one."""
    return True


class DiskUsage:
    """A class trigger: set up once with ``args``, ``poll()`` each time, ``close()`` on shutdown."""

    def __init__(self, path: str = ".", above_percent: float = 90.0):
        self.path = path
        self.above = above_percent

    def poll(self):
        st = os.statvfs(self.path)
        used = 100.0 * (1 - st.f_bavail / st.f_blocks) if st.f_blocks else 0.0
        if used >= self.above:
            return {"path": self.path, "used_percent": round(used, 1)}
        return None

    def close(self):
        pass
