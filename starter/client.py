"""Connecting to Temporal the one way this project does it: with the pydantic data converter.

Client code (the CLI, the demo, tests and benchmarks, and the worker's single-owner lookup) starts, lists and
reads migrations through these functions; none of it runs inside a workflow."""

from __future__ import annotations

import os
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from dualwrite.codec import data_converter
from dualwrite.owners import LiveMigration
from starter.defaults import ADDRESS_ENV, DEFAULT_ADDRESS, DEFAULT_NAMESPACE, NAMESPACE_ENV
from workflows.models import (
    BACKFILL_PERCENT,
    MIGRATION_PHASE,
    TASK_QUEUE,
    MigrationInput,
    MigrationStatus,
    Phase,
    workflow_id,
)

__all__ = ["connect", "default_address", "default_namespace", "live_migrations", "start_migration"]


def default_address() -> str:
    return os.environ.get(ADDRESS_ENV, DEFAULT_ADDRESS)


def default_namespace() -> str:
    return os.environ.get(NAMESPACE_ENV, DEFAULT_NAMESPACE)


async def connect(address: str | None = None, namespace: str | None = None) -> Client:
    """A client whose payloads are pydantic models (every workflow, update and query here expects that),
    encrypted with ``$DUALWRITE_PAYLOAD_KEY`` when it is set (:mod:`dualwrite.codec`)."""
    return await Client.connect(
        address or default_address(),
        namespace=namespace or default_namespace(),
        data_converter=data_converter(),
    )


async def start_migration(client: Client, inp: MigrationInput, *, task_queue: str = TASK_QUEUE,
                          ) -> WorkflowHandle[Any, MigrationStatus]:
    """Start ``MigrationWorkflow`` the standard way: id ``dualwrite-<name>``, a static summary for the Web
    UI, and the search attributes set from the first event. Raises ``WorkflowAlreadyStartedError`` if a
    migration of that name is running."""
    spec = inp.spec
    tables = ", ".join(t.source if t.target_table == t.source else f"{t.source}→{t.target_table}"
                       for t in spec.tables)
    return await client.start_workflow(
        "MigrationWorkflow",
        inp,
        id=workflow_id(spec.name),
        task_queue=task_queue,
        result_type=MigrationStatus,
        static_summary=f"dualwrite {spec.name}: {spec.old} → {spec.new} ({spec.mode.value}, {spec.strategy.value})",
        static_details=(f"**{spec.name}**: move {len(spec.tables)} table(s) from store `{spec.old}` to "
                        f"`{spec.new}`\n\ntables: {tables}\n\nstarted by: {inp.started_by or '?'}"),
        search_attributes=TypedSearchAttributes([SearchAttributePair(MIGRATION_PHASE, Phase.PREPARE.value),
                                                 SearchAttributePair(BACKFILL_PERCENT, 0)]),
    )


async def live_migrations(client: Client) -> list[LiveMigration]:
    """Every running migration with the spec it was started with, for the single-owner rule.

    Visibility lists the running ``MigrationWorkflow`` executions; the spec is read from the first event of
    each one's current run (its input), so it is there however the migration was started (CLI, Web UI,
    API) and whether or not a worker is up. DONE, failed, terminated and aborted migrations are not
    running and own nothing."""
    out: list[LiveMigration] = []
    query = 'WorkflowType="MigrationWorkflow" AND ExecutionStatus="Running"'
    async for wf in client.list_workflows(query):
        phase = wf.typed_search_attributes.get(MIGRATION_PHASE) or Phase.PREPARE.value
        if phase == Phase.DONE.value:
            continue
        handle = client.get_workflow_handle(wf.id, run_id=wf.run_id)
        async for event in handle.fetch_history_events(page_size=1):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            if payloads:
                (inp,) = await client.data_converter.decode(payloads, [MigrationInput])
                out.append(LiveMigration(name=inp.spec.name, phase=phase, started=wf.start_time, spec=inp.spec))
            break
    return out
