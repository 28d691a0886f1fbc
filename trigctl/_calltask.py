"""Child process of a `call:` task: python -m trigctl._calltask DOTTED BASE_DIR CONTEXT_FILE RESULT_FILE."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from trigctl.dotted import ResolveError, resolve

    dotted, base_dir, context_file, result_file = argv
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
    Path(result_file).write_text(json.dumps(result or {}, default=str))
    return 0


async def _await(value):
    return await value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
