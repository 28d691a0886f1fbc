"""Options that every command takes, wherever people put them: `trigctl --debug run` and
`trigctl run --debug`, `trigctl -c x.yaml list` and `trigctl list -c x.yaml`. And a command list
in `--help` that shows whole descriptions (wrapped), not ones cut with "...".
"""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

CONFIG_HELP = "The triggers YAML [env TRIGCTL_CONFIG; default ./triggers.yaml]"
STATE_HELP = "State: SQLite path or postgresql:// URL [env TRIGCTL_STATE; default: the file's state:]"
DEBUG_HELP = "Show tracebacks for internal errors."


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().params["debug"] = True


def _before_the_command(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A value given before the command counts unless one is given after it (the environment and
    the default come after both)."""
    if ctx.get_parameter_source(param.name or "") is not ParameterSource.COMMANDLINE:
        given = ctx.find_root().params.get(param.name or "")
        if given is not None:
            return given
    return value


def debug_option(fn):
    return click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug, help=DEBUG_HELP)(fn)


def config_only_option(fn):
    return click.option("-c", "--config", "config_path", metavar="PATH", envvar="TRIGCTL_CONFIG",
                        callback=_before_the_command, help=CONFIG_HELP)(fn)


def config_option(fn):
    """-c/--config, --state and --debug, for a command."""
    fn = debug_option(fn)
    fn = click.option("--state", "state", metavar="PATH_OR_URL", envvar="TRIGCTL_STATE", callback=_before_the_command,
                      help=STATE_HELP)(fn)
    return config_only_option(fn)


def group_options(fn):
    """The same options before the command (no environment variables here: the command reads them,
    so that one given before the command is not hidden by the environment)."""
    fn = click.option("--debug", is_flag=True, help=DEBUG_HELP)(fn)
    fn = click.option("--state", "state", metavar="PATH_OR_URL", help="State (also after the command).")(fn)
    return click.option("-c", "--config", "config_path", metavar="PATH", help="The triggers YAML (also after the command).")(fn)


def description(cmd: click.Command) -> str:
    """A command's first paragraph, whole."""
    text = (cmd.short_help or cmd.help or "").strip()
    return " ".join(text.split("\n\n")[0].split())


def format_commands(group: click.Group, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    rows = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is not None and not cmd.hidden:
            rows.append((name, description(cmd)))
    if rows:
        with formatter.section("Commands"):
            formatter.write_dl(rows)
