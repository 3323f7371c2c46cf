"""A table belongs to at most one live migration.

Two migrations of one table were both accepted, and CLEANUP of the second retired the table the first
still served from. ``dualwrite check`` and ``dualwrite start`` refuse the second, naming the first; a
second started straight through Temporal (as the Web UI does) fails in PREPARE with the same reason; once
the first is no longer running, the table is free again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import MigrationDriver, create_pg, spec_for
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from dualwrite.store import Store


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from starter.cli import main; main()", *args],
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200",
                                                              **env}, timeout=120, cwd=cwd)


async def test_a_second_migration_of_a_live_table_is_refused_everywhere(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str,
        dw_store_env: dict[str, str], tmp_path: Path) -> None:
    create_pg(pg_old, table_name, 200)
    create_pg(pg_new, table_name, 0)
    first = f"own-a-{secrets.token_hex(3)}"
    second = f"own-b-{secrets.token_hex(3)}"
    handle_a = await dw.start(spec_for(first, "pgold", "pgnew", table_name))
    await dw.advance_to(handle_a, "DUAL_WRITE")

    (tmp_path / "none.yaml").write_text("stores: {}\n")
    env = {**dw_store_env, "DUALWRITE_TEMPORAL_ADDRESS": temporal_client.service_client.config.target_host,
           "DUALWRITE_NAMESPACE": temporal_client.namespace, "DUALWRITE_CONFIG": str(tmp_path / "none.yaml")}
    (tmp_path / "b.yaml").write_text(f"name: {second}\nold: pgold\nnew: pgnew\ntables:\n  - source: {table_name}\n")
    owned = (f"table {table_name} in store 'pgold' belongs to the running migration {first!r} (phase DUAL_WRITE)")

    checked = await asyncio.to_thread(cli, "check", "b.yaml", env=env, cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert f"b.yaml:5 tables[0].source: {owned}" in checked.stdout

    started = await asyncio.to_thread(cli, "start", "b.yaml", env=env, cwd=tmp_path)
    assert started.returncode == 1, started.stdout + started.stderr
    assert owned in started.stderr and "not started" in started.stderr
    with pytest.raises(RPCError):
        await temporal_client.get_workflow_handle(f"dualwrite-{second}").describe()

    # started past the CLI (the Web UI's "Start Workflow"): PREPARE refuses it, at once and for good
    handle_b = await dw.start(spec_for(second, "pgold", "pgnew", table_name))
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle_b.result(), 60)
    cause = failed.value.cause
    text = f"{cause}{getattr(cause, 'cause', '')}"
    assert owned in text and "PREPARE failed" in text
    assert (await dw.status(handle_a)).phase == "DUAL_WRITE"  # the first one goes on

    # a migration that is no longer running owns nothing
    await handle_a.terminate("test: the first migration is abandoned")
    checked = await asyncio.to_thread(cli, "check", "b.yaml", env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_of_two_migrations_started_at_once_exactly_the_later_is_refused(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 50)
    create_pg(pg_new, table_name, 0)
    names = [f"race-a-{secrets.token_hex(3)}", f"race-b-{secrets.token_hex(3)}"]
    handles = await asyncio.gather(*(dw.start(spec_for(n, "pgold", "pgnew", table_name)) for n in names))

    async def outcome(handle: WorkflowHandle[Any, Any]) -> str:
        for _ in range(300):
            if (await handle.describe()).status == WorkflowExecutionStatus.FAILED:
                try:
                    await handle.result()
                except WorkflowFailureError as exc:
                    return "refused" if "belongs to the running migration" in str(exc.cause) else str(exc.cause)
            st = await dw.status(handle)
            if st.phase == "PREPARE" and st.waiting_for.startswith("operator"):
                return "settled"
            await asyncio.sleep(0.2)
        return "undecided"

    results = await asyncio.gather(*(outcome(h) for h in handles))
    assert sorted(results) == ["refused", "settled"], results
    await handles[results.index("settled")].terminate("test over")
