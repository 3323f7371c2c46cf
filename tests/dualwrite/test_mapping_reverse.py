"""A split column both ways on real engines: forward backfill + verification (old ``name`` -> new
``first_name`` + ``last_name``), then, with the new store authoritative, the reversed mapping mirrors rows
back joined and a reverse verification (new -> old, through the reverse rule) finds them equal.

PostgreSQL -> PostgreSQL runs the checksum pushdown and the binary pass-through copy; MariaDB ->
PostgreSQL the text COPY and the canonical row compare, reversed across engines. The ``note`` column also
carries a ``%`` through expressions in both directions: statements with ``%s`` placeholders must double
it, or the driver reads it as a placeholder.
"""

from __future__ import annotations

from typing import Any

import pytest

from dualwrite.backfill_copy import copy_range
from dualwrite.mapping import SourceKind, TableMapping, compile_table, expr_columns
from dualwrite.mirror import mirror_keys
from dualwrite.repair import repair
from dualwrite.spec import TableSpec
from dualwrite.store import ColumnInfo, Dialect, Kind, Store, TableInfo
from dualwrite.verify import DiffKind, verify_range

NAMES = ["Ada Lovelace", "Grace Brewster Hopper", "Karen Spärck Jones", "Guido van Rossum", "日本 太郎",
         "Tim Berners-Lee", "Radia Perlman"]
SPLIT = {
    Dialect.POSTGRESQL: ("split_part(name, ' ', 1)", "substr(name, strpos(name, ' ') + 1)"),
    Dialect.MYSQL: ("SUBSTRING_INDEX(name, ' ', 1)", "SUBSTR(name, INSTR(name, ' ') + 1)"),
}


def _run(store: Store, *stmts: str, params: list[tuple[Any, ...]] | None = None) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for s in stmts:
            if params is not None:
                cur.executemany(s, params)
            else:
                cur.execute(s)
        cur.close()
        conn.commit()


def _rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(sql)
        rows = [tuple(r) for r in cur.fetchall()]
        conn.rollback()
    return rows


def _tables(old: Store, new: Store, t: str) -> None:
    text = "varchar(200)" if old.dialect is Dialect.MYSQL else "text"
    _run(old, f"CREATE TABLE {t} (id bigint PRIMARY KEY, name {text} NOT NULL, note_old {text}, "
              "version bigint NOT NULL)")
    _run(new, f"CREATE TABLE {t}_v2 (id bigint PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, "
              "note text, version bigint NOT NULL)")
    ph = old.paramstyle
    _run(old, f"INSERT INTO {t} (id, name, note_old, version) VALUES ({ph}, {ph}, {ph}, {ph})",
         params=[(i, NAMES[i % len(NAMES)], f"{i}% off" if i % 3 else None, 1) for i in range(1, 61)])


def _spec(old: Store, t: str) -> TableSpec:
    first, last = SPLIT[old.dialect]
    return TableSpec.model_validate({
        "source": t, "target": f"{t}_v2", "version_column": "version",
        "columns": {"first_name": {"expr": first}, "last_name": {"expr": last},
                    "note": {"expr": "REPLACE(note_old, '%', ' percent')"}},
        "reverse": {"name": "first_name || ' ' || last_name",
                    "note_old": "REPLACE(note, ' percent', '%')"},
    })


@pytest.mark.parametrize("pair", ["pg-pg", "mariadb-pg"])
def test_split_column_forward_then_reversed_both_verify_equal(pair: str, table_name: str,
                                                              request: pytest.FixtureRequest) -> None:
    old: Store = request.getfixturevalue("pg_old" if pair == "pg-pg" else "my_old")
    new: Store = request.getfixturevalue("pg_new")
    t = table_name
    _tables(old, new, t)
    mapping, problems = compile_table(_spec(old, t), old.describe(t), new.describe(f"{t}_v2"))
    assert mapping is not None, problems
    assert mapping.needs_reverse() == {}
    assert {p.target: p.inputs for p in mapping.columns if p.kind is SourceKind.EXPR} == {
        "first_name": ("name",), "last_name": ("name",), "note": ("note_old",)}

    # forward: backfill and verify old -> new
    copy_range(old, new, mapping, batch_size=16)
    assert _rows(new, f"SELECT first_name, last_name, note FROM {t}_v2 WHERE id = 1") == [
        ("Grace", "Brewster Hopper", "1 percent off")]
    methods = ["pushdown", "python"] if pair == "pg-pg" else ["python"]
    for method in methods:
        report = verify_range(old, new, mapping, chunk_size=16, method=method)
        assert report.ok and report.rows_source == report.rows_target == 60, report.summary()

    # write cutover: new is authoritative; writes land on new and are mirrored back through the reverse rule
    back = mapping.reversed()
    assert back.source_table == f"{t}_v2" and back.target_table == t
    assert {p.target: p.kind for p in back.columns} == {
        "id": SourceKind.COLUMN, "name": SourceKind.EXPR, "note_old": SourceKind.EXPR,
        "version": SourceKind.COLUMN}
    for method in methods:
        assert verify_range(new, old, back, method=method).ok
    _run(new, f"UPDATE {t}_v2 SET last_name = 'Lovelace-King', note = '100 percent sure', version = 2 "
              "WHERE id = 1",
         f"INSERT INTO {t}_v2 VALUES (100, 'Edsger', 'Dijkstra', NULL, 1)")
    drift = verify_range(new, old, back, chunk_size=16)
    assert (drift.missing, drift.extra, drift.field_different) == (1, 0, 1), drift.summary()
    assert {d.kind: [f.name for f in d.fields] for d in drift.differences}[DiffKind.FIELD] == [
        "name", "note_old", "version"]
    result = mirror_keys(new, old, back, [(1,), (100,)])
    assert (result.upserted, result.deleted) == (2, 0)
    assert sorted(_rows(old, f"SELECT id, name, note_old, version FROM {t} WHERE id IN (1, 100)")) == [
        (1, "Grace Lovelace-King", "100% sure", 2), (100, "Edsger Dijkstra", None, 1)]
    for method in methods:
        report = verify_range(new, old, back, chunk_size=16, method=method)
        assert report.ok and report.rows_source == report.rows_target == 61, report.summary()
    # the old store drifting from the new one is found through the reverse rule, and repaired from new
    _run(old, f"UPDATE {t} SET name = 'Someone Else' WHERE id = 3")
    bad = verify_range(new, old, back)
    assert bad.field_different == 1 and bad.differences[0].fields[0].name == "name"
    assert repair(new, old, back, bad).after.ok
    assert _rows(old, f"SELECT name FROM {t} WHERE id = 3") == [(NAMES[3],)]
    # and forward again (a rollback to old-authoritative) still verifies
    assert verify_range(old, new, mapping).ok


def _info(name: str, cols: dict[str, Kind]) -> TableInfo:
    return TableInfo(name, {c: ColumnInfo(c, k, k.value, nullable=c != "id", has_default=False)
                            for c, k in cols.items()}, primary_key=["id"])


def test_reversed_takes_the_new_sides_key_kinds_and_refuses_without_rules() -> None:
    old = _info("t", {"id": Kind.TEXT, "name": Kind.TEXT})
    new = _info("t", {"id": Kind.UUID, "first_name": Kind.TEXT, "last_name": Kind.TEXT})
    spec = TableSpec.model_validate({"source": "t", "columns": {
        "first_name": {"expr": "split_part(\"name\", ' ', 1)"}, "last_name": {"expr": "'name' || `name`"}}})
    mapping, problems = compile_table(spec, old, new)
    assert mapping is not None, problems
    assert mapping.key_kinds == (Kind.TEXT,)
    assert mapping.needs_reverse() == {"first_name": ("name",), "last_name": ("name",)}
    with pytest.raises(ValueError, match="column 'first_name' is computed from 'name', which cannot be mirrored"):
        mapping.reversed()
    ruled = compile_table(spec.model_copy(update={"reverse": {"name": _rule("first_name || ' ' || last_name")}}),
                          old, new)[0]
    assert isinstance(ruled, TableMapping)
    assert ruled.reversed().key_kinds == (Kind.UUID,)  # the reversed plan reads the new table's key


def _rule(expr: str) -> Any:
    from dualwrite.spec import ReverseMap

    return ReverseMap.model_validate(expr)


def test_expr_columns_skips_string_literals_and_reads_quoted_names() -> None:
    cols = ["name", "first name", "note"]
    assert expr_columns("upper(name) || 'note'", cols) == ("name",)
    assert expr_columns('"first name" || `note` || \'it\'\'s name\'', cols) == ("first name", "note")
    assert expr_columns("42", cols) == ()


def test_reverse_rules_are_checked_against_both_tables() -> None:
    old = _info("t", {"id": Kind.INT, "name": Kind.TEXT, "version": Kind.INT})
    new = _info("t", {"id": Kind.INT, "first_name": Kind.TEXT, "last_name": Kind.TEXT, "version": Kind.INT})
    spec = TableSpec.model_validate({
        "source": "t", "version_column": "version",
        "columns": {"first_name": {"expr": "name"}, "last_name": {"expr": "name"}},
        "reverse": {"nam": "first_name", "id": "first_name", "version": "1",
                    "name": {"from": "first_nam"}}})
    mapping, problems = compile_table(spec, old, new)
    assert mapping is None
    assert [(p.where, p.message) for p in problems] == [
        ("table t.reverse.nam", "column 'nam' does not exist in source table t (did you mean 'name'?)"),
        ("table t.reverse.id", "column 'id' is a key column: it comes back from target column 'id' as a plain "
                               "column, so it takes no reverse rule"),
        ("table t.reverse.version", "column 'version' is mirrored back: it comes back from target column "
                                    "'version' as a plain column, so it takes no reverse rule"),
        ("table t.reverse.name", "column 'first_nam' does not exist in target table t (did you mean "
                                 "'first_name'?)"),
    ]
