"""A worker process killed with SIGKILL in the middle of a backfill: a new worker resumes every range from
its last committed batch, the data ends equal, and no range redoes more than the one batch in flight."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import (
    MigrationDriver,
    create_pg,
    eventually,
    fast_tuning,
    fetch_all,
    retired_table,
    rows_of,
    save_histories,
    spec_for,
)
from temporalio.client import Client

from dualwrite import control
from dualwrite.store import Store
from workflows.models import BackfillResult

ROWS = 240_000


def start_worker(repo_root: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, str(repo_root / "worker.py")], env=env, cwd=repo_root,
                            stdout=out, stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def committed_batches(store: Store, migration: str) -> int:
    rows = fetch_all(store, f"SELECT COALESCE(SUM(batches), 0) FROM dualwrite_checkpoints "
                            f"WHERE migration = '{migration}'")
    return int(str(rows[0][0]))


async def test_worker_killed_mid_backfill_resumes(dw: MigrationDriver, temporal_client: Client, pg_old: Store,
                                                  pg_new: Store, table_name: str, dw_store_env: dict[str, str],
                                                  repo_root: Path, tmp_path: Path) -> None:
    create_pg(pg_old, table_name, ROWS)
    create_pg(pg_new, table_name, 0)
    control.ensure_schema(pg_old)
    name = f"crash-{secrets.token_hex(3)}"
    queue = f"dualwrite-crash-{secrets.token_hex(3)}"
    address = temporal_client.service_client.config.target_host
    env = {**os.environ, **dw_store_env, "DUALWRITE_TEMPORAL_ADDRESS": address,
           "DUALWRITE_NAMESPACE": temporal_client.namespace, "DUALWRITE_TASK_QUEUE": queue,
           "DUALWRITE_CONFIG": str(tmp_path / "none.yaml"), "DUALWRITE_MAX_ACTIVITIES": "4",
           "DUALWRITE_SHUTDOWN_SECONDS": "5"}
    (tmp_path / "none.yaml").write_text("stores: {}\n")
    log = tmp_path / "workers.log"
    first = start_worker(repo_root, env, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        spec = spec_for(name, "pgold", "pgnew", table_name, mode="auto", auto_cleanup=True,
                        backfill_concurrency=2, batch_size=2_000)
        handle = await dw.start(spec, task_queue=queue, tuning=fast_tuning(backfill_ranges=4))
        # kill it once a good part of the table is copied, while ranges are mid-way
        await eventually(lambda: committed_batches(pg_old, name) >= 25, 90, "batches committed")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = committed_batches(pg_old, name)
        assert killed_at < ROWS // 2_000, "the backfill finished before the kill: make the table bigger"

        metrics_port = free_port()
        second = start_worker(repo_root, {**env, "DUALWRITE_METRICS_PORT": str(metrics_port)}, log)
        final = await asyncio.wait_for(handle.result(), timeout=150)
        assert final.phase == "DONE"
        assert rows_of(pg_old, retired_table(final, table_name)) == rows_of(pg_new, table_name)

        child = temporal_client.get_workflow_handle(f"{handle.id}-backfill-{table_name}-1",
                                                    result_type=BackfillResult)
        backfill = await child.result()
        assert backfill.ranges == 4
        resumed = [r for r in backfill.range_results if r.resumed]
        assert resumed, f"no range resumed from a checkpoint: {backfill.range_results}"
        assert all(r.attempts >= 2 for r in resumed)
        # each range redid at most the one batch that was in flight when the worker died
        assert all(r.redone_batches <= 1 for r in backfill.range_results), backfill.range_results
        assert ROWS <= backfill.rows <= ROWS + 2_000 * len(resumed)
        assert final.counters["backfill_resumed_ranges"] == len(resumed)
        # a zero adds no counter key: a kill between two batches redoes none
        assert final.counters.get("backfill_redone_batches", 0) <= len(resumed)

        await save_histories(temporal_client, handle.id, "worker-crash")
        # the worker serves the Temporal runtime's metrics for Prometheus
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert "temporal_" in metrics and "activity" in metrics

        # SIGTERM: the worker drains and exits cleanly within its shutdown window
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if log.exists():
            print(log.read_text()[-4000:])


def fired(hooks_file: Path, point: str, pid: int) -> bool:
    log = Path(str(hooks_file) + ".fired")
    return log.exists() and f"{pid} {point}" in log.read_text()


async def test_worker_killed_in_preflight_and_in_planning_costs_seconds_not_minutes(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str,
        dw_store_env: dict[str, str], repo_root: Path, tmp_path: Path) -> None:
    """SIGKILL while PREPARE's preflight runs, then while backfill plans its ranges (both held there by a
    hook): each time a new worker takes the work over within the heartbeat timeout, not the activity's
    start-to-close timeout (10 minutes for preflight and planning before)."""
    import json
    import time

    create_pg(pg_old, table_name, 5_000)
    create_pg(pg_new, table_name, 0)
    name = f"crash-hb-{secrets.token_hex(3)}"
    queue = f"dualwrite-crash-{secrets.token_hex(3)}"
    hooks_file = tmp_path / "hooks.json"
    hooks_file.write_text(json.dumps({"prepare.before_preflight": {"action": "delay", "seconds": 30},
                                      "copy.before_plan": {"action": "delay", "seconds": 30}}))
    (tmp_path / "none.yaml").write_text("stores: {}\n")
    address = temporal_client.service_client.config.target_host
    env = {**os.environ, **dw_store_env, "DUALWRITE_TEMPORAL_ADDRESS": address,
           "DUALWRITE_NAMESPACE": temporal_client.namespace, "DUALWRITE_TASK_QUEUE": queue,
           "DUALWRITE_CONFIG": str(tmp_path / "none.yaml"), "DUALWRITE_SHUTDOWN_SECONDS": "5",
           "DUALWRITE_CHAOS_HOOKS": str(hooks_file)}
    log = tmp_path / "workers.log"
    procs = [start_worker(repo_root, env, log)]
    try:
        handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, mode="auto", batch_size=1_000),
                                task_queue=queue, tuning=fast_tuning(heartbeat_timeout_seconds=5))
        await eventually(lambda: fired(hooks_file, "prepare.before_preflight", procs[0].pid), 60, "preflight")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        killed = time.monotonic()
        hooks_file.write_text(json.dumps({"copy.before_plan": {"action": "delay", "seconds": 30}}))
        procs.append(start_worker(repo_root, env, log))
        # the new worker redoes the preflight, the barriers and gates, and reaches the planning
        await eventually(lambda: fired(hooks_file, "copy.before_plan", procs[1].pid), 60, "planning")
        assert time.monotonic() - killed < 60
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)
        killed = time.monotonic()
        hooks_file.write_text("{}")
        procs.append(start_worker(repo_root, env, log))
        await dw.wait(handle, lambda s: s.tables[0].done, "the backfill to finish", timeout=60)
        assert time.monotonic() - killed < 60
        assert rows_of(pg_old, table_name) == rows_of(pg_new, table_name)
        await handle.terminate("test over")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
