"""``dualwrite worker``: run the migration workflows and their activities (:mod:`worker`) from the CLI."""

from __future__ import annotations

import asyncio
import gc
from typing import Annotated

import typer
from rich.markup import escape

from starter.command import EXIT_BAD_INPUT, command, err, fail
from starter.defaults import DEFAULT_ADDRESS, DEFAULT_NAMESPACE, DEFAULT_TASK_QUEUE
from starter.options import Address, ConfigFile, Namespace, Target, TaskQueue

__all__ = ["commands", "worker"]

commands = typer.Typer()


@command(commands, rich_help_panel="Run")
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
    # every workflow and activity, and the Temporal SDK: loaded only when a worker runs, not for `--help`
    import worker as worker_module  # noqa: PLC0415 - see above
    from dualwrite.logs import configure  # noqa: PLC0415 - see above
    from starter.session import explain, unreachable  # noqa: PLC0415 - see above

    cfg = worker_module.WorkerConfig.from_env(
        address=address, namespace=namespace, task_queue=task_queue,
        config_file=str(config) if config is not None else None, max_activities=max_activities,
        metrics_port=metrics_port)
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
    except Exception as exc:  # noqa: BLE001 - explain() names what Temporal answered and re-raises the rest
        message, _code = explain(exc, Target(address, namespace))
    gc.collect()  # see starter.session.run: collect the client before interpreter teardown
    if message:
        fail(message)
