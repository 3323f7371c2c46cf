"""``strict`` between PostgreSQL and a Redis new store ([T2-6]), both directions, faults injected at each point.

Before write cutover PostgreSQL is authoritative: its transaction stays open while Redis is written (rows and
a note of their keys in one script), then commits. After write cutover Redis is authoritative: the SQL
secondary's transaction writes the row and a note, Redis is written (rows and a note with their before
images), then SQL commits. Faults: Redis down (a TCP proxy cut), Redis hung (``CLIENT PAUSE WRITE`` past the
socket timeout), the SQL commit failing after Redis was written (a deferred constraint), and the process
SIGKILLed between the two. After each: every acknowledged write is in both stores (after repair), every
failed request in neither, and the error names the store that failed. Real PostgreSQL, a private
redis-server (``CLIENT PAUSE`` must not stall the machine's shared Redis).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from app.harness import TcpProxy
from app.strict_redis_child import redis_strict_spec
from conftest import execute

from dualwrite import control, hooks
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.errors import StrictWriteError
from dualwrite.keyvalue import RedisServer, start_redis, strict_notes
from dualwrite.keyvalue.strict_notes import notes_keys
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from dualwrite.stores.redis import RedisStore

TESTS = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with start_redis(tmp_path_factory.mktemp("redis-strict")) as s:
        yield s


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", server.port)
    p.start()
    yield p
    p.stop()


class Case:
    """One migration of one table: the writer, and both stores read directly."""

    def __init__(self, pg: Store, table: str, server: RedisServer, redis_url: str | None = None,
                 **options: Any) -> None:
        execute(pg, f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL, balance numeric(10,2), "
                    "version bigint NOT NULL DEFAULT 1)")
        self.pg, self.table, self.server = pg, table, server
        self.spec = redis_strict_spec(table)
        control.ensure_schema(pg)
        control.publish_state(pg, self.spec.name, "DUAL_WRITE", 1)
        base: dict[str, Any] = {"background": False, "phase_ttl": 0.01, "strict_note_grace": 60.0,
                                "secondary_timeout": 0.5}
        self.w = DualWriter(self.spec, pg, RedisStore("kv", redis_url or server.url),
                            options=AdapterOptions(**{**base, **options}))
        self.r = redis.Redis.from_url(server.url, decode_responses=True)

    def cut_over(self) -> None:
        control.publish_state(self.pg, self.spec.name, "CUTOVER_WRITES", 2)
        self.w.phase.refresh(force=True)

    def sql(self, key: int) -> tuple[Any, ...] | None:
        with self.pg.connect() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT name, balance FROM {self.table} WHERE id = {self.pg.paramstyle}", (key,))
            row = cur.fetchone()
            conn.rollback()
        return None if row is None else tuple(row)

    def kv(self, key: int) -> tuple[Any, ...] | None:
        h = self.r.hgetall(f"{self.table}:acct:{key}")
        return (h["name"], Decimal(h["balance"]) if "balance" in h else None) if h else None

    def both(self, key: int) -> tuple[Any, ...] | None:
        """The row, asserting both stores agree."""
        assert self.sql(key) == self.kv(key), (self.sql(key), self.kv(key))
        return self.sql(key)

    def repair(self, older_than: float = 60.0) -> None:
        assert self.w.strict is not None
        self.w.strict.flush()
        self.w.strict.sweep(older_than)
        self.w.retry_pending_repairs()
        self.w.drain_repairs()
        assert control.repair_queue_depth(self.pg, self.spec.name) == 0

    def notes(self) -> int:
        zset, _ = notes_keys(self.spec.name)
        return int(self.r.zcard(zset))

    def close(self) -> None:
        self.w.close()


@pytest.fixture
def case(pg_old: Store, table_name: str, server: RedisServer) -> Iterator[Case]:
    c = Case(pg_old, table_name, server)
    yield c
    c.close()


def reject_at_commit(c: Case) -> None:
    """A deferred constraint on PostgreSQL: a row named 'reject-at-commit' fails at COMMIT, not before."""
    execute(c.pg, f"CREATE FUNCTION {c.table}_reject() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "IF NEW.name = 'reject-at-commit' THEN RAISE EXCEPTION 'rejected at commit'; END IF; "
                  "RETURN NULL; END $$",
            f"CREATE CONSTRAINT TRIGGER {c.table}_reject AFTER INSERT OR UPDATE ON {c.table} DEFERRABLE "
            f"INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {c.table}_reject()")


def pause_writes(server: RedisServer, seconds: float) -> None:
    """Every write command on the server waits ``seconds`` (reads go on): a hung Redis, for writes."""
    redis.Redis.from_url(server.url).execute_command("CLIENT", "PAUSE", int(seconds * 1000), "WRITE")


BUSY = """local t0 = redis.call('TIME') local s0 = tonumber(t0[1]) * 1000 + math.floor(tonumber(t0[2]) / 1000)
while true do
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - s0 >= tonumber(ARGV[1]) then return 1 end
end"""


def busy(server: RedisServer, seconds: float) -> threading.Thread:
    """The whole server stalls ``seconds`` (a long script): commands sent meanwhile wait in their sockets and
    run afterwards - also those of clients that gave up (the case a deadline in the strict script is for)."""
    th = threading.Thread(target=lambda: redis.Redis.from_url(server.url).eval(BUSY, 0, int(seconds * 1000)))
    th.start()
    time.sleep(0.1)
    return th


def hung_write_is_refused_later(c: Case, key: int, role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis stalls right after the strict script's connection is up: the insert fails naming Redis, and the
    script Redis runs after the stall (still in its socket) writes nothing."""
    real = strict_notes.write
    stalls: list[threading.Thread] = []

    def stalled(client: Any, *args: Any, **kw: Any) -> Any:
        client.ping()  # connected (and the client's handshake done) before the stall
        stalls.append(busy(c.server, 2.0))
        return real(client, *args, **kw)

    monkeypatch.setattr(strict_notes, "write", stalled)
    started = time.monotonic()
    with pytest.raises(StrictWriteError) as failed:
        c.w.insert(c.table, {"id": key, "name": "stalled", "balance": Decimal("3.00")})
    assert time.monotonic() - started < 1.9
    monkeypatch.setattr(strict_notes, "write", real)
    assert failed.value.store == "new" and failed.value.role == role and "timeout" in str(failed.value).lower()
    stalls[0].join()
    time.sleep(0.2)
    assert c.kv(key) is None and c.sql(key) is None  # the late script found its deadline passed


def race_delete_with_insert(case: Case, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Insert key 7 and hold it between its two commits; delete key 7 meanwhile; let the insert go.
    Returns what the delete returned; asserts neither failed."""
    w, t = case.w, case.table
    held, release = threading.Event(), threading.Event()
    real = hooks.point

    def point(name: str, **context: Any) -> None:
        if name == "strict.between_commits" and threading.current_thread().name == "inserter":
            held.set()
            release.wait(10)
        real(name, **context)

    monkeypatch.setattr(hooks, "point", point)
    errors: list[BaseException] = []
    deleted: list[int] = []

    def insert() -> None:
        try:
            w.insert(t, {"id": 7, "name": "inserted", "balance": Decimal("7.00")})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def delete() -> None:
        try:
            deleted.append(w.delete(t, 7))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    inserter = threading.Thread(target=insert, name="inserter")
    inserter.start()
    assert held.wait(10)  # the insert is in the store written first, the other's transaction still open
    deleter = threading.Thread(target=delete, name="deleter")
    deleter.start()
    deleter.join(0.25)  # within the statement timeout (0.5 s): it must wait for the insert's transaction
    release.set()
    inserter.join(10)
    deleter.join(10)
    assert errors == [] and not inserter.is_alive() and not deleter.is_alive()
    return deleted


# ---------------------------------------------------------------------------------------------------------
# PostgreSQL authoritative, Redis the secondary


def test_sql_authoritative_writes_both_and_redis_down_fails_the_request_in_neither(
        pg_old: Store, table_name: str, server: RedisServer, proxy: TcpProxy) -> None:
    c = Case(pg_old, table_name, server, redis_url=proxy.url_for(server.url))
    try:
        w, t = c.w, c.table
        w.insert(t, {"id": 1, "name": "both", "balance": Decimal("1.00")})
        assert c.both(1) == ("both", Decimal("1.00"))
        with proxy.down():
            with pytest.raises(StrictWriteError) as failed:
                w.insert(t, {"id": 2, "name": "never"})
            assert failed.value.store == "new" and failed.value.role == "secondary"
            assert "failed on the new store" in str(failed.value)
            with pytest.raises(StrictWriteError, match="new store"):
                w.update(t, 1, {"name": "changed"})
            with pytest.raises(StrictWriteError, match="new store"):
                w.delete(t, 1)
            assert c.sql(2) is None and c.sql(1) == ("both", Decimal("1.00"))  # PostgreSQL rolled back
            with pytest.raises(StrictWriteError, match="new store"), w.unit_of_work() as uow:
                uow.insert(t, {"id": 3, "name": "never either"})
                uow.update(t, 1, {"name": "nor this"})
            assert c.sql(3) is None and c.sql(1) == ("both", Decimal("1.00"))
        c.repair()
        assert c.both(2) is None and c.both(3) is None and c.both(1) == ("both", Decimal("1.00"))
        with w.unit_of_work() as uow:  # several keys: one script writes them all, with one note
            uow.insert(t, {"id": 4, "name": "four"})
            uow.insert(t, {"id": 5, "name": "five"})
            uow.delete(t, 4)
        assert c.both(4) is None and c.both(5) == ("five", None)
        w.update(t, 1, {"name": "after"})  # Redis is back: strict writes succeed again
        assert c.both(1) == ("after", Decimal("1.00"))
        w.delete(t, 1)
        assert c.both(1) is None
        w.strict.flush()  # type: ignore[union-attr]
        assert c.notes() == 0
    finally:
        c.close()


def test_sql_authoritative_redis_hung_times_out_naming_redis_and_is_in_neither(case: Case,
                                                                               monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    w, t = case.w, case.table
    w.insert(t, {"id": 1, "name": "before", "balance": Decimal("1.00")})
    pause_writes(case.server, 2.0)
    started = time.monotonic()
    with pytest.raises(StrictWriteError) as failed:
        w.update(t, 1, {"name": "too slow"})
    assert time.monotonic() - started < 1.8  # the socket timeout (0.5 s), not the pause
    assert failed.value.store == "new" and "timeout" in str(failed.value).lower()
    assert case.sql(1) == ("before", Decimal("1.00"))
    time.sleep(2.2)  # the pause ends: the write Redis held is refused then (its deadline passed)
    assert case.kv(1) == ("before", Decimal("1.00"))
    hung_write_is_refused_later(case, 2, "secondary", monkeypatch)
    case.repair()
    assert case.both(1) == ("before", Decimal("1.00")) and case.both(2) is None


def test_sql_authoritative_commit_failure_restores_redis(case: Case) -> None:
    reject_at_commit(case)
    w, t = case.w, case.table
    w.insert(t, {"id": 1, "name": "kept", "balance": Decimal("1.00")})
    with pytest.raises(StrictWriteError) as failed:
        w.insert(t, {"id": 2, "name": "reject-at-commit"})
    assert failed.value.store == "old" and failed.value.role == "authoritative"
    assert "restored" in str(failed.value)
    assert case.sql(2) is None and case.kv(2) is None
    with pytest.raises(StrictWriteError, match="old store"):
        w.update(t, 1, {"name": "reject-at-commit"})
    assert case.both(1) == ("kept", Decimal("1.00"))
    w.strict.flush()  # type: ignore[union-attr]
    assert control.repair_queue_depth(case.pg, case.spec.name) == 0 and case.notes() == 0


def _crash_child(c: Case, tmp_path: Path, ack: int, doomed: int) -> None:
    hook_file = tmp_path / "hooks.json"
    hook_file.write_text(json.dumps({"strict.between_commits": {"action": "kill"}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop(hooks.ENV, None)
    child = subprocess.run([sys.executable, str(TESTS / "app" / "strict_redis_child.py"), c.table,
                            c.pg.ref.url, c.server.url, str(hook_file), str(ack), str(doomed)],
                           capture_output=True, text=True, env=env, timeout=120, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.splitlines() == [f"ACK {ack}"]
    assert "strict.between_commits kill" in (tmp_path / "hooks.json.fired").read_text()


def test_sql_authoritative_killed_between_the_commits_is_repaired(case: Case, tmp_path: Path) -> None:
    _crash_child(case, tmp_path, 11, 12)
    # the half state: Redis has the row and the note of it, PostgreSQL never committed
    assert case.kv(12) == ("doomed", Decimal("2.00")) and case.sql(12) is None and case.notes() >= 1
    case.repair(older_than=0.0)
    assert case.both(12) is None  # the failed request is in neither store
    assert case.both(11) == ("acknowledged", Decimal("1.00")) and case.notes() == 0


@pytest.mark.parametrize("old", ["my_old", "sqlite_old"])
def test_mariadb_and_sqlite_both_directions_and_redis_down(request: pytest.FixtureRequest, old: str,
                                                           table_name: str, server: RedisServer,
                                                           proxy: TcpProxy) -> None:
    """The same contract with MariaDB and SQLite as the SQL store: written to both, or (Redis cut) to neither,
    with SQL authoritative and with Redis authoritative."""
    store: Store = request.getfixturevalue(old)
    c = Case(store, table_name, server, redis_url=proxy.url_for(server.url))

    def names(key: int) -> tuple[str | None, str | None]:
        s, k = c.sql(key), c.kv(key)
        return (None if s is None else s[0]), (None if k is None else k[0])

    try:
        w, t = c.w, c.table
        for phase, base in (("DUAL_WRITE", 1), ("CUTOVER_WRITES", 101)):
            if phase == "CUTOVER_WRITES":
                c.cut_over()
            w.insert(t, {"id": base, "name": "both"})
            w.update(t, base, {"name": "updated"})
            assert names(base) == ("updated", "updated")
            with proxy.down():
                with pytest.raises(StrictWriteError) as failed:
                    w.insert(t, {"id": base + 1, "name": "never"})
                assert failed.value.store == "new"
                with pytest.raises(StrictWriteError, match="new store"):
                    w.delete(t, base)
            c.repair()
            assert names(base + 1) == (None, None) and names(base) == ("updated", "updated")
            assert w.delete(t, base) == 1 and names(base) == (None, None)
    finally:
        c.close()


def test_a_hung_redis_fails_a_call_after_the_socket_timeout(server: RedisServer) -> None:
    """Every data-path client has connect and socket timeouts (defaults, the URL's options, the adapter's)."""
    store = RedisStore("kv", server.url)
    assert store.timeouts() == (10.0, 5.0)
    assert RedisStore("kv", f"{server.url}?socket_timeout=0.3&socket_connect_timeout=0.2").timeouts() == (0.3, 0.2)
    fast = store.with_timeouts(0.3)
    client = fast.client()
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.3, 0.3)
    redis.Redis.from_url(server.url).execute_command("CLIENT", "PAUSE", 1500, "ALL")
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.get("anything")
    assert time.monotonic() - started < 1.2
    client.close()
    time.sleep(1.6)


# ---------------------------------------------------------------------------------------------------------
# Redis authoritative (after write cutover), PostgreSQL the secondary


def test_redis_authoritative_writes_both(case: Case) -> None:
    case.cut_over()
    w, t = case.w, case.table
    w.insert(t, {"id": 1, "name": "first", "balance": Decimal("1.50")})
    assert case.both(1) == ("first", Decimal("1.50"))
    assert w.update(t, 1, {"balance": Decimal("2.00")}) == 1
    assert case.both(1) == ("first", Decimal("2.00"))
    w.upsert(t, {"id": 2, "name": "second"})
    assert case.both(2) == ("second", None)
    assert w.delete(t, 2) == 1 and case.both(2) is None
    assert w.delete(t, 2) == 0
    w.strict.flush()  # type: ignore[union-attr]
    assert case.notes() == 0 and control.repair_queue_depth(case.pg, case.spec.name) == 0


def test_redis_authoritative_concurrent_writers_leave_both_stores_equal(case: Case) -> None:
    case.cut_over()
    w, t = case.w, case.table
    w.insert(t, {"id": 1, "name": "start", "balance": Decimal("0.00")})
    errors: list[BaseException] = []

    def hammer(n: int) -> None:
        try:
            for i in range(15):
                w.upsert(t, {"id": 1, "name": f"w{n}-{i}", "balance": Decimal(i)})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert case.both(1) is not None


def test_redis_authoritative_down_fails_naming_redis_and_is_in_neither(
        pg_old: Store, table_name: str, server: RedisServer, proxy: TcpProxy) -> None:
    c = Case(pg_old, table_name, server, redis_url=proxy.url_for(server.url))
    try:
        c.cut_over()
        w, t = c.w, c.table
        w.insert(t, {"id": 1, "name": "both", "balance": Decimal("1.00")})
        with proxy.down():
            with pytest.raises(StrictWriteError) as failed:
                w.insert(t, {"id": 2, "name": "never"})
            assert failed.value.store == "new" and failed.value.role == "authoritative"
            with pytest.raises(StrictWriteError, match="new store"):
                w.update(t, 1, {"name": "changed"})
        assert c.both(2) is None and c.both(1) == ("both", Decimal("1.00"))
        c.repair()
        assert c.both(2) is None and c.both(1) == ("both", Decimal("1.00"))
    finally:
        c.close()


def test_redis_authoritative_hung_times_out_naming_redis_and_is_in_neither(
        pg_old: Store, table_name: str, server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Case(pg_old, table_name, server, redis_url=f"{server.url}?socket_timeout=0.5")
    try:
        c.cut_over()
        w, t = c.w, c.table
        w.insert(t, {"id": 1, "name": "before", "balance": Decimal("1.00")})
        pause_writes(server, 2.0)
        started = time.monotonic()
        with pytest.raises(StrictWriteError) as failed:
            w.update(t, 1, {"name": "too slow"})
        assert time.monotonic() - started < 1.8
        assert failed.value.store == "new" and "timeout" in str(failed.value).lower()
        assert c.sql(1) == ("before", Decimal("1.00"))  # the SQL secondary rolled back
        time.sleep(2.2)  # the pause ends: the held script finds its deadline passed and writes nothing
        assert c.kv(1) == ("before", Decimal("1.00"))
        hung_write_is_refused_later(c, 2, "authoritative", monkeypatch)
        c.repair()
        assert c.both(1) == ("before", Decimal("1.00")) and c.both(2) is None
    finally:
        c.close()


def test_redis_authoritative_sql_commit_failure_restores_redis(case: Case) -> None:
    case.cut_over()
    reject_at_commit(case)
    w, t = case.w, case.table
    w.insert(t, {"id": 1, "name": "kept", "balance": Decimal("1.00")})
    with pytest.raises(StrictWriteError) as failed:
        w.insert(t, {"id": 2, "name": "reject-at-commit"})
    assert failed.value.store == "old" and failed.value.role == "secondary"
    assert "restored" in str(failed.value)
    assert case.both(2) is None
    with pytest.raises(StrictWriteError, match="old store"):
        w.update(t, 1, {"name": "reject-at-commit"})
    assert case.both(1) == ("kept", Decimal("1.00"))
    case.repair(older_than=0.0)
    assert case.both(1) == ("kept", Decimal("1.00")) and case.both(2) is None and case.notes() == 0


def test_redis_authoritative_killed_between_the_commits_is_repaired(case: Case, tmp_path: Path) -> None:
    case.cut_over()
    _crash_child(case, tmp_path, 21, 22)
    # the half state: Redis (authoritative) has the row and a note with its before image; PostgreSQL rolled back
    assert case.kv(22) == ("doomed", Decimal("2.00")) and case.sql(22) is None and case.notes() >= 1
    case.repair(older_than=0.0)
    assert case.both(22) is None  # the request never acknowledged is in neither store
    assert case.both(21) == ("acknowledged", Decimal("1.00")) and case.notes() == 0


def test_a_note_of_a_committed_write_is_never_undone(case: Case) -> None:
    """A crash after both commits but before the notes are cleared: the sweep keeps the write."""
    case.cut_over()
    w, t = case.w, case.table
    assert w.strict is not None
    w.insert(t, {"id": 5, "name": "committed", "balance": Decimal("5.00")})
    w.strict._done.clear()  # the clean-up never ran
    assert case.notes() == 1
    case.repair(older_than=0.0)
    assert case.both(5) == ("committed", Decimal("5.00")) and case.notes() == 0


def test_a_unit_of_work_of_more_keys_than_lua_can_unpack_succeeds_in_both(
        pg_old: Store, table_name: str, server: RedisServer) -> None:
    """Lua's C stack (8000 slots) once capped the script's reply: a unit of work of more keys wrote every row
    and its note into Redis, then failed - the request refused for good and its rows left in Redis."""
    c = Case(pg_old, table_name, server, secondary_timeout=10.0)
    try:
        w, t = c.w, c.table
        n = 8200
        with w.unit_of_work() as uow:
            for i in range(1, n + 1):
                uow.insert(t, {"id": i, "name": f"row {i}"})
        assert c.both(1) == ("row 1", None) and c.both(n) == (f"row {n}", None)
        assert int(c.r.eval(f"return #redis.call('KEYS', '{t}:acct:*')", 0)) == n
        w.strict.flush()  # type: ignore[union-attr]
        assert c.notes() == 0 and control.repair_queue_depth(c.pg, c.spec.name) == 0
    finally:
        c.close()


def test_redis_authoritative_delete_of_a_key_being_inserted_waits_for_it(case: Case,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete of a key absent in PostgreSQL takes no row lock there: it once ran its Redis script between the
    script and the commit of an insert of that key, so Redis applied insert then delete and PostgreSQL delete
    then insert - both acknowledged, the stores different for good (no note left to repair it)."""
    case.cut_over()
    w, t = case.w, case.table
    held, release = threading.Event(), threading.Event()
    real = hooks.point

    def point(name: str, **context: Any) -> None:
        if name == "strict.between_commits" and threading.current_thread().name == "inserter":
            held.set()
            release.wait(10)
        real(name, **context)

    monkeypatch.setattr(hooks, "point", point)
    errors: list[BaseException] = []

    def insert() -> None:
        try:
            w.insert(t, {"id": 7, "name": "inserted", "balance": Decimal("7.00")})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    inserter = threading.Thread(target=insert, name="inserter")
    inserter.start()
    assert held.wait(10)  # the insert is in Redis, its PostgreSQL transaction still open
    deleted: list[int] = []

    def delete() -> None:
        try:
            deleted.append(w.delete(t, 7))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    deleter = threading.Thread(target=delete, name="deleter")
    deleter.start()
    deleter.join(0.25)  # within the statement timeout (0.5 s): it must wait for the insert's transaction
    release.set()
    inserter.join(10)
    deleter.join(10)
    assert errors == [] and not inserter.is_alive() and not deleter.is_alive()
    assert case.sql(7) == case.kv(7), (case.sql(7), case.kv(7))  # both stores: one order of the two writes
    assert deleted == [1] and case.both(7) is None  # the delete waited, so it came second in both


def test_sql_authoritative_delete_of_a_key_being_inserted_leaves_both_stores_equal(
        case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's DELETE of a key another transaction is inserting neither waits nor deletes: its strict write
    once deleted the key in Redis after the insert's script, and the insert committed - in PostgreSQL, not in
    Redis, both acknowledged and no note left to repair it."""
    race_delete_with_insert(case, monkeypatch)
    assert case.sql(7) == case.kv(7), (case.sql(7), case.kv(7))


# ---------------------------------------------------------------------------------------------------------
# a row whose every non-key column is NULL: its undo must still be applied (review of [T2-6])


class NullRowCase:
    """A table whose non-key columns may all be NULL, rejected at COMMIT when they all are; both stores read
    as the raw Redis hash and the SQL row."""

    def __init__(self, pg: Store, table: str, server: RedisServer) -> None:
        execute(pg, f"CREATE TABLE {table} (id bigint PRIMARY KEY, note text, amount numeric(10,2))",
                f"CREATE FUNCTION {table}_reject() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.note IS NULL AND NEW.amount IS NULL THEN RAISE EXCEPTION 'all null'; END IF; "
                "RETURN NULL; END $$",
                f"CREATE CONSTRAINT TRIGGER {table}_reject AFTER INSERT OR UPDATE ON {table} DEFERRABLE "
                f"INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_reject()")
        self.pg, self.table = pg, table
        self.spec = MigrationSpec.model_validate({
            "name": f"kvn-{table}", "old": "pgold", "new": "kv", "strategy": "strict",
            "tables": [{"source": table, "redis": {"key": "n:{id}", "prefix": f"{table}:"}}]})
        control.ensure_schema(pg)
        control.publish_state(pg, self.spec.name, "DUAL_WRITE", 1)
        self.w = DualWriter(self.spec, pg, RedisStore("kv", server.url),
                            options=AdapterOptions(background=False, phase_ttl=0.01, strict_note_grace=60.0,
                                                   secondary_timeout=0.5))
        self.r = redis.Redis.from_url(server.url, decode_responses=True)

    def sql(self, key: int) -> tuple[Any, ...] | None:
        with self.pg.connect() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT note, amount FROM {self.table} WHERE id = {self.pg.paramstyle}", (key,))
            row = cur.fetchone()
            conn.rollback()
        return None if row is None else tuple(row)

    def kv(self, key: int) -> dict[str, str] | None:
        name = f"{self.table}:n:{key}"
        return dict(self.r.hgetall(name)) if self.r.exists(name) else None


@pytest.mark.parametrize("cut_over", [False, True], ids=["sql-authoritative", "redis-authoritative"])
def test_a_failed_strict_write_of_an_all_null_row_is_undone_in_both_stores(
        pg_old: Store, table_name: str, server: RedisServer, cut_over: bool) -> None:
    c = NullRowCase(pg_old, table_name, server)
    try:
        if cut_over:
            control.publish_state(c.pg, c.spec.name, "CUTOVER_WRITES", 2)
            c.w.phase.refresh(force=True)
        w, t = c.w, c.table
        with pytest.raises(StrictWriteError, match="old store") as failed:
            w.insert(t, {"id": 1})  # every non-key column NULL: rejected at COMMIT, after Redis was written
        assert "restored" in str(failed.value)
        assert c.sql(1) is None and c.kv(1) is None  # the failed insert is in neither store
        w.insert(t, {"id": 2, "note": "kept"})
        with pytest.raises(StrictWriteError, match="old store"):
            w.update(t, 2, {"note": None})  # to all NULL: rejected at COMMIT
        assert c.sql(2) == ("kept", None) and c.kv(2) == {"id": "2", "note": "kept"}
        assert w.strict is not None
        w.strict.flush()
        w.strict.sweep(0.0)
        assert c.sql(1) is None and c.kv(1) is None and c.kv(2) == {"id": "2", "note": "kept"}
        assert int(c.r.zcard(notes_keys(c.spec.name)[0])) == 0
    finally:
        c.w.close()


@pytest.mark.parametrize("before", [None, {"id": "5", "note": "kept"}], ids=["absent", "hash"])
def test_the_undo_of_a_write_of_no_fields_is_applied(server: RedisServer, before: dict[str, str] | None) -> None:
    """The note's image of a hash written with no fields is an empty Lua table, which cjson gives back as
    ``{}``: taken for another image than the key's (absent), the undo was refused and the write stood. The
    Redis kind always writes the key's fields (an all-NULL row is ``{id: ...}``), so only a direct op has none."""
    r = redis.Redis.from_url(server.url, decode_responses=True)
    migration, key = f"nf-{time.time_ns()}", f"nf:{time.time_ns()}"
    if before is not None:
        r.hset(key, mapping=before)
    op = strict_notes.StrictOp(key, "hash", [], [])
    assert strict_notes.write(r, migration, "tok", "new", [("t", "[5]", op)], 5.0) == [before is not None]
    assert not r.exists(key)  # DEL, then no fields to HSET
    note = strict_notes.read_note(r, migration, "tok")
    assert note is not None
    (_t, _k, redis_key), = note["k"]
    assert strict_notes.restore(r, redis_key, note["b"][0], note["w"][0])
    assert (r.hgetall(key) if r.exists(key) else None) == before
    strict_notes.forget(r, migration, ["tok"])
