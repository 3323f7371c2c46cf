"""What ``dualwrite start`` and ``dualwrite list`` do: start a migration from its spec (after the single-owner
rule), and list migrations from Temporal's visibility store.

Loaded when one of them runs (it imports Temporal's SDK and the spec loader), never for ``--help``.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dualwrite.config import StoreResolver
from dualwrite.errors import SpecError
from dualwrite.owners import conflicts
from dualwrite.spec import MigrationSpec, load_spec
from starter.client import live_migrations, start_migration
from starter.command import EXIT_BAD_INPUT, CommandError, err, out
from starter.options import Target
from starter.render import migrations_table
from starter.session import operator, run
from workflows.models import (
    BACKFILL_PERCENT,
    MIGRATION_PHASE,
    WORKFLOW_ID_PREFIX,
    MigrationInput,
    workflow_id,
)

__all__ = ["WORKFLOW_TYPE", "list_migrations", "start", "ui_url"]

WORKFLOW_TYPE = "MigrationWorkflow"


def ui_url(address: str, namespace: str, wid: str | None = None) -> str | None:
    """The Web UI link for a workflow, when it can be known: ``DUALWRITE_UI_URL`` or a local dev server
    (whose UI listens on the gRPC port + 1000, as ``dualwrite dev`` and ``temporal server start-dev`` do)."""
    base = os.environ.get("DUALWRITE_UI_URL")
    if not base:
        host, _, port = address.rpartition(":")
        if host not in ("localhost", "127.0.0.1") or not port.isdigit():
            return None
        base = f"http://{host}:{int(port) + 1000}"
    url = f"{base.rstrip('/')}/namespaces/{namespace}/workflows"
    return f"{url}/{wid}" if wid else url


def _load(spec_path: Path) -> MigrationSpec:
    """The spec, validated; every problem is printed and the command exits 2."""
    try:
        return load_spec(spec_path)
    except SpecError as exc:
        err.print(f"[bold red]error:[/] {escape(spec_path.name)}: {escape(exc.headline)} "
                  f"({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''})")
        for p in exc.problems:
            err.print(f"  - {escape(str(p))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None


async def _owned_tables(client: Client, spec: MigrationSpec) -> list[str]:
    """The single-owner rule at start: tables of ``spec`` a running migration (another one) owns."""
    live = [m for m in await live_migrations(client) if m.name != spec.name]
    return [str(p) for p in conflicts(spec, live, StoreResolver())]


def start(spec_path: Path, target: Target, task_queue: str) -> None:
    """Start the migration of ``spec_path`` (see ``dualwrite start --help``)."""
    spec = _load(spec_path)

    async def body(client: Client) -> None:
        wid = workflow_id(spec.name)
        owned = await _owned_tables(client, spec)
        if owned:
            raise CommandError("\n".join([f"not started: {len(owned)} table(s) of {spec.name!r} belong to a "
                                          "running migration", *(f"  - {p}" for p in owned)]))
        try:
            # the one way migrations are started: static summary for the UI, search attributes from event 1
            handle = await start_migration(client, MigrationInput(spec=spec, started_by=operator()),
                                           task_queue=task_queue)
        except WorkflowAlreadyStartedError:
            raise CommandError(f"migration {spec.name!r} is already running (workflow {wid}); "
                               f"see `dualwrite status {spec.name}`") from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in exc.message.lower():
                raise CommandError(
                    f"the server has no search attribute MigrationPhase/BackfillPercent: {exc.message}. "
                    "Start it with `dualwrite dev`, or register them with `temporal operator search-attribute "
                    "create --name MigrationPhase --type Keyword` (and BackfillPercent Int)") from None
            raise
        out.print(f"started migration [bold]{escape(spec.name)}[/]: workflow {wid} (run {handle.result_run_id}) "
                  f"on task queue {escape(task_queue)}", soft_wrap=True)
        link = ui_url(target.address, target.namespace, wid)
        if link:
            out.print(f"Web UI: {link}", soft_wrap=True)
        out.print(f"follow it with `dualwrite status {escape(spec.name)} --watch`", soft_wrap=True)

    run(target, body)


def list_migrations(target: Target, *, running: bool, limit: int, as_json: bool) -> None:
    """Print the migrations the visibility store knows (see ``dualwrite list --help``)."""
    query = f'WorkflowType="{WORKFLOW_TYPE}" AND ExecutionStatus!="ContinuedAsNew"'
    if running:
        query += ' AND ExecutionStatus="Running"'

    async def body(client: Client) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        async for wf in client.list_workflows(query, limit=limit, rpc_timeout=timedelta(seconds=target.timeout)):
            sa = wf.typed_search_attributes
            rows.append({
                "name": wf.id.removeprefix(WORKFLOW_ID_PREFIX),
                "workflow_id": wf.id,
                "run_id": wf.run_id,
                "phase": sa.get(MIGRATION_PHASE),
                "backfill_percent": sa.get(BACKFILL_PERCENT),
                "status": wf.status.name if wf.status is not None else None,
                "start_time": wf.start_time,
                "close_time": wf.close_time,
                "task_queue": wf.task_queue,
            })
        return rows

    rows = run(target, body)
    if as_json:
        print(json.dumps(rows, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v), indent=2))
        return
    if not rows:
        out.print(f"no migrations in namespace {escape(target.namespace)} at {escape(target.address)}"
                  + (" (running)" if running else ""), soft_wrap=True)
        return
    out.print(migrations_table(rows, console=out))
