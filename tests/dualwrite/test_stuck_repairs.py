"""What the write fence counts of the keys left in the repair queue (:mod:`dualwrite.stuck_repairs`), on real
PostgreSQL stores: a tenant's flip counts only its own keys and those whose tenant cannot be told, never a
shared table's; the whole migration's flip counts every key."""

from __future__ import annotations

import secrets

from conftest import execute, spec_for

from activities.stores import compile_mapping
from dualwrite import control
from dualwrite.store import Store
from dualwrite.stuck_repairs import stuck_tables

DDL = "CREATE TABLE {t} (id bigint PRIMARY KEY, tenant text NOT NULL, name text NOT NULL, version bigint)"


def test_a_tenants_flip_counts_its_own_keys_and_the_unplaceable_ones(pg_old: Store, pg_new: Store,
                                                                     table_name: str) -> None:
    tenant_t, shared_t = f"{table_name}_t", f"{table_name}_s"
    for store in (pg_old, pg_new):
        execute(store, DDL.format(t=tenant_t), DDL.format(t=shared_t))
    execute(pg_old, f"INSERT INTO {tenant_t} VALUES (1, 'acme', 'a', 1), (2, 'beta', 'b', 1)",
            f"INSERT INTO {shared_t} VALUES (1, 'acme', 's', 1)")
    execute(pg_new, f"INSERT INTO {tenant_t} VALUES (3, 'beta', 'only on the new store', 1)")
    name = f"stuck-{secrets.token_hex(3)}"
    spec = spec_for(name, "pgold", "pgnew", tenant_t, tenants={"column": "tenant", "ids": ["acme", "beta"]})
    spec = spec.model_copy(update={"tables": [*spec.tables, spec.tables[0].model_copy(
        update={"source": shared_t, "target": shared_t, "tenant_column": None})]})
    control.ensure_schema(pg_old)
    # key 4 is on neither store: its tenant cannot be told, so it counts for every tenant's flip
    control.enqueue_repair(pg_old, name, tenant_t, [(1,), (2,), (3,), (4,), (2,)])
    control.enqueue_repair(pg_old, name, shared_t, [(1,)])

    def count(tenant: str | None) -> dict[str, tuple[int, int]]:
        columns = {t.source: t.tenant_column for t in spec.tables}
        stuck = stuck_tables(pg_old, name, tenant=tenant, tenant_columns=columns, old=pg_old, new=pg_new,
                             mapping_for=lambda table, _rev: compile_mapping(spec, table, pg_old, pg_new),
                             errors=[f"table {tenant_t}: RowRejectedError: the target rejected a row"])
        return {s.table: (s.keys, s.blocking) for s in stuck}

    assert count(None) == {tenant_t: (4, 4), shared_t: (1, 1)}  # the whole migration flips: every key
    assert count("acme") == {tenant_t: (4, 2), shared_t: (1, 0)}  # key 1, and key 4 (unplaceable)
    assert count("beta") == {tenant_t: (4, 3), shared_t: (1, 0)}  # keys 2, 3 (new store only) and 4
    errors = {s.table: s.error for s in stuck_tables(
        pg_old, name, tenant=None, tenant_columns={}, old=pg_old, new=pg_new,
        mapping_for=lambda table, _rev: compile_mapping(spec, table, pg_old, pg_new),
        errors=[f"table {tenant_t}: RowRejectedError: the target rejected a row"])}
    assert errors == {tenant_t: "RowRejectedError: the target rejected a row", shared_t: ""}
