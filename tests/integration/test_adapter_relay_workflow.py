"""RelayWorkflow on a real Temporal dev server: it sets capture up, drains the key logs continuously while
the application writes, continues as new, records its lag, and finishes (final drain, triggers removed)."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import Any

import pytest
from app.endpoints import scenario
from app.harness import make_migration
from temporalio.client import Client
from temporalio.worker import Worker

from activities.relay import RelayActivities
from activities.stores import StoreCache
from dualwrite import stats as st
from dualwrite import triggers
from dualwrite.config import StoreResolver
from workflows.relay import FINISH_SIGNAL, RelayInput, RelayStatus, RelayWorkflow, relay_workflow_id


@pytest.mark.parametrize(("pair", "strategy"), [("pg_old>pg_new", "triggers"), ("my_old>pg_new", "outbox")])
async def test_relay_workflow_mirrors_continuously_and_finishes(
        request: pytest.FixtureRequest, temporal_client: Client, dw_resolver: StoreResolver,
        pair: str, strategy: str) -> None:
    from worker import sandbox_runner

    old, new = (request.getfixturevalue(n) for n in pair.split(">"))
    m = make_migration(old, new, strategy, install_triggers=False)
    queue = f"relay-test-{secrets.token_hex(3)}"
    cache = StoreCache(dw_resolver)
    acts = RelayActivities(cache)
    try:
        m.publish("DUAL_WRITE")
        async with Worker(temporal_client, task_queue=queue, workflows=[RelayWorkflow], activities=acts.all(),
                          activity_executor=__import__("concurrent.futures").futures.ThreadPoolExecutor(4),
                          workflow_runner=sandbox_runner()):
            handle = await temporal_client.start_workflow(
                RelayWorkflow.run, RelayInput(spec=m.spec, poll_seconds=0.05, max_activity_seconds=0.3,
                                              heartbeat_timeout_seconds=5),
                id=relay_workflow_id(m.name) + uuid.uuid4().hex[:4], task_queue=queue)
            if strategy == "triggers":
                await _eventually(lambda: triggers.installed(old, m.name, m.models.customers), "triggers installed")
            else:
                await _eventually(lambda: _status_ok(handle), "relay running")
            keys = await asyncio.to_thread(scenario, m.shop, "relayed")
            await _eventually(lambda: m.diffs(m.models.customers, keys["customers"]) == []
                              and m.diffs(m.models.orders, keys["orders"]) == [], "new store caught up",
                              timeout=90)
            await _eventually(lambda: _runs(handle, 2), "continue-as-new", timeout=90)
            more = await asyncio.to_thread(scenario, m.shop, "after-can")
            await _eventually(lambda: m.diffs(m.models.customers, more["customers"]) == [], "caught up again")
            await handle.signal(FINISH_SIGNAL)
            result: RelayStatus = await asyncio.wait_for(handle.result(), 60)
        assert result.finishing and result.totals.mirrored > 0 and result.totals.failed == 0
        assert result.remaining == 0 and result.runs >= 2
        if strategy == "triggers":
            assert not triggers.installed(old, m.name, m.models.customers)
            assert not triggers.installed(new, m.name, m.models.customers)
        merged = st.read_stats(m.control, m.name, seconds=300)
        relays = {i for i in merged.instances if i.startswith("relay@")}
        assert relays and merged.count(st.RELAY, "mirrored") > 0
        assert st.RELAY_LAG in merged.gauges
    finally:
        cache.close()
        m.close()


async def _status_ok(handle: Any) -> bool:
    st_: RelayStatus = await handle.query("status", result_type=RelayStatus)
    return st_.migration != ""


async def _runs(handle: Any, n: int) -> bool:
    st_: RelayStatus = await handle.query("status", result_type=RelayStatus)
    return st_.runs >= n


async def _eventually(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)

