"""[T2-4] The relay's catch-up and drain ride out a store that refuses connections for a few seconds.

Under the chaos harness the new store is cut for 1-3 s every 2-5 s. An activity attempt that failed on the
first refused connection waited out Temporal's growing retry backoff (up to 30-60 s) and, under repeated
cuts, almost never finished: the migration stayed "waiting for mirroring the key logs up to now" for
minutes. Here a real :class:`bench.faultproxy.FaultProxy` stands in front of the new store (strategy
``cdc``, PostgreSQL with logical decoding) and refuses connections for about 4 s while the activity runs:
the activity must complete within one attempt with every captured row mirrored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import execute, fetch_all
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import relay as relay_activities
from activities.relay import RelayActivities
from activities.stores import StoreCache
from bench.faultproxy import FaultProxy
from dualwrite import control
from dualwrite.capture.store_side import store_side
from dualwrite.cdc import capture
from dualwrite.config import StoreResolver, env_var_for
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from workflows.relay import CatchUpInput, RelayDrainInput

OUTAGE_SECONDS = 4.0


@dataclass
class Setup:
    spec: MigrationSpec
    acts: RelayActivities
    proxy: FaultProxy
    old: Store
    new: Store
    table: str

    def rows(self, store: Store) -> list[tuple[object, ...]]:
        return fetch_all(store, f"SELECT id, name FROM {self.table} ORDER BY id")

    def write(self, first: int, n: int) -> None:
        """Acknowledged writes on the old store, one transaction each (inserts, then updates of some)."""
        for i in range(first, first + n):
            execute(self.old, f"INSERT INTO {self.table} VALUES ({i}, 'row {i}')")
        execute(self.old, f"UPDATE {self.table} SET name = name || ' updated' WHERE id % 3 = 0")

    def outage(self) -> threading.Thread:
        """Refuse (and cut) every connection to the new store now, for OUTAGE_SECONDS."""
        self.proxy.set_mode("refuse")

        def back() -> None:
            time.sleep(OUTAGE_SECONDS)
            self.proxy.set_mode("ok")

        t = threading.Thread(target=back, daemon=True)
        t.start()
        return t


@pytest.fixture
def setup(cdc_pg_old: Store, cdc_pg_new: Store, table_name: str, tmp_path: Path, databases: Any) -> Iterator[Setup]:
    ddl = f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text NOT NULL)"
    execute(cdc_pg_old, ddl)
    execute(cdc_pg_new, ddl)
    url = cdc_pg_new.engine.url
    proxy = FaultProxy(str(url.host), int(url.port or 5432))
    proxy.start()
    config = tmp_path / "dualwrite.yaml"
    config.write_text("stores: {}\n")
    resolver = StoreResolver(config_file=config, environ={
        env_var_for("outold"): cdc_pg_old.engine.url.render_as_string(hide_password=False),
        env_var_for("outnew"): proxy.url_for(url.render_as_string(hide_password=False))})
    spec = MigrationSpec.model_validate({"name": f"out-{table_name[-4:]}", "old": "outold", "new": "outnew",
                                         "strategy": "cdc", "tables": [{"source": table_name}]})
    cache = StoreCache(resolver, pool_size=2)
    acts = RelayActivities(cache, identity="pytest-relay")
    rs = cache.relay_stores(spec)
    control.ensure_schema(rs.control)
    control.publish_state(rs.control, spec.name, "DUAL_WRITE", 1)
    store_side(spec).setup(rs)
    try:
        yield Setup(spec, acts, proxy, cdc_pg_old, cdc_pg_new, table_name)
    finally:
        proxy.set_mode("ok")
        capture.teardown(rs.old, rs.control, spec.name)
        capture.teardown(rs.new, rs.control, spec.name)
        proxy.stop()
        for name in ("outold", "outnew"):
            cache.store(name).dispose()


def test_catch_up_mirrors_everything_through_a_refused_new_store(setup: Setup) -> None:
    setup.write(1, 60)
    back = setup.outage()
    started = time.monotonic()
    res = ActivityEnvironment().run(setup.acts.catch_up,
                                    CatchUpInput(spec=setup.spec, max_seconds=60, authoritative="old"))
    back.join()
    assert res.reached, f"catch-up gave up: {res}"
    assert time.monotonic() - started >= OUTAGE_SECONDS - 1, "the outage was in the way"
    assert setup.rows(setup.new) == setup.rows(setup.old)
    assert len(setup.rows(setup.new)) == 60


def test_catch_up_that_outlives_its_budget_in_an_outage_says_not_reached_with_the_reason(setup: Setup) -> None:
    setup.write(1, 10)
    back = setup.outage()
    res = ActivityEnvironment().run(setup.acts.catch_up,
                                    CatchUpInput(spec=setup.spec, max_seconds=1.5, authoritative="old"))
    back.join()
    assert not res.reached and res.behind > 0
    assert any("unreachable" in e for e in res.errors), res.errors
    assert "row " not in " ".join(res.errors), "no row data in what reaches history"


def test_drain_mirrors_everything_through_a_refused_new_store(setup: Setup) -> None:
    setup.write(1, 40)
    back = setup.outage()
    res = ActivityEnvironment().run(setup.acts.drain, RelayDrainInput(spec=setup.spec, max_seconds=30,
                                                                     poll_seconds=0.1, finish=True))
    back.join()
    assert res.counters.mirrored >= 40
    assert setup.rows(setup.new) == setup.rows(setup.old)
    assert len(setup.rows(setup.new)) == 40


def test_drain_fails_retryably_when_the_store_stays_away_past_its_budget(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_activities, "OUTAGE_GRACE_SECONDS", 2.0)
    setup.write(1, 5)
    setup.proxy.set_mode("refuse")
    with pytest.raises(ApplicationError) as err:
        ActivityEnvironment().run(setup.acts.drain, RelayDrainInput(spec=setup.spec, max_seconds=1,
                                                                   poll_seconds=0.1, finish=True))
    assert not err.value.non_retryable
    assert "unreachable" in err.value.message
