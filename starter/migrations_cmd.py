"""The commands about whole migrations: ``start``, ``list`` and ``status``.

Their work is in :mod:`starter.migrations` and :mod:`starter.status_view`, loaded when a command runs (they
import Temporal's SDK); this module only declares the commands, so ``dualwrite --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from starter.command import command
from starter.defaults import DEFAULT_ADDRESS, DEFAULT_NAMESPACE, DEFAULT_TASK_QUEUE
from starter.options import Address, Name, Namespace, Target, TaskQueue, Timeout

__all__ = ["commands", "list_", "start", "status"]

commands = typer.Typer()


@command(commands, rich_help_panel="Migrations")
def start(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Migration spec (YAML).", show_default=False)],
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    task_queue: TaskQueue = DEFAULT_TASK_QUEUE,
) -> None:
    """Start the migration described by SPEC (workflow id dualwrite-<name>).

    The spec is validated here first and every problem is printed (exit 2). Store names are resolved by
    the workers, so no URL or secret leaves this machine. A migration that is already running is not
    started twice (exit 1).
    """
    from starter import migrations  # noqa: PLC0415 - Temporal loads when a command runs, not for --help

    migrations.start(spec_path, Target(address, namespace), task_queue)


@command(commands, "list", rich_help_panel="Migrations")
def list_(
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    running: Annotated[bool, typer.Option("--running", help="Only running migrations.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (one array) instead of a table.")] = False,
) -> None:
    """List migrations (from the visibility store): name, phase, backfill, status, start time."""
    from starter import migrations  # noqa: PLC0415 - Temporal loads when a command runs, not for --help

    migrations.list_migrations(Target(address, namespace), running=running, limit=limit, as_json=as_json)


@command(commands, rich_help_panel="Migrations")
def status(
    name: Name,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON (with --watch: one line "
                                                         "per change).")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until the migration is DONE or "
                                                              "Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between refreshes.")] = 2.0,
    history: Annotated[int, typer.Option("--history", min=0, help="Transitions shown.")] = 8,
    timeout: Timeout = 30.0,
) -> None:
    """Show a migration: phase, per-table backfill progress, counters, last verification, gate evidence
    and the transitions with who and why. Needs a running worker (the status is a workflow query), except
    for a completed migration, whose final status is the workflow's result."""
    from starter.status_view import show  # noqa: PLC0415 - Temporal loads when a command runs, not for --help

    show(name, Target(address, namespace, timeout), as_json=as_json, watch=watch, interval=interval,
         history=history)
