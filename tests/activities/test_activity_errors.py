"""Permanent errors fail the step at once with the reason; transient ones are retried; long pollers never
take the slots phase work needs. Real PostgreSQL roles, constraints and closed ports; a real Temporal server.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import (
    PG_HOST,
    PG_PORT,
    MigrationDriver,
    create_pg,
    execute,
    fast_tuning,
    fetch_all,
    pg_url,
    rows_of,
    spec_for,
)
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from activities.core import DualwriteActivities, _retire_table, to_application_error
from dualwrite import control
from dualwrite.config import StoreRef, StoreResolver, env_var_for
from dualwrite.errors import StorePermissionError, permanent_error_types
from dualwrite.preflight import preflight
from dualwrite.store import Store


@contextlib.asynccontextmanager
async def own_worker(client: Client, urls: dict[str, str], tmp_path: Path, *, max_activities: int = 4
                     ) -> AsyncIterator[str]:
    """An in-process worker with its own stores and task queue; yields the queue."""
    from worker import build_worker

    queue = f"dw-act-{secrets.token_hex(3)}"
    cfg = tmp_path / f"none-{queue}.yaml"
    cfg.write_text("stores: {}\n")
    resolver = StoreResolver(config_file=cfg, environ={env_var_for(n): u for n, u in urls.items()})
    acts = DualwriteActivities(resolver)
    try:
        async with build_worker(client, acts, task_queue=queue, max_activities=max_activities, shutdown_seconds=5):
            yield queue
    finally:
        acts.close()


def db_of(store: Store) -> str:
    return str(store.engine.url.database)


@contextlib.contextmanager
def non_owner_role(*stores: Store) -> Iterator[str]:
    """A LOGIN role that may read and write every table of ``stores`` but owns none of them."""
    role = f"dw_noown_{secrets.token_hex(3)}"
    with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname="postgres", autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN")
    try:
        for s in stores:
            execute(s, f"GRANT USAGE ON SCHEMA public TO {role}",
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                    f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
        yield role
    finally:
        for s in stores:
            with contextlib.suppress(Exception):
                execute(s, f"DROP OWNED BY {role}")
        with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname="postgres", autocommit=True) as c:
            c.execute(f"DROP ROLE IF EXISTS {role}")


def as_role(role: str, store: Store) -> str:
    return f"postgresql+psycopg://{role}@{PG_HOST}:{PG_PORT}/{db_of(store)}"


def test_permanent_error_types_come_from_the_hierarchy() -> None:
    names = permanent_error_types()
    for name in ("ConfigError", "SchemaError", "SpecError", "UnknownStoreError", "VerificationError",
                 "StorePermissionError", "RowRejectedError"):
        assert name in names
    assert "StoreUnavailableError" not in names and "StoreError" not in names


async def test_unique_violation_in_the_target_fails_the_backfill_with_the_reason(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 3_000)
    execute(pg_old, f"UPDATE {table_name} SET name = 'same' WHERE id IN (10, 2500)")
    create_pg(pg_new, table_name, 0)
    execute(pg_new, f"ALTER TABLE {table_name} ADD CONSTRAINT {table_name}_name_uq UNIQUE (name)")
    handle = await dw.start(spec_for(f"uniq-{secrets.token_hex(3)}", "pgold", "pgnew", table_name,
                                     batch_size=500))
    await dw.advance_to(handle, "DUAL_WRITE")
    res = await dw.update(handle, "advance", by="pytest", reason="test")
    assert res.ok, res.message
    st = await dw.wait(handle, lambda s: "failed" in s.waiting_for, "the backfill to fail", timeout=60)
    assert "BACKFILL work failed" in st.waiting_for
    assert "RowRejectedError" in st.waiting_for and f"{table_name}_name_uq" in st.waiting_for
    assert "same" not in st.waiting_for  # never a row value
    history = await handle.fetch_history()
    assert any(e.HasField("child_workflow_execution_failed_event_attributes") for e in history.events)

    # the operator fixes the cause, rolls back and advances again: the backfill runs to the end
    execute(pg_new, f"ALTER TABLE {table_name} DROP CONSTRAINT {table_name}_name_uq")
    res = await dw.update(handle, "rollback", by="pytest", reason="fixed the target's constraint")
    assert res.ok, res.message
    await dw.settled(handle, "DUAL_WRITE")
    await dw.advance_to(handle, "BACKFILL")
    await dw.settled(handle, "BACKFILL", timeout=120)
    assert rows_of(pg_old, table_name) == rows_of(pg_new, table_name)


async def test_prepare_with_a_role_that_does_not_own_the_control_tables_fails_at_once(
        temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str, tmp_path: Path) -> None:
    create_pg(pg_old, table_name, 100)
    create_pg(pg_new, table_name, 0)
    control.ensure_schema(pg_old)  # the control tables exist, owned by another account
    with non_owner_role(pg_old, pg_new) as role:
        urls = {"lowold": as_role(role, pg_old), "lownew": as_role(role, pg_new)}
        spec = spec_for(f"noown-{secrets.token_hex(3)}", "lowold", "lownew", table_name)

        # `dualwrite check` reports it before anything starts
        cfg = tmp_path / "none.yaml"
        cfg.write_text("stores: {}\n")
        report = preflight(spec, StoreResolver(config_file=cfg, environ={env_var_for(n): u for n, u in urls.items()}))
        owned = [p for p in report.problems if "owner" in p.message and control.REPAIR_QUEUE in p.message]
        assert owned, report.problems
        assert role in owned[0].message

        async with own_worker(temporal_client, urls, tmp_path) as queue:
            handle = await MigrationDriver(temporal_client).start(spec, task_queue=queue)
            with pytest.raises(WorkflowFailureError) as failed:
                await asyncio.wait_for(handle.result(), timeout=60)
        text = str(failed.value.cause) + str(getattr(failed.value.cause, "cause", ""))
        assert "owner" in text and control.REPAIR_QUEUE in text, text

        # the operator fixes it (here: membership in the owning role) and starts the migration again
        owner = fetch_all(pg_old, f"SELECT pg_get_userbyid(relowner) FROM pg_class "
                                  f"WHERE oid = '{control.REPAIR_QUEUE}'::regclass")[0][0]
        execute(pg_old, f'GRANT "{owner}" TO {role}')
        try:
            async with own_worker(temporal_client, urls, tmp_path) as queue:
                drv = MigrationDriver(temporal_client)
                handle = await drv.start(spec, task_queue=queue)
                st = await drv.settled(handle, "PREPARE", timeout=60)
                assert "failed" not in st.waiting_for
                await handle.terminate("test over")
        finally:
            execute(pg_old, f'REVOKE "{owner}" FROM {role}')

        # CLEANUP's rename as a non-owner: a permanent error too, with the database's reason
        low = Store(StoreRef("lowold", as_role(role, pg_old)))
        try:
            with pytest.raises(Exception) as rename:  # noqa: PT011 - the test asserts the class below
                _retire_table(low, table_name, "20260101000000", drop=False)
        finally:
            low.dispose()
        mapped = to_application_error(rename.value)
        assert mapped.non_retryable and mapped.type == StorePermissionError.__name__
        assert f"must be owner of table {table_name}" in mapped.message


async def test_an_unreachable_store_during_prepare_is_retried_until_it_answers(
        temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str, tmp_path: Path) -> None:
    create_pg(pg_old, table_name, 200)
    create_pg(pg_new, table_name, 0)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    urls = {"downold": pg_url(db_of(pg_old)).replace(f":{PG_PORT}/", f":{port}/"), "pgnew": pg_url(db_of(pg_new))}
    assert f":{port}/" in urls["downold"]

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        finally:
            w.close()

    async def forward(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(PG_HOST, PG_PORT)
        await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)

    drv = MigrationDriver(temporal_client)
    async with own_worker(temporal_client, urls, tmp_path) as queue:
        handle = await drv.start(spec_for(f"down-{secrets.token_hex(3)}", "downold", "pgnew", table_name),
                                 task_queue=queue)
        await asyncio.sleep(8)
        desc = await handle.describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING
        st = await drv.status(handle)
        assert st.phase == "PREPARE" and st.waiting_for == "preflight", st.waiting_for
        raw = await temporal_client.workflow_service.describe_workflow_execution(
            __import__("temporalio.api.workflowservice.v1", fromlist=["x"]).DescribeWorkflowExecutionRequest(
                namespace=temporal_client.namespace, execution=__import__(
                    "temporalio.api.common.v1", fromlist=["x"]).WorkflowExecution(workflow_id=handle.id)))
        pending = [a for a in raw.pending_activities if a.activity_type.name == "prepare"]
        assert pending and pending[0].attempt >= 2, raw.pending_activities
        assert "unreachable" in pending[0].last_failure.message

        server = await asyncio.start_server(forward, "127.0.0.1", port)  # the store comes back
        try:
            st = await drv.settled(handle, "PREPARE", timeout=90)
            assert st.waiting_for != "preflight"
            assert not any("failed" in t for t in [st.waiting_for])
        finally:
            server.close()
            await handle.terminate("test over")


async def test_long_pollers_leave_the_slots_to_the_backfills(
        temporal_client: Client, pg_old: Store, pg_new: Store, tmp_path: Path,
        dw_store_urls: dict[str, str]) -> None:
    """Three migrations on a worker with two activity slots: each one's repair drain is a long poll (the
    default five minutes), yet every backfill runs to the end."""
    tables = [f"starve_{secrets.token_hex(3)}" for _ in range(3)]
    for t in tables:
        create_pg(pg_old, t, 2_000)
        create_pg(pg_new, t, 0)
    drv = MigrationDriver(temporal_client)
    tuning = fast_tuning(repair_idle_seconds=300)
    async with own_worker(temporal_client, dw_store_urls, tmp_path, max_activities=2) as queue:
        handles = [await drv.start(spec_for(f"starve-{secrets.token_hex(3)}", "pgold", "pgnew", t, mode="auto",
                                            batch_size=500), task_queue=queue, tuning=tuning) for t in tables]
        try:
            for h in handles:
                await drv.wait(h, lambda s: s.tables[0].done and s.phase not in ("PREPARE", "DUAL_WRITE", "BACKFILL"),
                               "the backfill to finish", timeout=120)
        finally:
            for h in handles:
                with contextlib.suppress(Exception):
                    await h.terminate("test over")
    for t in tables:
        assert rows_of(pg_old, t) == rows_of(pg_new, t)


async def test_status_says_when_work_is_scheduled_but_no_worker_slot_takes_it(
        temporal_client: Client, dw_store_env: dict[str, str], pg_old: Store, pg_new: Store, table_name: str,
        tmp_path: Path) -> None:
    """Workers run the workflow but have no slot for its activities: `dualwrite status` names the activity
    that waits, for how long, and on which task queue, instead of a progress that silently stands still."""
    import concurrent.futures
    import sys

    from temporalio.worker import Worker

    from worker import WORKFLOWS, sandbox_runner

    create_pg(pg_old, table_name, 100)
    create_pg(pg_new, table_name, 0)
    queue = f"dw-noslot-{secrets.token_hex(3)}"
    name = f"noslot-{secrets.token_hex(3)}"
    async with Worker(temporal_client, task_queue=queue, workflows=list(WORKFLOWS), workflow_runner=sandbox_runner(),
                      activity_executor=concurrent.futures.ThreadPoolExecutor(1)):
        handle = await MigrationDriver(temporal_client).start(spec_for(name, "pgold", "pgnew", table_name),
                                                              task_queue=queue)
        await asyncio.sleep(4)
        env = {"DUALWRITE_TEMPORAL_ADDRESS": temporal_client.service_client.config.target_host,
               "DUALWRITE_STALL_SECONDS": "2", **dw_store_env}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from starter.cli import main; main()", "status", name,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
            env={**__import__("os").environ, "NO_COLOR": "1", "COLUMNS": "300", **env})
        out_b, err_b = await asyncio.wait_for(proc.communicate(), timeout=60)
        await handle.terminate("test over")
    text = " ".join(out_b.decode().split())
    assert "prepare" in text and "not started" in text and queue in text, (text, err_b.decode())


def test_a_foreign_key_violation_stays_retryable_a_unique_violation_does_not(pg_new: Store, table_name: str) -> None:
    """Tables backfilled in parallel can deliver a child row before its parent: a retry succeeds later, so
    a foreign-key violation is retried. A unique violation on another column never heals by itself."""
    parent, child = f"{table_name}_p", f"{table_name}_c"
    execute(pg_new, f"CREATE TABLE {parent} (id int PRIMARY KEY, email text UNIQUE)",
            f"CREATE TABLE {child} (id int PRIMARY KEY, parent_id int REFERENCES {parent}(id))",
            f"INSERT INTO {parent} VALUES (1, 'a@example.com')")
    errors = {}
    for label, sql in (("fk", f"INSERT INTO {child} VALUES (1, 42)"),
                       ("unique", f"INSERT INTO {parent} VALUES (2, 'a@example.com')")):
        with pg_new.connect() as conn, pytest.raises(psycopg.Error) as caught:
            conn.cursor().execute(sql)
        errors[label] = to_application_error(caught.value)
    assert not errors["fk"].non_retryable
    assert errors["unique"].non_retryable and errors["unique"].type == "RowRejectedError"
    assert f"{parent}_email_key" in errors["unique"].message and "a@example.com" not in errors["unique"].message
