"""One command's conversation with Temporal: connect, run the command's body, and turn every failure an
operator can meet at 3 a.m. (server down, no worker polling, unknown migration, a refused request) into one
plain sentence and an exit code; a traceback here means a bug.

Loaded when a command runs, never for ``dualwrite --help`` (it imports Temporal's SDK and the workflow
models).
"""

from __future__ import annotations

import asyncio
import gc
import getpass
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar, cast

import typer
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.service import RPCError, RPCStatusCode

from starter.client import connect as client_connect
from starter.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, CommandError, fail
from starter.options import Target
from workflows.models import PHASE_ORDER, MigrationStatus, Phase, workflow_id

__all__ = ["completed", "connect", "describe", "explain", "no_answer", "operator", "parse_phase", "query_status",
           "run", "status_name", "unreachable"]

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0


async def connect(target: Target) -> Client:
    """A client for ``target``; a server that cannot be reached is a :class:`CommandError`."""
    try:
        return await asyncio.wait_for(client_connect(target.address, target.namespace), timeout=CONNECT_TIMEOUT_S)
    except (TimeoutError, RuntimeError) as exc:
        raise CommandError(unreachable(target.address, exc)) from None


def unreachable(address: str, exc: BaseException | None = None) -> str:
    detail = ""
    text = str(exc or "")
    if "dns error" in text or "failed to lookup" in text:
        detail = " (unknown host)"
    elif "refused" in text.lower():
        detail = " (connection refused)"
    elif isinstance(exc, TimeoutError):
        detail = f" (no answer within {CONNECT_TIMEOUT_S:.0f}s)"
    return f"cannot reach Temporal at {address}{detail} — start one with `dualwrite dev`"


def no_answer(target: Target, task_queue: str | None = None) -> str:
    where = f" on task queue {task_queue!r}" if task_queue else ""
    return (f"no answer from the workflow within {target.timeout:.0f}s: is a worker running{where}? "
            "start one with `dualwrite worker`")


def operator() -> str:
    """Who asks: recorded with every transition (the OS user; containers may have no passwd entry)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - getpass raises various errors when there is no passwd entry
        return os.environ.get("USER") or "unknown"


def parse_phase(text: str | None) -> Phase | None:
    """``cutover-reads`` / ``CUTOVER_READS`` → Phase; anything else is bad input (exit 2)."""
    if text is None:
        return None
    key = text.strip().upper().replace("-", "_")
    try:
        return Phase(key)
    except ValueError:
        raise CommandError(f"unknown phase {text!r}: expected one of {', '.join(p.value for p in PHASE_ORDER)}",
                           EXIT_BAD_INPUT) from None


def run(target: Target, body: Callable[[Client], Awaitable[T]], *, interrupt_ok: bool = False) -> T:
    """Connect, run ``body``, and turn every expected failure into a message and an exit code.

    ``interrupt_ok``: Ctrl-C is the normal way out (``status --watch``), so it exits 0 silently.
    """

    async def main() -> T:
        client = await connect(target)
        return await body(client)

    code: int | None = None
    message = ""
    try:
        result = asyncio.run(main())
    except typer.Exit as exc:
        code = exc.exit_code
    except CommandError as exc:
        message, code = exc.message, exc.code
    except KeyboardInterrupt:
        message, code = ("", 0) if interrupt_ok else ("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - explain() turns the expected ones into a sentence, re-raises the rest
        message, code = explain(exc, target)
    # Collect the client now, while the interpreter is whole: left to interpreter teardown, the SDK's
    # Rust threads crash the process about one exit in five (PyGILState_Release, temporalio/sdk-python#300),
    # which would turn a clean exit code into 134.
    gc.collect()
    if code is not None:
        if message:
            fail(message, code)
        raise typer.Exit(code)
    return result


def explain(exc: Exception, target: Target) -> tuple[str, int]:
    """The sentence and exit code for an error Temporal answered with; anything else is raised again."""
    if isinstance(exc, RPCError):
        if exc.status == RPCStatusCode.UNAVAILABLE:
            return unreachable(target.address, exc), EXIT_FAILED
        if exc.status == RPCStatusCode.NOT_FOUND and "amespace" in exc.message:
            return (f"namespace {target.namespace!r} does not exist at {target.address} "
                    f"(`temporal operator namespace create {target.namespace}`)"), EXIT_BAD_INPUT
        if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            return no_answer(target), EXIT_FAILED
        return f"Temporal refused the request: {exc.message} ({exc.status.name})", EXIT_FAILED
    raise exc


async def describe(client: Client, name: str, target: Target) -> tuple[WorkflowHandle[Any, Any],
                                                                        WorkflowExecutionDescription]:
    """The migration's workflow handle and description; an unknown name is bad input (exit 2)."""
    handle = client.get_workflow_handle(workflow_id(name), result_type=MigrationStatus)
    try:
        desc = await handle.describe(rpc_timeout=timedelta(seconds=target.timeout))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND and "amespace" not in exc.message:
            raise CommandError(f"no migration named {name!r} (workflow {workflow_id(name)}) in namespace "
                               f"{target.namespace!r} at {target.address}; `dualwrite list` shows them",
                               EXIT_BAD_INPUT) from None
        raise
    # no run id: queries and updates follow the latest run across continue-as-new
    return handle, desc


def completed(desc: WorkflowExecutionDescription) -> bool:
    return desc.status == WorkflowExecutionStatus.COMPLETED


def status_name(desc: WorkflowExecutionDescription) -> str:
    return desc.status.name if desc.status is not None else "UNKNOWN"


async def query_status(handle: WorkflowHandle[Any, Any], target: Target, task_queue: str,
                       *, completed: bool = False) -> MigrationStatus:
    """The status query; for a completed migration its result (the final status), which needs no worker."""
    if completed:
        return cast(MigrationStatus, await handle.result(rpc_timeout=timedelta(seconds=target.timeout)))
    try:
        return cast(MigrationStatus, await handle.query("status", result_type=MigrationStatus,
                                                        rpc_timeout=timedelta(seconds=target.timeout)))
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as exc:
        raise CommandError(f"the status query failed: {exc}") from None
    except RPCError as exc:
        if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise CommandError(no_answer(target, task_queue)) from None
        raise
