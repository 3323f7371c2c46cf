"""The dualwrite worker: runs the migration workflows and their activities for one task queue.

Run as many as you like on as many machines as you like, all on the same task queue: backfill ranges and
verifications spread over them. Configuration comes from the environment (or ``WorkerConfig``):

    DUALWRITE_TEMPORAL_ADDRESS   Temporal frontend (default localhost:7233)
    DUALWRITE_NAMESPACE          namespace (default "default")
    DUALWRITE_TASK_QUEUE         task queue (default "dualwrite")
    DUALWRITE_MAX_ACTIVITIES     concurrent activities (default 8): backfill ranges, verifications
    DUALWRITE_MAX_POLLERS        concurrent long pollers (default 32): each migration's repair drain, relay
                                 drain and rollback-trigger watch, on the task queue "<queue>-pollers" with
                                 slots of their own, so they never take the phase work's slots
    DUALWRITE_MAX_WORKFLOW_TASKS concurrent workflow tasks (default 16)
    DUALWRITE_METRICS_PORT       serve Prometheus metrics on this port: dualwrite's (activities, failures by
                                 type, per-migration phase / backfill / repair / gate gauges, see
                                 dualwrite.metrics) and the Temporal runtime's, on one /metrics endpoint
    DUALWRITE_METRICS_INTERVAL   seconds between refreshes of the per-migration gauges (default 15)
    DUALWRITE_LOG_FORMAT         json | console (default: console on a terminal, JSON otherwise)
    DUALWRITE_SHUTDOWN_SECONDS   graceful shutdown window on SIGTERM (default 30)
    DUALWRITE_CONFIG             config file with store URLs (default ./dualwrite.yaml)
    DUALWRITE_STORE_<NAME>       URL of store NAME (wins over the config file)
    DUALWRITE_INSTANCE_LIVE_SECONDS  an application instance counts as live for the phase barrier when
                                 its heartbeat is this recent (default 15)
    DUALWRITE_PAYLOAD_KEY        encrypt every Temporal payload (dualwrite.codec); the same on every worker
                                 and client. Unset: payloads in clear, and a warning at start
    DUALWRITE_TRANSFORMS_PATH    folders to import spec transforms from (then the current directory)

Store URLs are resolved here and nowhere else; workflows only ever see store names.
On SIGTERM (or SIGINT) the worker stops polling, tells running activities (they checkpoint after the
batch in flight and hand the rest to another worker) and exits within the shutdown window.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.core import DualwriteActivities
from activities.observe import MigrationMonitor, ObservabilityInterceptor
from activities.stores import StoreCache
from dualwrite.codec import CLEAR_WARNING, data_converter, payloads_in_clear
from dualwrite.config import StoreResolver
from dualwrite.logs import configure
from dualwrite.metrics import MetricsServer, WorkerMetrics
from workflows.backfill import BackfillWorkflow
from workflows.migration import MigrationWorkflow
from workflows.models import TASK_QUEUE
from workflows.relay import RelayWorkflow, poller_task_queue
from workflows.verify import VerificationWorkflow

log = logging.getLogger("dualwrite.worker")

WORKFLOWS: tuple[type, ...] = (MigrationWorkflow, BackfillWorkflow, VerificationWorkflow, RelayWorkflow)

# Modules the workflow sandbox passes through instead of re-importing per run: the models (pydantic and
# the spec) are deterministic data, and re-importing them per workflow run is what makes runs slow.
PASSTHROUGH = ("pydantic", "pydantic_core", "annotated_types", "yaml", "dualwrite", "workflows.models",
               "workflows.phases", "workflows.bypass")


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass
class WorkerConfig:
    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = TASK_QUEUE
    max_activities: int = 8
    max_pollers: int = 32
    max_workflow_tasks: int = 16
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a metrics endpoint is meant to be scraped
    shutdown_seconds: float = 30.0
    config_file: str | None = None
    identity: str = field(default_factory=lambda: f"dualwrite-worker@{socket.gethostname()}:{os.getpid()}")

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkerConfig:
        cfg = cls(
            address=os.environ.get("DUALWRITE_TEMPORAL_ADDRESS", cls.address),
            namespace=os.environ.get("DUALWRITE_NAMESPACE", cls.namespace),
            task_queue=os.environ.get("DUALWRITE_TASK_QUEUE", TASK_QUEUE),
            max_activities=_env_int("DUALWRITE_MAX_ACTIVITIES", cls.max_activities) or cls.max_activities,
            max_pollers=_env_int("DUALWRITE_MAX_POLLERS", cls.max_pollers) or cls.max_pollers,
            max_workflow_tasks=_env_int("DUALWRITE_MAX_WORKFLOW_TASKS", cls.max_workflow_tasks)
            or cls.max_workflow_tasks,
            metrics_port=_env_int("DUALWRITE_METRICS_PORT", None),
            shutdown_seconds=float(os.environ.get("DUALWRITE_SHUTDOWN_SECONDS", cls.shutdown_seconds)),
            config_file=os.environ.get("DUALWRITE_CONFIG") or None,
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        return cfg


def sandbox_runner() -> SandboxedWorkflowRunner:
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH))


class DualwriteWorker:
    """Two Temporal workers in one process, started and stopped together: one for the task queue
    (workflows and phase work) and one for its pollers' queue (:func:`workflows.relay.poller_task_queue`),
    each with its own activity slots. Long pollers hold a slot for minutes per migration; on one set of
    slots, four migrations on a worker with four slots left no slot for any copy."""

    def __init__(self, main: Worker, pollers: Worker) -> None:
        self.main, self.pollers = main, pollers

    async def __aenter__(self) -> DualwriteWorker:
        await self.main.__aenter__()
        try:
            await self.pollers.__aenter__()
        except BaseException:
            await self.main.__aexit__(None)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *args: Any) -> None:
        try:
            await self.pollers.__aexit__(exc_type, *args)
        finally:
            await self.main.__aexit__(exc_type, *args)

    async def run(self) -> None:
        await asyncio.gather(self.main.run(), self.pollers.run())

    async def shutdown(self) -> None:
        await asyncio.gather(self.main.shutdown(), self.pollers.shutdown())


def build_worker(client: Client, activities: DualwriteActivities, *, task_queue: str = TASK_QUEUE,
                 max_activities: int = 8, max_workflow_tasks: int = 16, shutdown_seconds: float = 30.0,
                 executor: concurrent.futures.ThreadPoolExecutor | None = None,
                 identity: str | None = None, metrics: WorkerMetrics | None = None,
                 max_pollers: int = 32) -> DualwriteWorker:
    """A worker for every dualwrite workflow and activity (used by ``run_worker`` and by the tests), with
    ``max_activities`` slots for phase work and ``max_pollers`` more for the long pollers.

    Every activity runs inside :class:`ObservabilityInterceptor`: its log lines carry the migration, phase
    and activity ids, and (with ``metrics``) its outcome and failure type are counted."""
    try:  # the preflight activity looks up running migrations through this client (single-owner rule)
        activities.owners.attach(client, asyncio.get_running_loop())
    except RuntimeError:
        activities.owners.attach(client, None)
    pool = executor or concurrent.futures.ThreadPoolExecutor(max_workers=max_activities + 2,
                                                             thread_name_prefix="dualwrite-activity")
    acts = activities.all()
    main = Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=acts,
        activity_executor=pool,
        max_concurrent_activities=max_activities,
        max_concurrent_workflow_tasks=max_workflow_tasks,
        graceful_shutdown_timeout=timedelta(seconds=shutdown_seconds),
        workflow_runner=sandbox_runner(),
        identity=identity,
        interceptors=[ObservabilityInterceptor(metrics)],
    )
    pollers = Worker(
        client,
        task_queue=poller_task_queue(task_queue),
        activities=acts,
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=max_pollers + 2,
                                                                thread_name_prefix="dualwrite-poller"),
        max_concurrent_activities=max_pollers,
        graceful_shutdown_timeout=timedelta(seconds=shutdown_seconds),
        identity=identity,
        interceptors=[ObservabilityInterceptor(metrics)],
    )
    return DualwriteWorker(main, pollers)


def make_runtime(metrics_port: int | None, host: str = "0.0.0.0", *,  # noqa: S104
                 forward_logs: bool = False) -> Runtime | None:
    """A Temporal runtime serving its metrics on ``metrics_port`` and/or sending the SDK core's own log
    lines (warnings about failing workflow tasks, ...) through Python logging, so they get the same JSON
    format and redaction as every other line instead of going raw to stderr."""
    if not metrics_port and not forward_logs:
        return None
    logging_cfg = LoggingConfig.default
    if forward_logs:
        logging_cfg = LoggingConfig(filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                                    forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")))
    metrics = PrometheusConfig(bind_address=f"{host}:{metrics_port}") if metrics_port else None
    return Runtime(telemetry=TelemetryConfig(logging=logging_cfg, metrics=metrics))


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_metrics(cfg: WorkerConfig) -> tuple[Runtime | None, WorkerMetrics | None, MetricsServer | None]:
    """With a metrics port: the Temporal runtime serves its metrics on a private loopback port, and one
    endpoint on ``metrics_port`` serves dualwrite's metrics with the runtime's appended, so Prometheus
    scrapes one target per worker."""
    if not cfg.metrics_port:
        return make_runtime(None, forward_logs=True), None, None
    internal = _free_local_port()
    runtime = make_runtime(internal, "127.0.0.1", forward_logs=True)
    metrics = WorkerMetrics()
    server = MetricsServer(cfg.metrics_port, cfg.metrics_host, [metrics.registry],
                           upstream=f"http://127.0.0.1:{internal}/metrics")
    return runtime, metrics, server


async def run_worker(config: WorkerConfig | None = None, *, resolver: StoreResolver | None = None,
                     stop: asyncio.Event | None = None, install_signal_handlers: bool = True) -> None:
    """Connect, run until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully."""
    cfg = config or WorkerConfig.from_env()
    runtime, metrics, metrics_server = start_metrics(cfg)
    try:
        client = await Client.connect(cfg.address, namespace=cfg.namespace,
                                      data_converter=data_converter(), runtime=runtime)
    except BaseException:
        if metrics_server is not None:
            metrics_server.close()
        raise
    acts = DualwriteActivities(resolver or StoreResolver(cfg.config_file))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    worker = build_worker(client, acts, task_queue=cfg.task_queue, max_activities=cfg.max_activities,
                          max_workflow_tasks=cfg.max_workflow_tasks, shutdown_seconds=cfg.shutdown_seconds,
                          identity=cfg.identity, metrics=metrics, max_pollers=cfg.max_pollers)
    monitor_stores = StoreCache(acts.stores.resolver, pool_size=2) if metrics is not None else None
    monitor: asyncio.Task[None] | None = None
    if payloads_in_clear():
        log.warning(CLEAR_WARNING)
    log.info("worker %s polling %s on %s/%s (metrics: %s)", cfg.identity, cfg.task_queue, cfg.address,
             cfg.namespace, f":{cfg.metrics_port}/metrics" if cfg.metrics_port else "off")
    try:
        async with worker:
            if metrics is not None and monitor_stores is not None:
                interval = float(os.environ.get("DUALWRITE_METRICS_INTERVAL", "15"))
                monitor = asyncio.create_task(
                    MigrationMonitor(client, metrics, monitor_stores, interval=interval).run(stop))
            await stop.wait()
            log.info("shutting down (waiting up to %.0f s for running activities)", cfg.shutdown_seconds)
    finally:
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await monitor
        if monitor_stores is not None:
            monitor_stores.close()
        if metrics_server is not None:
            metrics_server.close()
        acts.close()
    log.info("worker stopped")


def main(argv: Sequence[str] | None = None) -> None:
    configure()
    asyncio.run(run_worker())
    gc.collect()  # collect the client while the interpreter is whole (temporalio/sdk-python#300)


if __name__ == "__main__":
    main()
