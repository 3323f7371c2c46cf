"""A rollback out of CUTOVER_WRITES interrupted in the middle: by a worker killed with SIGKILL, or by the
Temporal server itself dying and restarting (state kept in its database file). Authority does not flip while
the old store is not yet level (applications stay on one authority), and when the system comes back the
rollback finishes: the accepted update is part of the workflow's history, so a worker replays it to where
it was, the reverse verification resumes, and only then is the old store made authoritative again."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
from pathlib import Path

from conftest import (
    MigrationDriver,
    create_pg,
    eventually,
    execute,
    fast_tuning,
    migration_histories,
    rows_of,
    spec_for,
    temporal_cli,
)
from temporalio.client import Client, WorkflowUpdateStage
from test_workflow_crash import free_port, start_worker

from dualwrite import control
from dualwrite.store import Store
from workflows.models import TransitionRequest, TransitionResult

ROWS = 80_000


async def test_worker_killed_mid_rollback_a_new_worker_finishes_it(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str,
        dw_store_env: dict[str, str], repo_root: Path, tmp_path: Path) -> None:
    create_pg(pg_old, table_name, ROWS)
    create_pg(pg_new, table_name, 0)
    name = f"rbcrash-{secrets.token_hex(3)}"
    queue = f"dualwrite-rbcrash-{secrets.token_hex(3)}"
    (tmp_path / "none.yaml").write_text("stores: {}\n")
    address = temporal_client.service_client.config.target_host
    env = {**os.environ, **dw_store_env, "DUALWRITE_TEMPORAL_ADDRESS": address,
           "DUALWRITE_NAMESPACE": temporal_client.namespace, "DUALWRITE_TASK_QUEUE": queue,
           "DUALWRITE_CONFIG": str(tmp_path / "none.yaml"), "DUALWRITE_MAX_ACTIVITIES": "4",
           "DUALWRITE_SHUTDOWN_SECONDS": "5"}
    log = tmp_path / "workers.log"
    first = start_worker(repo_root, env, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        spec = spec_for(name, "pgold", "pgnew", table_name, batch_size=5_000, backfill_concurrency=2)
        handle = await dw.start(spec, task_queue=queue,
                                tuning=fast_tuning(verify_chunk_size=200, verify_heartbeat_seconds=4))
        await dw.advance_to(handle, "CUTOVER_WRITES", timeout=120)
        # writes acknowledged by the new store (authoritative now) whose mirror to the old one was lost
        execute(pg_new, f"UPDATE {table_name} SET name = 'after-cutover', version = version + 1 "
                        "WHERE id % 10 = 0")
        acknowledged = rows_of(pg_new, table_name)
        epoch = (await dw.status(handle)).epoch

        update = await handle.start_update("rollback", TransitionRequest(reason="p99 regression", by="ops"),
                                           wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                                           result_type=TransitionResult)
        # kill the worker once the reverse verification is under way
        st = await dw.wait(handle, lambda s: bool(s.rolling_back) and "verifying new -> old" in s.waiting_for,
                           "rollback verifying", 60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        # with no worker, nothing flips: applications keep one authority (the new store) meanwhile
        await asyncio.sleep(1.0)
        state = control.read_state(pg_old, name)
        assert state is not None and (state.phase, state.epoch) == ("CUTOVER_WRITES", epoch)

        second = start_worker(repo_root, env, log)
        assert not st.counters.get("rollbacks")  # it was killed before the flip
        result = await asyncio.wait_for(update.result(), timeout=120)
        assert result.ok and result.phase == "CUTOVER_READS", result.message
        st = await dw.settled(handle, "CUTOVER_READS", timeout=120)
        assert rows_of(pg_old, table_name) == acknowledged, "an acknowledged write was lost"
        assert rows_of(pg_new, table_name) == acknowledged
        state = control.read_state(pg_old, name)
        # the write fence's epoch, then the flip's
        assert state is not None and (state.phase, state.epoch) == ("CUTOVER_READS", epoch + 2)
        rollbacks = [t for t in st.transitions if t.kind == "rollback"]
        assert [(t.from_phase, t.to_phase, t.reason) for t in rollbacks] == [
            ("CUTOVER_WRITES", "CUTOVER_READS", "p99 regression")]
        assert st.counters["rollbacks"] == 1 and not st.rolling_back
        # the reverse verification's activity died with the first worker and ran again on the second
        histories = await migration_histories(temporal_client, handle.id)
        retried = [e for h in histories
                   if h.events[0].workflow_execution_started_event_attributes.workflow_type.name
                   == "VerificationWorkflow"
                   for e in h.events if e.HasField("activity_task_started_event_attributes")
                   and e.activity_task_started_event_attributes.attempt > 1]
        assert retried, "the worker was not killed in the middle of the reverse verification"
        await handle.terminate("test over")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if log.exists():
            print(log.read_text()[-3000:])


def start_server(port: int, db: Path, log: Path) -> subprocess.Popen[bytes]:
    """A dev server on its own port whose state lives in ``db`` (so it survives a restart)."""
    from workflows.models import SEARCH_ATTRIBUTE_CLI_ARGS

    args = [temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--headless",
            "--db-filename", str(db), "--log-level", "error"]
    for sa in SEARCH_ATTRIBUTE_CLI_ARGS:
        args += ["--search-attribute", sa]
    return subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def connect(address: str) -> Client:
    from dualwrite.codec import data_converter

    async def attempt() -> Client | None:
        try:
            return await asyncio.wait_for(Client.connect(address, data_converter=data_converter()), 2)
        except Exception:  # noqa: BLE001 - not up yet
            return None

    return await eventually(attempt, 30, "the Temporal server")  # type: ignore[no-any-return]


async def test_temporal_server_restarted_mid_rollback_the_rollback_finishes(
        pg_old: Store, pg_new: Store, table_name: str, dw_store_env: dict[str, str], repo_root: Path,
        tmp_path: Path) -> None:
    create_pg(pg_old, table_name, ROWS // 2)
    create_pg(pg_new, table_name, 0)
    name = f"rbsrv-{secrets.token_hex(3)}"
    port = free_port()
    db, log = tmp_path / "temporal.db", tmp_path / "server.log"
    server = start_server(port, db, log)
    (tmp_path / "none.yaml").write_text("stores: {}\n")
    env = {**os.environ, **dw_store_env, "DUALWRITE_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
           "DUALWRITE_TASK_QUEUE": "dualwrite", "DUALWRITE_CONFIG": str(tmp_path / "none.yaml"),
           "DUALWRITE_MAX_ACTIVITIES": "4", "DUALWRITE_SHUTDOWN_SECONDS": "5"}
    worker = None
    try:
        client = await connect(f"127.0.0.1:{port}")
        worker = start_worker(repo_root, env, tmp_path / "worker.log")
        dw = MigrationDriver(client)
        spec = spec_for(name, "pgold", "pgnew", table_name, batch_size=5_000, backfill_concurrency=2)
        handle = await dw.start(spec, tuning=fast_tuning(verify_chunk_size=200, verify_heartbeat_seconds=4))
        await dw.advance_to(handle, "CUTOVER_WRITES", timeout=120)
        execute(pg_new, f"UPDATE {table_name} SET name = 'after-cutover', version = version + 1 WHERE id % 7 = 0")
        acknowledged = rows_of(pg_new, table_name)
        update = await handle.start_update("rollback", TransitionRequest(reason="server drill", by="ops"),
                                           wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                                           result_type=TransitionResult)
        await dw.wait(handle, lambda s: bool(s.rolling_back), "rolling back", 60)

        server.send_signal(signal.SIGKILL)  # the server dies mid-rollback; the worker keeps running
        server.wait(10)
        state = control.read_state(pg_old, name)
        assert state is not None and state.phase == "CUTOVER_WRITES"
        server = start_server(port, db, log)
        client = await connect(f"127.0.0.1:{port}")
        dw = MigrationDriver(client)
        handle = client.get_workflow_handle(handle.id)
        result = await asyncio.wait_for(
            handle.get_update_handle(update.id, result_type=TransitionResult).result(), timeout=120)
        assert result.ok and result.phase == "CUTOVER_READS", result.message
        st = await dw.settled(handle, "CUTOVER_READS", timeout=120)
        assert rows_of(pg_old, table_name) == acknowledged, "an acknowledged write was lost"
        state = control.read_state(pg_old, name)
        assert state is not None and state.phase == "CUTOVER_READS"
        assert [t.kind for t in st.transitions].count("rollback") == 1 and not st.rolling_back
        await handle.terminate("test over")
    finally:
        for proc in (worker, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
