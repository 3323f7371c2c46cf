"""The operator's side of the gates: `advance --dry-run` prints the evaluation metric by metric and changes
nothing, `hold` / `hold --release`, `--confirm-cleanup`, `--drop` asking again, and `status` showing the
gate, the hold and the tenants side by side. The CLI runs as a subprocess against the session's worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator

import pytest
from conftest import MigrationDriver, create_pg, spec_for
from temporalio.client import Client
from test_workflow_cutover import feed_stats

from dualwrite.store import Store


async def cli(client: Client, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "220",
           "DUALWRITE_TEMPORAL_ADDRESS": client.service_client.config.target_host}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from starter.cli import main; main()", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture(autouse=True)
async def _no_relay_left(temporal_client: Client) -> AsyncIterator[None]:
    """The outbox migration below starts its relay, and CLEANUP finishes it; a failure half-way must not
    leave it running (it would hold an activity slot of the shared worker for the rest of the session)."""
    yield
    query = ('WorkflowType = "RelayWorkflow" AND ExecutionStatus = "Running" '
             'AND WorkflowId STARTS_WITH "dualwrite-cligate-"')
    async for w in temporal_client.list_workflows(query):
        with contextlib.suppress(Exception):
            await temporal_client.get_workflow_handle(w.id, run_id=w.run_id).terminate("test over")


async def test_cli_dry_run_hold_cleanup_confirmation_and_status(dw: MigrationDriver, temporal_client: Client,
                                                                pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 200)
    create_pg(pg_new, table_name, 0)
    name = f"cligate-{secrets.token_hex(3)}"
    spec = spec_for(name, "pgold", "pgnew", table_name, gates={"min_shadow_samples": 100}, strategy="outbox",
                    tenants={"column": "name", "ids": ["name-1", "name-2"]})
    handle = await dw.start(spec)
    await dw.advance_to(handle, "SHADOW_READ")

    # the dry run shows each metric (value, threshold, samples, verdict) and what would change; not-yet fails
    rc, out, err = await cli(temporal_client, "advance", name, "--dry-run")
    assert rc == 1, out + err
    assert "shadow_match_rate" in err and "not-yet" in err and "0/100" in err and "> 99.9%" in err
    assert "reconciliation_gap" in err and "backfill_completion" in err and "would change" in err
    assert "reads: served from the new store" in err
    assert (await dw.status(handle)).phase == "SHADOW_READ"
    rc, out, err = await cli(temporal_client, "advance", name, "--dry-run", "--tenant", "name-2")
    assert rc == 1 and "for tenant name-2" in err, out + err
    rc, out, err = await cli(temporal_client, "advance", name)  # a real attempt: refused, evidence recorded
    assert rc == 1 and "did not pass" in err and "not-yet" in err

    rc, out, err = await cli(temporal_client, "hold", name)
    assert rc == 2 and "--reason" in err
    rc, out, err = await cli(temporal_client, "hold", name, "--reason", "change freeze")
    assert rc == 0 and "held in SHADOW_READ" in out, err
    rc, out, err = await cli(temporal_client, "advance", name, "--force", "--reason", "x")
    assert rc == 1 and "held" in err and "change freeze" in err
    rc, out, err = await cli(temporal_client, "status", name)
    assert rc == 0, err
    assert "HELD by" in out and "change freeze" in out
    assert "shadow_match_rate" in out and "not-yet" in out  # the last gate evaluation, metric by metric
    assert "tenants" in out and "name-1" in out and "name-2" in out and "follows" in out
    rc, out, err = await cli(temporal_client, "hold", name, "--release")
    assert rc == 0 and "released" in out, err

    # CLEANUP: its own confirmation; --drop asks again and, without a terminal, needs --confirm-drop NAME
    feed_stats(pg_old, name, shadow_match=200)
    await dw.advance_to(handle, "CUTOVER_WRITES")
    rc, out, err = await cli(temporal_client, "advance", name)
    assert rc == 1 and "point of no return" in err and "--confirm-cleanup" in err
    rc, out, err = await cli(temporal_client, "advance", name, "--confirm-cleanup", "--drop")
    assert rc == 2 and "--confirm-drop" in err
    rc, out, err = await cli(temporal_client, "advance", name, "--confirm-cleanup", "--drop", "--confirm-drop", "x")
    assert rc == 2 and "must be the migration's name" in err
    rc, out, err = await cli(temporal_client, "advance", name, "--dry-run", "--confirm-cleanup")
    assert rc == 0 and "POINT OF NO RETURN" in out and "_dw_retired_" in out, out + err
    rc, out, err = await cli(temporal_client, "advance", name, "--confirm-cleanup", "--reason", "all good")
    assert rc == 0 and "CUTOVER_WRITES -> CLEANUP" in out, err
    st = await dw.settled(handle, "CLEANUP")
    assert st.retirement is not None and st.retirement.tables[0].action == "renamed"
    rc, out, err = await cli(temporal_client, "status", name)
    assert rc == 0 and "old store retired" in out and "renamed as" in out, out + err
    rc, out, err = await cli(temporal_client, "rollback", name, "--reason", "oops")
    assert rc == 1 and "point of no return" in err
    await handle.terminate("test over")
