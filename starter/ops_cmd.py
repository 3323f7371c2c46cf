"""Operator commands: ``worker``, ``start``, ``list``, ``status``, and the transitions (``advance``,
``rollback``, ``pause``, ``resume``, ``approve``, ``hold``, ``verify``, ``abort``), each with ``--tenant`` where a
migration moves tenant by tenant.

Each transition is a Temporal Update on the migration's workflow, so the workflow's validator decides and
a refusal comes back at once with its reason; the CLI only prints it and exits 1. The CLI never decides
what is legal itself (beyond parsing), so it cannot drift from the phase machine.

Errors an operator can meet at 3 a.m. (server down, no worker polling, unknown migration, a refused
transition) are turned into one plain sentence and an exit code; a traceback here means a bug.
"""

from __future__ import annotations

import asyncio
import gc
import getpass
import inspect
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape

from starter.cli import EXIT_BAD_INPUT, EXIT_FAILED, app

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowExecutionDescription, WorkflowHandle

    from workflows.models import MigrationStatus, Phase, TransitionResult

T = TypeVar("T")

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
DEFAULT_TASK_QUEUE = "dualwrite"
WORKFLOW_TYPE = "MigrationWorkflow"
CONNECT_TIMEOUT_S = 10.0

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# ---------------------------------------------------------------------------------------------------------
# Options shared by every command that talks to Temporal

Address = Annotated[str, typer.Option(
    "--address", envvar="DUALWRITE_TEMPORAL_ADDRESS", show_envvar=True,
    help="Temporal frontend (host:port).")]
Namespace = Annotated[str, typer.Option(
    "--namespace", envvar="DUALWRITE_NAMESPACE", show_envvar=True, help="Temporal namespace.")]
TaskQueue = Annotated[str, typer.Option(
    "--task-queue", envvar="DUALWRITE_TASK_QUEUE", show_envvar=True,
    help="Task queue the workers poll.")]
ConfigFile = Annotated[Path | None, typer.Option(
    "--config", envvar="DUALWRITE_CONFIG", show_envvar=True,
    help="Config file naming store URLs (default ./dualwrite.yaml).")]
Name = Annotated[str, typer.Argument(metavar="NAME", help="Migration name (the spec's 'name').",
                                     show_default=False)]
Timeout = Annotated[float, typer.Option(
    "--timeout", min=1.0, help="Seconds to wait for the workflow to answer (a worker must be running).")]
Reason = Annotated[str, typer.Option("--reason", help="Why; recorded in the transition history.")]


def unwrap(doc: str | None) -> str:
    """A docstring as help text: typer keeps single line breaks, so join each paragraph's lines and let
    the terminal width decide where lines break."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def command(name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``app.command`` with the docstring (unwrapped) as help text."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        kwargs.setdefault("help", unwrap(fn.__doc__))
        return app.command(name, **kwargs)(fn)

    return register


class CliFailure(Exception):
    """A failure to report as one sentence with an exit code, never as a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Target:
    """Where the CLI talks to: kept together so every error message can name it."""

    address: str
    namespace: str
    timeout: float = 30.0

    async def connect(self) -> Client:
        from temporalio.client import Client

        from dualwrite.codec import data_converter

        try:
            return await asyncio.wait_for(
                Client.connect(self.address, namespace=self.namespace, data_converter=data_converter()),
                timeout=CONNECT_TIMEOUT_S)
        except (TimeoutError, RuntimeError) as exc:
            raise CliFailure(unreachable(self.address, exc)) from None


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


def operator() -> str:
    """Who asks: recorded with every transition (the OS user; containers may have no passwd entry)."""
    try:
        return getpass.getuser()
    except Exception:  # getpass raises various errors when there is no passwd entry
        return os.environ.get("USER") or "unknown"


def workflow_id(name: str) -> str:
    from workflows.models import workflow_id as wid

    return wid(name)


def parse_phase(text: str | None) -> Phase | None:
    """``cutover-reads`` / ``CUTOVER_READS`` → Phase; anything else is bad input (exit 2)."""
    from workflows.models import PHASE_ORDER, Phase

    if text is None:
        return None
    key = text.strip().upper().replace("-", "_")
    try:
        return Phase(key)
    except ValueError:
        raise CliFailure(f"unknown phase {text!r}: expected one of {', '.join(p.value for p in PHASE_ORDER)}",
                         EXIT_BAD_INPUT) from None


def run(target: Target, body: Callable[[Client], Awaitable[T]], *, interrupt_ok: bool = False) -> T:
    """Connect, run ``body``, and turn every expected failure into a message and an exit code.

    ``interrupt_ok``: Ctrl-C is the normal way out (``status --watch``), so it exits 0 silently.
    """

    async def main() -> T:
        client = await target.connect()
        return await body(client)

    code: int | None = None
    message = ""
    try:
        result = asyncio.run(main())
    except typer.Exit as exc:
        code = exc.exit_code
    except CliFailure as exc:
        message, code = exc.message, exc.code
    except KeyboardInterrupt:
        message, code = ("", 0) if interrupt_ok else ("interrupted", 130)
    except Exception as exc:
        message, code = _explain(exc, target)
    # Collect the client now, while the interpreter is whole: left to interpreter teardown, the SDK's
    # Rust threads crash the process about one exit in five (PyGILState_Release, temporalio/sdk-python#300),
    # which would turn a clean exit code into 134.
    gc.collect()
    if code is not None:
        if message:
            fail(message, code)
        raise typer.Exit(code)
    return result


def _explain(exc: Exception, target: Target) -> tuple[str, int]:
    from temporalio.service import RPCError, RPCStatusCode

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


def no_answer(target: Target, task_queue: str | None = None) -> str:
    where = f" on task queue {task_queue!r}" if task_queue else ""
    return (f"no answer from the workflow within {target.timeout:.0f}s: is a worker running{where}? "
            "start one with `dualwrite worker`")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}" if code != 130 else escape(message))
    raise typer.Exit(code)


async def describe(client: Client, name: str, target: Target) -> tuple[WorkflowHandle[Any, Any],
                                                                        WorkflowExecutionDescription]:
    """The migration's workflow handle and description; an unknown name is bad input (exit 2)."""
    from temporalio.service import RPCError, RPCStatusCode

    from workflows.models import MigrationStatus

    handle = client.get_workflow_handle(workflow_id(name), result_type=MigrationStatus)
    try:
        desc = await handle.describe(rpc_timeout=timedelta(seconds=target.timeout))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND and "amespace" not in exc.message:
            raise CliFailure(f"no migration named {name!r} (workflow {workflow_id(name)}) in namespace "
                             f"{target.namespace!r} at {target.address}; `dualwrite list` shows them",
                             EXIT_BAD_INPUT) from None
        raise
    # no run id: queries and updates follow the latest run across continue-as-new
    return handle, desc


def _completed(desc: WorkflowExecutionDescription) -> bool:
    from temporalio.client import WorkflowExecutionStatus

    return desc.status == WorkflowExecutionStatus.COMPLETED


def _status_name(desc: WorkflowExecutionDescription) -> str:
    return desc.status.name if desc.status is not None else "UNKNOWN"


async def query_status(handle: WorkflowHandle[Any, Any], target: Target, task_queue: str,
                       *, completed: bool = False) -> MigrationStatus:
    """The status query; for a completed migration its result (the final status), which needs no worker."""
    from temporalio.client import WorkflowQueryFailedError, WorkflowQueryRejectedError
    from temporalio.service import RPCError, RPCStatusCode

    from workflows.models import MigrationStatus

    if completed:
        return cast(MigrationStatus, await handle.result(rpc_timeout=timedelta(seconds=target.timeout)))
    try:
        return cast(MigrationStatus, await handle.query("status", result_type=MigrationStatus,
                                                        rpc_timeout=timedelta(seconds=target.timeout)))
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as exc:
        raise CliFailure(f"the status query failed: {exc}") from None
    except RPCError as exc:
        if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise CliFailure(no_answer(target, task_queue)) from None
        raise


# ---------------------------------------------------------------------------------------------------------
# worker


@command(rich_help_panel="Run")
def worker(
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    task_queue: TaskQueue = DEFAULT_TASK_QUEUE,
    config: ConfigFile = None,
    max_activities: Annotated[int | None, typer.Option(
        "--max-activities", min=1, envvar="DUALWRITE_MAX_ACTIVITIES", show_envvar=True, show_default="8",
        help="Concurrent activities (backfill ranges, verifications) on this worker.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=1, max=65535, envvar="DUALWRITE_METRICS_PORT", show_envvar=True,
        help="Serve Temporal runtime metrics for Prometheus on this port.")] = None,
) -> None:
    """Run a worker: executes the migration workflows and their activities; store names are resolved to
    URLs here (DUALWRITE_STORE_<NAME> or --config), and only here.

    Start as many as you like on any machines, all on the same task queue: backfill ranges spread over
    them. Stops gracefully on Ctrl-C or SIGTERM, checkpointing the batches in flight.
    """
    if config is not None and not config.is_file():
        fail(f"config file {config} does not exist", EXIT_BAD_INPUT)
    import worker as worker_module

    cfg = worker_module.WorkerConfig.from_env(
        address=address, namespace=namespace, task_queue=task_queue,
        config_file=str(config) if config is not None else None, max_activities=max_activities,
        metrics_port=metrics_port)
    from dualwrite.logs import configure

    configure()  # JSON lines in production, console lines on a terminal; credentials redacted
    err.print(f"worker on task queue {escape(task_queue)} at {escape(address)} (namespace {escape(namespace)})"
              " — Ctrl-C to stop")
    message = ""
    try:
        asyncio.run(worker_module.run_worker(cfg))
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        if "client connect" not in str(exc).lower():
            raise
        message = unreachable(address, exc)
    except Exception as exc:
        message, _code = _explain(exc, Target(address, namespace))
    gc.collect()  # see run(): collect the client before interpreter teardown
    if message:
        fail(message)


# ---------------------------------------------------------------------------------------------------------
# start


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


@command(rich_help_panel="Migrations")
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
    from dualwrite.errors import SpecError
    from dualwrite.spec import load_spec

    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        err.print(f"[bold red]error:[/] {escape(spec_path.name)}: {escape(exc.headline)} "
                  f"({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''})")
        for p in exc.problems:
            err.print(f"  - {escape(str(p))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None

    target = Target(address, namespace)

    async def body(client: Client) -> None:
        from temporalio.exceptions import WorkflowAlreadyStartedError
        from temporalio.service import RPCError, RPCStatusCode

        from workflows.client import start_migration
        from workflows.models import MigrationInput

        wid = workflow_id(spec.name)
        owned = await _owned_tables(client, spec)
        if owned:
            raise CliFailure("\n".join([f"not started: {len(owned)} table(s) of {spec.name!r} belong to a running "
                                        "migration", *(f"  - {p}" for p in owned)]))
        try:
            # the one way migrations are started: static summary for the UI, search attributes from event 1
            handle = await start_migration(client, MigrationInput(spec=spec, started_by=operator()),
                                           task_queue=task_queue)
        except WorkflowAlreadyStartedError:
            raise CliFailure(f"migration {spec.name!r} is already running (workflow {wid}); "
                             f"see `dualwrite status {spec.name}`") from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in exc.message.lower():
                raise CliFailure(
                    f"the server has no search attribute MigrationPhase/BackfillPercent: {exc.message}. "
                    "Start it with `dualwrite dev`, or register them with `temporal operator search-attribute "
                    "create --name MigrationPhase --type Keyword` (and BackfillPercent Int)") from None
            raise
        out.print(f"started migration [bold]{escape(spec.name)}[/]: workflow {wid} (run {handle.result_run_id}) "
                  f"on task queue {escape(task_queue)}", soft_wrap=True)
        link = ui_url(address, namespace, wid)
        if link:
            out.print(f"Web UI: {link}", soft_wrap=True)
        out.print(f"follow it with `dualwrite status {escape(spec.name)} --watch`", soft_wrap=True)

    run(target, body)


async def _owned_tables(client: Client, spec: Any) -> list[str]:
    """The single-owner rule at start: tables of ``spec`` a running migration (another one) owns."""
    from dualwrite.config import StoreResolver
    from dualwrite.owners import conflicts
    from workflows.client import live_migrations

    live = [m for m in await live_migrations(client) if m.name != spec.name]
    return [str(p) for p in conflicts(spec, live, StoreResolver())]


# ---------------------------------------------------------------------------------------------------------
# list


@command("list", rich_help_panel="Migrations")
def list_(
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    running: Annotated[bool, typer.Option("--running", help="Only running migrations.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (one array) instead of a table.")] = False,
) -> None:
    """List migrations (from the visibility store): name, phase, backfill, status, start time."""
    from workflows.models import BACKFILL_PERCENT, MIGRATION_PHASE, WORKFLOW_ID_PREFIX

    target = Target(address, namespace)
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
        out.print(f"no migrations in namespace {escape(namespace)} at {escape(address)}"
                  + (" (running)" if running else ""), soft_wrap=True)
        return
    from starter.render import migrations_table

    out.print(migrations_table(rows, console=out))


# ---------------------------------------------------------------------------------------------------------
# status


def _status_json(status: MigrationStatus, desc: WorkflowExecutionDescription, problem: str | None = None) -> str:
    doc = status.model_dump(mode="json")
    doc["workflow_id"] = desc.id
    doc["run_id"] = desc.run_id
    doc["workflow_status"] = _status_name(desc)
    if problem:
        doc["problem"] = problem
    return json.dumps(doc)


async def _refused_writes(client: Client, name: str, target: Target) -> dict[str, int]:
    """The relay's count of denied writes (strategy ``triggers``); {} when there is no relay to ask."""
    from workflows.relay import RelayStatus, relay_workflow_id

    try:
        rs = await client.get_workflow_handle(relay_workflow_id(name)).query(
            "status", result_type=RelayStatus, rpc_timeout=timedelta(seconds=min(5.0, target.timeout)))
    except Exception:  # noqa: BLE001 - no relay (sync, outbox before its start): nothing to say
        return {}
    return dict(rs.refused_writes)


FROZEN_AFTER_ATTEMPTS = 2
"""A workflow task retried this often is failing, not unlucky (a worker killed mid-task costs one retry)."""


async def workflow_problem(client: Client, handle: WorkflowHandle[Any, Any],
                           desc: WorkflowExecutionDescription) -> str | None:
    """Why the migration is not healthy, as the end of a sentence, or None: its workflow FAILED, was
    TERMINATED, TIMED_OUT or CANCELED (with the reason from its close event), or it is frozen because its
    workflow task keeps failing (with the last failure), which no query can show."""
    from temporalio.client import WorkflowExecutionStatus, WorkflowHistoryEventFilterType

    status = desc.status
    if status in (WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.TERMINATED,
                  WorkflowExecutionStatus.TIMED_OUT, WorkflowExecutionStatus.CANCELED):
        why = ""
        async for e in handle.fetch_history_events(event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT):
            if e.HasField("workflow_execution_failed_event_attributes"):
                f = e.workflow_execution_failed_event_attributes.failure
                why = f.message + (f" ({f.cause.message})" if f.HasField("cause") and f.cause.message else "")
            elif e.HasField("workflow_execution_terminated_event_attributes"):
                a = e.workflow_execution_terminated_event_attributes
                why = (a.reason or "no reason given") + (f" (by {a.identity})" if a.identity else "")
        assert status is not None
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


async def _last_task_failure(client: Client, desc: WorkflowExecutionDescription) -> str | None:
    """The message of the newest workflow-task outcome when it is a failure (read from the end of the
    history); None when the newest outcome is a completion or a timeout."""
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.enums.v1 import EventType
    from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest

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


@command(rich_help_panel="Migrations")
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
    from starter.render import render_status

    target = Target(address, namespace, timeout)

    async def once(client: Client) -> None:
        handle, desc = await describe(client, name, target)
        problem = await workflow_problem(client, handle, desc)
        st: MigrationStatus | None = None
        try:
            st = await query_status(handle, Target(target.address, target.namespace,
                                                   min(target.timeout, 5.0)) if problem else target,
                                    desc.task_queue, completed=_completed(desc))
        except Exception:  # noqa: BLE001 - with a problem to report, a status that cannot be read is no news
            if problem is None:
                raise
        if st is not None:
            if as_json:
                print(_status_json(st, desc, problem))
            else:
                out.print(render_status(st, workflow_status=_status_name(desc), history=history, console=out))
                from starter.stalls import find_stalls  # work that waits for a worker slot, or keeps failing

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
        elif as_json:
            print(json.dumps({"name": name, "workflow_id": desc.id, "run_id": desc.run_id,
                              "workflow_status": _status_name(desc), "problem": problem}))
        if problem:
            raise CliFailure(f"migration {name!r} {problem}")

    async def watching(client: Client) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        from workflows.models import Phase

        handle, desc = await describe(client, name, target)
        last = ""
        live = Live(console=out, auto_refresh=False, transient=False) if out.is_terminal and not as_json \
            else None
        if live is not None:
            live.start()
        try:
            while True:
                try:
                    desc = await handle.describe(rpc_timeout=timedelta(seconds=target.timeout))
                    st = await query_status(handle, target, desc.task_queue, completed=_completed(desc))
                    problem = None
                except CliFailure as exc:  # a worker restarting: keep watching, say so
                    st, problem = None, exc.message
                    frozen = await workflow_problem(client, handle, desc)
                    if frozen:  # not a restarting worker: the workflow code fails on every attempt
                        problem = f"migration {name!r} {frozen}"
                wf_status = _status_name(desc)
                if st is not None:
                    text = _status_json(st, desc)
                    if as_json:
                        if text != last:
                            print(text, flush=True)
                    elif live is not None:
                        stamp = Text(f"updated {time.strftime('%H:%M:%S')} — Ctrl-C to stop", style="grey50")
                        live.update(Group(render_status(st, workflow_status=wf_status, history=history,
                                                        console=out, compact=True), stamp), refresh=True)
                    elif text != last:
                        out.rule(time.strftime("%H:%M:%S"))
                        out.print(render_status(st, workflow_status=wf_status, history=history, console=out))
                    last = text
                    if st.phase == Phase.DONE:
                        return
                elif problem is not None:
                    if live is not None:
                        live.update(Text(f"{problem} (retrying)", style="yellow"), refresh=True)
                    else:
                        err.print(f"{escape(problem)} (retrying)")
                if wf_status != "RUNNING":
                    err.print(f"workflow {desc.id} is {wf_status}")
                    raise typer.Exit(0 if wf_status == "COMPLETED" else EXIT_FAILED)
                await asyncio.sleep(interval)
        finally:
            if live is not None:
                live.stop()

    run(target, watching if watch else once, interrupt_ok=watch)


# ---------------------------------------------------------------------------------------------------------
# transitions


def transition(update: str, name: str, target: Target, *, to: str | None = None, reason: str = "",
               force: bool = False, dry_run: bool = False, tenant: str | None = None,
               confirm_cleanup: bool = False, drop: bool = False, confirm_drop: str = "",
               release: bool = False, leaving: str | None = None) -> TransitionResult:
    """Send one operator Update and print its result; a refusal prints the validator's reason, exit 1.

    A gate evaluation that comes back with the result (a dry run, or an advance refused by its gate) is
    printed metric by metric, with what the move would change."""
    from workflows.models import TransitionRequest, TransitionResult

    phase = parse_phase_or_exit(to)
    from_phase = parse_phase_or_exit(leaving)

    async def body(client: Client) -> TransitionResult:
        from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
        from temporalio.service import RPCError, RPCStatusCode

        handle, desc = await describe(client, name, target)
        wf_status = _status_name(desc)
        if wf_status != "RUNNING":
            raise CliFailure(f"migration {name!r} is not running (workflow {desc.id} is {wf_status})")
        leaving = from_phase
        if update == "advance" and leaving is None:
            # name the phase this advance leaves: a double click, a retry or a second operator moves one
            # phase, not two (the workflow answers a stale advance with a no-op)
            st = await query_status(handle, target, desc.task_queue)
            row = next((t for t in st.tenants if t.tenant == tenant), None) if tenant is not None else None
            leaving = row.phase if row is not None else st.phase
        req = TransitionRequest(to=phase, reason=reason, by=operator(), force=force, dry_run=dry_run,
                                tenant=tenant, confirm_cleanup=confirm_cleanup, drop_old_tables=drop,
                                confirm_drop=confirm_drop, release=release, from_phase=leaving)
        try:
            return cast(TransitionResult, await handle.execute_update(
                update, req, result_type=TransitionResult, rpc_timeout=timedelta(seconds=target.timeout)))
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            raise CliFailure(f"{update} refused: {getattr(cause, 'message', None) or cause}") from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise CliFailure(no_answer(target, desc.task_queue)) from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise CliFailure(f"migration {name!r} is no longer running: {exc.message}") from None
            raise

    result = run(target, body)
    prefix = "dry run: " if dry_run and "dry run" not in result.message else ""
    who = f" tenant {escape(tenant)}" if tenant else ""
    line = (f"{prefix}{update} {escape(name)}{who}: {escape(result.message)} "
            f"(phase {result.phase.value}, epoch {result.epoch})")
    if result.ok:
        out.print(line, soft_wrap=True)
    else:  # refused by the handler (a failing gate, a rollback that could not level the stores)
        err.print(f"[bold red]refused:[/] {line}")
    if result.gate is not None:
        from starter.render import gate_section

        section = gate_section(result.gate.model_dump(mode="json"), console=out)
        if section is not None:
            (out if result.ok else err).print(section)
    if result.would:
        from rich.text import Text

        (out if result.ok else err).print(Text("would change:", style="bold"))
        for item in result.would:
            (out if result.ok else err).print(f"  - {escape(item)}", soft_wrap=True)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)
    return result


def parse_phase_or_exit(text: str | None) -> Phase | None:
    try:
        return parse_phase(text)
    except CliFailure as exc:
        fail(exc.message, exc.code)


PhaseOpt = Annotated[str | None, typer.Option(
    "--to", metavar="PHASE", show_default=False,
    help="Target phase (PREPARE, DUAL_WRITE, BACKFILL, SHADOW_READ, CUTOVER_READS, CUTOVER_WRITES, CLEANUP, "
         "DONE; case-insensitive).")]
TenantOpt = Annotated[str | None, typer.Option(
    "--tenant", metavar="ID", show_default=False,
    help="Only this tenant (a spec with a `tenants` section moves tenants one by one).")]
ConfirmCleanup = Annotated[bool, typer.Option(
    "--confirm-cleanup", help="Confirm entering CLEANUP, the point of no return: mirroring stops, capture "
                              "is removed, the old tables are renamed (or dropped with --drop).")]
Drop = Annotated[bool, typer.Option(
    "--drop", help="CLEANUP drops the old tables instead of renaming them; asks you to type the migration's "
                   "name (or give it with --confirm-drop NAME).")]
ConfirmDrop = Annotated[str, typer.Option(
    "--confirm-drop", metavar="NAME", help="The migration's name, confirming --drop without a prompt.")]


def _drop_confirmation(name: str, drop: bool, confirm_cleanup: bool, confirm_drop: str) -> str:
    """--drop asks again: the migration's name, typed at a prompt or given with --confirm-drop."""
    import sys

    if not drop:
        if confirm_drop:
            fail("--confirm-drop only goes with --drop", EXIT_BAD_INPUT)
        return ""
    if not confirm_cleanup:
        fail("--drop only applies when entering CLEANUP: add --confirm-cleanup", EXIT_BAD_INPUT)
    if confirm_drop:
        if confirm_drop != name:
            fail(f"--confirm-drop must be the migration's name {name!r}", EXIT_BAD_INPUT)
        return confirm_drop
    if not sys.stdin.isatty():
        fail("--drop asks for the migration's name: run it in a terminal, or add --confirm-drop NAME",
             EXIT_BAD_INPUT)
    err.print(f"[bold red]--drop[/] deletes the old tables of {escape(name)} for good (the default renames "
              "them and keeps the data).")
    typed = typer.prompt("type the migration's name to drop its old tables", default="", show_default=False)
    if typed.strip() != name:
        fail("not confirmed: the old tables are kept", EXIT_FAILED)
    return name


@command(rich_help_panel="Steer")
def advance(
    name: Name,
    to: PhaseOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Ask whether the move is allowed; change "
                                                            "nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Move even though the cutover gate does not pass "
                                                        "(needs --reason; recorded).")] = False,
    reason: Reason = "",
    tenant: TenantOpt = None,
    confirm_cleanup: ConfirmCleanup = False,
    drop: Drop = False,
    confirm_drop: ConfirmDrop = "",
    leaving: Annotated[str | None, typer.Option(
        "--from", metavar="PHASE", show_default=False,
        help="The phase this advance leaves (default: the current one, read from status). When the migration "
             "is no longer in it, nothing moves and the command says so: a repeated or concurrent advance "
             "never moves two phases.")] = None,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 600.0,
) -> None:
    """Move a migration (or --tenant one tenant) to its next phase.

    Entering CUTOVER_READS / CUTOVER_WRITES is gated: shadow-read match rate, secondary write success,
    p99 latency impact, backfill completion and the reconciliation gap of a recent verification (one runs
    first when the last is too old). --dry-run prints that evaluation and what would change, and changes
    nothing. Entering CLEANUP is the point of no return and needs --confirm-cleanup. A refused move prints
    the workflow's reason (and the gate's evidence) and exits 1; nothing is recorded for it. The advance
    names the phase it leaves (--from, default the current phase): run twice, or by two operators at once,
    it moves one phase and the other call says "nothing done" (exit 0).
    """
    if force and not reason.strip():
        fail("--force needs --reason TEXT: a forced move is recorded with why", EXIT_BAD_INPUT)
    confirmed = "" if dry_run else _drop_confirmation(name, drop, confirm_cleanup, confirm_drop)
    transition("advance", name, Target(address, namespace, timeout), to=to, reason=reason, force=force,
               dry_run=dry_run, tenant=tenant, confirm_cleanup=confirm_cleanup, drop=drop,
               confirm_drop=confirmed or (name if dry_run and drop else ""), leaving=leaving)


@command(rich_help_panel="Steer")
def rollback(
    name: Name,
    reason: Annotated[str, typer.Option("--reason", help="Why (required; recorded).", show_default=False)],
    to: PhaseOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Ask whether the move is allowed; change "
                                                            "nothing.")] = False,
    tenant: TenantOpt = None,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 600.0,
) -> None:
    """Roll a migration (or --tenant one tenant) back to the previous phase (or --to an earlier one), old
    store authoritative again as the phase requires. Possible from every phase before CLEANUP. Out of
    CUTOVER_WRITES the old store is first verified against the new one and repaired; only then does
    authority flip back (behind the phase barrier)."""
    if not reason.strip():
        fail("--reason must say why: a rollback is recorded with its reason", EXIT_BAD_INPUT)
    transition("rollback", name, Target(address, namespace, timeout), to=to, reason=reason, dry_run=dry_run,
               tenant=tenant)


@command(rich_help_panel="Steer")
def abort(
    name: Name,
    reason: Annotated[str, typer.Option("--reason", help="Why (required; recorded).", show_default=False)],
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 600.0,
) -> None:
    """Abandon a migration, from any phase before CLEANUP: authority returns to the old store (out of
    CUTOVER_WRITES through the same levelling and write fence as a rollback), then the migration's capture
    triggers, key-log entries, relay, child workflows and control rows are removed and the workflow
    completes as ABORTED. The old store's data is not touched; the new store's tables and data are left for
    you to drop or keep. Refused in CLEANUP and DONE."""
    if not reason.strip():
        fail("--reason must say why: an abort is recorded with its reason", EXIT_BAD_INPUT)
    transition("abort", name, Target(address, namespace, timeout), reason=reason)


@command(rich_help_panel="Steer")
def pause(
    name: Name,
    reason: Reason = "",
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Pause a migration: phase work (backfill, verification) stops at a checkpoint; no phase moves until
    `resume`. Dual writes keep flowing."""
    transition("pause", name, Target(address, namespace, timeout), reason=reason)


@command(rich_help_panel="Steer")
def resume(
    name: Name,
    reason: Reason = "",
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Resume a paused migration from its checkpoints."""
    transition("resume", name, Target(address, namespace, timeout), reason=reason)


@command(rich_help_panel="Steer")
def approve(
    name: Name,
    reason: Reason = "",
    tenant: TenantOpt = None,
    confirm_cleanup: ConfirmCleanup = False,
    drop: Drop = False,
    confirm_drop: ConfirmDrop = "",
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Approve the pending gated step (for specs with gates.require_approval, and the hold before CLEANUP
    in auto mode, which needs --confirm-cleanup)."""
    confirmed = _drop_confirmation(name, drop, confirm_cleanup, confirm_drop)
    transition("approve", name, Target(address, namespace, timeout), reason=reason, tenant=tenant,
               confirm_cleanup=confirm_cleanup, drop=drop, confirm_drop=confirmed)


@command(rich_help_panel="Steer")
def hold(
    name: Name,
    reason: Reason = "",
    release: Annotated[bool, typer.Option("--release", help="Release the hold.")] = False,
    tenant: TenantOpt = None,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Hold a migration (or --tenant one tenant) where it is: no advance, manual or automatic, until
    `hold --release`. Phase work, verification and rollbacks go on. An automatic rollback places a hold
    by itself."""
    if not release and not reason.strip():
        fail("--reason must say why: a hold is shown to whoever wants to advance", EXIT_BAD_INPUT)
    transition("hold", name, Target(address, namespace, timeout), reason=reason, tenant=tenant, release=release)


@command(rich_help_panel="Steer")
def verify(
    name: Name,
    reason: Reason = "",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the verification to finish; exit 1 if it "
                                                      "found drift or compared nothing.")] = False,
    tenant: TenantOpt = None,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Run a full verification (chunked compare, repair, re-verify) now."""
    if wait and tenant:
        fail("--wait follows the migration-wide verification; a tenant's result shows in `status`", EXIT_BAD_INPUT)
    target = Target(address, namespace, timeout)
    before = _last_verification_at(name, target) if wait else None
    transition("verify", name, target, reason=reason, tenant=tenant)
    if wait:
        _wait_for_verification(name, target, before)


def _last_verification_at(name: str, target: Target) -> Any:
    async def body(client: Client) -> Any:
        handle, desc = await describe(client, name, target)
        st = await query_status(handle, target, desc.task_queue, completed=_completed(desc))
        return st.last_verification.at if st.last_verification else None

    return run(target, body)


def _wait_for_verification(name: str, target: Target, before: Any) -> None:
    from starter.render import verification_section

    async def body(client: Client) -> MigrationStatus:
        handle, desc = await describe(client, name, target)
        with err.status("verifying…"):
            while True:
                st = await query_status(handle, target, desc.task_queue, completed=_completed(desc))
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
