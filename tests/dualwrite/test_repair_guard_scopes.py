"""[T2-5] The repair guard covers every drain of the repair queue, per tenant too (real PostgreSQL stores).

Where authority is per tenant (a tenant moved to CUTOVER_WRITES on its own), the drain used to mirror each
key in the direction recorded when it was queued, with no guard: a key queued while its tenant's old store
was authoritative, drained after that tenant's flip, copied the stale old row over the write the new store
had acknowledged; and a drain ran while a tenant's write fence was up. ``DualWriter.drain_repairs`` passed no
authority at all, so it did the same after a migration-wide flip.
"""

from __future__ import annotations

import secrets
from decimal import Decimal

from app.endpoints import NOW
from app.harness import Migration, make_migration
from conftest import execute, fetch_all, spec_for
from temporalio.testing import ActivityEnvironment

from activities.core import repair_authority
from activities.stores import StoreCache, compile_mapping
from activities.verify import VerifyActivities
from dualwrite import control
from dualwrite.adapter import AdapterOptions
from dualwrite.config import StoreResolver, env_var_for
from dualwrite.mapping import TableMapping
from dualwrite.relay import drain_repairs
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from workflows.models import TableRef, TableVerification, VerifyTableInput

DDL = "CREATE TABLE {t} (id bigint PRIMARY KEY, tenant text NOT NULL, name text NOT NULL, version bigint)"


def _tenant_migration(pg_old: Store, pg_new: Store, table: str) -> tuple[str, MigrationSpec]:
    for store in (pg_old, pg_new):
        execute(store, DDL.format(t=table))
    # key 1 belongs to acme, key 2 to beta; both stores start equal
    for store in (pg_old, pg_new):
        execute(store, f"INSERT INTO {table} VALUES (1, 'acme', 'a0', 1), (2, 'beta', 'b0', 1)")
    name = f"rgs-{secrets.token_hex(3)}"
    spec = spec_for(name, "pgold", "pgnew", table, tenants={"column": "tenant", "ids": ["acme", "beta"]})
    control.ensure_schema(pg_old)
    return name, spec


def _mapping_for(spec: MigrationSpec, pg_old: Store, pg_new: Store):  # type: ignore[no-untyped-def]
    def mapping_for(table: str, reverse: bool) -> TableMapping:
        forward = compile_mapping(spec, table, pg_old, pg_new)
        return forward.reversed() if reverse else forward
    return mapping_for


def _names(store: Store, table: str) -> list[tuple[object, ...]]:
    return fetch_all(store, f"SELECT id, name FROM {table} ORDER BY id")


def test_a_repair_follows_the_authority_of_the_tenant_that_owns_the_row(pg_old: Store, pg_new: Store,
                                                                        table_name: str) -> None:
    name, spec = _tenant_migration(pg_old, pg_new, table_name)
    # both secondary writes failed while the old store was authoritative for everyone ...
    control.enqueue_repair(pg_old, name, table_name, [(1,), (2,)], reason="timeout", authoritative="old")
    execute(pg_old, f"UPDATE {table_name} SET name = 'beta acknowledged on old', version = 2 WHERE id = 2")
    # ... then tenant acme alone moved to CUTOVER_WRITES, and acme's application wrote key 1 on the new store
    control.publish_state(pg_old, name, "CUTOVER_READS", 5, overrides={"tenants": {"acme": "CUTOVER_WRITES"}})
    execute(pg_new, f"UPDATE {table_name} SET name = 'acme acknowledged on new', version = 3 WHERE id = 1")

    authority = repair_authority(pg_old, spec)
    assert authority is None  # per tenant
    res = drain_repairs(pg_old, pg_old, pg_new, name, _mapping_for(spec, pg_old, pg_new), authority=authority)

    assert res.mirrored == 2
    want = [(1, "acme acknowledged on new"), (2, "beta acknowledged on old")]
    assert _names(pg_new, table_name) == want
    assert _names(pg_old, table_name) == want
    assert control.repair_queue_depth(pg_old, name) == 0


def test_no_repair_of_a_tenants_keys_while_its_write_fence_is_up(pg_old: Store, pg_new: Store,
                                                                 table_name: str) -> None:
    name, spec = _tenant_migration(pg_old, pg_new, table_name)
    execute(pg_old, f"UPDATE {table_name} SET name = 'acme on old', version = 2 WHERE id = 1",
            f"UPDATE {table_name} SET name = 'beta on old', version = 2 WHERE id = 2")
    control.enqueue_repair(pg_old, name, table_name, [(1,), (2,)], reason="timeout", authoritative="old")
    # acme's authority is moving (its fence is up); beta moved on its own earlier and stays put
    overrides = control.fence_overrides({"tenants": {"beta": "CUTOVER_READS"}}, ["acme"])
    control.publish_state(pg_old, name, "SHADOW_READ", 6, overrides=overrides)
    mapping_for = _mapping_for(spec, pg_old, pg_new)

    res = drain_repairs(pg_old, pg_old, pg_new, name, mapping_for, authority=repair_authority(pg_old, spec))

    assert _names(pg_new, table_name) == [(1, "a0"), (2, "beta on old")]  # acme's key waits for its fence
    assert control.repair_queue_depth(pg_old, name) == 1
    assert res.mirrored == 1 and res.refused >= 1
    # the fence lifted, acme still on the old store: its key is mirrored
    control.publish_state(pg_old, name, "SHADOW_READ", 7, overrides={"tenants": {"beta": "CUTOVER_READS"}})
    res = drain_repairs(pg_old, pg_old, pg_new, name, mapping_for, authority=repair_authority(pg_old, spec))
    assert res.mirrored == 1
    assert _names(pg_new, table_name) == [(1, "acme on old"), (2, "beta on old")]


def _row(name: str) -> dict[str, object]:
    return {"tenant": "t", "name": name, "balance": Decimal("1.00"), "active": True, "created_at": NOW,
            "version": 1}


def test_the_writers_own_drain_repairs_towards_the_store_that_is_not_authoritative(pg_old: Store,
                                                                                     pg_new: Store) -> None:
    opts = AdapterOptions(background=False, phase_ttl=0.05, recheck_delay=0.05, read_your_writes_seconds=0.3)
    m = make_migration(pg_old, pg_new, "async", options=opts)
    try:
        m.publish("CUTOVER_READS")
        t, w = m.models.customers, m.writer
        key = w.insert(t, _row("first"))
        k = key[0]
        assert w.lagged is not None and w.lagged.flush(timeout=30)
        # a secondary write of k failed while the old store was authoritative: queued towards the new store
        w.enqueue_repair(t, [key], reason="timeout", authoritative="old")
        m.publish("CUTOVER_WRITES")
        w.update(t, key, {"name": "acknowledged on new"})
        assert w.lagged.flush(timeout=30)
        qn = fetch_all(pg_new, f"SELECT name FROM {m.spec.table(t).target_table} WHERE id = {k}")
        assert qn == [("acknowledged on new",)]

        # while a write fence is up nothing is repaired by the writer's drain
        execute(pg_old, f"UPDATE {t} SET name = 'stale on old' WHERE id = {k}")
        m.publish("CUTOVER_WRITES", overrides={"fence": {"all": True}})
        assert w.drain_repairs() == 0
        assert control.repair_queue_depth(m.control, m.name) == 1
        assert fetch_all(pg_old, f"SELECT name FROM {t} WHERE id = {k}") == [("stale on old",)]

        m.publish("CUTOVER_WRITES")
        assert w.drain_repairs() == 1
        for store, table in ((pg_new, m.spec.table(t).target_table), (pg_old, t)):
            assert fetch_all(store, f"SELECT name FROM {table} WHERE id = {k}") == [("acknowledged on new",)]
    finally:
        m.close()


def _verify(m: Migration, *, exclude_tenants: list[str]) -> TableVerification:
    env = {env_var_for(s.name): s.ref.url for s in (m.old, m.new)}
    stores = StoreCache(StoreResolver(environ=env))
    inp = VerifyTableInput(table=TableRef(spec=m.spec, source=m.models.customers), repair=True,
                           exclude_tenants=exclude_tenants)
    try:
        out: TableVerification = ActivityEnvironment().run(VerifyActivities(stores).verify_table, inp)
    finally:
        stores.close()  # its pools: the server's connection slots are shared with other tests
    return out


def test_a_migration_wide_repair_is_refused_once_a_tenant_it_covers_moved(pg_old: Store, pg_new: Store) -> None:
    """A migration-wide verification leaves out the tenants whose authority runs the other way *when it
    starts*; a tenant that flips while it runs must not have its new store's rows repaired from the old."""
    m = make_migration(pg_old, pg_new, "sync", options=AdapterOptions(background=False, phase_ttl=0.05))
    try:
        m.publish("CUTOVER_READS")
        t = m.models.customers
        (k,) = m.writer.insert(t, {**_row("acme's row"), "tenant": "acme"})
        m.writer.insert(t, {**_row("beta's row"), "tenant": "beta"})
        # acme alone moves to CUTOVER_WRITES, and acme's application writes on the new store; the old store's
        # copy is behind (its mirror is still due)
        m.publish("CUTOVER_READS", overrides={"tenants": {"acme": "CUTOVER_WRITES"}})
        execute(pg_new, f"UPDATE {m.spec.table(t).target_table} SET name = 'acme acknowledged on new' "
                        f"WHERE id = {k}")
        out = _verify(m, exclude_tenants=[])  # planned before acme moved: acme is not left out
        assert fetch_all(pg_new, f"SELECT name FROM {m.spec.table(t).target_table} WHERE id = {k}") == [
            ("acme acknowledged on new",)]
        assert not out.ok and out.repaired == 0
        assert out.error is not None and "authority moved to the new store for tenant acme" in out.error, out
        # planned with acme left out, the same verification has nothing to repair
        assert _verify(m, exclude_tenants=["acme"]).ok
    finally:
        m.close()
