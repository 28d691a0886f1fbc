"""Cron expressions as people write them: five fields, or a nickname such as ``@daily``.

Kept apart from the schedule trigger so that the schema check can use it without importing the
trigger types. A nickname is expanded to its five fields before croniter sees it, so every rule
that reads the fields (Vixie cron's "wildcard job" through a repeated hour) applies to it as well.
"""

from __future__ import annotations

#: The nicknames of Vixie cron and croniter (``@reboot`` has no meaning for a schedule: not accepted).
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def expand(expr: str) -> str:
    """The five fields of ``expr``: a nickname's, or ``expr`` itself (stripped)."""
    text = expr.strip()
    return NICKNAMES.get(text.lower(), text)


def problem(expr: str) -> str | None:
    """Why ``expr`` is not a cron expression trigctl accepts, or None."""
    from croniter import croniter

    fields = expand(expr)
    if fields.startswith("@"):
        return f'"{expr}" is not a cron nickname (known: {", ".join(NICKNAMES)})'
    if len(fields.split()) != 5:
        return f'"{expr}" is not a 5-field cron expression (minute hour day month weekday) or a nickname such as @daily'
    if not croniter.is_valid(fields):
        return f'"{expr}" is not a valid cron expression'
    return None
