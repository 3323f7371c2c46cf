"""[T2-1] The adapter's sync path does not trust the application's version column.

The fast path writes the committed row image with a version-guarded upsert. When the guard refuses it the
target holds a row whose version is not older: a newer write, or a stale row with a higher version (a key
deleted and re-inserted with its version restarting, an application that set its version backwards, two
ORM processes that bumped the same version). The adapter then re-reads the authoritative row under its lock.
Before, the refused image was dropped silently and the stores diverged until a verification.
"""

from __future__ import annotations

import pytest
from app.harness import make_migration
from conftest import execute


# a MariaDB target cannot tell a refused image from a written one: there the adapter always re-reads
@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new", "pg_old>my_new"])
def test_a_refused_fast_path_image_is_mirrored_from_the_authoritative_row(request: pytest.FixtureRequest,
                                                                         pair: str) -> None:
    old, new = (request.getfixturevalue(n) for n in pair.split(">"))
    m = make_migration(old, new, "sync")
    try:
        m.publish("DUAL_WRITE")
        table = m.models.customers
        a = m.shop.signup("t1", "Ada")
        b = m.shop.signup("t1", "Bob")
        assert m.diffs(table, [a, b]) == []

        # the new store holds a stale row with a higher version (its delete and re-insert never arrived)
        execute(new, f"UPDATE {table} SET name = 'stale', version = 99 WHERE id = {a}")
        m.shop.rename(a, "Ada Lovelace")
        assert m.row("new", table, a)["name"] == "Ada Lovelace"  # type: ignore[index]

        # an application that sets its version backwards
        with m.sessions() as s, s.begin():
            c = s.get(m.models.Customer, b)
            assert c is not None
            c.name, c.version = "Bob Backwards", 0
        assert m.row("old", table, b)["version"] == 0  # type: ignore[index]
        assert m.diffs(table, [a, b]) == []
    finally:
        m.close()

