"""Shell completion of trigger names and run ids (click's completion: `_TRIGCTL_COMPLETE=bash_source
trigctl`, see docs/deployment.md). A completion runs at every Tab, so it reads what `list` and
`history` read, never raises (a broken YAML or a missing state completes nothing) and never writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported at a Tab, not at every start (cli.py names these functions)
    import click
    from click.shell_completion import CompletionItem


def _where(ctx: click.Context) -> dict[str, Any]:
    # -c/--state given before the word being completed (options after it are not parsed yet)
    return {"config_path": ctx.params.get("config_path"), "state": ctx.params.get("state")}


def trigger_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    from trigctl import api

    try:
        triggers = api.list_triggers(**_where(ctx))
    except Exception:  # noqa: BLE001 - a Tab never shows a traceback
        return []
    taken = set(ctx.params.get(param.name or "") or ())  # `enable a b <Tab>`: not a or b again
    return [CompletionItem(t.name, help=f"{t.type}, {'enabled' if t.enabled else 'disabled'}")
            for t in triggers if t.name.startswith(incomplete) and t.name not in taken]


def _run_ids(ctx: click.Context, incomplete: str, active_only: bool) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    from trigctl import api

    statuses = ["queued", "running"] if active_only else None
    try:
        entries = api.history(limit=200, statuses=statuses, **_where(ctx))
    except Exception:  # noqa: BLE001
        return []
    items, seen = [], set()
    for e in entries:  # newest first
        if e.kind == "fire" and e.run_id is not None and e.run_id not in seen and str(e.run_id).startswith(incomplete):
            seen.add(e.run_id)
            items.append(CompletionItem(str(e.run_id), help=f"{e.trigger_name} {e.status or ''}".strip()))
    return items


def run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Recent runs, newest first (for `show`)."""
    return _run_ids(ctx, incomplete, active_only=False)


def active_run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Queued and running runs (for `cancel`)."""
    return _run_ids(ctx, incomplete, active_only=True)
