"""Child process of a `call:` task, started by trigctl as

    python -I -c BOOT TRIGCTL_ROOT DOTTED BASE_DIR CONTEXT_FILE RESULT_FILE PATH_SPEC

(see ``call_argv`` in trigctl/workflows.py). ``-I`` keeps the task's working directory, which may be
an inbox others write to, off sys.path from the interpreter's first import on: a dropped-in
``json.py`` or ``typing.py`` is never imported. PATH_SPEC (JSON) names what trigctl adds: PYTHONPATH's
entries (absolute) and the user's site-packages when trigctl's own interpreter uses them. The YAML
file's directory is first on sys.path while the callable is imported.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

MAX_RESULT_BYTES = 1 << 20  # as MAX_TASK_RESULT_BYTES in trigctl/workflows.py, which also checks it


def _extend_path(spec: str) -> None:
    paths = json.loads(spec)
    sys.path[0:0] = [p for p in paths.get("pythonpath", []) if isinstance(p, str) and p.startswith("/")]
    user_site = paths.get("user_site")
    if isinstance(user_site, str) and user_site.startswith("/"):
        import site

        site.addsitedir(user_site)


def main(argv: list[str]) -> int:
    from trigctl.dotted import ResolveError, resolve

    dotted, base_dir, context_file, result_file = argv[:4]
    if len(argv) > 4:
        _extend_path(argv[4])
    context = json.loads(Path(context_file).read_text())
    try:
        fn = resolve(dotted, Path(base_dir))
    except ResolveError as e:
        print(f"trigctl: {e}", file=sys.stderr)
        return 2
    result = fn(context)
    if inspect.isawaitable(result):
        import asyncio

        result = asyncio.run(_await(result))
    if result is not None and not isinstance(result, dict):
        print(f"trigctl: {dotted} returned {type(result).__name__}; expected a dict or None", file=sys.stderr)
        return 1
    text = json.dumps(result or {}, default=str)
    if len(text) > MAX_RESULT_BYTES:  # refused here too, so that it never fills the run's directory
        print(f"trigctl: the result of {dotted} is larger than 1 MiB ({len(text)} bytes as JSON)", file=sys.stderr)
        return 1
    Path(result_file).write_text(text)
    return 0


async def _await(value):
    return await value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
