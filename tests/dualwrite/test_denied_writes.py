"""Denied writes ([T2-1]): the store that lost authority refuses writes that bypass dualwrite.

An application that writes raw SQL (strategy ``triggers``) and keeps writing to the old store after write
cutover must get an error that says where the table lives now; dualwrite's own replica sessions (relay,
backfill, repair) still write. Real PostgreSQL, MariaDB and SQLite.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import execute, fetch_all

from dualwrite import triggers
from dualwrite.config import StoreRef
from dualwrite.store import Dialect, Store


def _app_store(store: Store) -> Store:
    """A second engine on the same database, as an application would open it (not a replica session)."""
    return Store(StoreRef(store.name + "_app", store.engine.url.render_as_string(hide_password=False)))


def _create(store: Store, table: str) -> None:
    execute(store, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, v VARCHAR(20))",
            f"INSERT INTO {table} VALUES (1, 'a')")


@pytest.fixture(params=["pg", "my", "sqlite"])
def stores(request: pytest.FixtureRequest, databases: Any, tmp_path: Any) -> tuple[Store, Store]:
    from conftest import mysql_url, pg_url

    if request.param == "pg":
        url = pg_url(databases.pg_db("deny"))
    elif request.param == "my":
        url = mysql_url(databases.my_db("deny"))
    else:
        url = f"sqlite:///{tmp_path / 'deny.db'}"
    replica = databases.store(f"deny_{request.param}", url)
    triggers.mark_replica(replica)
    app = _app_store(replica)
    databases.stores.append(app)
    return replica, app


def test_denied_table_refuses_application_writes_and_names_the_store(stores: tuple[Store, Store],
                                                                      table_name: str) -> None:
    replica, app = stores
    _create(app, table_name)
    triggers.deny_writes(replica, "m1", [table_name], "pgnew")
    assert triggers.writes_denied(replica, "m1", table_name)
    for sql in (f"INSERT INTO {table_name} VALUES (2, 'b')", f"UPDATE {table_name} SET v = 'x' WHERE id = 1",
                f"DELETE FROM {table_name} WHERE id = 1"):
        with pytest.raises(Exception) as err:  # noqa: PT011 - each driver raises its own class; the text is checked
            execute(app, sql)
        text = str(err.value)
        if app.dialect is Dialect.SQLITE:
            assert triggers.SQLITE_REPLICA_FN in text  # SQLite: the write cannot even be prepared
        else:
            assert "refused here" in text and "'pgnew'" in text, text
    assert fetch_all(app, f"SELECT id, v FROM {table_name}") == [(1, "a")]
    # every refusal is counted (a sequence: its increments survive the refused statement's rollback)
    expected = None if app.dialect is Dialect.SQLITE else 3
    assert triggers.refused_writes(replica, "m1", table_name) == expected
    # dualwrite's own sessions (the relay's mirror into the non-authoritative store) still write
    execute(replica, f"UPDATE {table_name} SET v = 'mirrored' WHERE id = 1",
            f"INSERT INTO {table_name} VALUES (3, 'c')")
    assert sorted(fetch_all(app, f"SELECT id, v FROM {table_name}")) == [(1, "mirrored"), (3, "c")]
    # idempotent, and lifted again
    triggers.deny_writes(replica, "m1", [table_name], "pgnew")
    triggers.allow_writes(replica, "m1", [table_name])
    triggers.allow_writes(replica, "m1", [table_name])
    assert not triggers.writes_denied(replica, "m1", table_name)
    if app.dialect is Dialect.SQLITE:
        app.dispose()  # a SQLite connection re-reads the schema only when a statement gets as far as running
    execute(app, f"INSERT INTO {table_name} VALUES (4, 'd')")
    assert len(fetch_all(app, f"SELECT id FROM {table_name}")) == 3
    triggers.drop_refusal_counters(replica, "m1", [table_name])
    assert triggers.refused_writes(replica, "m1", table_name) is None


def test_postgres_truncate_is_refused_too(pg_old: Store, table_name: str) -> None:
    app = _app_store(pg_old)
    _create(app, table_name)
    replica = _app_store(pg_old)
    triggers.mark_replica(replica)
    triggers.deny_writes(replica, "m1", [table_name], "pgnew")
    with pytest.raises(Exception, match="refused here"):
        execute(app, f"TRUNCATE {table_name}")
    assert fetch_all(app, f"SELECT COUNT(*) FROM {table_name}") == [(1,)]
    triggers.allow_writes(replica, "m1", [table_name])
    app.dispose()
    replica.dispose()


def test_status_says_where_an_unchanged_application_must_write() -> None:
    from starter.render import unchanged_application_note
    from workflows.models import MigrationStatus, Phase

    def note(phase: Phase, strategy: str = "triggers") -> str:
        return unchanged_application_note(MigrationStatus(name="m", phase=phase, paused=False, mode="manual",
                                                          strategy=strategy, epoch=1))

    assert "OLD store" in note(Phase.CUTOVER_READS) and "refuses" in note(Phase.CUTOVER_READS)
    assert "must write to the NEW store" in note(Phase.CUTOVER_WRITES)
    assert note(Phase.CUTOVER_WRITES, "sync") == "" and note(Phase.DONE) == ""
