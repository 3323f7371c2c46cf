"""The ``outbox`` strategy with a Redis new store ([T2-6]): after write cutover the outbox is a Redis stream
(``__dualwrite__:<migration>:outbox``) appended by the same script as the data write, drained by the relay
through a consumer group (XREADGROUP, XAUTOCLAIM of a crashed relay's entries, XACK after the mirror).

Real PostgreSQL, a private redis-server (persistence on), the relay's real store side; what is asserted is
what a user cares about: the data write and its stream entry exist both or neither, a crashed relay's
entries are reclaimed and applied, and every acknowledged write reaches PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Databases, fetch_all, pg_url
from temporalio.testing import ActivityEnvironment

from activities.abort import AbortActivities
from activities.stores import StoreCache
from dualwrite import control
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.capture.store_side import RelayStores, store_side
from dualwrite.capture.stream_side import StreamOutboxSide
from dualwrite.config import StoreResolver, env_var_for
from dualwrite.keyvalue import RedisServer, start_redis
from dualwrite.keyvalue import stream_outbox as so
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from workflows.models import AbortCleanupInput


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with start_redis(tmp_path_factory.mktemp("redis-outbox")) as s:
        yield s


class Setup:
    def __init__(self, spec: MigrationSpec, writer: DualWriter, rs: RelayStores, table: str, url: str,
                 resolver: StoreResolver) -> None:
        self.spec, self.writer, self.rs, self.table, self.url = spec, writer, rs, table, url
        self.writer_resolver = resolver
        self.pg_url = ""
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.stream = so.stream_key(spec.name)
        self.prefix = f"{table}:item:"

    def relay(self, *, lease: float = so.LEASE_SECONDS, consumer: str = "relay-a") -> StreamOutboxSide:
        side = store_side(self.spec)
        assert isinstance(side, StreamOutboxSide)
        side.lease_seconds, side.consumer = lease, consumer
        return side

    def pg(self) -> dict[int, str]:
        return {int(str(r[0])): str(r[1]) for r in fetch_all(self.rs.old, f"SELECT id, name FROM {self.table}")}


@pytest.fixture
def kv(pg_old: Store, databases: Databases, table_name: str, server: RedisServer, tmp_path: Path) -> Iterator[Setup]:
    with pg_old.connect() as conn:
        conn.cursor().execute(f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text NOT NULL, "
                              "version bigint NOT NULL)")
        conn.commit()
    spec = MigrationSpec.model_validate({
        "name": f"kvo-{table_name}"[:60], "old": "pgold", "new": "kv", "strategy": "outbox",
        "tables": [{"source": table_name, "version_column": "version",
                    "redis": {"key": "item:{id}", "prefix": f"{table_name}:"}}]})
    config = tmp_path / "dualwrite.yaml"
    config.write_text("stores: {}\n")
    resolver = StoreResolver(config_file=config, environ={env_var_for("pgold"): pg_url(databases.pg_db("old")),
                                                          env_var_for("kv"): server.url})
    cache = StoreCache(resolver, pool_size=2)
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, spec.name, "CUTOVER_WRITES", 1)
    w = DualWriter.from_resolver(spec, resolver, options=AdapterOptions(phase_ttl=0.01, background=False))
    rs = cache.relay_stores(spec)
    store_side(spec).setup(rs)
    try:
        setup = Setup(spec, w, rs, table_name, server.url, resolver)
        setup.pg_url = pg_url(databases.pg_db("old"))
        (tmp_path / "dw.yaml").write_text("stores: {}\n")
        yield setup
    finally:
        w.close()


def test_the_relay_mirrors_redis_writes_into_sql_through_the_stream(kv: Setup) -> None:
    w, t = kv.writer, kv.table
    w.insert(t, {"id": 1, "name": "one"})
    w.upsert(t, {"id": 2, "name": "two"})
    w.update(t, 1, {"name": "uno"})
    w.delete(t, 2)
    assert kv.r.hget(f"{kv.prefix}1", "name") == "uno"
    assert kv.r.xlen(kv.stream) == 4  # one entry per write, appended with it
    assert kv.pg() == {}  # nothing mirrored inside the call: the relay does it
    side = kv.relay()
    assert side.backlog(kv.rs).remaining == 4
    res = side.drain_round(kv.rs, "CUTOVER_WRITES", limit=100, max_seconds=2, stats=None, should_stop=lambda: False)
    assert res.entries == 4 and res.failed == 0, res
    assert kv.pg() == {1: "uno"}
    assert kv.r.xlen(kv.stream) == 0 and side.backlog(kv.rs).remaining == 0  # acknowledged and removed


def test_the_data_write_and_its_stream_entry_are_both_written_or_neither(kv: Setup) -> None:
    w, t = kv.writer, kv.table
    w.insert(t, {"id": 1, "name": "one"})
    assert kv.r.xlen(kv.stream) == 1
    with pytest.raises(Exception, match="exists already"):  # an insert refused: no write, no entry
        w.insert(t, {"id": 1, "name": "again"})
    assert kv.r.xlen(kv.stream) == 1
    # the stream cannot take the entry (a key of the wrong type under its name): the write fails whole
    kv.r.delete(kv.stream)
    kv.r.set(kv.stream, "not a stream")
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the error, the write must not half-happen
        w.upsert(t, {"id": 5, "name": "five"})
    with pytest.raises(Exception):  # noqa: B017, PT011
        w.delete(t, 1)
    assert not kv.r.exists(f"{kv.prefix}5")
    assert kv.r.hget(f"{kv.prefix}1", "name") == "one"


def test_a_crashed_relays_pending_entries_are_reclaimed_and_applied(kv: Setup) -> None:
    w, t = kv.writer, kv.table
    for k in range(1, 6):
        w.insert(t, {"id": k, "name": f"n{k}"})
    # a relay reads the entries and dies before it acknowledges them: they stay pending under its name
    crashed = kv.r.xreadgroup(so.GROUP, "relay-crashed", {kv.stream: ">"}, count=100)
    assert len(crashed[0][1]) == 5
    side = kv.relay(lease=0.3, consumer="relay-b")
    res = side.drain_round(kv.rs, "CUTOVER_WRITES", limit=100, max_seconds=1, stats=None, should_stop=lambda: False)
    assert res.entries == 0 and kv.pg() == {}  # still leased to the crashed relay
    assert side.backlog(kv.rs).remaining == 5
    time.sleep(0.4)
    res = side.drain_round(kv.rs, "CUTOVER_WRITES", limit=100, max_seconds=1, stats=None, should_stop=lambda: False)
    assert res.entries == 5, res
    assert kv.pg() == {k: f"n{k}" for k in range(1, 6)}
    assert kv.r.xpending(kv.stream, so.GROUP)["pending"] == 0 and kv.r.xlen(kv.stream) == 0
    # the dead relay's name holds nothing now: a relay's set-up forgets it once it has been idle long enough
    assert "relay-crashed" in so.forget_idle_consumers(kv.r, kv.stream, 0.35)
    assert "relay-crashed" not in [c["name"] for c in kv.r.xinfo_consumers(kv.stream, so.GROUP)]


def test_no_acknowledged_write_is_lost_across_relay_crashes_and_catch_up(kv: Setup) -> None:
    w, t = kv.writer, kv.table
    acked: dict[int, str | None] = {}
    stop = threading.Event()

    def app() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            k = n % 40 + 1
            if n % 7 == 0:
                w.delete(t, k)
                acked[k] = None
            else:
                w.upsert(t, {"id": k, "name": f"v{n}"})
                acked[k] = f"v{n}"

    thread = threading.Thread(target=app, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 2.0
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            if rounds % 3 == 0:  # a relay that reads a batch and crashes
                kv.r.xreadgroup(so.GROUP, f"relay-dead-{rounds}", {kv.stream: ">"}, count=5)
            kv.relay(lease=0.2).drain_round(kv.rs, "CUTOVER_WRITES", limit=20, max_seconds=0.2, stats=None,
                                            should_stop=lambda: False)
    finally:
        stop.set()
        thread.join()
    time.sleep(0.25)
    side = kv.relay(lease=0.2)
    points = side.catch_up_points(kv.rs, ("new",))
    assert side.behind(kv.rs, points)[0] > 0 or kv.r.xlen(kv.stream) == 0
    deadline = time.monotonic() + 10
    while side.behind(kv.rs, points)[0] and time.monotonic() < deadline:
        side.catch_up_round(kv.rs, ("new",), "CUTOVER_WRITES", limit=500, should_stop=lambda: False)
    assert side.behind(kv.rs, points)[0] == 0
    expected = {k: v for k, v in acked.items() if v is not None}
    assert kv.pg() == expected
    assert len(acked) == 40


def test_while_sql_is_authoritative_the_outbox_is_the_sql_table(kv: Setup) -> None:
    control.publish_state(kv.rs.old, kv.spec.name, "DUAL_WRITE", 2)
    kv.writer.phase.refresh(force=True)
    kv.writer.insert(kv.table, {"id": 7, "name": "seven"})
    assert kv.pg() == {7: "seven"} and not kv.r.exists(f"{kv.prefix}7")
    assert not kv.r.exists(kv.stream) or kv.r.xlen(kv.stream) == 0
    n = fetch_all(kv.rs.old, f"SELECT COUNT(*) FROM dualwrite_outbox WHERE migration = '{kv.spec.name}'")[0][0]
    assert n == 1
    side = kv.relay()
    res: Any = side.drain_round(kv.rs, "DUAL_WRITE", limit=100, max_seconds=1, stats=None, should_stop=lambda: False)
    assert res.entries == 1 and kv.r.hget(f"{kv.prefix}7", "name") == "seven"


def test_an_abort_removes_the_outbox_stream_and_the_sql_outbox_entries(kv: Setup) -> None:
    """The abort's store cleanup with a Redis new store: the SQL outbox's entries and the Redis stream go
    (authority is back on PostgreSQL by then: what the stream still named was caught up before)."""
    kv.writer.insert(kv.table, {"id": 1, "name": "one"})
    assert kv.r.xlen(kv.stream) == 1
    cache = StoreCache(kv.writer_resolver, pool_size=1)
    out = ActivityEnvironment().run(AbortActivities(cache).abort_cleanup,
                                    AbortCleanupInput(spec=kv.spec, remove_state=False))
    assert out.log_entries_deleted == 1, out
    assert not kv.r.exists(kv.stream)


RELAY_SCRIPT = """
import json, sys
from activities.stores import StoreCache
from dualwrite.capture.store_side import store_side
from dualwrite.config import StoreResolver
from dualwrite.spec import MigrationSpec

spec = MigrationSpec.model_validate_json(sys.argv[1])
resolver = StoreResolver(config_file=sys.argv[2], environ=json.loads(sys.argv[3]))
rs = StoreCache(resolver, pool_size=1).relay_stores(spec)
side = store_side(spec)
side.consumer = "relay-killed"
side.drain_round(rs, "CUTOVER_WRITES", limit=100, max_seconds=5, stats=None, should_stop=lambda: False)
print("not killed")
"""


def test_a_relay_killed_by_sigkill_after_reading_loses_nothing(kv: Setup, tmp_path: Path) -> None:
    """A real relay process reads the stream and is SIGKILLed before it mirrors anything: its entries stay
    pending under its name, and the next relay reclaims them after the lease and applies them."""
    for k in range(1, 4):
        kv.writer.insert(kv.table, {"id": k, "name": f"n{k}"})
    control_file = tmp_path / "hooks.json"
    control_file.write_text(json.dumps({"relay.stream_after_read": {"action": "kill"}}))
    env = {**os.environ, "DUALWRITE_CHAOS_HOOKS": str(control_file),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    stores = {env_var_for("pgold"): kv.pg_url, env_var_for("kv"): kv.url}
    proc = subprocess.run([sys.executable, "-c", RELAY_SCRIPT, kv.spec.model_dump_json(), str(tmp_path / "dw.yaml"),
                           json.dumps(stores)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    pending = kv.r.xpending(kv.stream, so.GROUP)
    assert pending["pending"] == 3 and kv.pg() == {}  # read by the dead relay, nothing mirrored
    time.sleep(0.35)
    res = kv.relay(lease=0.3).drain_round(kv.rs, "CUTOVER_WRITES", limit=100, max_seconds=1, stats=None,
                                          should_stop=lambda: False)
    assert res.entries == 3, res
    assert kv.pg() == {1: "n1", 2: "n2", 3: "n3"}
    assert kv.r.xlen(kv.stream) == 0


def test_a_batch_whose_mirror_failed_is_retried_at_once_by_the_same_relay(kv: Setup, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for k in range(1, 4):
        kv.writer.insert(kv.table, {"id": k, "name": f"n{k}"})
    control_file = tmp_path / "hooks.json"
    control_file.write_text(json.dumps({"relay.stream_after_read": {"action": "fail", "times": 1}}))
    monkeypatch.setenv("DUALWRITE_CHAOS_HOOKS", str(control_file))
    side = kv.relay()  # the full 60 s lease: a retry must not wait for it
    with pytest.raises(Exception, match="chaos"):
        side.drain_round(kv.rs, "CUTOVER_WRITES", limit=100, max_seconds=1, stats=None, should_stop=lambda: False)
    assert kv.r.xpending(kv.stream, so.GROUP)["pending"] == 3 and kv.pg() == {}
    res = side.drain_round(kv.rs, "CUTOVER_WRITES", limit=100, max_seconds=1, stats=None, should_stop=lambda: False)
    assert res.entries == 3, res
    assert kv.pg() == {1: "n1", 2: "n2", 3: "n3"} and kv.r.xlen(kv.stream) == 0
