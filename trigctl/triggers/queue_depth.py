"""`queue_depth` triggers: measure a backlog (files in a directory, a command's number, a JSON
field of an HTTP API, an SQLite query) and fire while it is `>= above` or `<= below`."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from trigctl.triggers._util import (
    NOT_JSON,
    RunningProcesses,
    as_number,
    http_request,
    jmes_search,
    new_session,
    resolve_path,
    run_process,
)
from trigctl.triggers.base import PollContext, PollError, PollOutcome, TriggerType, edge_outcome, register

_INTEGER = re.compile(r"[+-]?\d+")


@register
class QueueDepthTrigger(TriggerType):
    type_name = "queue_depth"
    blocking = True
    default_dedupe_key = ("queue",)  # one run per active backlog, not one per poll

    def __init__(self, config, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        o = self.options
        self.queue: str = str(o["queue"])
        self.above: float | None = o.get("above")
        self.below: float | None = o.get("below")
        ((self.kind, self.spec),) = dict(o["source"]).items()
        self._jmes: Any = None
        self._session: Any = None
        self._running = RunningProcesses()
        if self.kind == "http":
            import jmespath

            self._jmes = jmespath.compile(self.spec["json"])
        self.fire_on: str = o.get("fire_on", "condition")

    @classmethod
    def check(cls, options: Mapping[str, Any], base_dir: Path) -> list[tuple[tuple, str]]:
        above, below = options.get("above"), options.get("below")
        if isinstance(above, (int, float)) and isinstance(below, (int, float)) and below >= above:
            return [(("below",), f"below ({below:g}) is not less than above ({above:g}): every depth would fire")]
        return []

    # ------------------------------------------------------------------------------- the sources

    def _depth_directory(self, timeout: float) -> int:
        folder = resolve_path(self.spec, self.base_dir)
        try:
            with os.scandir(folder) as it:
                # Dotfiles are not jobs: .gitkeep, and the temporary files tools write before a rename.
                return sum(1 for entry in it if not entry.name.startswith(".") and entry.is_file())
        except FileNotFoundError:
            raise PollError(f"directory {self.spec} does not exist") from None
        except NotADirectoryError:
            raise PollError(f"{self.spec} is not a directory") from None
        except OSError as e:
            raise PollError(f"cannot read directory {self.spec}: {e.strerror}") from None

    def _depth_command(self, timeout: float) -> int:
        result = run_process(["/bin/sh", "-c", self.spec], cwd=self.base_dir, timeout=timeout, running=self._running)
        if result.returncode != 0:
            raise PollError(f"depth command failed: {result.describe_exit()}")
        text = result.stdout.decode("utf-8", errors="replace").strip()
        if not _INTEGER.fullmatch(text):
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise PollError(f"depth command printed {shown!r}, not an integer")
        return int(text)

    def _depth_http(self, timeout: float) -> int | float:
        if self._session is None:
            self._session = new_session()
        spec = self.spec
        headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
        resp = http_request(self._session, str(spec.get("method", "GET")), spec["url"], timeout=timeout,
                            headers=headers, verify=bool(spec.get("verify_tls", True)))
        if not 200 <= resp.status < 300:
            raise PollError(f"depth request returned status {resp.status}")
        body = resp.json()
        if body is NOT_JSON:
            raise PollError("depth response is not JSON")
        value = as_number(jmes_search(self._jmes, body, "source.http.json"))
        if value is None:
            raise PollError(f"source.http.json {spec['json']!r} does not select a number")
        return value

    def _depth_sqlite(self, timeout: float) -> int | float:
        spec = self.spec
        path = resolve_path(spec["path"], self.base_dir).resolve()
        if not path.is_file():
            raise PollError(f"sqlite database {spec['path']} does not exist")
        deadline = time.monotonic() + timeout
        try:
            conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=timeout)
        except sqlite3.Error as e:
            raise PollError(f"cannot open sqlite database {spec['path']}: {e}") from None
        try:
            # A query that runs past the poll timeout is interrupted instead of holding the thread.
            conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
            row = conn.execute(spec["query"]).fetchone()
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                raise PollError(f"sqlite query timed out after {timeout:g}s") from None
            raise PollError(f"sqlite query failed: {e}") from None
        except sqlite3.Error as e:
            raise PollError(f"sqlite query failed: {e}") from None
        finally:
            conn.close()
        value = as_number(row[0]) if row else None
        if value is None:
            got = "no row" if not row else repr(row[0])
            raise PollError(f"sqlite query must return one number, got {got}")
        return value

    # ----------------------------------------------------------------------------------- polling

    def _threshold_text(self) -> str:
        parts = []
        if self.above is not None:
            parts.append(f">= {self.above:g}")
        if self.below is not None:
            parts.append(f"<= {self.below:g}")
        return "fires at " + " or ".join(parts)

    def poll(self, ctx: PollContext) -> PollOutcome:
        depth = getattr(self, f"_depth_{self.kind}")(ctx.timeout)
        fires = (self.above is not None and depth >= self.above) or (self.below is not None and depth <= self.below)
        if self.fire_on == "change":
            return edge_outcome(ctx, bool(fires), {"queue": self.queue, "depth": depth},
                                f"depth {depth} ({self._threshold_text()})")
        if not fires:
            return PollOutcome(skip_reason=f"depth {depth} ({self._threshold_text()})")
        return PollOutcome(fires=[{"queue": self.queue, "depth": depth}])

    def close(self) -> None:
        self._running.terminate_all()
        session, self._session = self._session, None
        if session is not None:
            session.close()
