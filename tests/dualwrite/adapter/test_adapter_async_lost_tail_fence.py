"""[T2-5] Authority never moves while a killed ``async`` writer's acknowledged writes exist only on the losing
store.

A process writing with ``async`` is SIGKILLed with five acknowledged inserts still in its queue (the old store
holds them, the new one does not). Then write cutover fences writes and drains: the repair queue never held
those keys, so the drain used to let the flip go ahead with the new store lacking them, and the verification
after the flip (new -> old) would remove them from the old store too. Now the fence's drain finds the dead
writer by its watermark, compares the async tables old -> new and repairs them before the flip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app.endpoints import NOW
from app.harness import make_migration
from conftest import execute, fetch_all, spec_for
from temporalio.testing import ActivityEnvironment

from activities.repair import RepairActivities
from activities.stores import StoreCache, compile_mapping
from dualwrite import control, hooks, watermark
from dualwrite.adapter import AdapterOptions
from dualwrite.async_tails import level_lost_tails
from dualwrite.config import StoreResolver, env_var_for
from dualwrite.store import Store
from workflows.models import RepairDrainInput, RepairDrainResult

TESTS = Path(__file__).resolve().parents[2]


def test_the_fences_drain_levels_a_killed_async_writers_tail(pg_old: Store, pg_new: Store, tmp_path: Path) -> None:
    m = make_migration(pg_old, pg_new, "async", options=AdapterOptions(background=False, phase_ttl=0.05))
    hooks_file = tmp_path / "child-hooks.json"
    hooks_file.write_text(json.dumps({"mirror.before_commit": {"action": "pause", "seconds": 30}}))
    env = {**os.environ, hooks.ENV: str(hooks_file),
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    prefix = m.models.customers.removesuffix("_customers")
    t = m.models.customers
    try:
        m.publish("CUTOVER_READS")
        m.writer.insert(t, {"tenant": "v", "name": "both", "balance": 1, "active": True, "created_at": NOW,
                            "version": 1})
        assert m.writer.lagged is not None and m.writer.lagged.flush(30)
        child = subprocess.Popen([sys.executable, str(TESTS / "app" / "async_crash_child.py"), prefix,
                                  pg_old.ref.url, pg_new.ref.url, "5"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            assert line.startswith("COMMITTED "), (line, child.stderr.read() if child.poll() is not None else "")
            lost = [int(x) for x in line.split()[1:]]
        finally:
            child.kill()  # SIGKILL: five acknowledged writes die in its queue
            child.wait()
        assert all(m.row("new", t, k) is None for k in lost)

        # write cutover: the fence is up (authority still old), the barrier passed; the workflow's drain runs
        m.publish("CUTOVER_READS", overrides=control.fence_overrides({}, None))
        env_urls = {env_var_for(s.name): s.ref.url for s in (m.old, m.new)}
        stores = StoreCache(StoreResolver(environ=env_urls))
        try:
            res: RepairDrainResult = ActivityEnvironment().run(
                RepairActivities(stores).drain_repairs,
                RepairDrainInput(spec=m.spec, under_fence=True, max_idle_seconds=0, max_seconds=10,
                                 poll_seconds=0.1))
        finally:
            stores.close()

        assert all(m.row("new", t, k) is not None for k in lost)  # the gaining store holds every one
        assert m.diffs(t, lost) == []
        assert res.lost_tail_writers == 1 and res.lost_tail_repaired == 5, res
        # the dead writer's row is gone: the next flip does not compare again
        assert [mk for mk in watermark.marks(m.control, m.name, watermark.db_now(m.control), live_seconds=5)
                if not mk.live] == []
    finally:
        m.close()


def test_the_migrations_flip_levels_a_lost_tail_but_not_the_tenants_ahead(pg_old: Store, pg_new: Store,
                                                                          table_name: str) -> None:
    """The whole migration flips to the new store while tenant acme already writes there on its own: the
    lost tail's comparison (old -> new) must leave acme's rows alone, as a migration-wide verification does."""
    ddl = f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, tenant text NOT NULL, name text NOT NULL, version bigint)"
    for store in (pg_old, pg_new):
        execute(store, ddl, f"INSERT INTO {table_name} VALUES (1, 'acme', 'a0', 1)")
    execute(pg_old, f"INSERT INTO {table_name} VALUES (2, 'beta', 'beta acknowledged, queue lost', 1)")
    execute(pg_new, f"UPDATE {table_name} SET name = 'acme acknowledged on new' WHERE id = 1")
    name = f"tail-{table_name[-6:]}"
    spec = spec_for(name, "pgold", "pgnew", table_name, strategy="async",
                    tenants={"column": "tenant", "ids": ["acme", "beta"]})
    control.ensure_schema(pg_old)
    overrides = control.fence_overrides({"tenants": {"acme": "CUTOVER_WRITES"}}, None)
    control.publish_state(pg_old, name, "CUTOVER_READS", 9, overrides=overrides)
    # a writer that died a minute ago with keys queued
    watermark.record(pg_old, name, "killed-writer", 0.0)
    execute(pg_old, f"UPDATE {watermark.WATERMARKS} SET heartbeat_at = heartbeat_at - interval '1 minute', "
                    f"flushed_to = flushed_to - interval '1 minute' WHERE migration = '{name}'")
    mapping = compile_mapping(spec, table_name, pg_old, pg_new)

    out = level_lost_tails(pg_old, name, [(table_name, pg_old, pg_new, mapping)], losing="old",
                           exclude_tenants=["acme"])

    assert out.writers == ["killed-writer"] and out.repaired == 1, out
    assert fetch_all(pg_new, f"SELECT id, name FROM {table_name} ORDER BY id") == [
        (1, "acme acknowledged on new"), (2, "beta acknowledged, queue lost")]
    assert watermark.marks(pg_old, name, watermark.db_now(pg_old), live_seconds=5) == []
