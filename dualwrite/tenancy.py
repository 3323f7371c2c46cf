"""Tenant-scoped verification: compare (and repair) one tenant's rows, or everything but some tenants.

Why both: when tenants move one by one, two tenants may trust different stores at the same moment (one in
CUTOVER_WRITES, new authoritative; the rest in CUTOVER_READS, old authoritative). A repairing verification
forces the *source* image onto the target, so it must never touch rows whose authority runs the other way:
the migration-wide verification leaves those tenants out (:func:`without_tenants`), and each such tenant
is verified in its own direction (:func:`verify_tenant`).

A tenant's rows are found by the tenant column on both sides (a row may exist on one side only), then
compared key by key with :func:`dualwrite.verify.verify_keys`. Tenant ids are compared as text, so an
integer tenant column works with the same string ids the adapter routes by. Only keys cross this module's
boundary, never row values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dualwrite import rows as rowio
from dualwrite.errors import TenantColumnError
from dualwrite.mapping import SourceKind, TableMapping
from dualwrite.mirror import normal_key
from dualwrite.sqlgen import Key, Side, source_side, target_side
from dualwrite.store import Dialect, Kind, Store
from dualwrite.verify import VerifyReport, verify_keys

KEY_BATCH = 1_000


def tenant_columns(mapping: TableMapping) -> tuple[str, str]:
    """(source-side column, target-side column) of the tenant, for a forward or a reversed mapping.

    ``mapping.tenant_column`` always names the *old* store's column; a reversed mapping (new -> old) reads
    the new store, whose column is the one the plain column map connects to it."""
    col = mapping.tenant_column
    if not col:
        raise TenantColumnError(f"table {mapping.source_table} has no tenant column")
    if col in mapping.source_info.columns and any(c.source == col and c.kind is SourceKind.COLUMN
                                                  for c in mapping.columns):
        target = next(c.target for c in mapping.columns if c.source == col and c.kind is SourceKind.COLUMN)
        return col, target
    for c in mapping.columns:  # reversed: target is the old column, source the new one
        if c.target == col and c.kind is SourceKind.COLUMN and c.source is not None:
            return c.source, c.target
    raise TenantColumnError(f"the tenant column {col!r} of {mapping.source_table} is not mapped to a column")


def _as_text(store: Store, table: str, column: str) -> str:
    col = store.quote(column)
    kind = store.describe(table).columns[column].kind
    if kind is Kind.TEXT:
        return col
    return f"CAST({col} AS CHAR)" if store.dialect is Dialect.MYSQL else f"CAST({col} AS TEXT)"


def tenant_keys(side: Side, column: str, tenant: str) -> list[Key]:
    """Every key of ``tenant``'s rows on one side."""
    store = side.store
    sql = (f"SELECT {side.key_list()} FROM {side.qtable} WHERE {_as_text(store, side.table, column)} = "
           f"{store.paramstyle}")
    with store.connect() as conn:
        found = rowio.fetch(conn, sql, [tenant])
        conn.rollback()
    return [normal_key(tuple(r)) for r in found]


def tenants_of(side: Side, column: str, keys: Sequence[Key]) -> dict[Key, str | None]:
    """The tenant of each key present on one side (absent keys are left out)."""
    out: dict[Key, str | None] = {}
    store = side.store
    n = len(side.key)
    with store.connect() as conn:
        for start in range(0, len(keys), KEY_BATCH):
            batch = [rowio.adapt_key(tuple(k), side.key_kinds, store.dialect) for k in keys[start:start + KEY_BATCH]]
            where, params = side.keys_predicate(batch)
            sql = f"SELECT {side.key_list()}, {store.quote(column)} FROM {side.qtable} WHERE {where}"
            for row in rowio.fetch(conn, sql, params):
                out[normal_key(tuple(row[:n]))] = None if row[n] is None else str(row[n])
        conn.rollback()
    return out


def verify_tenant(source: Store, target: Store, mapping: TableMapping, tenant: str, *,
                  max_differences: int = 1000) -> VerifyReport:
    """Compare ``tenant``'s rows (found on either side) key by key. An empty tenant compares nothing."""
    src_col, dst_col = tenant_columns(mapping)
    keys = tenant_keys(source_side(mapping, source), src_col, tenant)
    seen = set(keys)
    keys += [k for k in tenant_keys(target_side(mapping, target), dst_col, tenant) if k not in seen]
    return verify_keys(source, target, mapping, keys, max_differences=max_differences, allow_empty=True)


def without_tenants(report: VerifyReport, source: Store, target: Store, mapping: TableMapping,
                    tenants: Iterable[str]) -> VerifyReport:
    """``report`` without the differences of rows that belong to ``tenants`` (on either side).

    Counts are recomputed from the differences kept, so a truncated report under-counts: a repair of it
    re-verifies, and the next verification finds the rest."""
    excluded = set(tenants)
    if report.ok or not excluded or not mapping.tenant_column:
        return report
    src_col, dst_col = tenant_columns(mapping)
    keys = report.keys()
    # a row is left out when an excluded tenant owns it on either side: a row that moved between tenants
    # must not be repaired over the excluded one's copy
    on_source = tenants_of(source_side(mapping, source), src_col, keys)
    on_target = tenants_of(target_side(mapping, target), dst_col, keys)
    kept = VerifyReport(table=report.table, rows_source=report.rows_source, rows_target=report.rows_target,
                        chunks=report.chunks, mismatched_chunks=report.mismatched_chunks, method=report.method,
                        seconds=report.seconds, max_differences=report.max_differences)
    for d in report.differences:
        k = normal_key(tuple(d.key))
        if on_source.get(k) not in excluded and on_target.get(k) not in excluded:
            kept.add(d)
    return kept


def describe_keys(keys: Sequence[Key], limit: int = 5) -> list[list[Any]]:
    """A few keys in wire form (JSON-safe), for evidence that names the rows that differ."""
    from dualwrite.keys import encode_key  # noqa: PLC0415

    return [list(encode_key(tuple(k)) or []) for k in keys[:limit]]
