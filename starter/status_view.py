"""What ``dualwrite status`` does: show a migration once, or watch it until DONE.

Besides the workflow's own status query it says what that query cannot: a workflow that FAILED or was
TERMINATED (with the reason from its close event), one that is frozen because its workflow task keeps
failing, activities waiting for a worker slot (:mod:`starter.stalls`), writes the denial refused, and writes
that bypassed the adapter.

Loaded when ``status`` runs (it imports Temporal's SDK and the workflow models), never for ``--help``.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowHistoryEventFilterType,
)

from starter.command import EXIT_FAILED, CommandError, err, out
from starter.options import Target
from starter.render import render_status
from starter.session import completed, describe, query_status, run, status_name
from starter.stalls import find_stalls
from workflows.bypass import refusal_line
from workflows.models import MigrationStatus, Phase
from workflows.relay import RelayStatus, relay_workflow_id

__all__ = ["FROZEN_AFTER_ATTEMPTS", "show", "status_json", "workflow_problem"]

FROZEN_AFTER_ATTEMPTS = 2
"""A workflow task retried this often is failing, not unlucky (a worker killed mid-task costs one retry)."""

_CLOSED_BADLY = (WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.TERMINATED,
                 WorkflowExecutionStatus.TIMED_OUT, WorkflowExecutionStatus.CANCELED)


def show(name: str, target: Target, *, as_json: bool, watch: bool, interval: float, history: int) -> None:
    """``dualwrite status NAME`` (see its ``--help``); ``watch``: until DONE, Ctrl-C exits 0."""

    async def once(client: Client) -> None:
        await _show_once(client, name, target, as_json=as_json, history=history)

    async def watching(client: Client) -> None:
        await _watch(client, name, target, as_json=as_json, interval=interval, history=history)

    run(target, watching if watch else once, interrupt_ok=watch)


def status_json(status: MigrationStatus, desc: WorkflowExecutionDescription, problem: str | None = None) -> str:
    """The status as one JSON line, with the workflow's identity and state (and the problem, if any)."""
    doc = status.model_dump(mode="json")
    doc["workflow_id"] = desc.id
    doc["run_id"] = desc.run_id
    doc["workflow_status"] = status_name(desc)
    if problem:
        doc["problem"] = problem
    return json.dumps(doc)


# ---------------------------------------------------------------------------------------------------------
# once


async def _show_once(client: Client, name: str, target: Target, *, as_json: bool, history: int) -> None:
    handle, desc = await describe(client, name, target)
    problem = await workflow_problem(client, handle, desc)
    st = await _status_despite(handle, desc, target, problem)
    if st is not None:
        if as_json:
            print(status_json(st, desc, problem))
        else:
            out.print(render_status(st, workflow_status=status_name(desc), history=history, console=out))
            await _print_beyond_query(client, handle, st, name, target)
    elif as_json:
        print(json.dumps({"name": name, "workflow_id": desc.id, "run_id": desc.run_id,
                          "workflow_status": status_name(desc), "problem": problem}))
    if problem:
        raise CommandError(f"migration {name!r} {problem}")


async def _status_despite(handle: WorkflowHandle[Any, Any], desc: WorkflowExecutionDescription, target: Target,
                          problem: str | None) -> MigrationStatus | None:
    """The status; with a problem to report, a status that cannot be read (soon) is no news: None."""
    quick = Target(target.address, target.namespace, min(target.timeout, 5.0)) if problem else target
    try:
        return await query_status(handle, quick, desc.task_queue, completed=completed(desc))
    except Exception:
        if problem is None:
            raise
        return None


async def _print_beyond_query(client: Client, handle: WorkflowHandle[Any, Any], st: MigrationStatus, name: str,
                              target: Target) -> None:
    """What the status query cannot see: work waiting for a worker slot (or failing again and again), writes
    the denial refused, and writes that bypassed the adapter."""
    for stall in await find_stalls(client, handle.id):
        out.print(f"[yellow]waiting:[/] {escape(stall.text())}")
    refused = await _refused_writes(client, name, target)
    if refused:
        out.print("[yellow]writes refused (they bypassed dualwrite and reached the store that is "
                  "not authoritative):[/] " + ", ".join(f"{k} {v:,}" for k, v in sorted(refused.items())))
    if st.bypass is not None and st.bypass.total:
        seen = [f"{g.table}: {g.count:,} by {g.writer}"
                + (f", last {g.last_seen:%Y-%m-%d %H:%M:%S}" if g.last_seen else "")
                for g in st.bypass.groups[:10]]
        out.print(f"[yellow]writes that bypassed the adapter: {st.bypass.total:,}[/] ({'; '.join(seen)})")
    line = refusal_line(st.bypass)
    if line:
        out.print(escape(line))


async def _refused_writes(client: Client, name: str, target: Target) -> dict[str, int]:
    """The relay's count of denied writes (capture methods that deny writes on the store that is not
    authoritative); {} when there is no relay to ask."""
    try:
        rs = await client.get_workflow_handle(relay_workflow_id(name)).query(
            "status", result_type=RelayStatus, rpc_timeout=timedelta(seconds=min(5.0, target.timeout)))
    except Exception:  # noqa: BLE001 - no relay (sync, outbox before its start): nothing to say
        return {}
    return dict(rs.refused_writes)


# ---------------------------------------------------------------------------------------------------------
# what the status query cannot show


async def workflow_problem(client: Client, handle: WorkflowHandle[Any, Any],
                           desc: WorkflowExecutionDescription) -> str | None:
    """Why the migration is not healthy, as the end of a sentence, or None: its workflow FAILED, was
    TERMINATED, TIMED_OUT or CANCELED (with the reason from its close event), or it is frozen because its
    workflow task keeps failing (with the last failure), which no query can show."""
    status = desc.status
    if status in _CLOSED_BADLY:
        assert status is not None
        why = await _close_reason(handle)
        return f"is {status.name}" + (f": {why}" if why else "")
    if status != WorkflowExecutionStatus.RUNNING:
        return None
    pending = desc.raw_description.pending_workflow_task
    attempt = pending.attempt if desc.raw_description.HasField("pending_workflow_task") else 0
    if attempt < FROZEN_AFTER_ATTEMPTS:
        return None
    last = await _last_task_failure(client, desc)
    if last is None:  # timed out (a worker killed mid-task, or none polling): not the workflow's code
        return None
    return (f"is FROZEN: its workflow task keeps failing (attempt {attempt}): {last or 'no message'}; the worker "
            "cannot run the workflow's code: see the worker's log and fix the cause, then the task is retried by "
            "itself (or reset the workflow with `temporal workflow reset`)")


async def _close_reason(handle: WorkflowHandle[Any, Any]) -> str:
    """The failure message (and its cause) or the termination reason (and who) of a closed workflow."""
    why = ""
    async for e in handle.fetch_history_events(event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT):
        if e.HasField("workflow_execution_failed_event_attributes"):
            f = e.workflow_execution_failed_event_attributes.failure
            why = f.message + (f" ({f.cause.message})" if f.HasField("cause") and f.cause.message else "")
        elif e.HasField("workflow_execution_terminated_event_attributes"):
            a = e.workflow_execution_terminated_event_attributes
            why = (a.reason or "no reason given") + (f" (by {a.identity})" if a.identity else "")
    return why


async def _last_task_failure(client: Client, desc: WorkflowExecutionDescription) -> str | None:
    """The message of the newest workflow-task outcome when it is a failure (read from the end of the
    history); None when the newest outcome is a completion or a timeout."""
    resp = await client.workflow_service.get_workflow_execution_history_reverse(
        GetWorkflowExecutionHistoryReverseRequest(
            namespace=client.namespace, execution=WorkflowExecution(workflow_id=desc.id, run_id=desc.run_id),
            maximum_page_size=200))
    for e in resp.history.events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            msg = e.workflow_task_failed_event_attributes.failure.message
            return msg if len(msg) <= 300 else msg[:297] + "..."
        if e.event_type in (EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT):
            return None
    return None


# ---------------------------------------------------------------------------------------------------------
# --watch


class _Screen:
    """Where ``--watch`` shows each status: JSON lines (one per change), a live view on a terminal, or a
    ruled block per change in a log."""

    def __init__(self, *, as_json: bool, history: int) -> None:
        self.as_json = as_json
        self.history = history
        self.last = ""
        self.live = Live(console=out, auto_refresh=False, transient=False) if out.is_terminal and not as_json \
            else None

    def start(self) -> None:
        if self.live is not None:
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()

    def status(self, st: MigrationStatus, desc: WorkflowExecutionDescription) -> None:
        text = status_json(st, desc)
        wf_status = status_name(desc)
        if self.as_json:
            if text != self.last:
                print(text, flush=True)
        elif self.live is not None:
            stamp = Text(f"updated {time.strftime('%H:%M:%S')} — Ctrl-C to stop", style="grey50")
            self.live.update(Group(render_status(st, workflow_status=wf_status, history=self.history,
                                                 console=out, compact=True), stamp), refresh=True)
        elif text != self.last:
            out.rule(time.strftime("%H:%M:%S"))
            out.print(render_status(st, workflow_status=wf_status, history=self.history, console=out))
        self.last = text

    def problem(self, problem: str) -> None:
        if self.live is not None:
            self.live.update(Text(f"{problem} (retrying)", style="yellow"), refresh=True)
        else:
            err.print(f"{escape(problem)} (retrying)")


async def _watch(client: Client, name: str, target: Target, *, as_json: bool, interval: float,
                 history: int) -> None:
    handle, desc = await describe(client, name, target)
    screen = _Screen(as_json=as_json, history=history)
    screen.start()
    try:
        while True:
            desc, st, problem = await _poll(client, handle, desc, name, target)
            if st is not None:
                screen.status(st, desc)
                if st.phase == Phase.DONE:
                    return
            elif problem is not None:
                screen.problem(problem)
            wf_status = status_name(desc)
            if wf_status != "RUNNING":
                err.print(f"workflow {desc.id} is {wf_status}")
                raise typer.Exit(0 if wf_status == "COMPLETED" else EXIT_FAILED)
            await asyncio.sleep(interval)
    finally:
        screen.stop()


async def _poll(client: Client, handle: WorkflowHandle[Any, Any], desc: WorkflowExecutionDescription, name: str,
                target: Target) -> tuple[WorkflowExecutionDescription, MigrationStatus | None, str | None]:
    """The newest description, and the status or why there is none this time."""
    try:
        desc = await handle.describe(rpc_timeout=timedelta(seconds=target.timeout))
        return desc, await query_status(handle, target, desc.task_queue, completed=completed(desc)), None
    except CommandError as exc:  # a worker restarting: keep watching, say so
        frozen = await workflow_problem(client, handle, desc)
        if frozen:  # not a restarting worker: the workflow code fails on every attempt
            return desc, None, f"migration {name!r} {frozen}"
        return desc, None, exc.message
