"""Trigger capture (strategy ``triggers``) on PostgreSQL, MariaDB and SQLite, and the relay's core.

Triggers log the key of every insert, update (both keys when a row moves) and delete in the writing
transaction; writes of replica-marked stores (dualwrite's own) are not captured; the relay mirrors the log
in order and sends a key the target rejects to the repair queue instead of blocking the rest.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from app.harness import clone

from dualwrite import control, outbox, triggers
from dualwrite.mapping import identity_mapping
from dualwrite.relay import drain, drain_log_batch
from dualwrite.store import Store

DDL = {
    "postgresql": ["CREATE TABLE {t} (region varchar(10) NOT NULL, id bigint NOT NULL, v text, "
                   "version bigint NOT NULL, PRIMARY KEY (region, id))",
                   "CREATE TABLE {t}_ts (at timestamp(6) PRIMARY KEY, v text)"],
    "mysql": ["CREATE TABLE {t} (region VARCHAR(10) NOT NULL, id BIGINT NOT NULL, v TEXT, "
              "version BIGINT NOT NULL, PRIMARY KEY (region, id))",
              "CREATE TABLE {t}_ts (at DATETIME(6) PRIMARY KEY, v TEXT)"],
    "sqlite": ["CREATE TABLE {t} (region VARCHAR(10) NOT NULL, id INTEGER NOT NULL, v TEXT, "
               "version BIGINT NOT NULL, PRIMARY KEY (region, id))",
               "CREATE TABLE {t}_ts (at TIMESTAMP PRIMARY KEY, v TEXT)"],
}


def run(store: Store, *stmts: str, params: tuple[Any, ...] = ()) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for s in stmts:
            cur.execute(s.replace("%s", store.paramstyle), params) if params else cur.execute(s)
        cur.close()
        conn.commit()


def log_keys(store: Store, migration: str) -> list[tuple[str, list[Any]]]:
    with store.connect() as conn:
        entries = outbox.read_batch(conn, store, migration, log=outbox.CHANGELOG, limit=100, lock=False)
        conn.rollback()
    return [(e.table, e.key) for e in entries]


@pytest.mark.parametrize("source", ["pg_old", "my_old", "sqlite_old"])
def test_triggers_capture_every_change_and_skip_replica_writes(request: pytest.FixtureRequest, source: str,
                                                               table_name: str, pg_new: Store) -> None:
    store: Store = request.getfixturevalue(source)
    t = table_name
    run(store, *(d.format(t=t) for d in DDL[store.dialect.value]))
    run(pg_new, *(d.format(t=t) for d in DDL["postgresql"]))
    mig = f"trg-{t}"
    triggers.install_triggers(store, mig, t, ["region", "id"])
    triggers.install_triggers(store, mig, f"{t}_ts", ["at"])
    triggers.install_triggers(store, mig, t, ["region", "id"])  # idempotent
    assert triggers.installed(store, mig, t)
    run(store, f"INSERT INTO {t} VALUES ('eu', 1, 'a', 1), ('eu', 2, 'b', 1), ('us', -3, 'c', 1)",
        f"UPDATE {t} SET v = 'a2', version = 2 WHERE region = 'eu' AND id = 1",
        f"UPDATE {t} SET id = 20, version = 2 WHERE region = 'eu' AND id = 2",  # the row moves
        f"DELETE FROM {t} WHERE region = 'us'")
    at = dt.datetime(2025, 1, 2, 3, 4, 5, 678901)
    run(store, f"INSERT INTO {t}_ts VALUES (%s, 'x')", params=(at,))
    got = [(n, [dt.datetime.fromisoformat(k[0]).isoformat()] if n.endswith("_ts") else k)
           for n, k in log_keys(store, mig)]  # SQLite keeps the text its driver wrote (' ' not 'T')
    assert got == [(t, ["eu", 1]), (t, ["eu", 2]), (t, ["us", -3]), (t, ["eu", 1]), (t, ["eu", 2]),
                   (t, ["eu", 20]), (t, ["us", -3]), (f"{t}_ts", [at.isoformat()])]
    # the relay mirrors the log (decoding the keys with the mapping's key kinds)
    relay_src = clone(store)
    triggers.mark_replica(relay_src)
    maps = {t: identity_mapping(store.describe(t), pg_new.describe(t), version="version"),
            f"{t}_ts": identity_mapping(store.describe(f"{t}_ts"), pg_new.describe(f"{t}_ts"))}
    res = drain(relay_src, pg_new, mig, lambda name, _rev: maps[name], directions=("old",))
    assert res.entries == 8 and res.failed == 0
    with pg_new.connect() as conn:
        rows = conn.execute(f"SELECT region, id, v, version FROM {t} ORDER BY region, id").fetchall()
        ts = conn.execute(f"SELECT at FROM {t}_ts").fetchall()
        conn.rollback()
    assert rows == [("eu", 1, "a2", 2), ("eu", 20, "b", 2)]
    assert ts == [(at,)]
    assert log_keys(store, mig) == []
    # writes made by dualwrite itself (a replica-marked store) are not captured, except on SQLite
    run(relay_src, f"UPDATE {t} SET v = 'by-relay' WHERE region = 'eu' AND id = 1")
    assert len(log_keys(store, mig)) == (1 if store.dialect.value == "sqlite" else 0)
    triggers.remove_triggers(store, mig, t)
    assert not triggers.installed(store, mig, t)
    run(store, f"DELETE FROM {t}")
    assert len(log_keys(store, mig)) == (1 if store.dialect.value == "sqlite" else 0)
    relay_src.dispose()


def test_relay_sends_a_rejected_key_to_repair_and_goes_on(pg_old: Store, pg_new: Store, table_name: str) -> None:
    t = table_name
    run(pg_old, f"CREATE TABLE {t} (id bigint PRIMARY KEY, v text, version bigint NOT NULL)")
    run(pg_new, f"CREATE TABLE {t} (id bigint PRIMARY KEY, v text CHECK (length(v) < 10), version bigint NOT NULL)")
    outbox.ensure_log(pg_old)
    control.ensure_schema(pg_old)
    mig = f"poison-{t}"
    run(pg_old, f"INSERT INTO {t} VALUES (1, 'ok', 1), (2, 'too long for the target', 1), (3, 'ok', 1)")
    with pg_old.connect() as conn:
        conn.cursor().executemany(outbox.append_sql(pg_old),
                                  [(mig, t, json.dumps([k])) for k in (1, 2, 3)])
        conn.commit()
    mapping = identity_mapping(pg_old.describe(t), pg_new.describe(t), version="version")
    res = drain_log_batch(pg_old, pg_new, mig, lambda _n, _r: mapping, reverse=False, control_store=pg_old)
    assert (res.entries, res.mirrored, res.failed) == (3, 2, 1)
    assert res.errors and "too long" not in res.errors[0]  # no row values in messages
    assert control.repair_queue_depth(pg_old, mig) == 1
    assert outbox.log_depth(pg_old, mig)[0] == 0
    with pg_new.connect() as conn:
        assert conn.execute(f"SELECT id FROM {t} ORDER BY id").fetchall() == [(1,), (3,)]
        conn.rollback()
