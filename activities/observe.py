"""Observability of the worker: log context and metrics for every activity, and the migration gauges.

- :class:`ObservabilityInterceptor` wraps every activity: it binds ``migration``, ``phase``, ``table``,
  the workflow and activity ids to the log context (structlog contextvars; Temporal copies the context
  into the thread of a synchronous activity), and counts the outcome, the duration and the failure type
  (the ``ApplicationError`` type the activities map errors to: ``StoreUnavailable``, ``SchemaError``, ...)
  in :class:`dualwrite.metrics.WorkerMetrics`.
- :class:`MigrationMonitor` refreshes the per-migration gauges every few seconds from what the operator
  sees (the workflow's ``status`` query) and from what applications see (the control tables: the published
  overrides, the merged statistics windows, the repair queue). Only names and counts are read.

Both live here, beside the activities, because they need Temporal; :mod:`dualwrite.metrics` and
:mod:`dualwrite.logs` stay importable by applications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, is_cancelled_exception
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities.stores import StoreCache
from dualwrite import control
from dualwrite import stats as st
from dualwrite.metrics import MigrationView, WorkerMetrics
from dualwrite.spec import MigrationSpec
from workflows.models import ActivityNames, MigrationInput, MigrationStatus

log = logging.getLogger("dualwrite.worker.monitor")

MIGRATION_QUERY = 'WorkflowType="MigrationWorkflow" AND ExecutionStatus="Running"'


def activity_context(args: Sequence[Any]) -> dict[str, str]:
    """migration / phase / table named by an activity's input model (names only, never row data)."""
    out: dict[str, str] = {}
    arg = args[0] if args else None
    if arg is None:
        return out
    table = getattr(arg, "table", None)
    # the spec inline, or a SpecRef (which names the migration), on the input or on its table
    named = [getattr(holder, field, None) for holder in (arg, table) for field in ("spec", "spec_ref")]
    name = getattr(arg, "migration", None) or next(
        (n for n in (getattr(x, "name", None) or getattr(x, "migration", None) for x in named) if n), None)
    if isinstance(name, str):
        out["migration"] = name
    phase = getattr(arg, "phase", None)
    if phase is not None:
        out["phase"] = str(getattr(phase, "value", phase))
    source = getattr(table, "source", None)
    if isinstance(source, str):
        out["table"] = source
    return out


class _ActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, metrics: WorkerMetrics | None) -> None:  # noqa: A002
        super().__init__(next)
        self._metrics = metrics

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:  # noqa: A002 - SDK signature
        info = activity.info()
        ctx = activity_context(input.args)
        tokens = structlog.contextvars.bind_contextvars(
            **ctx, workflow_id=info.workflow_id, run_id=info.workflow_run_id, workflow_type=info.workflow_type,
            activity_id=info.activity_id, activity_type=info.activity_type, attempt=info.attempt)
        started = time.monotonic()
        try:
            result = await self.next.execute_activity(input)
        except BaseException as exc:
            if self._metrics is not None:
                cancelled = is_cancelled_exception(exc) or isinstance(exc, asyncio.CancelledError)
                if cancelled:
                    error_type = "Cancelled"
                elif isinstance(exc, ApplicationError):
                    error_type = exc.type or "ApplicationError"
                else:
                    error_type = type(exc).__name__
                self._metrics.activity_done(info.activity_type, time.monotonic() - started,
                                            outcome="cancelled" if cancelled else "failed", error_type=error_type)
            raise
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
        if self._metrics is not None:
            self._metrics.activity_done(info.activity_type, time.monotonic() - started, outcome="completed")
            if info.activity_type == ActivityNames.COPY_RANGE and "migration" in ctx and "table" in ctx:
                self._metrics.rows_copied(ctx["migration"], ctx["table"], int(getattr(result, "rows", 0) or 0))
        return result


class ObservabilityInterceptor(Interceptor):
    """Log context and metrics for every activity of the worker (``metrics`` None: log context only)."""

    def __init__(self, metrics: WorkerMetrics | None = None) -> None:
        self.metrics = metrics

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:  # noqa: A002
        return _ActivityInbound(next, self.metrics)


class MigrationMonitor:
    """Keeps :class:`WorkerMetrics`' migration gauges current (every ``interval`` seconds)."""

    def __init__(self, client: Client, metrics: WorkerMetrics, stores: StoreCache, *, interval: float = 15.0,
                 namespace_query: str = MIGRATION_QUERY) -> None:
        self.client = client
        self.metrics = metrics
        self.stores = stores
        self.interval = interval
        self.query = namespace_query
        self._specs: dict[str, MigrationSpec] = {}
        self._known: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - metrics must never take the worker down
                log.warning("migration metrics refresh failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def refresh(self) -> None:
        seen: set[str] = set()
        async for wf in self.client.list_workflows(self.query):
            try:
                view = await self._view(wf.id, wf.run_id)
            except Exception as exc:  # noqa: BLE001 - one migration's trouble must not hide the others
                log.warning("metrics of %s unavailable: %s", wf.id, type(exc).__name__)
                continue
            if view is None:
                continue
            name, mv = view
            self.metrics.set_migration(name, mv)
            seen.add(name)
        for gone in self._known - seen:
            self.metrics.forget_migration(gone)
        self._known = seen
        for run_id in list(self._specs):
            if len(self._specs) > 256:
                self._specs.pop(run_id, None)

    async def _spec(self, workflow_id: str, run_id: str | None) -> MigrationSpec | None:
        key = f"{workflow_id}/{run_id}"
        if key in self._specs:
            return self._specs[key]
        handle = self.client.get_workflow_handle(workflow_id, run_id=run_id)
        async for event in handle.fetch_history_events():
            attrs = event.workflow_execution_started_event_attributes
            payloads = list(attrs.input.payloads)
            if not payloads:
                return None
            inp = (await self.client.data_converter.decode(payloads, [MigrationInput]))[0]
            self._specs[key] = inp.spec
            return inp.spec  # type: ignore[no-any-return]
        return None

    async def _view(self, workflow_id: str, run_id: str | None) -> tuple[str, MigrationView] | None:
        handle = self.client.get_workflow_handle(workflow_id)
        status: MigrationStatus = await asyncio.wait_for(
            handle.query("status", result_type=MigrationStatus), timeout=10)
        spec = await self._spec(workflow_id, run_id)
        overrides: Mapping[str, Any] | None = None
        window: st.StatsWindow | None = None
        depth: int | None = None
        if spec is not None:
            overrides, window, depth = await asyncio.to_thread(self._control_side, spec)
        view = MigrationView.from_status(status, overrides, window)
        if depth is not None:
            view.repair_queue_depth = depth
        return status.name, view

    def _control_side(self, spec: MigrationSpec) -> tuple[Mapping[str, Any] | None, st.StatsWindow | None,
                                                            int | None]:
        """Overrides, the merged stats window and the repair depth, each None when it cannot be read
        (the store is not configured on this worker, or no application has created the tables yet)."""
        try:
            store = self.stores.store(spec.control)
        except Exception:  # noqa: BLE001 - this worker does not know the store: Temporal-side gauges only
            return None, None, None
        overrides: Mapping[str, Any] | None = None
        window: st.StatsWindow | None = None
        depth: int | None = None
        with contextlib.suppress(Exception):
            state = control.read_state(store, spec.name)
            overrides = state.overrides if state is not None else None
        with contextlib.suppress(Exception):
            window = st.read_stats(store, spec.name, float(spec.gates.window_seconds))
        with contextlib.suppress(Exception):
            depth = control.repair_queue_depth(store, spec.name)
        return overrides, window, depth
