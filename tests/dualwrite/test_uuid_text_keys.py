"""A CHAR(36) key on the old store that the new store types as ``uuid``, mirrored and verified both ways.

The chaos run found it ([T2-1]): after write cutover, the reverse mirror wrote the new store's uuid keys into
the old CHAR(36) column as 32 hex digits without dashes (psycopg's text form of a uuid), creating rows under
other keys, and the reverse verification failed with ``operator does not exist: character <= uuid``.
"""

from __future__ import annotations

import uuid

from conftest import execute, fetch_all

from dualwrite.mapping import identity_mapping
from dualwrite.mirror import mirror_keys
from dualwrite.repair import repair
from dualwrite.store import Store
from dualwrite.verify import verify_range


def test_uuid_keys_cross_into_a_char36_column_unchanged(pg_old: Store, pg_new: Store, table_name: str) -> None:
    execute(pg_old, f"CREATE TABLE {table_name} (id char(36) PRIMARY KEY, name text, version bigint)")
    execute(pg_new, f"CREATE TABLE {table_name} (id uuid PRIMARY KEY, name text, version bigint)")
    keys = [str(uuid.UUID(int=i * 7919)) for i in range(1, 301)]
    with pg_new.connect() as conn:
        conn.cursor().executemany(f"INSERT INTO {table_name} VALUES (%s, %s, 1)", [(k, f"n{k[:4]}") for k in keys])
        conn.commit()
    forward = identity_mapping(pg_old.describe(table_name), pg_new.describe(table_name), version="version")
    back = forward.reversed()

    # new -> old, as after write cutover: the keys arrive as they are, with their dashes
    mirror_keys(pg_new, pg_old, back, [(uuid.UUID(k),) for k in keys[:100]])
    assert sorted(r[0] for r in fetch_all(pg_old, f"SELECT id FROM {table_name}")) == sorted(keys[:100])

    # a chunked reverse verification compares the rest and its repair brings them over, keys intact
    report = verify_range(pg_new, pg_old, back, chunk_size=50)
    assert report.missing == 200, report.summary()
    after = repair(pg_new, pg_old, back, report).after
    assert after.ok, after.summary()
    assert sorted(r[0] for r in fetch_all(pg_old, f"SELECT id FROM {table_name}")) == sorted(keys)
