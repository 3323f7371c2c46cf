"""Options several commands share, declared once so their flags, environment variables and help agree, and
:class:`Target`, where the options say the CLI talks to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from starter.defaults import ADDRESS_ENV, NAMESPACE_ENV, TASK_QUEUE_ENV

__all__ = ["Address", "ConfigFile", "ConfirmCleanup", "ConfirmDrop", "Drop", "DryRun", "Name", "Namespace",
           "OverrideStuck", "PhaseOpt", "Reason", "RequiredReason", "Target", "TaskQueue", "TenantOpt", "Timeout"]

# ---------------------------------------------------------------------------------------------------------
# where Temporal is

Address = Annotated[str, typer.Option(
    "--address", envvar=ADDRESS_ENV, show_envvar=True, help="Temporal frontend (host:port).")]
Namespace = Annotated[str, typer.Option(
    "--namespace", envvar=NAMESPACE_ENV, show_envvar=True, help="Temporal namespace.")]
TaskQueue = Annotated[str, typer.Option(
    "--task-queue", envvar=TASK_QUEUE_ENV, show_envvar=True, help="Task queue the workers poll.")]
ConfigFile = Annotated[Path | None, typer.Option(
    "--config", envvar="DUALWRITE_CONFIG", show_envvar=True,
    help="Config file naming store URLs (default ./dualwrite.yaml).")]
Timeout = Annotated[float, typer.Option(
    "--timeout", min=1.0, help="Seconds to wait for the workflow to answer (a worker must be running).")]

# ---------------------------------------------------------------------------------------------------------
# which migration, and what to do with it

Name = Annotated[str, typer.Argument(metavar="NAME", help="Migration name (the spec's 'name').",
                                     show_default=False)]
Reason = Annotated[str, typer.Option("--reason", help="Why; recorded in the transition history.")]
RequiredReason = Annotated[str, typer.Option("--reason", help="Why (required; recorded).", show_default=False)]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Ask whether the move is allowed; change nothing.")]
PhaseOpt = Annotated[str | None, typer.Option(
    "--to", metavar="PHASE", show_default=False,
    help="Target phase (PREPARE, DUAL_WRITE, BACKFILL, SHADOW_READ, CUTOVER_READS, CUTOVER_WRITES, CLEANUP, "
         "DONE; case-insensitive).")]
TenantOpt = Annotated[str | None, typer.Option(
    "--tenant", metavar="ID", show_default=False,
    help="Only this tenant (a spec with a `tenants` section moves tenants one by one).")]
OverrideStuck = Annotated[bool, typer.Option(
    "--override-stuck-repairs",
    help="Move authority although repair-queue keys of the moving scope cannot be mirrored into the store that "
         "becomes authoritative (the refusal names the tables, counts and errors): those keys take that store's "
         "rows, their writes on the other store are overwritten. Needs --reason; recorded in the transition.")]
ConfirmCleanup = Annotated[bool, typer.Option(
    "--confirm-cleanup", help="Confirm entering CLEANUP, the point of no return: mirroring stops, capture "
                              "is removed, the old tables are renamed (or dropped with --drop).")]
Drop = Annotated[bool, typer.Option(
    "--drop", help="CLEANUP drops the old tables instead of renaming them; asks you to type the migration's "
                   "name (or give it with --confirm-drop NAME).")]
ConfirmDrop = Annotated[str, typer.Option(
    "--confirm-drop", metavar="NAME", help="The migration's name, confirming --drop without a prompt.")]


@dataclass(frozen=True)
class Target:
    """Where the CLI talks to: kept together so every error message can name it."""

    address: str
    namespace: str
    timeout: float = 30.0
