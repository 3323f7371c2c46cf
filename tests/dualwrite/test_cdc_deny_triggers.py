"""[T2-4] MariaDB's denied writes have no gap: re-denying replaces each trigger in one statement, and a
table counts as denied only while all three (insert, update, delete) refuse.

Every trigger statement is DDL that commits on its own: a DROP followed by a CREATE lets the application
write in between, and that write is one a mirror later overwrites. Re-denial happens at every phase entry.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import execute

from dualwrite import triggers
from dualwrite.config import StoreRef
from dualwrite.store import Store


@pytest.fixture
def maria(databases: Any) -> tuple[Store, Store]:
    from conftest import mysql_url

    replica = databases.store("deny_gap_my", mysql_url(databases.my_db("denygap")))
    triggers.mark_replica(replica)
    app = Store(StoreRef("deny_gap_my_app", replica.engine.url.render_as_string(hide_password=False)))
    databases.stores.append(app)
    return replica, app


def test_redenying_leaves_no_moment_in_which_the_application_can_write(maria: tuple[Store, Store],
                                                                        table_name: str) -> None:
    replica, app = maria
    execute(app, f"CREATE TABLE {table_name} (id BIGINT PRIMARY KEY, v VARCHAR(20))")
    triggers.deny_writes(replica, "gap", [table_name], "new")
    statements = triggers.deny_sql(replica, "gap", table_name, "new")
    assert not [s for s in statements if s.startswith("DROP TRIGGER")], "a drop before the create opens a gap"
    done = threading.Event()

    def redeny() -> None:
        try:
            for _ in range(15):
                triggers.deny_writes(replica, "gap", [table_name], "new")
        finally:
            done.set()

    t = threading.Thread(target=redeny)
    t.start()
    landed, n = 0, 0
    while not done.is_set():
        n += 1
        try:
            execute(app, f"INSERT INTO {table_name} VALUES ({n}, 'x')")
            landed += 1
        except Exception as exc:  # noqa: BLE001 - refused, as it must be
            assert "served by" in str(exc) or "denied" in str(exc).lower() or "45000" in str(exc), exc
    t.join()
    assert landed == 0, f"{landed} of {n} application writes landed while the table was re-denied"


def test_a_table_missing_one_of_its_deny_triggers_is_not_denied(maria: tuple[Store, Store],
                                                               table_name: str) -> None:
    replica, app = maria
    execute(app, f"CREATE TABLE {table_name} (id BIGINT PRIMARY KEY, v VARCHAR(20))")
    triggers.deny_writes(replica, "gap2", [table_name], "new")
    assert triggers.writes_denied(replica, "gap2", table_name)
    trig, _ = triggers._deny_names("gap2", table_name)
    execute(replica, f"DROP TRIGGER {trig}_d")  # by hand: deletes would land
    assert not triggers.writes_denied(replica, "gap2", table_name)
    triggers.deny_writes(replica, "gap2", [table_name], "new")
    assert triggers.writes_denied(replica, "gap2", table_name)
    triggers.allow_writes(replica, "gap2", [table_name])
    assert not triggers.writes_denied(replica, "gap2", table_name)
