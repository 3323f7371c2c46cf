"""``dualwrite check``: every problem in one run, with its location, on real databases, writing nothing.

These tests assert what the operator sees: the lines printed, the exit code, and that no secret ever
appears. Stores are real PostgreSQL, MariaDB and SQLite; each test makes its own tables and roles and
removes the roles it made.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from conftest import PG_HOST, PG_PORT, Databases, _my_admin, _pg_admin, pg_url
from typer.testing import CliRunner

from dualwrite.config import StoreResolver, mysql_driver
from dualwrite.mapping import compile_table
from dualwrite.preflight import preflight
from dualwrite.spec import TableSpec, parse_spec
from dualwrite.store import ColumnInfo, Kind, Store, TableInfo
from starter.cli import EXIT_BAD_INPUT, EXIT_OK, app

runner = CliRunner()
DUALWRITE = Path(os.environ.get("DUALWRITE_BIN", str(Path(__file__).resolve().parents[2] / ".venv/bin/dualwrite")))

RunSql = Callable[..., None]
Fetch = Callable[[Store, str], list[tuple[object, ...]]]


def dualwrite_bin() -> str:
    """The installed console script: ./.venv (scripts/test.sh) or the venv running these tests."""
    for candidate in (DUALWRITE, Path(sys.executable).parent / "dualwrite"):
        if candidate.exists():
            return str(candidate)
    pytest.fail("the dualwrite console script is not installed next to this Python")


def with_password(url: str, password: str, user: str | None = None) -> str:
    u = sa.make_url(url)
    if user is not None:
        u = u.set(username=user)
    return u.set(password=password).render_as_string(hide_password=False)


def write_spec(tmp_path: Path, body: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(body).lstrip("\n"), encoding="utf-8")
    return path


def check(spec: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run ``dualwrite check`` in-process (fast) with these store URLs; returns (exit code, output)."""
    result = runner.invoke(app, ["check", str(spec), *args], env={"DUALWRITE_CONFIG": "", **env})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    # stdout only: stderr carries the note that no Temporal answered for the single-owner lookup
    return result.exit_code, result.stdout


def store_env(**stores: Store | str) -> dict[str, str]:
    return {f"DUALWRITE_STORE_{name.upper()}": s if isinstance(s, str) else s.ref.url for name, s in stores.items()}


def pg_snapshot(store: Store, fetch: Fetch) -> dict[str, Any]:
    """Everything a write could change that a check must not: tables, their DDL and their row counts."""
    tables = [str(r[0]) for r in fetch(store, "SELECT table_name FROM information_schema.tables "
                                               "WHERE table_schema = 'public' ORDER BY 1")]
    columns = fetch(store, "SELECT table_name, column_name, data_type, is_nullable, column_default "
                           "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2")
    counts = {t: fetch(store, f'SELECT count(*) FROM "{t}"')[0][0] for t in tables}
    return {"tables": tables, "columns": columns, "counts": counts}


# ---------------------------------------------------------------------------------------------------------
# the headline: a spec with many mistakes


@pytest.fixture
def orders_schema(pg_old: Store, pg_new: Store, table_name: str, run_sql: RunSql) -> str:
    """Old and new tables for one test, prefixed with the test's unique table name."""
    t = table_name
    run_sql(pg_old,
            f"CREATE TABLE {t}_orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, "
            "amount numeric(12,2) NOT NULL, status text NOT NULL, note text, version bigint NOT NULL DEFAULT 1)",
            f"INSERT INTO {t}_orders (id, customer_id, amount, status) VALUES (1, 7, 9.99, 'open'), "
            "(2, 8, 1.50, 'paid')",
            f"CREATE TABLE {t}_events (id bigint NOT NULL, payload text)",
            f"INSERT INTO {t}_events VALUES (1, 'x')")
    run_sql(pg_new,
            f"CREATE TABLE {t}_orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, "
            "total numeric(14,2) NOT NULL, status integer NOT NULL, note text, version bigint NOT NULL)",
            f"INSERT INTO {t}_orders VALUES (1, 7, 9.99, 1, NULL, 1)",
            f"CREATE TABLE {t}_events (id bigint PRIMARY KEY, payload text)")
    return t


def test_a_spec_with_many_mistakes_reports_them_all_with_locations_and_writes_nothing(
    tmp_path: Path, pg_old: Store, pg_new: Store, orders_schema: str, fetch: Fetch
) -> None:
    t = orders_schema
    password = "Pw-" + secrets.token_hex(8)
    spec = write_spec(tmp_path, f"""
        name: broken
        old: pgold
        new: pgnew
        control_store: nowhere
        colour: blue
        tables:
          - source: {t}_orders
            version_column: version
            columns:
              total: amount
              note: nte
          - source: {t}_missing
          - source: {t}_events
        """)
    before = (pg_snapshot(pg_old, fetch), pg_snapshot(pg_new, fetch))
    env = {**os.environ, "NO_COLOR": "1",
           "DUALWRITE_STORE_PGOLD": with_password(pg_old.ref.url, password),
           "DUALWRITE_STORE_PGNEW": with_password(pg_new.ref.url, password)}
    env.pop("DUALWRITE_CONFIG", None)
    proc = subprocess.run([dualwrite_bin(), "check", str(spec)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_BAD_INPUT, out
    lines = out.splitlines()
    assert lines[0] == "spec.yaml: 7 problems"
    assert lines[1:8] == [
        "  spec.yaml:5 colour: unknown field; expected one of: name, old, new, control_store, strategy, mode, "
        "tables, backfill_concurrency, verify_interval_seconds, auto_cleanup, gates, rollback_triggers, tenants",
        "  spec.yaml:4 control_store (store 'nowhere'): no URL for this store: set DUALWRITE_STORE_NOWHERE or "
        "add it under 'stores:' in ./dualwrite.yaml (or the file in $DUALWRITE_CONFIG)",
        "  spec.yaml:9 tables[0].columns.status: type mismatch: source status is text (text) but target status "
        "is integer (int); convert it deliberately with 'expr' (a CAST) or a 'transform'",
        f"  spec.yaml:11 tables[0].columns.note: column 'nte' does not exist in source table {t}_orders "
        "(did you mean 'note'?)",
        f"  spec.yaml:12 tables[1].source: source table '{t}_missing' does not exist in store 'pgold' (old) "
        f"(did you mean '{t}_orders'?)",
        f"  spec.yaml:12 tables[1].source: target table '{t}_missing' does not exist in store 'pgnew' (new) "
        f"(did you mean '{t}_orders'?); with no 'target:' the target table has the source's name",
        f"  spec.yaml:13 tables[2].key: source table {t}_events has no primary or unique key: its rows cannot be "
        "told apart, so writes cannot be mirrored, copied or verified; add a primary key to it first",
    ]
    assert "Nothing was written" in lines[-1]
    assert password not in out and "Traceback" not in out
    assert (pg_snapshot(pg_old, fetch), pg_snapshot(pg_new, fetch)) == before


def test_a_clean_spec_exits_0_with_a_summary_per_table(
    tmp_path: Path, pg_old: Store, pg_new: Store, orders_schema: str, fetch: Fetch
) -> None:
    t = orders_schema
    spec = write_spec(tmp_path, f"""
        name: clean
        old: pgold
        new: pgnew
        tables:
          - source: {t}_orders
            version_column: version
            columns:
              total: amount
              status: {{expr: "CASE status WHEN 'open' THEN 1 ELSE 2 END"}}
            reverse:
              status: "CASE status WHEN 1 THEN 'open' ELSE 'paid' END"
        """)
    before = (pg_snapshot(pg_old, fetch), pg_snapshot(pg_new, fetch))
    code, out = check(spec, store_env(pgold=pg_old, pgnew=pg_new))
    assert code == EXIT_OK, out
    lines = out.splitlines()
    assert lines[0] == "spec.yaml: OK, 1 table ready to migrate"
    assert "  old store 'pgold': postgresql, as " in out
    assert f"  {t}_orders -> {t}_orders: key (id), 6 columns mapped, version column version, 2 rows" in lines
    assert lines[-1] == "Nothing was written."
    assert (pg_snapshot(pg_old, fetch), pg_snapshot(pg_new, fetch)) == before

    code, out = check(spec, store_env(pgold=pg_old, pgnew=pg_new), "--json")
    report = json.loads(out)
    assert code == EXIT_OK and report["ok"] is True and report["problems"] == []
    assert report["tables"] == [{
        "index": 0, "source": f"{t}_orders", "target": f"{t}_orders", "source_key": ["id"], "target_key": ["id"],
        "columns": 6, "version_column": "version", "rows": 2, "rows_kind": "exact"}]


# ---------------------------------------------------------------------------------------------------------
# stores: unknown, unreachable, secrets


def test_unreachable_store_is_reported_clearly_and_its_password_never_shown(tmp_path: Path, pg_old: Store) -> None:
    password = "Pw-" + secrets.token_hex(8)
    spec = write_spec(tmp_path, """
        name: m
        old: pgold
        new: gone
        tables: [{source: whatever}]
        """)
    config = tmp_path / "dualwrite.yaml"
    config.write_text(f"stores:\n  gone: postgresql://app:{password}@127.0.0.1:1/app\n", encoding="utf-8")
    code, out = check(spec, store_env(pgold=pg_old), "--config", str(config))
    assert code == EXIT_BAD_INPUT
    assert out.splitlines()[1].startswith(
        "  store 'gone' (new): cannot connect (postgresql+psycopg://app:***@127.0.0.1:1/app): connection failed")
    assert "Connection refused" in out and "nothing on it was checked" in out
    assert password not in out
    # the old store is still checked, so its problems arrive in the same run
    assert "table 'whatever' does not exist in store 'pgold' (old)" in out

    code, out = check(spec, store_env(pgold=pg_old), "--config", str(config), "--json")
    assert code == EXIT_BAD_INPUT and password not in out
    stores = {s["name"]: s for s in json.loads(out)["stores"]}
    assert stores["gone"]["reachable"] is False
    assert stores["gone"]["url"] == "postgresql+psycopg://app:***@127.0.0.1:1/app"


def test_a_wrong_password_is_not_echoed_back(tmp_path: Path, my_old: Store, pg_new: Store) -> None:
    password = "Pw-" + secrets.token_hex(8)
    spec = write_spec(tmp_path, """
        name: m
        old: myold
        new: pgnew
        tables: [{source: whatever}]
        """)
    bad = with_password(my_old.ref.url, password, user="dwt_nobody")
    code, out = check(spec, store_env(myold=bad, pgnew=pg_new))
    assert code == EXIT_BAD_INPUT
    assert f"store 'myold' (old): cannot connect (mysql+{mysql_driver()}://dwt_nobody:***@" in out
    assert "Access denied for user 'dwt_nobody'" in out
    assert password not in out


def test_missing_config_file_and_missing_spec_are_bad_input(tmp_path: Path) -> None:
    code, out = check(tmp_path / "nope.yaml", {})
    assert code == EXIT_BAD_INPUT
    assert f"{tmp_path / 'nope.yaml'}: cannot read the spec: No such file or directory" in out
    spec = write_spec(tmp_path, """
        name: m
        old: a
        new: b
        tables: [{source: t}]
        """)
    code, out = check(spec, {}, "--config", str(tmp_path / "absent.yaml"))
    assert code == EXIT_BAD_INPUT
    assert f"  {tmp_path / 'absent.yaml'}: cannot read the config file: No such file or directory" in out
    assert "spec.yaml:2 old (store 'a'): no URL for this store" in out


def test_a_config_file_with_broken_yaml_does_not_quote_its_secret_line(tmp_path: Path) -> None:
    password = "Pw-" + secrets.token_hex(8)
    config = tmp_path / "dualwrite.yaml"
    config.write_text(f"stores:\n  a: postgresql://app:{password}@db/app\n  b: [oops\n", encoding="utf-8")
    spec = write_spec(tmp_path, "name: m\nold: a\nnew: b\ntables: [{source: t}]\n")
    code, out = check(spec, {}, "--config", str(config))
    assert code == EXIT_BAD_INPUT and "not valid YAML" in out and password not in out


def test_same_database_onto_itself_is_refused(tmp_path: Path, pg_old: Store, orders_schema: str) -> None:
    spec = write_spec(tmp_path, f"""
        name: m
        old: one
        new: two
        tables: [{{source: {orders_schema}_orders}}]
        """)
    code, out = check(spec, store_env(one=pg_old, two=pg_old))
    assert code == EXIT_BAD_INPUT
    assert f"spec.yaml:4 tables[0].source: old and new are the same database and this entry copies table " \
           f"{orders_schema}_orders onto itself" in out


# ---------------------------------------------------------------------------------------------------------
# privileges, checked without writing


@pytest.fixture
def pg_role(pg_new: Store) -> Iterator[str]:
    """A login role with no privileges, dropped afterwards."""
    role = f"dwt_ro_{secrets.token_hex(3)}"
    with _pg_admin() as c:
        c.execute(f'CREATE ROLE "{role}" LOGIN')
    yield role
    db = sa.make_url(pg_new.ref.url).database
    pg_new.dispose()  # close pooled sessions before dropping what they may reference
    with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=db, autocommit=True,
                         user=os.environ.get("DUALWRITE_TEST_PG_USER") or None) as c:
        c.execute(f'DROP OWNED BY "{role}"')
    with _pg_admin() as c:
        c.execute(f'DROP ROLE "{role}"')


def test_a_read_only_role_on_the_new_store_is_reported_as_unable_to_write(
    tmp_path: Path, pg_old: Store, pg_new: Store, orders_schema: str, pg_role: str, run_sql: RunSql, fetch: Fetch
) -> None:
    t = orders_schema
    run_sql(pg_new, f'GRANT SELECT ON {t}_orders TO "{pg_role}"')
    spec = write_spec(tmp_path, f"""
        name: m
        old: pgold
        new: pgnew
        tables:
          - source: {t}_orders
            columns: {{total: amount, status: {{expr: "length(status)"}}}}
            reverse: {{status: "status::text"}}
        """)
    password = "Pw-" + secrets.token_hex(8)
    new_url = with_password(pg_new.ref.url, password, user=pg_role)
    before = pg_snapshot(pg_new, fetch)
    code, out = check(spec, store_env(pgold=pg_old, pgnew=new_url))
    assert code == EXIT_BAD_INPUT, out
    assert out.splitlines()[1:] == [
        f"  store 'pgnew' (new) table {t}_orders: {pg_role} cannot INSERT, UPDATE, DELETE on {t}_orders (the new "
        f"store must take the migration's writes): GRANT INSERT, UPDATE, DELETE ON {t}_orders TO {pg_role}",
        "Nothing was written. Fix these and run 'dualwrite check' again.",
    ]
    assert password not in out
    assert pg_snapshot(pg_new, fetch) == before

    # granted what the data path needs, the same role passes
    run_sql(pg_new, f'GRANT INSERT, UPDATE, DELETE ON {t}_orders TO "{pg_role}"')
    code, out = check(spec, store_env(pgold=pg_old, pgnew=new_url))
    assert code == EXIT_OK, out
    assert f"new store 'pgnew': postgresql, as {pg_role}," in out


def test_column_grants_and_row_locks_on_the_old_store(
    tmp_path: Path, pg_old: Store, pg_new: Store, orders_schema: str, run_sql: RunSql
) -> None:
    t = orders_schema
    role = f"dwt_ro_{secrets.token_hex(3)}"
    run_sql(pg_old, f'CREATE ROLE "{role}" LOGIN', f'GRANT SELECT (id, customer_id, amount) ON {t}_orders TO "{role}"')
    try:
        spec = write_spec(tmp_path, f"""
            name: m
            old: pgold
            new: pgnew
            tables:
              - source: {t}_orders
                columns: {{total: amount, status: {{default: 1}}}}
                drop: [status]
            """)
        code, out = check(spec, store_env(pgold=with_password(pg_old.ref.url, "x", user=role), pgnew=pg_new))
        assert code == EXIT_BAD_INPUT
        assert out.splitlines()[1:3] == [
            f"  store 'pgold' (old) table {t}_orders: {role} cannot SELECT column(s) note, version of {t}_orders: "
            f"GRANT SELECT (note, version) ON {t}_orders TO {role}",
            f"  store 'pgold' (old) table {t}_orders: {role} cannot lock rows of {t}_orders: the mirror reads "
            f"source rows FOR UPDATE, which PostgreSQL allows only with UPDATE privilege: GRANT UPDATE ON "
            f"{t}_orders TO {role}",
        ]
    finally:
        pg_old.dispose()
        run_sql(pg_old, f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"')


@pytest.fixture
def my_user(my_new: Store) -> Iterator[tuple[str, str]]:
    """A MariaDB account (and a role it may use) with no privileges, dropped afterwards."""
    tag = secrets.token_hex(3)
    user, role = f"dwt_u_{tag}", f"dwt_r_{tag}"
    c = _my_admin()
    cur = c.cursor()
    cur.execute(f"CREATE USER '{user}'@'%'")
    cur.execute(f"CREATE ROLE {role}")
    cur.execute(f"GRANT {role} TO '{user}'@'%'")
    cur.execute(f"SET DEFAULT ROLE {role} FOR '{user}'@'%'")
    c.close()
    yield user, role
    my_new.dispose()
    c = _my_admin()
    cur = c.cursor()
    cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
    cur.execute(f"DROP ROLE IF EXISTS {role}")
    c.close()


def test_mariadb_privileges_are_asked_of_the_server_including_roles(
    tmp_path: Path, my_old: Store, my_new: Store, table_name: str, run_sql: RunSql, fetch: Fetch,
    my_user: tuple[str, str],
) -> None:
    user, role = my_user
    t = table_name
    for s in (my_old, my_new):
        run_sql(s, f"CREATE TABLE {t} (id bigint PRIMARY KEY, name varchar(40) NOT NULL, v bigint NOT NULL)")
    run_sql(my_old, f"INSERT INTO {t} VALUES (1, 'a', 1), (2, 'b', 1)")
    db = sa.make_url(my_new.ref.url).database
    run_sql(my_new, f"GRANT SELECT ON `{db}`.`{t}` TO '{user}'@'%'")
    spec = write_spec(tmp_path, f"""
        name: m
        old: myold
        new: mynew
        tables: [{{source: {t}, version_column: v}}]
        """)
    new_url = with_password(my_new.ref.url, "", user=user)
    before = fetch(my_new, f"SELECT * FROM {t}")
    code, out = check(spec, store_env(myold=my_old, mynew=new_url))
    assert code == EXIT_BAD_INPUT
    assert out.splitlines()[1] == (
        f"  store 'mynew' (new) table {t}: '{user}'@'%' cannot INSERT, UPDATE, DELETE on {t} (the new store must "
        f"take the migration's writes): GRANT INSERT, UPDATE, DELETE ON {t} TO '{user}'@'%'")
    assert fetch(my_new, f"SELECT * FROM {t}") == before == []

    # privileges that arrive through a default role count: information_schema would not show them
    run_sql(my_new, f"GRANT INSERT, UPDATE, DELETE ON `{db}`.`{t}` TO {role}")
    code, out = check(spec, store_env(myold=my_old, mynew=new_url))
    assert code == EXIT_OK, out
    assert f"  {t} -> {t}: key (id), 3 columns mapped, version column v, 2 rows" in out


# ---------------------------------------------------------------------------------------------------------
# expressions, transforms, SQLite, the example


def test_expressions_are_planned_on_zero_rows_in_a_read_only_transaction(
    tmp_path: Path, pg_old: Store, pg_new: Store, orders_schema: str, run_sql: RunSql, fetch: Fetch
) -> None:
    t = orders_schema
    run_sql(pg_old, f"CREATE SEQUENCE {t}_seq")
    spec = write_spec(tmp_path, f"""
        name: m
        old: pgold
        new: pgnew
        tables:
          - source: {t}_orders
            columns:
              total: amount
              note: {{expr: "nextval('{t}_seq')::text"}}
              status: {{expr: "stauts::int"}}
            reverse:
              status: "status::text"
        """)
    code, out = check(spec, store_env(pgold=pg_old, pgnew=pg_new))
    assert code == EXIT_BAD_INPUT
    assert out.splitlines()[1:] == [
        '  spec.yaml:9 tables[0].columns.status: the old store rejects this expression: column "stauts" does not '
        "exist",
        "Nothing was written. Fix these and run 'dualwrite check' again.",
    ]
    # an expression with a side effect is planned, never evaluated: the sequence did not move
    assert fetch(pg_old, f"SELECT last_value, is_called FROM {t}_seq") == [(1, False)]


def test_transforms_must_import(tmp_path: Path, pg_old: Store, pg_new: Store, orders_schema: str,
                                repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo_root)  # transforms are looked up from the working directory, like `python -m`
    t = orders_schema
    spec = write_spec(tmp_path, f"""
        name: m
        old: pgold
        new: pgnew
        tables:
          - source: {t}_orders
            columns:
              total: {{from: amount, transform: "examples.transforms:to_cents"}}
              note: {{from: note, transform: "examples.transforms:nope"}}
              status: {{transform: "no_such_module_dw:fn"}}
        """)
    code, out = check(spec, store_env(pgold=pg_old, pgnew=pg_new))
    assert code == EXIT_BAD_INPUT
    assert out.splitlines()[1:3] == [
        "  spec.yaml:8 tables[0].columns.note: cannot import transform 'examples.transforms:nope': module "
        "'examples.transforms' has no attribute 'nope'",
        "  spec.yaml:9 tables[0].columns.status: cannot import transform 'no_such_module_dw:fn': No module named "
        "'no_such_module_dw' (transforms are imported from sys.path, $DUALWRITE_TRANSFORMS_PATH and the current "
        "directory)",
    ]


def test_sqlite_files_are_opened_read_only_and_never_created(tmp_path: Path, pg_new: Store, table_name: str,
                                                              run_sql: RunSql) -> None:
    import sqlite3

    t = table_name
    old_db = tmp_path / "old.db"
    with sqlite3.connect(old_db) as c:
        c.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, n TEXT)")
        c.execute(f"INSERT INTO {t} VALUES (1, 'a', '5')")
    c.close()
    run_sql(pg_new, f"CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, n integer)")
    before = old_db.read_bytes()
    spec = write_spec(tmp_path, f"""
        name: m
        old: sq
        new: pgnew
        tables: [{{source: {t}}}]
        """)
    code, out = check(spec, store_env(sq=f"sqlite:///{old_db}", pgnew=pg_new))
    assert code == EXIT_BAD_INPUT
    assert out.splitlines()[1] == (
        "  spec.yaml:4 tables[0].columns.n: type mismatch: source n is TEXT (text) but target n is integer (int); "
        "convert it deliberately with 'expr' (a CAST) or a 'transform'")
    # untouched: not even switched to WAL, and no journal files beside it
    assert old_db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.db", "spec.yaml"]

    code, out = check(spec, store_env(sq=f"sqlite:///{tmp_path / 'typo.db'}", pgnew=pg_new))
    assert code == EXIT_BAD_INPUT
    assert f"store 'sq' (old): SQLite file {tmp_path / 'typo.db'} does not exist (check never creates one)" in out
    assert not (tmp_path / "typo.db").exists()


def test_the_example_spec_checks_clean(databases: Databases, repo_root: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo_root)
    urls = {}
    for label, sql in (("exlegacy", "legacy.sql"), ("exmodern", "modern.sql")):
        url = pg_url(databases.pg_db(label))
        with psycopg.connect(sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                             autocommit=True) as c:
            c.execute((repo_root / "examples" / sql).read_text(encoding="utf-8"))
        urls[label] = url
    code, out = check(repo_root / "examples" / "orders.yaml",
                      {"DUALWRITE_STORE_LEGACY": urls["exlegacy"], "DUALWRITE_STORE_MODERN": urls["exmodern"]},
                      "--config", str(repo_root / "examples" / "dualwrite.yaml"))
    assert code == EXIT_OK, out
    assert "  orders -> orders_v2: key (id), 9 columns mapped, version column version, 1,000 rows" in out


# ---------------------------------------------------------------------------------------------------------
# compile_table rules behind the messages (no database needed)


def col(name: str, kind: Kind, sql_type: str, nullable: bool = True) -> ColumnInfo:
    return ColumnInfo(name=name, kind=kind, sql_type=sql_type, nullable=nullable, has_default=False)


def info(name: str, *cols: ColumnInfo, pk: list[str] | None = None, uniques: list[list[str]] | None = None
         ) -> TableInfo:
    return TableInfo(name=name, columns={c.name: c for c in cols}, primary_key=pk or [], unique_keys=uniques or [])


ID = col("id", Kind.INT, "bigint", nullable=False)


@pytest.mark.parametrize(("src", "dst", "ok"), [
    (col("v", Kind.INT, "integer"), col("v", Kind.DECIMAL, "numeric(20,0)"), True),     # widening
    (col("v", Kind.INT, "integer"), col("v", Kind.TEXT, "text"), True),
    (col("v", Kind.TEXT, "char(36)"), col("v", Kind.UUID, "uuid"), True),                # MySQL has no uuid
    (col("v", Kind.TEXT, "longtext"), col("v", Kind.JSON, "jsonb"), True),
    (col("v", Kind.TIMESTAMP, "datetime"), col("v", Kind.TIMESTAMPTZ, "timestamptz"), True),
    (col("v", Kind.TEXT, "text"), col("v", Kind.INT, "integer"), False),
    (col("v", Kind.TEXT, "TEXT"), col("v", Kind.TIMESTAMPTZ, "timestamptz"), True),      # SQLite dates
    (col("v", Kind.TEXT, "text"), col("v", Kind.BOOL, "boolean"), False),
    (col("v", Kind.DECIMAL, "numeric(12,2)"), col("v", Kind.INT, "bigint"), False),      # loses cents
    (col("v", Kind.FLOAT, "double precision"), col("v", Kind.INT, "bigint"), False),
    (col("v", Kind.BYTES, "bytea"), col("v", Kind.TEXT, "text"), False),
])
def test_type_compatibility_reads_from_source_to_target(src: ColumnInfo, dst: ColumnInfo, ok: bool) -> None:
    mapping, problems = compile_table(TableSpec(source="t"), info("t", ID, src, pk=["id"]),
                                      info("t", ID, dst, pk=["id"]))
    assert (mapping is not None) is ok, problems
    if not ok:
        assert problems[0].message.startswith("type mismatch: source v is")


def test_keys_must_identify_rows() -> None:
    a = col("a", Kind.INT, "int", nullable=False)
    b = col("b", Kind.INT, "int")
    target = info("t", ID, a, b, pk=["id"])

    def key_problems(source: TableInfo, key: list[str] | None = None) -> list[str]:
        return [p.message for p in compile_table(TableSpec(source="t", key=key), source, target)[1]
                if p.where.endswith(".key")]

    assert key_problems(info("t", ID, a, b)) == [
        "source table t has no primary or unique key: its rows cannot be told apart, so writes cannot be "
        "mirrored, copied or verified; add a primary key to it first"]
    # naming a key does not make a keyless table safe
    assert key_problems(info("t", ID, a, b), key=["id"])[0].startswith("source table t has no primary or unique")
    assert key_problems(info("t", ID, a, b, pk=["id"]), key=["a"])[0] == (
        "key (a) is not unique in source table t: name its primary key or a unique key (id)")
    assert key_problems(info("t", ID, a, b, pk=["id"]), key=["idd"]) == [
        "key column 'idd' does not exist in source table t (did you mean 'id'?)"]
    assert key_problems(info("t", ID, a, b, uniques=[["b"]])) == [
        "key column(s) b of source table t may be NULL, and rows with a NULL key cannot be told apart: make them "
        "NOT NULL or use the primary key"]
    # a superset of the primary key is still unique, and a NOT NULL unique key is a fine default
    assert compile_table(TableSpec(source="t", key=["id"]), info("t", ID, a, b, pk=["id"]), target)[0] is not None
    m, problems = compile_table(TableSpec(source="t"), info("t", ID, a, b, uniques=[["b"], ["id"]]), target)
    assert m is not None and m.source_key == ("id",), problems


def test_defaults_must_fit_the_target_column() -> None:
    region = col("region", Kind.INT, "integer", nullable=False)
    spec = parse_spec("name: m\nold: a\nnew: b\ntables:\n  - source: t\n    columns: {region: {default: eu}}\n")
    _, problems = compile_table(spec.tables[0], info("t", ID, pk=["id"]), info("t", ID, region, pk=["id"]))
    assert [p.message for p in problems] == ["default 'eu' is not a number but target column region is integer"]


def test_preflight_api_takes_a_validated_spec_and_locates_by_path(pg_old: Store, pg_new: Store,
                                                                  orders_schema: str) -> None:
    spec = parse_spec(f"name: m\nold: pgold\nnew: pgnew\ntables:\n  - source: {orders_schema}_orders\n")
    report = preflight(spec, StoreResolver(environ=store_env(pgold=pg_old, pgnew=pg_new)))
    assert not report.ok and report.tables == []
    assert [(p.where, p.message.split(":")[0]) for p in report.problems] == [
        ("tables[0].columns.total", "target column 'total' is NOT NULL without a default and nothing fills it "
                                    "(map it with from / expr / default / transform)"),
        ("tables[0].columns.status", "type mismatch"),
        ("tables[0].columns", "source column 'amount' is not migrated"),
    ]


# ---------------------------------------------------------------------------------------------------------
# reverse rules: what write cutover needs to mirror new -> old


@pytest.fixture
def people_schema(pg_old: Store, pg_new: Store, table_name: str, run_sql: RunSql) -> str:
    """A split column: old ``name`` -> new ``first_name`` + ``last_name``."""
    t = table_name
    run_sql(pg_old, f"CREATE TABLE {t}_people (id bigint PRIMARY KEY, name text NOT NULL, email text, "
                    "version bigint NOT NULL DEFAULT 1)",
            f"INSERT INTO {t}_people (id, name) VALUES (1, 'Ada Lovelace')")
    run_sql(pg_new, f"CREATE TABLE {t}_people (id bigint PRIMARY KEY, first_name text NOT NULL, "
                    "last_name text NOT NULL, email text, version bigint NOT NULL)")
    return t


SPLIT_COLUMNS = """
            columns:
              first_name: {expr: "split_part(name, ' ', 1)"}
              last_name: {expr: "substr(name, strpos(name, ' ') + 1)"}"""


def test_a_computed_column_without_a_reverse_rule_cannot_take_the_writes(
    tmp_path: Path, pg_old: Store, pg_new: Store, people_schema: str
) -> None:
    t = people_schema
    spec = write_spec(tmp_path, f"""
        name: m
        old: pgold
        new: pgnew
        tables:
          - source: {t}_people
            version_column: version{SPLIT_COLUMNS}
        """)
    code, out = check(spec, store_env(pgold=pg_old, pgnew=pg_new))
    assert code == EXIT_BAD_INPUT, out
    assert out.splitlines()[1:] == [
        "  spec.yaml:8 tables[0].columns.first_name: column 'first_name' is computed from old column 'name', "
        "which cannot be mirrored back after write cutover: add a rule for it under 'reverse:' (an SQL expr "
        "over the new table's columns, or a transform)",
        "  spec.yaml:9 tables[0].columns.last_name: column 'last_name' is computed from old column 'name', "
        "which cannot be mirrored back after write cutover: add a rule for it under 'reverse:' (an SQL expr "
        "over the new table's columns, or a transform)",
        "Nothing was written. Fix these and run 'dualwrite check' again.",
    ]


def test_reverse_rules_are_checked_on_the_new_store_all_at_once(
    tmp_path: Path, pg_old: Store, pg_new: Store, people_schema: str, fetch: Fetch
) -> None:
    t = people_schema
    spec = write_spec(tmp_path, f"""
        name: m
        old: pgold
        new: pgnew
        tables:
          - source: {t}_people
            version_column: version{SPLIT_COLUMNS}
            reverse:
              name: "first_nam || ' ' || last_name"
              nmae: "first_name"
              version: "1"
        """)
    before = (pg_snapshot(pg_old, fetch), pg_snapshot(pg_new, fetch))
    code, out = check(spec, store_env(pgold=pg_old, pgnew=pg_new))
    assert code == EXIT_BAD_INPUT, out
    assert out.splitlines()[1:] == [
        '  spec.yaml:11 tables[0].reverse.name: reverse rule: the new store rejects this expression: column '
        '"first_nam" does not exist',
        f"  spec.yaml:12 tables[0].reverse.nmae: column 'nmae' does not exist in source table {t}_people "
        "(did you mean 'name'?)",
        "  spec.yaml:13 tables[0].reverse.version: column 'version' is mirrored back: it comes back from target "
        "column 'version' as a plain column, so it takes no reverse rule",
        "Nothing was written. Fix these and run 'dualwrite check' again.",
    ]
    assert (pg_snapshot(pg_old, fetch), pg_snapshot(pg_new, fetch)) == before


def test_a_split_with_its_reverse_rule_checks_clean(
    tmp_path: Path, pg_old: Store, pg_new: Store, people_schema: str
) -> None:
    t = people_schema
    spec = write_spec(tmp_path, f"""
        name: m
        old: pgold
        new: pgnew
        tables:
          - source: {t}_people
            version_column: version{SPLIT_COLUMNS}
            reverse:
              name: "first_name || ' ' || last_name"
        """)
    code, out = check(spec, store_env(pgold=pg_old, pgnew=pg_new))
    assert code == EXIT_OK, out
    assert f"  {t}_people -> {t}_people: key (id), 5 columns mapped, version column version, 1 rows" in out
