"""The dualwrite worker: runs the migration workflows and their activities for one task queue.

Run as many as you like on as many machines as you like, all on the same task queue: backfill ranges and
verifications spread over them. Configuration comes from the environment (or ``WorkerConfig``):

    DUALWRITE_TEMPORAL_ADDRESS   Temporal frontend (default localhost:7233)
    DUALWRITE_NAMESPACE          namespace (default "default")
    DUALWRITE_TASK_QUEUE         task queue (default "dualwrite")
    DUALWRITE_MAX_ACTIVITIES     concurrent activities (default 8): backfill ranges, verifications
    DUALWRITE_MAX_WORKFLOW_TASKS concurrent workflow tasks (default 16)
    DUALWRITE_METRICS_PORT       serve the Temporal runtime's Prometheus metrics on this port
    DUALWRITE_SHUTDOWN_SECONDS   graceful shutdown window on SIGTERM (default 30)
    DUALWRITE_CONFIG             config file with store URLs (default ./dualwrite.yaml)
    DUALWRITE_STORE_<NAME>       URL of store NAME (wins over the config file)
    DUALWRITE_INSTANCE_LIVE_SECONDS  an application instance counts as live for the phase barrier when
                                 its heartbeat is this recent (default 15)

Store URLs are resolved here and nowhere else; workflows only ever see store names.
On SIGTERM (or SIGINT) the worker stops polling, tells running activities (they checkpoint after the
batch in flight and hand the rest to another worker) and exits within the shutdown window.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.core import DualwriteActivities
from dualwrite.config import StoreResolver
from workflows.backfill import BackfillWorkflow
from workflows.migration import MigrationWorkflow
from workflows.models import TASK_QUEUE
from workflows.verify import VerificationWorkflow

log = logging.getLogger("dualwrite.worker")

WORKFLOWS: tuple[type, ...] = (MigrationWorkflow, BackfillWorkflow, VerificationWorkflow)

# Modules the workflow sandbox passes through instead of re-importing per run: the models (pydantic and
# the spec) are deterministic data, and re-importing them per workflow run is what makes runs slow.
PASSTHROUGH = ("pydantic", "pydantic_core", "annotated_types", "yaml", "dualwrite", "workflows.models",
               "workflows.phases")


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass
class WorkerConfig:
    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = TASK_QUEUE
    max_activities: int = 8
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


def build_worker(client: Client, activities: DualwriteActivities, *, task_queue: str = TASK_QUEUE,
                 max_activities: int = 8, max_workflow_tasks: int = 16, shutdown_seconds: float = 30.0,
                 executor: concurrent.futures.ThreadPoolExecutor | None = None,
                 identity: str | None = None) -> Worker:
    """A worker for every dualwrite workflow and activity (used by ``run_worker`` and by the tests)."""
    pool = executor or concurrent.futures.ThreadPoolExecutor(max_workers=max_activities + 2,
                                                             thread_name_prefix="dualwrite-activity")
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=activities.all(),
        activity_executor=pool,
        max_concurrent_activities=max_activities,
        max_concurrent_workflow_tasks=max_workflow_tasks,
        graceful_shutdown_timeout=timedelta(seconds=shutdown_seconds),
        workflow_runner=sandbox_runner(),
        identity=identity,
    )


def make_runtime(metrics_port: int | None, host: str = "0.0.0.0") -> Runtime | None:  # noqa: S104
    if not metrics_port:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{metrics_port}")))


async def run_worker(config: WorkerConfig | None = None, *, resolver: StoreResolver | None = None,
                     stop: asyncio.Event | None = None, install_signal_handlers: bool = True) -> None:
    """Connect, run until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully."""
    cfg = config or WorkerConfig.from_env()
    runtime = make_runtime(cfg.metrics_port, cfg.metrics_host)
    client = await Client.connect(cfg.address, namespace=cfg.namespace, data_converter=pydantic_data_converter,
                                  runtime=runtime)
    acts = DualwriteActivities(resolver or StoreResolver(cfg.config_file))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    worker = build_worker(client, acts, task_queue=cfg.task_queue, max_activities=cfg.max_activities,
                          max_workflow_tasks=cfg.max_workflow_tasks, shutdown_seconds=cfg.shutdown_seconds,
                          identity=cfg.identity)
    log.info("worker %s polling %s on %s/%s (metrics: %s)", cfg.identity, cfg.task_queue, cfg.address,
             cfg.namespace, f":{cfg.metrics_port}/metrics" if cfg.metrics_port else "off")
    try:
        async with worker:
            await stop.wait()
            log.info("shutting down (waiting up to %.0f s for running activities)", cfg.shutdown_seconds)
    finally:
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        acts.close()
    log.info("worker stopped")


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=os.environ.get("DUALWRITE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_worker())


if __name__ == "__main__":
    main()
