"""Entry point of the ``dualwrite`` command: the app, assembled from the command modules.

Exit codes: 0 ok, 1 refused or failed, 2 bad input (spec, configuration, arguments). Each command group
lives in its own ``*_cmd.py`` module, which declares its commands on its own ``commands`` group and imports
only what ``--help`` needs; what a command does (and the Temporal SDK it needs) loads when it runs. Shared
pieces live in :mod:`starter.command` (exit codes, consoles, failures) and :mod:`starter.options`.
"""

from __future__ import annotations

import typer

from starter import audit_cmd, check_cmd, codec_cmd, demo_cmd, dev_cmd, migrations_cmd, steer_cmd, worker_cmd
from starter.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "app", "main"]

app = typer.Typer(
    name="dualwrite",
    help="Move a live application from an old database to a new one with dual writes, "
    "driven by durable Temporal workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# in the order `dualwrite --help` lists them (within each panel)
for _group in (audit_cmd, check_cmd, codec_cmd, worker_cmd, migrations_cmd, steer_cmd, demo_cmd, dev_cmd):
    app.add_typer(_group.commands)


def _register() -> None:
    """Nothing left to do: importing this module assembles :data:`app`. Kept for callers written when the
    command modules registered themselves on first use."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
