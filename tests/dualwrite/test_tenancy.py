"""Tenant-scoped verification on real engines: one tenant's rows, or everything but some tenants.

When tenants move one by one, a repairing verification forces the *source* image onto the target, so it
must never touch rows of a tenant whose authority runs the other way; that tenant is verified on its own.
What an operator relies on: a tenant's differences are found wherever its rows are (source, target, or a
row that moved between tenants), for every kind of key and tenant id (unicode, quotes, integers compared as
text, NULL belonging to nobody); the migration-wide report leaves excluded tenants out even past one batch
of look-ups; and a repair of that report leaves their rows alone.
"""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import pytest
from conftest import Databases, _pg_admin, pg_url

from dualwrite import tenancy
from dualwrite.errors import StoreUnavailableError
from dualwrite.mapping import TableMapping, compile_table
from dualwrite.repair import repair
from dualwrite.spec import ColumnMap, TableSpec
from dualwrite.sqlgen import Key
from dualwrite.store import Dialect, Store
from dualwrite.verify import verify_range

KEY_COLS = {
    "int": {Dialect.POSTGRESQL: "id bigint", Dialect.MYSQL: "id BIGINT", Dialect.SQLITE: "id INTEGER"},
    "uuid": {Dialect.POSTGRESQL: "id uuid", Dialect.MYSQL: "id CHAR(36)", Dialect.SQLITE: "id CHAR(36)"},
    "composite": {Dialect.POSTGRESQL: "region varchar(32), n integer", Dialect.MYSQL: "region VARCHAR(32), n INT",
                  Dialect.SQLITE: "region VARCHAR(32), n INTEGER"},
    "text": {Dialect.POSTGRESQL: "id varchar(64)", Dialect.MYSQL: "id VARCHAR(64)", Dialect.SQLITE: "id VARCHAR(64)"},
}
KEY_NAMES = {"int": "id", "uuid": "id", "composite": "region, n", "text": "id"}
KEYS: dict[str, list[Key]] = {
    "int": [(i,) for i in (-3, 0, 1, 2, 40, 41, 2**40, 9_000_000_000, 7, 8)],
    "uuid": [(str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15F39CC0605CEDC835) % 2**128)),) for i in range(1, 11)],
    "composite": [("émea", 1), ("émea", 2), ("apac", 1), ("Zoë 😀", 3), ("z", -1), ("Z", 0), ("a b", 5),
                  ("a", 7), ("a", 8), ("a", 9)],
    "text": [("a",), ("B",), ("zoë",), ("😀",), ("tab\tkey",), ("x'y",), ("back\\slash",), ("ω",), ("c",),
             ("d",)],
}

ACME, BETA, UNI, QUOTE = "acme", "beta", "Ünïcode 😀", "o'brien"
# (tenant on the source, name on the source, tenant on the target, name on the target); None = no row there
ROWS: list[tuple[str | None, str | None, str | None, str | None]] = [
    (ACME, "same", ACME, "same"),
    (ACME, "only on source", None, None),          # acme: missing
    (ACME, "new name", ACME, "old name"),          # acme: field-different
    (BETA, "only on source", None, None),          # beta: missing
    (BETA, "same", BETA, "same"),
    (None, "no tenant", None, "no tenant, other"),  # nobody's: field-different
    (UNI, "same", UNI, "same"),
    (QUOTE, "x", QUOTE, "y"),                       # o'brien: field-different
    (BETA, "moved", ACME, "moved"),                 # beta on the source, acme on the target
    (None, None, ACME, "only on target"),          # acme: extra
]


def create(store: Store, table: str, kind: str, tenant_type: str = "") -> None:
    d = store.dialect
    tenant = tenant_type or "VARCHAR(64)"
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table} ({KEY_COLS[kind][d]} NOT NULL, tenant {tenant}, name VARCHAR(64), "
                    f"version BIGINT NOT NULL, PRIMARY KEY ({KEY_NAMES[kind]}))")
        conn.commit()


def insert(store: Store, table: str, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {table} VALUES ({', '.join([p] * len(rows[0]))})", rows)
        conn.commit()


def tenant_mapping(source: Store, target: Store, table: str, *, target_table: str | None = None,
                   columns: dict[str, ColumnMap] | None = None, tenant: str | None = "tenant") -> TableMapping:
    spec = TableSpec(source=table, target=target_table or table, version_column="version", tenant_column=tenant,
                     columns=columns or {})
    mapping, problems = compile_table(spec, source.describe(table, refresh=True),
                                      target.describe(target_table or table, refresh=True))
    assert mapping is not None, problems
    return mapping


def scenario(source: Store, target: Store, table: str, kind: str) -> tuple[TableMapping, list[Key]]:
    """The rows of ROWS on both stores; the keys in ROWS order."""
    keys = KEYS[kind]
    create(source, table, kind)
    create(target, table, kind)
    insert(source, table, [(*k, t, n, 1) for k, (t, n, _, _) in zip(keys, ROWS, strict=True) if n is not None])
    insert(target, table, [(*k, t, n, 1) for k, (_, _, t, n) in zip(keys, ROWS, strict=True) if n is not None])
    return tenant_mapping(source, target, table), keys


def norm(keys: Any) -> set[Key]:
    return {tuple(str(v) if isinstance(v, uuid.UUID) else v for v in k) for k in keys}


PAIRS = [("pg_old", "pg_new", "int"), ("my_old", "pg_new", "uuid"), ("my_old", "my_new", "composite"),
         ("sqlite_old", "pg_new", "text"), ("pg_old", "my_new", "uuid")]


@pytest.mark.parametrize(("source_name", "target_name", "kind"), PAIRS)
def test_a_tenant_is_compared_wherever_its_rows_are(request: pytest.FixtureRequest, source_name: str,
                                                     target_name: str, kind: str, table_name: str) -> None:
    source: Store = request.getfixturevalue(source_name)
    target: Store = request.getfixturevalue(target_name)
    mapping, keys = scenario(source, target, table_name, kind)

    acme = tenancy.verify_tenant(source, target, mapping, ACME)
    assert (acme.missing, acme.extra, acme.field_different) == (1, 1, 2)
    assert norm(acme.keys()) == {keys[1], keys[2], keys[8], keys[9]}
    assert (acme.rows_source, acme.rows_target) == (4, 4)  # keys 0, 1, 2, 8 / 0, 2, 8, 9

    beta = tenancy.verify_tenant(source, target, mapping, BETA)
    assert norm(beta.keys()) == {keys[3], keys[8]}  # the moved row is seen from both of its tenants
    quote = tenancy.verify_tenant(source, target, mapping, QUOTE)
    assert norm(quote.keys()) == {keys[7]} and quote.field_different == 1
    uni = tenancy.verify_tenant(source, target, mapping, UNI)
    assert uni.ok and (uni.rows_source, uni.rows_target) == (1, 1)


@pytest.mark.parametrize("tenant", ["nobody", "", "ACME", "acme%", "%"])
def test_a_tenant_without_rows_compares_nothing_and_is_equal(pg_old: Store, my_new: Store, tenant: str,
                                                              table_name: str) -> None:
    """No VerificationError for a tenant with no rows (yet), and no pattern matching or case folding."""
    mapping, _ = scenario(pg_old, my_new, table_name, "int")
    report = tenancy.verify_tenant(pg_old, my_new, mapping, tenant)
    assert report.ok and (report.rows_source, report.rows_target, report.chunks) == (0, 0, 0)


@pytest.mark.parametrize("engine", ["pg_old", "my_old", "sqlite_old"])
def test_an_integer_tenant_column_is_compared_as_text(request: pytest.FixtureRequest, engine: str, pg_new: Store,
                                                      table_name: str) -> None:
    """The adapter routes by string tenant ids: '7' names tenant 7; '07' and '7.0' name nobody."""
    source: Store = request.getfixturevalue(engine)
    create(source, table_name, "int", "BIGINT")
    create(pg_new, table_name, "int", "BIGINT")
    insert(source, table_name, [(1, 7, "a", 1), (2, 7, "b", 1), (3, 70, "c", 1), (4, None, "d", 1)])
    insert(pg_new, table_name, [(1, 7, "a", 1), (3, 70, "stale", 1), (4, None, "stale", 1)])
    mapping = tenant_mapping(source, pg_new, table_name)
    seven = tenancy.verify_tenant(source, pg_new, mapping, "7")
    assert norm(seven.keys()) == {(2,)} and seven.rows_source == 2
    for other in ("07", "7.0", " 7"):
        assert tenancy.verify_tenant(source, pg_new, mapping, other).rows_source == 0
    everything = verify_range(source, pg_new, mapping)
    kept = tenancy.without_tenants(everything, source, pg_new, mapping, ["70"])
    assert norm(kept.keys()) == {(2,), (4,)}  # tenant 70's row is left out, the NULL tenant's is not


@pytest.mark.parametrize(("source_name", "target_name", "kind"), PAIRS)
def test_the_migration_wide_report_leaves_excluded_tenants_out(request: pytest.FixtureRequest, source_name: str,
                                                                target_name: str, kind: str,
                                                                table_name: str) -> None:
    source: Store = request.getfixturevalue(source_name)
    target: Store = request.getfixturevalue(target_name)
    mapping, keys = scenario(source, target, table_name, kind)
    report = verify_range(source, target, mapping)
    assert report.total_differences == 7

    kept = tenancy.without_tenants(report, source, target, mapping, [ACME, QUOTE])
    # beta's missing row and the NULL tenant's row remain; the row that moved from an excluded tenant is out
    assert norm(kept.keys()) == {keys[3], keys[5]}
    assert (kept.missing, kept.extra, kept.field_different) == (1, 0, len(kept.differences) - 1)
    assert (kept.rows_source, kept.rows_target, kept.table) == (report.rows_source, report.rows_target,
                                                               report.table)
    assert report.total_differences == 7, "the report given was changed"
    assert tenancy.without_tenants(report, source, target, mapping, []) is report
    # a NULL tenant is nobody's, not a tenant spelled "None" or ""
    assert keys[5] in norm(tenancy.without_tenants(report, source, target, mapping, ["None", ""]).keys())
    assert tenancy.without_tenants(report, source, target, mapping, ["nobody"]).total_differences == 7


def test_a_repair_of_the_filtered_report_leaves_excluded_tenants_alone(pg_old: Store, pg_new: Store,
                                                                       table_name: str) -> None:
    """The whole point: the source image is forced onto every other row, never onto acme's."""
    mapping, keys = scenario(pg_old, pg_new, table_name, "int")
    before = {r[0]: r for r in rows(pg_new, table_name)}
    kept = tenancy.without_tenants(verify_range(pg_old, pg_new, mapping), pg_old, pg_new, mapping, [ACME])
    fixed = repair(pg_old, pg_new, mapping, kept)
    assert fixed.after.ok, fixed.after.summary()  # re-verified: only what was kept
    after = {r[0]: r for r in rows(pg_new, table_name)}
    for i in (1, 2, 9):  # acme's missing, different and extra rows: untouched
        assert after.get(keys[i][0]) == before.get(keys[i][0])
    source = {r[0]: r for r in rows(pg_old, table_name)}
    for i in (3, 5, 7):
        assert after[keys[i][0]] == source[keys[i][0]]


def rows(store: Store, table: str) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT * FROM {table}")
        out = [tuple(r) for r in cur.fetchall()]
        conn.rollback()
    return out


def test_a_row_an_excluded_tenant_owns_on_the_target_is_left_out(pg_old: Store, pg_new: Store,
                                                                 table_name: str) -> None:
    mapping, keys = scenario(pg_old, pg_new, table_name, "int")
    kept = tenancy.without_tenants(verify_range(pg_old, pg_new, mapping), pg_old, pg_new, mapping, [ACME])
    assert keys[8] not in norm(kept.keys())


def test_more_differences_than_one_batch_of_look_ups(pg_old: Store, sqlite_old: Store, table_name: str) -> None:
    n = tenancy.KEY_BATCH + 300
    create(pg_old, table_name, "text")
    create(sqlite_old, table_name, "text")
    insert(pg_old, table_name, [(f"k{i:05d} ж", "a" if i % 2 else "b", "x", 1) for i in range(n)])
    mapping = tenant_mapping(pg_old, sqlite_old, table_name)
    report = verify_range(pg_old, sqlite_old, mapping, max_differences=2 * n)
    assert report.missing == n
    kept = tenancy.without_tenants(report, pg_old, sqlite_old, mapping, ["a"])
    assert kept.missing == len(kept.differences) == n // 2
    kept_keys = kept.keys()
    assert all(int(k[0][1:6]) % 2 == 0 for k in kept_keys)


def test_the_tenant_column_is_followed_through_a_rename_and_a_reversal(pg_old: Store, pg_new: Store,
                                                                       table_name: str) -> None:
    """Old ``tenant`` is new ``org``: after write cutover the reversed plan reads ``org`` on the new store."""
    create(pg_old, table_name, "int")
    with pg_new.connect() as conn:
        conn.execute(f"CREATE TABLE {table_name}_v2 (id bigint PRIMARY KEY, org varchar(64), name varchar(64), "
                     "version bigint NOT NULL)")
        conn.commit()
    insert(pg_old, table_name, [(1, ACME, "a", 1), (2, BETA, "b", 1)])
    insert(pg_new, f"{table_name}_v2", [(1, ACME, "a2", 2), (2, BETA, "b", 1), (3, ACME, "c", 1)])
    forward = tenant_mapping(pg_old, pg_new, table_name, target_table=f"{table_name}_v2",
                             columns={"org": ColumnMap.model_validate({"from": "tenant"})})
    assert tenancy.tenant_columns(forward) == ("tenant", "org")
    backward = forward.reversed()
    assert tenancy.tenant_columns(backward) == ("org", "tenant")
    report = tenancy.verify_tenant(pg_new, pg_old, backward, ACME)
    assert norm(report.keys()) == {(1,), (3,)} and (report.field_different, report.missing) == (1, 1)
    assert tenancy.verify_tenant(pg_new, pg_old, backward, BETA).ok


def test_a_table_without_a_usable_tenant_column_is_refused(pg_old: Store, pg_new: Store, table_name: str) -> None:
    create(pg_old, table_name, "int")
    with pg_new.connect() as conn:
        conn.execute(f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, tenant text, name varchar(64), "
                     "version bigint NOT NULL)")
        conn.commit()
    untenanted = tenant_mapping(pg_old, pg_new, table_name, tenant=None)
    with pytest.raises(tenancy.TenantColumnError):
        tenancy.verify_tenant(pg_old, pg_new, untenanted, ACME)
    insert(pg_old, table_name, [(1, ACME, "not copied yet", 1)])
    report = verify_range(pg_old, pg_new, untenanted)
    assert report.missing == 1
    assert tenancy.without_tenants(report, pg_old, pg_new, untenanted, [ACME]) is report
    computed = tenant_mapping(pg_old, pg_new, table_name, columns={"tenant": ColumnMap(expr="upper(tenant)")})
    with pytest.raises(tenancy.TenantColumnError, match="not mapped to a column"):
        tenancy.tenant_columns(computed)


def test_describe_keys_names_a_few_keys_in_json() -> None:
    import datetime as dt
    from decimal import Decimal

    keys: list[Key] = [(uuid.UUID(int=5),), (Decimal("1.50"), "zoë 😀"), (b"\x00\xff", dt.datetime(2024, 1, 2, 3)),
                       (None, 7), (dt.date(2024, 2, 29),), (8,)]
    out = tenancy.describe_keys(keys)
    assert len(out) == 5
    assert json.loads(json.dumps(out)) == out
    assert out[0] == [str(uuid.UUID(int=5))] and out[1] == ["1.50", "zoë 😀"] and out[3] == [None, 7]
    assert tenancy.describe_keys(keys, limit=2) == out[:2]
    assert tenancy.describe_keys([]) == []


def test_a_store_that_goes_away_is_never_reported_equal(pg_new: Store, databases: Databases,
                                                        table_name: str) -> None:
    """A verifier must prove it looked: a tenant whose rows are only on a store that went away (after the
    mapping was compiled) is an error, never an empty, equal comparison."""
    gone = databases.store("tn_gone", pg_url(databases.pg_db(f"tn_{secrets.token_hex(3)}")))
    create(gone, table_name, "int")
    create(pg_new, table_name, "int")
    insert(gone, table_name, [(1, ACME, "only here", 1)])
    insert(pg_new, table_name, [(2, BETA, "only here", 1)])
    mapping = tenant_mapping(gone, pg_new, table_name)
    report = verify_range(gone, pg_new, mapping)
    assert (report.missing, report.extra) == (1, 1)
    gone.dispose()
    with _pg_admin() as admin:
        admin.execute(f'DROP DATABASE "{gone.engine.url.database}" WITH (FORCE)')
    with pytest.raises(StoreUnavailableError):
        tenancy.verify_tenant(gone, pg_new, mapping, ACME)
    with pytest.raises(StoreUnavailableError):
        tenancy.verify_tenant(pg_new, gone, mapping.reversed(), ACME)
    with pytest.raises(StoreUnavailableError):
        tenancy.without_tenants(report, gone, pg_new, mapping, [BETA])
