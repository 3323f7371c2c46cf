"""Strategy ``cdc``: a column added to or dropped from a migrated table during the migration is seen in
the stream (pgoutput's Relation message, the binlog's table map) and stops the relay with a message naming
the table and the change, before anything is mirrored with the wrong columns; the position stays, so
nothing is lost once the operator has dealt with it."""

from __future__ import annotations

import pytest
from conftest import execute

from dualwrite import control
from dualwrite.cdc import binlog, capture, pg
from dualwrite.cdc.pg import TableKeys
from dualwrite.mapping import identity_mapping
from dualwrite.store import Store


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_a_column_added_on_the_source_stops_capture_with_a_clear_message(
        engine: str, cdc_pg_old: Store, cdc_my_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    old = cdc_pg_old if engine == "postgresql" else cdc_my_old
    migration = f"d-{table_name[-4:]}"
    for store in (old, cdc_pg_new):
        execute(store, f"CREATE TABLE {table_name} (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL, "
                       "legacy VARCHAR(10))")
    control.ensure_schema(old)
    capture.setup(old, old, migration, [table_name])
    mapping = identity_mapping(old.describe(table_name, refresh=True), cdc_pg_new.describe(table_name, refresh=True))
    tables = [TableKeys(table_name, ["id"], list(mapping.key_kinds),
                        columns=list(old.describe(table_name).columns))]

    def drain() -> int:
        return capture.drain_batch(old, cdc_pg_new, old, migration, tables, lambda _t: mapping,
                                   reverse=False).entries

    try:
        execute(old, f"INSERT INTO {table_name} VALUES (1, 'a', NULL)")
        assert drain() == 1
        execute(old, f"ALTER TABLE {table_name} ADD COLUMN email VARCHAR(100)",
                f"ALTER TABLE {table_name} DROP COLUMN legacy",
                f"INSERT INTO {table_name} VALUES (2, 'b', 'b@example.com')")
        where = pg.confirmed(old, migration) if engine == "postgresql" else binlog.load_position(old, migration, old)
        with pytest.raises(capture.SchemaChangedError) as err:
            drain()
        text = str(err.value)
        assert f"table {table_name} changed on store '{old.name}'" in text
        assert "column email added" in text and "column legacy dropped" in text
        assert "update the spec" in text
        after = pg.confirmed(old, migration) if engine == "postgresql" else binlog.load_position(old, migration, old)
        assert after == where, "nothing past the change was consumed"
    finally:
        capture.teardown(old, old, migration)
