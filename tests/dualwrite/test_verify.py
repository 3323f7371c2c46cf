"""Verification and repair on real engines: PostgreSQL and MariaDB pairs (checksums pushed down), MariaDB
and SQLite into PostgreSQL (canonical rows compared in Python), every key kind, schema changes, reversed
mappings, capped reports, a live writer during the copy, and the rule that a verifier must prove it looked.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import threading
import uuid
from typing import Any

import pytest

from dualwrite import verify as verify_mod
from dualwrite.backfill_copy import copy_range
from dualwrite.errors import VerificationError
from dualwrite.mapping import TableMapping, compile_table, identity_mapping
from dualwrite.repair import repair
from dualwrite.spec import TableSpec
from dualwrite.store import Dialect, Store
from dualwrite.verify import DiffKind, VerifyProgress, verify_keys, verify_range

PG, MY, SQ = Dialect.POSTGRESQL, Dialect.MYSQL, Dialect.SQLITE

TYPES: dict[str, dict[Dialect, str]] = {
    "bigint": {PG: "bigint", MY: "bigint", SQ: "bigint"},
    "int": {PG: "int", MY: "int", SQ: "int"},
    "code": {PG: "varchar(40)", MY: "varchar(40)", SQ: "varchar(40)"},
    "uuid": {PG: "uuid", MY: "uuid", SQ: "uuid"},
    "amount": {PG: "numeric(12,2)", MY: "decimal(12,2)", SQ: "numeric(12,2)"},
    "status": {PG: "varchar(40)", MY: "varchar(40)", SQ: "varchar(40)"},
    "note": {PG: "text", MY: "text", SQ: "text"},
    "ts": {PG: "timestamptz", MY: "datetime(6)", SQ: "timestamp"},
    "doc": {PG: "jsonb", MY: "json", SQ: "json"},
}
PAYLOAD = [("amount", "amount"), ("status", "status"), ("note", "note"), ("updated_at", "ts"), ("doc", "doc"),
           ("version", "bigint")]

NS = uuid.UUID("12345678-1234-5678-1234-567812345678")
KEYS: dict[str, tuple[list[tuple[str, str]], list[tuple[Any, ...]], tuple[Any, ...]]] = {
    # name: (key columns, source keys, a key that only the target will hold)
    "int": ([("id", "bigint")], [(k,) for k in [*range(-25, 26), -(2**40), 2**40]], (10**12,)),
    "str": ([("code", "code")],
            [(k,) for k in ["a", "A", "b", "B", "Zoë", "zoe", "ZOE", "ß", "ss", "日本", "😀", "a b", "a-b", "a_b",
                            "0", "00", "~", "é", "e\u0301", "Straße"]], ("zz-only-target",)),
    "uuid": ([("uid", "uuid")], [(uuid.uuid5(NS, str(i)),) for i in range(40)], (uuid.uuid5(NS, "extra"),)),
    "composite": ([("tenant", "int"), ("code", "code")],
                  [(t, c) for t in (-1, 0, 7) for c in ("a", "B", "ü", "z9")], (0, "only-target")),
}


def _ddl(store: Store, table: str, cols: list[tuple[str, str]], key: list[str]) -> str:
    body = ", ".join(f"{store.quote(c)} {TYPES[t][store.dialect]}" for c, t in cols)
    return f"CREATE TABLE {store.quote(table)} ({body}, PRIMARY KEY ({', '.join(store.quote(k) for k in key)}))"


def _value(store: Store, v: Any) -> Any:
    """A logical value in the form this engine's driver takes it."""
    d = store.dialect
    if isinstance(v, dict | list):
        if d is PG:
            from psycopg.types.json import Jsonb

            return Jsonb(v)
        return json.dumps(v, indent=1 if d is MY else None)
    if isinstance(v, uuid.UUID) and d is not PG:
        return str(v)
    if isinstance(v, dt.datetime) and d is MY:
        return v.astimezone(dt.UTC).replace(tzinfo=None)
    if isinstance(v, dt.datetime) and d is SQ:
        return v.isoformat()
    if isinstance(v, decimal.Decimal) and d is SQ:
        return str(v)
    return v


def _payload(i: int) -> list[Any]:
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=7 * i, microseconds=i)
    return [decimal.Decimal(i * 37 % 10000) / 100, ("new", "paid", "shipped")[i % 3], f"note {i} ✓ {'x' * (i % 5)}",
            at, {"n": i, "tags": ["a", "b"][: i % 3], "nested": {"k": i % 2 == 0}}, 1]


def _execute(store: Store, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> int:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(sql, tuple(_value(store, p) for p in params))
        n = cur.rowcount
        cur.close()
        conn.commit()
    return int(n)


def _insert(store: Store, table: str, cols: list[str], rows: list[list[Any]]) -> None:
    sql = (f"INSERT INTO {store.quote(table)} ({', '.join(store.quote(c) for c in cols)}) "
           f"VALUES ({', '.join([store.paramstyle] * len(cols))})")
    with store.connect() as conn:
        cur = conn.cursor()
        cur.executemany(sql, [tuple(_value(store, v) for v in r) for r in rows])
        cur.close()
        conn.commit()


def _where(store: Store, key_cols: list[str]) -> str:
    return " AND ".join(f"{store.quote(k)} = {store.paramstyle}" for k in key_cols)


def _build_pair(source: Store, target: Store, table: str, key_name: str) -> tuple[TableMapping, list[str],
                                                                                    list[tuple[Any, ...]]]:
    key_cols, keys, _ = KEYS[key_name]
    cols = key_cols + PAYLOAD
    names = [c for c, _t in cols]
    key = [c for c, _t in key_cols]
    for store in (source, target):
        _execute(store, _ddl(store, table, cols, key))
    _insert(source, table, names, [list(k) + _payload(i) for i, k in enumerate(keys)])
    mapping = identity_mapping(source.describe(table), target.describe(table))
    copy_range(source, target, mapping, batch_size=7)
    return mapping, key, keys


def _norm(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(str(v) if isinstance(v, uuid.UUID) else v for v in key)


PAIRS = {
    "pg-pg-pushdown": ("pg_old", "pg_new", None, "pushdown"),
    "pg-pg-python": ("pg_old", "pg_new", "python", "python"),
    "mariadb-mariadb-pushdown": ("my_old", "my_new", None, "pushdown"),
    "mariadb-pg-python": ("my_old", "pg_new", None, "python"),
    "sqlite-pg-python": ("sqlite_old", "pg_new", None, "python"),
}


@pytest.mark.parametrize("key_name", list(KEYS))
@pytest.mark.parametrize("pair", list(PAIRS))
def test_verify_classifies_every_difference_and_repair_fixes_them(
        pair: str, key_name: str, table_name: str, request: pytest.FixtureRequest) -> None:
    src_fx, dst_fx, force, expect_method = PAIRS[pair]
    source: Store = request.getfixturevalue(src_fx)
    target: Store = request.getfixturevalue(dst_fx)
    mapping, key, keys = _build_pair(source, target, table_name, key_name)
    n = len(keys)

    clean = verify_range(source, target, mapping, chunk_size=9, method=force)
    assert clean.ok, clean.summary()
    assert clean.method == expect_method
    assert (clean.rows_source, clean.rows_target) == (n, n)
    assert clean.chunks >= n // 9

    gone, changed = keys[3], keys[n // 2]
    only_target = KEYS[key_name][2]
    q = target.quote
    _execute(target, f"DELETE FROM {q(table_name)} WHERE {_where(target, key)}", gone)
    ph = target.paramstyle
    _execute(target, f"UPDATE {q(table_name)} SET {q('status')} = {ph}, {q('amount')} = {ph} "
                     f"WHERE {_where(target, key)}", ["tampered", decimal.Decimal("0.01"), *changed])
    _insert(target, table_name, [c for c, _ in KEYS[key_name][0]] + [c for c, _ in PAYLOAD],
            [list(only_target) + _payload(999)])

    report = verify_range(source, target, mapping, chunk_size=9, method=force)
    assert (report.missing, report.extra, report.field_different) == (1, 1, 1), report.summary()
    assert not report.ok
    assert report.rows_source == n and report.rows_target == n
    assert 1 <= report.mismatched_chunks <= 3
    by_kind = {d.kind: d for d in report.differences}
    assert _norm(by_kind[DiffKind.MISSING].key) == _norm(gone)
    assert _norm(by_kind[DiffKind.EXTRA].key) == _norm(only_target)
    field = by_kind[DiffKind.FIELD]
    assert _norm(field.key) == _norm(changed)
    assert [f.name for f in field.fields] == ["amount", "status"]
    i = keys.index(changed)
    amount, status = field.fields
    # canonical values: a decimal is its text at the target's scale
    assert (amount.source_value, amount.target_value) == (f"{_payload(i)[0]:.2f}", "0.01")
    assert (status.source_value, status.target_value) == (_payload(i)[1], "tampered")
    assert report.field_counts == {"amount": 1, "status": 1}
    assert sorted(map(_norm, report.keys()), key=repr) == sorted(map(_norm, [gone, changed, only_target]), key=repr)

    fixed = repair(source, target, mapping, report)
    assert fixed.after.ok, fixed.after.summary()
    assert (fixed.repaired_keys, fixed.upserted, fixed.deleted) == (3, 2, 1)
    assert fixed.after.rows_source > 0
    again = verify_range(source, target, mapping, method=force)
    assert again.ok and again.rows_target == n


@pytest.mark.parametrize("pair", ["pg-pg-pushdown", "mariadb-pg-python", "mariadb-mariadb-pushdown"])
def test_zero_rows_compared_is_a_failure(pair: str, table_name: str, request: pytest.FixtureRequest) -> None:
    src_fx, dst_fx, force, _ = PAIRS[pair]
    source: Store = request.getfixturevalue(src_fx)
    target: Store = request.getfixturevalue(dst_fx)
    cols = KEYS["int"][0] + PAYLOAD
    for store in (source, target):
        _execute(store, _ddl(store, table_name, cols, ["id"]))
    mapping = identity_mapping(source.describe(table_name), target.describe(table_name))
    with pytest.raises(VerificationError, match="zero rows"):
        verify_range(source, target, mapping, method=force)
    with pytest.raises(VerificationError, match="zero rows"):
        verify_keys(source, target, mapping, [])
    empty = verify_range(source, target, mapping, allow_empty=True, method=force)
    assert empty.ok and empty.chunks == 1 and empty.rows_source == 0
    # rows only in the target are compared rows: they are extras, not an empty verification
    _insert(target, table_name, ["id"] + [c for c, _ in PAYLOAD], [[5, *_payload(5)]])
    extra = verify_range(source, target, mapping, method=force)
    assert (extra.extra, extra.rows_source, extra.rows_target) == (1, 0, 1)


@pytest.mark.parametrize("pair", ["pg-pg-pushdown", "mariadb-mariadb-pushdown", "mariadb-pg-python"])
def test_moved_nulls_and_swapped_values_are_found(pair: str, table_name: str,
                                                  request: pytest.FixtureRequest) -> None:
    """Differences a weak row hash would miss, each alone in the range verified: a NULL moving to another
    column (concatenation skips NULLs), an empty string for a NULL, and two rows swapping equally long
    values (an XOR of linear hashes such as CRC32 cancels out)."""
    src_fx, dst_fx, force, _ = PAIRS[pair]
    source: Store = request.getfixturevalue(src_fx)
    target: Store = request.getfixturevalue(dst_fx)
    mapping, key, keys = _build_pair(source, target, table_name, "int")

    def update(store: Store, sets: str, row: int) -> None:
        q = store.quote
        _execute(store, f"UPDATE {q(table_name)} SET {sets.format(s=q('status'), n=q('note'))} WHERE id = {row}")

    update(source, "{s} = NULL, {n} = 'same'", 1)
    update(target, "{s} = 'same', {n} = NULL", 1)
    update(source, "{n} = NULL", 2)
    update(target, "{n} = ''", 2)
    for store, (a, b) in ((source, ("aaaa", "bbbb")), (target, ("bbbb", "aaaa"))):
        # rows 3 and 4 otherwise alike, so their renderings have equal length: what linearity needs
        q = store.quote
        same = f"{{s}} = 'same', amount = 1, {q('doc')} = NULL, updated_at = '2024-01-01 00:00:00', {{n}} = "
        update(store, same + f"'{a}'", 3)
        update(store, same + f"'{b}'", 4)
    for lo, hi, rows in (((0,), (1,), [(1,)]), ((1,), (2,), [(2,)]), ((2,), (4,), [(3,), (4,)])):
        report = verify_range(source, target, mapping, lo=lo, hi=hi, method=force)
        assert sorted(d.key for d in report.differences) == rows, report.summary()
        assert report.mismatched_chunks == 1


def test_chunks_must_tile_the_range() -> None:
    ok = list(verify_mod._check_tiling(iter([(None, (5,)), ((5,), (9,)), ((9,), None)]), None, None))
    assert len(ok) == 3
    with pytest.raises(VerificationError, match="skipped"):
        list(verify_mod._check_tiling(iter([(None, (5,)), ((6,), None)]), None, None))
    with pytest.raises(VerificationError, match="skipped"):
        list(verify_mod._check_tiling(iter([(None, (5,))]), None, None))
    with pytest.raises(VerificationError, match="skipped"):
        list(verify_mod._check_tiling(iter([]), (1,), (9,)))


SCHEMA_SRC = [("id", "bigint"), ("full_name", "status"), ("legacy", "note"), ("score", "int"),
              ("balance", "amount"), ("seen", "ts")]
SCHEMA_DST = {
    PG: """CREATE TABLE {t} (id bigint PRIMARY KEY, name varchar(80), score bigint, balance numeric(14,4),
            seen timestamptz, tier text DEFAULT 'basic', extra_nullable int)""",
}


@pytest.mark.parametrize("pair", ["pg-pg-pushdown", "pg-pg-python", "mariadb-pg-python"])
def test_schema_change_mapping_verifies_clean_after_copy(pair: str, table_name: str,
                                                         request: pytest.FixtureRequest) -> None:
    src_fx, dst_fx, force, expect_method = PAIRS[pair]
    source: Store = request.getfixturevalue(src_fx)
    target: Store = request.getfixturevalue(dst_fx)
    _execute(source, _ddl(source, table_name, SCHEMA_SRC, ["id"]))
    _execute(target, SCHEMA_DST[PG].format(t=target.quote(table_name + "_v2")))
    rows = [[i, f"Name {i} Ünïcode", f"legacy {i}", i * 3 - 50, decimal.Decimal(i) / 4,
             dt.datetime(2023, 5, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)] for i in range(-5, 60)]
    rows.append([1000, None, None, None, None, None])
    _insert(source, table_name, [c for c, _ in SCHEMA_SRC], rows)
    spec = TableSpec.model_validate({
        "source": table_name, "target": table_name + "_v2", "drop": ["legacy"],
        "columns": {"name": "full_name", "tier": {"default": "gold"}},
    })
    mapping, problems = compile_table(spec, source.describe(table_name), target.describe(table_name + "_v2"))
    assert mapping is not None, problems
    copy_range(source, target, mapping, batch_size=16)

    report = verify_range(source, target, mapping, chunk_size=10, method=force)
    assert report.ok, report.summary()
    assert report.method == expect_method and report.rows_target == len(rows)

    _execute(target, f"UPDATE {table_name}_v2 SET name = 'Renamed', tier = 'basic' WHERE id = 7")
    _execute(target, f"UPDATE {table_name}_v2 SET extra_nullable = 5 WHERE id = 8")  # not mapped: ignored
    bad = verify_range(source, target, mapping, chunk_size=10, method=force)
    assert (bad.missing, bad.extra, bad.field_different) == (0, 0, 1)
    (diff,) = bad.differences
    assert diff.key == (7,)
    assert [(f.name, f.source_value, f.target_value) for f in diff.fields] == [
        ("name", "Name 7 Ünïcode", "Renamed"), ("tier", "gold", "basic")]
    assert repair(source, target, mapping, bad).after.ok


def test_reversed_mapping_after_write_cutover(my_old: Store, pg_new: Store, table_name: str) -> None:
    mapping, key, keys = _build_pair(my_old, pg_new, table_name, "uuid")
    back = mapping.reversed()
    assert verify_range(pg_new, my_old, back).ok
    # new is authoritative now: a write that reached new but not old is drift in old
    _execute(pg_new, f"UPDATE {table_name} SET note = 'written after cutover' WHERE uid = %s", keys[5])
    _execute(my_old, f"DELETE FROM {table_name} WHERE uid = %s", keys[6])
    report = verify_range(pg_new, my_old, back, chunk_size=8)
    assert (report.missing, report.extra, report.field_different) == (1, 0, 1)
    assert {d.kind: [f.name for f in d.fields] for d in report.differences}[DiffKind.FIELD] == ["note"]
    fixed = repair(pg_new, my_old, back, report)
    assert fixed.after.ok and (fixed.upserted, fixed.deleted) == (2, 0)
    assert verify_range(my_old, pg_new, mapping).ok


@pytest.mark.parametrize("pair", ["pg-pg-pushdown", "mariadb-mariadb-pushdown"])
def test_pushdown_narrows_big_chunks_to_sub_ranges(pair: str, table_name: str, request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_mod, "NARROW_ROWS", 40)
    src_fx, dst_fx, _, _ = PAIRS[pair]
    source: Store = request.getfixturevalue(src_fx)
    target: Store = request.getfixturevalue(dst_fx)
    cols = KEYS["int"][0] + PAYLOAD
    for store in (source, target):
        _execute(store, _ddl(store, table_name, cols, ["id"]))
    names = [c for c, _ in cols]
    _insert(source, table_name, names, [[i, *_payload(i)] for i in range(3000)])
    mapping = identity_mapping(source.describe(table_name), target.describe(table_name))
    copy_range(source, target, mapping)
    _execute(target, f"UPDATE {table_name} SET note = 'x' WHERE id IN (5, 1500, 2999)")
    _execute(target, f"DELETE FROM {table_name} WHERE id = 1501")
    seen: list[VerifyProgress] = []
    report = verify_range(source, target, mapping, chunk_size=1000, on_chunk=seen.append)
    assert report.method == "pushdown"
    assert (report.missing, report.extra, report.field_different) == (1, 0, 3)
    assert sorted(d.key for d in report.differences) == [(5,), (1500,), (1501,), (2999,)]
    assert report.mismatched_chunks == 3 and report.chunks == 4
    assert [p.chunks_done for p in seen] == [1, 2, 3, 4]
    assert [p.done for p in seen] == [False, False, False, True]
    assert [p.cursor for p in seen] == [(999,), (1999,), (2999,), None]
    assert seen[-1].rows_source == 3000 and seen[-1].rows_target == 2999
    # resuming from a cursor covers exactly the rest
    rest = verify_range(source, target, mapping, lo=(1999,), chunk_size=1000)
    assert rest.rows_source == 1000 and rest.field_different == 1


def test_capped_report_is_repaired_in_rounds(pg_old: Store, pg_new: Store, table_name: str) -> None:
    cols = KEYS["int"][0] + PAYLOAD
    for store in (pg_old, pg_new):
        _execute(store, _ddl(store, table_name, cols, ["id"]))
    _insert(pg_old, table_name, [c for c, _ in cols], [[i, *_payload(i)] for i in range(200)])
    mapping = identity_mapping(pg_old.describe(table_name), pg_new.describe(table_name))
    copy_range(pg_old, pg_new, mapping)
    _execute(pg_new, f"UPDATE {table_name} SET version = version + 1 WHERE mod(id, 20) = 0")
    report = verify_range(pg_old, pg_new, mapping, max_differences=3, chunk_size=50)
    assert report.field_different == 10 and len(report.differences) == 3 and report.truncated
    assert report.field_counts == {"version": 10}
    fixed = repair(pg_old, pg_new, mapping, report)
    assert fixed.after.ok and fixed.repaired_keys == 10
    assert verify_range(pg_old, pg_new, mapping).ok


def test_summary_and_keys_carry_no_row_values(pg_old: Store, pg_new: Store, table_name: str) -> None:
    mapping, key, keys = _build_pair(pg_old, pg_new, table_name, "str")
    _execute(pg_new, f"UPDATE {table_name} SET note = 'SECRET-VALUE' WHERE code = 'Zoë'")
    report = verify_range(pg_old, pg_new, mapping)
    text = json.dumps(report.summary())
    assert report.field_different == 1
    assert "SECRET" not in text and "Zoë" not in text and "note 4" not in text
    assert json.loads(text)["field_counts"] == {"note": 1}


def test_verify_keys_compares_just_those_keys(my_old: Store, pg_new: Store, table_name: str) -> None:
    mapping, key, keys = _build_pair(my_old, pg_new, table_name, "composite")
    _execute(pg_new, f"UPDATE {table_name} SET status = 'x' WHERE tenant = 7 AND code = 'ü'")
    assert verify_keys(my_old, pg_new, mapping, [(0, "a"), (-1, "B")]).ok
    report = verify_keys(my_old, pg_new, mapping, [(7, "ü"), (0, "a"), (5, "never")])
    assert (report.field_different, report.missing, report.extra, report.rows_source) == (1, 0, 0, 2)
    assert report.keys() == [(7, "ü")]


def test_live_writer_during_copy_then_verify_and_repair(pg_old: Store, my_new: Store, table_name: str) -> None:
    """Rows updated and deleted on the source while the range is copied; verify+repair makes them equal."""
    cols = KEYS["int"][0] + PAYLOAD
    for store in (pg_old, my_new):
        _execute(store, _ddl(store, table_name, cols, ["id"]))
    _insert(pg_old, table_name, [c for c, _ in cols], [[i, *_payload(i)] for i in range(1500)])
    mapping = identity_mapping(pg_old.describe(table_name), my_new.describe(table_name))
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            _execute(pg_old, f"UPDATE {table_name} SET note = %s, version = version + 1 WHERE id = %s",
                     [f"live {i}", (i * 37) % 1500])
            if i % 10 == 0:
                _execute(pg_old, f"DELETE FROM {table_name} WHERE id = %s", [(i * 53) % 1500])
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        copy_range(pg_old, my_new, mapping, batch_size=50)
    finally:
        stop.set()
        t.join()
    report = verify_range(pg_old, my_new, mapping, chunk_size=200)
    fixed = repair(pg_old, my_new, mapping, report)
    assert fixed.after.ok, fixed.after.summary()
    final = verify_range(pg_old, my_new, mapping)
    assert final.ok and final.rows_source == final.rows_target


def test_progress_callback_and_forced_methods(sqlite_old: Store, pg_new: Store, table_name: str) -> None:
    mapping, key, keys = _build_pair(sqlite_old, pg_new, table_name, "int")
    with pytest.raises(ValueError, match="pushdown needs"):
        verify_range(sqlite_old, pg_new, mapping, method="pushdown")
    calls: list[VerifyProgress] = []
    report = verify_range(sqlite_old, pg_new, mapping, chunk_size=10, on_chunk=calls.append)
    assert report.ok and calls[-1].chunks_done == report.chunks
    cursors = [c.cursor for c in calls]
    assert cursors[-1] is None and all(a < b for a, b in zip(cursors[:-2], cursors[1:-1], strict=True))
    assert calls[-1].rows_source == len(keys)

