"""What the steering commands (``advance``, ``rollback``, ``abort``, ``pause``, ``resume``, ``approve``,
``hold``, ``verify``) do: send one operator Update to the migration's workflow and print its answer.

The workflow's validator decides, so a refusal comes back at once with its reason; the CLI only prints it
and exits 1. The CLI never decides what is legal itself (beyond parsing), so it cannot drift from the phase
machine.

Loaded when one of those commands runs (it imports Temporal's SDK and the workflow models), never for
``--help``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from starter.command import EXIT_FAILED, CommandError, err, fail, out
from starter.options import Target
from starter.render import gate_section, verification_section
from starter.session import completed, describe, no_answer, operator, parse_phase, query_status, run, status_name
from workflows.models import MigrationStatus, Phase, TransitionRequest, TransitionResult

__all__ = ["transition", "verify_and_wait"]


def transition(update: str, name: str, target: Target, *, to: str | None = None, reason: str = "",
               force: bool = False, dry_run: bool = False, tenant: str | None = None,
               confirm_cleanup: bool = False, drop: bool = False, confirm_drop: str = "",
               release: bool = False, leaving: str | None = None, override_stuck: bool = False) -> TransitionResult:
    """Send one operator Update and print its result; a refusal prints the validator's reason, exit 1.

    A gate evaluation that comes back with the result (a dry run, or an advance refused by its gate) is
    printed metric by metric, with what the move would change."""
    request = TransitionRequest(to=_phase_or_exit(to), reason=reason, force=force, dry_run=dry_run, tenant=tenant,
                                confirm_cleanup=confirm_cleanup, drop_old_tables=drop, confirm_drop=confirm_drop,
                                release=release, from_phase=_phase_or_exit(leaving),
                                override_stuck_repairs=override_stuck)

    async def body(client: Client) -> TransitionResult:
        return await _send(client, update, name, target, request)

    result = run(target, body)
    _print_result(update, name, tenant, dry_run, result)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)
    return result


def _phase_or_exit(text: str | None) -> Phase | None:
    try:
        return parse_phase(text)
    except CommandError as exc:
        fail(exc.message, exc.code)


async def _send(client: Client, update: str, name: str, target: Target,
                request: TransitionRequest) -> TransitionResult:
    handle, desc = await describe(client, name, target)
    wf_status = status_name(desc)
    if wf_status != "RUNNING":
        raise CommandError(f"migration {name!r} is not running (workflow {desc.id} is {wf_status})")
    leaving = request.from_phase
    if update == "advance" and leaving is None:
        # name the phase this advance leaves: a double click, a retry or a second operator moves one
        # phase, not two (the workflow answers a stale advance with a no-op)
        st = await query_status(handle, target, desc.task_queue)
        tenant = request.tenant
        row = next((t for t in st.tenants if t.tenant == tenant), None) if tenant is not None else None
        leaving = row.phase if row is not None else st.phase
    request = request.model_copy(update={"by": operator(), "from_phase": leaving})
    try:
        return cast(TransitionResult, await handle.execute_update(
            update, request, result_type=TransitionResult, rpc_timeout=timedelta(seconds=target.timeout)))
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        raise CommandError(f"{update} refused: {getattr(cause, 'message', None) or cause}") from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise CommandError(no_answer(target, desc.task_queue)) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise CommandError(f"migration {name!r} is no longer running: {exc.message}") from None
        raise


def _print_result(update: str, name: str, tenant: str | None, dry_run: bool, result: TransitionResult) -> None:
    """The answer on stdout (on stderr when refused by the handler: a failing gate, a rollback that could
    not level the stores), then the gate's evidence and what the move would change."""
    prefix = "dry run: " if dry_run and "dry run" not in result.message else ""
    who = f" tenant {escape(tenant)}" if tenant else ""
    line = (f"{prefix}{update} {escape(name)}{who}: {escape(result.message)} "
            f"(phase {result.phase.value}, epoch {result.epoch})")
    if result.ok:
        out.print(line, soft_wrap=True)
    else:
        err.print(f"[bold red]refused:[/] {line}")
    console: Console = out if result.ok else err
    if result.gate is not None:
        section = gate_section(result.gate.model_dump(mode="json"), console=out)
        if section is not None:
            console.print(section)
    if result.would:
        console.print(Text("would change:", style="bold"))
        for item in result.would:
            console.print(f"  - {escape(item)}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------
# verify --wait


def verify_and_wait(name: str, target: Target, *, reason: str, tenant: str | None, wait: bool) -> None:
    """``verify``: start a verification; with ``wait``, follow it to its end and exit 1 unless it is ok."""
    before = _last_verification_at(name, target) if wait else None
    transition("verify", name, target, reason=reason, tenant=tenant)
    if wait:
        _wait_for_verification(name, target, before)


def _last_verification_at(name: str, target: Target) -> datetime | None:
    async def body(client: Client) -> datetime | None:
        handle, desc = await describe(client, name, target)
        st = await query_status(handle, target, desc.task_queue, completed=completed(desc))
        return st.last_verification.at if st.last_verification else None

    return run(target, body)


def _wait_for_verification(name: str, target: Target, before: datetime | None) -> None:
    async def body(client: Client) -> MigrationStatus:
        handle, desc = await describe(client, name, target)
        with err.status("verifying…"):
            while True:
                st = await query_status(handle, target, desc.task_queue, completed=completed(desc))
                v = st.last_verification
                if v is not None and (before is None or v.at > before):
                    return st
                await asyncio.sleep(1.0)

    st = run(target, body)
    section = verification_section(st)
    if section is not None:
        out.print(section)
    if st.last_verification is None or not st.last_verification.ok:
        raise typer.Exit(EXIT_FAILED)
