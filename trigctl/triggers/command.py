"""`command` triggers: run a command; exit 0 fires (a JSON object on stdout is the context),
1 skips, anything else is an error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trigctl.triggers._util import MAX_STDOUT, RunningProcesses, parse_json, resolve_path, run_process
from trigctl.triggers.base import (
    PollContext,
    PollError,
    PollOutcome,
    TriggerType,
    check_context,
    edge_outcome,
    register,
)


@register
class CommandTrigger(TriggerType):
    type_name = "command"
    blocking = True
    default_dedupe_key = None  # the whole context

    def __init__(self, config, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        o = self.options
        if o.get("run") is not None:
            self.argv = ["/bin/sh", "-c", str(o["run"])]
        else:
            self.argv = [str(a) for a in o["argv"]]
        self.env = {str(k): str(v) for k, v in (o.get("env") or {}).items()}
        cwd = o.get("cwd")
        self.cwd = resolve_path(cwd, base_dir) if cwd else base_dir
        self.cwd_label = cwd or "."
        self._running = RunningProcesses()
        self.fire_on: str = o.get("fire_on", "condition")

    def poll(self, ctx: PollContext) -> PollOutcome:
        if not self.cwd.is_dir():
            raise PollError(f"cwd {self.cwd_label} is not a directory")
        env = {**os.environ, "TRIGCTL_TRIGGER": self.config.name, **self.env}
        result = run_process(self.argv, cwd=self.cwd, env=env, timeout=ctx.timeout, running=self._running)
        if result.returncode not in (0, 1):
            raise PollError(f"command failed: {result.describe_exit()}")
        if self.fire_on == "change":
            context = self.context_of(result.stdout) if result.returncode == 0 else None
            return edge_outcome(ctx, result.returncode == 0, context, result.describe_exit())
        if result.returncode == 1:
            return PollOutcome(skip_reason=result.describe_exit())
        return PollOutcome(fires=[self.context_of(result.stdout)])

    def close(self) -> None:
        self._running.terminate_all()  # shutdown or reload: a command still running is stopped

    @staticmethod
    def context_of(stdout: bytes) -> dict[str, Any]:
        """A JSON object on stdout is the context; any other output (or none) gives {}."""
        text = stdout.lstrip()
        if not text.startswith(b"{"):
            return {}
        if len(stdout) > MAX_STDOUT:
            raise PollError(f"command printed more than {MAX_STDOUT} bytes: too large for a context")
        value = parse_json(text)
        if not isinstance(value, dict):
            return {}
        return check_context(value, "the command's JSON output")
