"""``dualwrite audit``: the static search for writes to migrated tables that bypass the adapter.

The main subject is tests/app_audit, a small application that writes its migrated tables every way an
application does. Each line the audit must report carries a ``bypass: TABLE`` comment (a Python comment, or
an SQL one inside a multi-line string); the audit must report exactly those lines: every raw-SQL, Core and
ORM bypass, and none of the reads, the writes to look-alike tables, or the writes through the adapter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from app.harness import make_migration

from dualwrite.audit import CORE, ORM, RAW_SQL, audit_paths, spec_tables
from dualwrite.audit.sql import TableSet, writes
from dualwrite.store import Store

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parents[1] / "app_audit"
SPEC = APP / "spec.yaml"
MARK = re.compile(r"(?:#|--) bypass: ([a-z_]+)")


def expected_bypasses() -> set[tuple[str, int, str]]:
    out = set()
    for path in sorted(APP.glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = MARK.search(line)
            if m:
                out.add((path.name, n, m.group(1)))
    return out


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The real entry point in its own process: exit codes and the absence of tracebacks matter."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", "from starter.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=120, cwd=cwd)


# ---------------------------------------------------------------------------------------------------------
# the test application


def test_spec_tables_need_no_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("DUALWRITE_")]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)  # no ./dualwrite.yaml either: nothing resolves 'legacy' / 'modern'
    assert spec_tables(SPEC) == ["orders", "customers"]
    res = cli("audit", str(SPEC), str(APP / "orm_web.py"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_audit_finds_exactly_the_bypasses_of_the_test_app() -> None:
    report = audit_paths(spec_tables(SPEC), [APP])
    found = {(Path(f.path).name, f.line, f.table) for f in report.active}
    expected = expected_bypasses()
    assert len(expected) == 21  # the app keeps its size: a lost marker must not shrink the test
    assert found - expected == set(), "reported lines that are reads, other tables or adapter writes"
    assert expected - found == set(), "bypasses the audit missed"
    assert report.warnings == []
    assert report.files == len(list(APP.glob("*.py")))
    # nothing in the modules that only read, or only write through the adapter
    assert not [f for f in report.findings if Path(f.path).name in ("orm_web.py", "db.py", "models.py")]


def test_each_kind_of_bypass_is_named_and_explained() -> None:
    report = audit_paths(spec_tables(SPEC), [APP])
    by_line = {(Path(f.path).name, f.line): f for f in report.active}
    kinds = {Path(f.path).name: set() for f in report.active}
    for f in report.active:
        kinds[Path(f.path).name].add(f.kind)
    assert kinds == {"raw_sql.py": {RAW_SQL}, "core.py": {CORE}, "orm_nightly.py": {ORM},
                     "adapter_writes.py": {RAW_SQL}}

    assert by_line["raw_sql.py", 18].why == "UPDATE in raw SQL run by cur.execute() bypasses the dual-write adapter"
    assert "in text() run by conn.execute()" in by_line["raw_sql.py", 22].why
    assert "(as sql) run by conn.execute() on line 35" in by_line["raw_sql.py", 34].why
    assert by_line["raw_sql.py", 39].why.startswith("INSERT ... ON CONFLICT/DUPLICATE KEY (upsert)")
    assert "Table 'orders' (tests/app_audit/models.py:44)" in by_line["core.py", 13].why.replace(str(ROOT) + "/", "")
    assert "Order.__table__" in by_line["core.py", 15].why
    assert "no dualwrite install(NightlySession, writer)" in by_line["orm_nightly.py", 17].why
    assert "made directly with Session(...)" in by_line["orm_nightly.py", 26].why
    assert "runs on a connection (engine.begin())" in by_line["orm_nightly.py", 38].why
    assert "no uow.touch('customers', key)" in by_line["adapter_writes.py", 29].why


def test_suppressed_findings_are_counted_not_reported() -> None:
    report = audit_paths(spec_tables(SPEC), [APP])
    assert [(Path(f.path).name, f.line, f.table) for f in report.suppressed] == [("raw_sql.py", 57, "orders")]
    assert report.summary() == f"21 findings, 1 suppressed, {report.files} files"


def test_cli_prints_findings_and_exits_1() -> None:
    res = cli("audit", str(SPEC.relative_to(ROOT)), str(APP.relative_to(ROOT)))
    assert res.returncode == 1, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == f"21 findings, 1 suppressed, {len(list(APP.glob('*.py')))} files"
    assert "tests/app_audit/raw_sql.py:18: orders - UPDATE in raw SQL run by cur.execute() bypasses the " \
           "dual-write adapter" in lines
    assert len(lines) == 22
    for line in lines[:-1]:
        assert re.match(r"^tests/app_audit/\w+\.py:\d+: (orders|customers) - \S", line), line
    assert "Traceback" not in res.stderr


def test_cli_exits_0_when_every_write_goes_through_the_adapter() -> None:
    clean = [APP / "orm_web.py", APP / "db.py", APP / "models.py"]
    res = cli("audit", str(SPEC), *map(str, clean))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "0 findings, 0 suppressed, 3 files"


def test_cli_json_lists_the_findings() -> None:
    res = cli("audit", str(SPEC), str(APP), "--json")
    assert res.returncode == 1
    items = json.loads(res.stdout)
    assert isinstance(items, list) and len(items) == 21
    assert set(items[0]) == {"path", "line", "table", "kind", "why"}
    assert {(Path(i["path"]).name, i["line"], i["table"]) for i in items} == expected_bypasses()
    assert res.stderr.strip().endswith("21 findings, 1 suppressed, 8 files")


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    missing = cli("audit", str(SPEC), str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert f"{tmp_path / 'nowhere'}: no such file or directory" in missing.stderr

    no_spec = cli("audit", str(tmp_path / "missing.yaml"), str(APP))
    assert no_spec.returncode == 2
    assert "cannot read the spec" in no_spec.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nold: legacy\nnew: legacy\ntables: []\n")
    invalid = cli("audit", str(bad), str(APP))
    assert invalid.returncode == 2
    assert "bad.yaml:4 tables" in invalid.stderr
    for res in (missing, no_spec, invalid):
        assert "Traceback" not in res.stderr
        assert res.stdout == ""


def test_a_file_that_does_not_parse_is_a_warning_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def f(:\n    pass\n")
    (tmp_path / "job.py").write_text('def run(cur):\n    cur.execute("DELETE FROM orders")\n')
    (tmp_path / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\nX = '\xe9'\n")
    res = cli("audit", str(SPEC), str(tmp_path))
    assert res.returncode == 1
    assert f"{tmp_path / 'broken.py'}:1: warning: not valid Python" in res.stderr
    assert res.stdout.splitlines() == [
        f"{tmp_path / 'job.py'}:2: orders - DELETE in raw SQL run by cur.execute() bypasses the dual-write adapter",
        "1 finding, 0 suppressed, 2 files, 1 skipped",
    ]


def test_virtual_environments_and_build_output_are_not_searched(tmp_path: Path) -> None:
    for d in (".venv/lib/python3.11/site-packages/x", "build/lib", "node_modules/y", "src/app"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "m.py").write_text('def f(cur):\n    cur.execute("TRUNCATE orders")\n')
    report = audit_paths(["orders"], [tmp_path])
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in report.active] == ["src/app/m.py"]
    # a file named on the command line is read wherever it is
    report = audit_paths(["orders"], [tmp_path / "build/lib/m.py"])
    assert len(report.active) == 1


# ---------------------------------------------------------------------------------------------------------
# which session is hooked: the explained heuristic


FRAMEWORK_APP = '''
from models import Order

def place(db, customer_id):
    db.session.add(Order(customer_id=customer_id))
    db.session.commit()

def close(order: Order) -> None:
    order.status = "closed"
'''

MODELS = '''
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

class Base(DeclarativeBase):
    pass

class Order(Base):
    __tablename__ = "ORDERS"
    id: Mapped[int] = mapped_column(primary_key=True)
'''


def test_sessions_of_unseen_origin_are_bypasses_only_when_nothing_is_installed(tmp_path: Path) -> None:
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "views.py").write_text(FRAMEWORK_APP)
    report = audit_paths(["orders"], [tmp_path])
    assert [(Path(f.path).name, f.line, f.table) for f in report.active] == [("views.py", 5, "orders"),
                                                                            ("views.py", 9, "orders")]
    assert "no dualwrite install() of a sessionmaker is anywhere in the scanned tree" in report.active[0].why
    assert "a loaded Order is modified" in report.active[1].why

    (tmp_path / "setup_dw.py").write_text(
        "from dualwrite.adapter import install\n\ndef setup(app, writer):\n    install(app.session_factory, writer)\n")
    assert audit_paths(["orders"], [tmp_path]).active == []


# ---------------------------------------------------------------------------------------------------------
# SQL statements


MIGRATED = TableSet(["orders", "customers", "billing.invoices"])


def written(sql: str) -> list[tuple[str, str]]:
    """(verb, migrated table) for every write of a migrated table in ``sql``."""
    out = []
    for w in writes(sql):
        t = MIGRATED.match(w.table)
        if t is not None:
            out.append((w.verb, t))
    return out


@pytest.mark.parametrize(("sql", "expected"), [
    ("UPDATE orders SET a = 1", [("UPDATE", "orders")]),
    ('update "orders" set a = 1', [("UPDATE", "orders")]),
    ("UPDATE `Orders` SET a = 1", [("UPDATE", "orders")]),
    ("DELETE FROM [ORDERS] WHERE id = 1", [("DELETE", "orders")]),
    ("insert into public.orders values (1)", [("INSERT", "orders")]),
    ("INSERT INTO app.`orders` (id) VALUES (1) ON DUPLICATE KEY UPDATE id = id", [("INSERT", "orders")]),
    ('INSERT INTO "public"."orders" (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2', [("INSERT", "orders")]),
    ("INSERT OR REPLACE INTO orders VALUES (1)", [("INSERT", "orders")]),
    ("REPLACE INTO customers VALUES (1)", [("REPLACE", "customers")]),
    ("UPSERT INTO orders VALUES (1)", [("UPSERT", "orders")]),
    ("MERGE INTO orders o USING src s ON o.id = s.id WHEN MATCHED THEN UPDATE SET a = 1 "
     "WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)", [("MERGE", "orders")]),
    ("TRUNCATE TABLE orders, customers", [("TRUNCATE", "orders"), ("TRUNCATE", "customers")]),
    ("TRUNCATE billing.invoices", [("TRUNCATE", "billing.invoices")]),
    ("WITH gone AS (DELETE FROM orders RETURNING *) INSERT INTO orders_archive SELECT * FROM gone",
     [("DELETE", "orders")]),
    ("UPDATE o SET a = 1 FROM orders o WHERE o.id = 2", [("UPDATE", "orders")]),
    ("UPDATE orders o JOIN customers c ON c.id = o.cid SET o.name = c.name", [("UPDATE", "orders")]),
    ("DELETE o FROM orders o JOIN customers c ON c.id = o.cid", [("DELETE", "orders")]),
    ("COPY orders (id, a) FROM STDIN", [("COPY", "orders")]),
    ("LOAD DATA LOCAL INFILE 'o.csv' INTO TABLE orders", [("LOAD DATA", "orders")]),
    ("SELECT 1; DELETE FROM customers; SELECT 2", [("DELETE", "customers")]),
    # reads and other tables
    ("SELECT * FROM orders WHERE id IN (SELECT id FROM customers)", []),
    ("SELECT * FROM orders FOR UPDATE", []),
    ("SELECT * FROM orders FOR UPDATE OF orders", []),
    ("INSERT INTO orders_archive SELECT * FROM orders", []),
    ("UPDATE orders_archive SET a = (SELECT max(a) FROM orders)", []),
    ("DELETE FROM orders_archive WHERE id IN (SELECT id FROM orders)", []),
    ("UPDATE customers c JOIN orders o ON o.cid = c.id SET c.total = o.amount", [("UPDATE", "customers")]),
    ("UPDATE other.invoices SET a = 1", []),
    ("SELECT replace(name, 'a', 'b') FROM orders", []),
    ("UPDATE t SET note = 'DELETE FROM orders'", []),
    ("COPY orders TO STDOUT", []),
    ("CREATE TABLE orders2 (c int REFERENCES customers ON DELETE CASCADE ON UPDATE CASCADE)", []),
    ("update orders failed for customer 7", []),
    ("Delete orders older than 30 days", []),
])
def test_sql_writes_of_migrated_tables(sql: str, expected: list[tuple[str, str]]) -> None:
    assert written(sql) == expected


def test_upserts_are_named_as_such() -> None:
    (w,) = writes("INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO NOTHING")
    assert w.upsert and w.what == "INSERT ... ON CONFLICT/DUPLICATE KEY (upsert)"
    (w,) = writes("INSERT INTO orders (id) VALUES (1)")
    assert not w.upsert and w.what == "INSERT"


@pytest.mark.parametrize(("code", "line"), [
    ('cur.execute(f"UPDATE {SCHEMA}.orders SET a = {v}")', 3),  # unknown schema, known table
    ('cur.execute("DELETE FROM %s WHERE id = 1" % "orders")', None),  # the table is not in the literal part
    ('cur.execute("DELETE FROM {} WHERE id = 1".format(name))', None),
    ('cur.execute("UPDATE " + TABLE + " SET a = 1")', 3),  # a module constant fills the gap
    ('cur.execute(f"UPDATE {name} SET a = 1")', None),
    ('cur.execute("""\n  SELECT 1;\n  DELETE FROM orders\n""")', 5),
])
def test_python_string_forms(tmp_path: Path, code: str, line: int | None) -> None:
    (tmp_path / "m.py").write_text(f'TABLE = "orders"\ndef f(cur, v, name, SCHEMA):\n    {code}\n')
    found = [f.line for f in audit_paths(["orders"], [tmp_path]).active]
    assert found == ([line] if line else [])


# ---------------------------------------------------------------------------------------------------------
# this repository


def test_auditing_this_repository_reads_every_file_quickly() -> None:
    started = time.perf_counter()
    report = audit_paths(spec_tables(ROOT / "examples" / "orders.yaml"), [ROOT])
    elapsed = time.perf_counter() - started
    assert report.warnings == []
    assert report.files > 100
    assert elapsed < 30, f"{elapsed:.1f} s"  # about 1.5 s on a quiet 2-core machine; generous for a busy one


# ---------------------------------------------------------------------------------------------------------
# the rules rest on what the adapter really mirrors


def test_what_the_audit_reports_is_what_the_installed_adapter_does_not_mirror(tmp_path: Path, pg_old: Store,
                                                                              pg_new: Store) -> None:
    """On real stores (PostgreSQL) with dualwrite installed on the app's sessionmaker, in DUAL_WRITE:
    an ORM write is mirrored (never reported); a Core UPDATE on the Table through the *same installed
    session* is not (reported as ``core``); raw SQL in a unit of work is mirrored once ``uow.touch`` names
    its key (accepted), and not without it (reported)."""
    m = make_migration(pg_old, pg_new, "sync")
    try:
        m.publish("DUAL_WRITE")
        orders = m.models.orders
        table = m.models.base.metadata.tables[orders]
        oid = m.shop.place_order(m.shop.signup("t1", "ann"), Decimal("5.00"))
        assert m.row("new", orders, oid) == m.row("old", orders, oid)  # the ORM write, mirrored

        with m.sessions() as s:  # installed: its ORM writes are hooked, its Core statements are not
            s.execute(sa.update(table).where(table.c.id == oid).values(note="core", version=table.c.version + 1))
            s.commit()
        assert m.row("old", orders, oid)["note"] == "core"
        assert m.row("new", orders, oid)["note"] is None

        with m.writer.unit_of_work() as uow:
            uow.connection.execute(sa.text(f"UPDATE {orders} SET note = 'untouched', version = version + 1 "
                                           "WHERE id = :id"), {"id": oid})
        assert m.row("new", orders, oid)["note"] is None

        with m.writer.unit_of_work() as uow:
            uow.connection.execute(sa.text(f"UPDATE {orders} SET note = 'touched', version = version + 1 "
                                           "WHERE id = :id"), {"id": oid})
            uow.touch(orders, oid)
        assert m.row("new", orders, oid) == m.row("old", orders, oid)
        assert m.row("new", orders, oid)["note"] == "touched"
    finally:
        m.close()

    # and the audit says the same of the same code
    source = tmp_path / "same_code.py"
    source.write_text(f'''
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from dualwrite.adapter import install

orders_t = sa.Table("{orders}", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
sessions = sessionmaker()

def setup(writer):
    install(sessions, writer)

def core(oid):
    with sessions() as s:
        s.execute(sa.update(orders_t).where(orders_t.c.id == oid).values(note="core"))

def raw(writer, oid):
    with writer.unit_of_work() as uow:
        uow.connection.execute(sa.text("UPDATE {orders} SET note = 'untouched' WHERE id = :id"), {{"id": oid}})
    with writer.unit_of_work() as uow:
        uow.connection.execute(sa.text("UPDATE {orders} SET note = 'touched' WHERE id = :id"), {{"id": oid}})
        uow.touch("{orders}", oid)
''')
    report = audit_paths([orders], [source])
    assert [(f.line, f.kind) for f in report.active] == [(14, CORE), (18, RAW_SQL)]


def test_async_sessions_flask_sqlalchemy_and_sqlmodel(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text('''
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import Field, SQLModel
from dualwrite.adapter import install_async

class Orders(SQLModel, table=True):
    id: int = Field(primary_key=True)

class Customer(db.Model):
    __tablename__ = "customers"

AsyncSessionLocal = async_sessionmaker(expire_on_commit=False)
ReportSession = async_sessionmaker()

def setup(writer):
    install_async(AsyncSessionLocal, writer)

async def hooked(oid):
    async with AsyncSessionLocal() as s:
        o = await s.get(Orders, oid)
        o.id = 2
        await s.execute(update(Orders).values(id=3))

async def bypass(oid):
    async with ReportSession() as s:
        s.add(Orders(id=oid))
        await s.commit()

def flask_view(cid):
    Customer.query.filter_by(id=cid).delete()
''')
    found = [(f.line, f.table, f.kind) for f in audit_paths(["orders", "customers"], [tmp_path]).active]
    assert found == [(27, "orders", ORM)]  # the install makes the rest hooked, Flask's session included
    (tmp_path / "m.py").write_text((tmp_path / "m.py").read_text().replace("install_async(", "print("))
    found = [(f.line, f.table) for f in audit_paths(["orders", "customers"], [tmp_path]).active]
    assert found == [(22, "orders"), (23, "orders"), (27, "orders"), (31, "customers")]


def test_a_session_held_by_a_repository_object(tmp_path: Path) -> None:
    (tmp_path / "repo.py").write_text('''
from sqlalchemy.orm import sessionmaker
from dualwrite.adapter import install
from models import Order

WebSession = sessionmaker()
BatchSession = sessionmaker()
install(WebSession, None)

class OrderRepository:
    def __init__(self, batch: bool) -> None:
        self.session = BatchSession() if batch else None
        self.db = BatchSession()

    def save(self, order: Order) -> None:
        self.db.add(order)
''')
    (tmp_path / "models.py").write_text(MODELS)
    (f,) = audit_paths(["orders"], [tmp_path]).active
    assert (f.line, f.table, f.kind) == (16, "orders", ORM)
    assert "sessionmaker 'BatchSession'" in f.why


def test_files_too_deep_or_not_text_are_warnings_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "deep.py").write_text("X = " + " + ".join(['"UPDATE orders SET a = 1 "'] * 5000) + "\n")
    (tmp_path / "nul.py").write_bytes(b"x = 1\x00\n")
    (tmp_path / "ok.py").write_text('def f(c):\n    c.execute("DELETE FROM orders")\n')
    res = cli("audit", str(SPEC), str(tmp_path))
    assert "Traceback" not in res.stderr
    assert res.returncode == 1
    assert f"{tmp_path / 'deep.py'}:0: warning: " in res.stderr
    assert f"{tmp_path / 'nul.py'}:" in res.stderr
    assert res.stdout.splitlines()[-1] == "1 finding, 0 suppressed, 1 file, 2 skipped"


def test_exclude_patterns_skip_directories_and_files(tmp_path: Path) -> None:
    for rel in ("app/views.py", "app/tests/test_views.py", "migrations/versions/0001_fix.py", "app/seed_data.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text('def f(op):\n    op.execute("UPDATE orders SET a = 1")\n')
    res = cli("audit", str(SPEC), str(tmp_path), "--exclude", "tests", "--exclude", "migrations/*",
              "--exclude", "seed_*.py")
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        f"{tmp_path / 'app/views.py'}:2: orders - UPDATE in raw SQL run by op.execute() bypasses the dual-write "
        "adapter",
        "1 finding, 0 suppressed, 1 file",
    ]


def test_statements_on_connections_of_an_engine_held_by_an_object(tmp_path: Path) -> None:
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "jobs.py").write_text('''
from sqlalchemy import delete
from sqlalchemy.orm import sessionmaker
from dualwrite.adapter import install
from models import Order

Sessions = sessionmaker()
install(Sessions, None)

class Purger:
    def purge(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(Order).where(Order.id < 0))

    def purge_in_session(self) -> None:
        with self.session.begin() as tx:
            self.session.execute(delete(Order).where(Order.id < 0))
''')
    (f,) = audit_paths(["orders"], [tmp_path]).active
    assert (f.line, f.kind) == (13, ORM)
    assert "runs on a connection (self.engine.begin())" in f.why
