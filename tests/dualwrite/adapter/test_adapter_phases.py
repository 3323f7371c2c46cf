"""The small app in every phase and every strategy, PostgreSQL -> PostgreSQL and MariaDB -> PostgreSQL.

The application's code is plain ORM; dualwrite is installed on its sessionmaker. In every phase the
authoritative store holds the app's writes, the other store follows exactly when the phase table of docs/architecture.md
says it is mirrored (sync: right away; outbox / triggers: once the relay has drained), and is left alone when it is
not. Reads are served from the store the phase names.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from app.endpoints import scenario
from app.harness import PHASES, Migration, make_migration

from dualwrite.adapter.phase import RULES, Side
from dualwrite.store import Store

PAIRS = ["pg_old>pg_new", "my_old>pg_new"]
STRATEGIES = ["sync", "outbox", "triggers"]


@pytest.fixture(scope="module", params=[(p, s) for p in PAIRS for s in STRATEGIES],
                ids=lambda ps: f"{ps[0].replace('>', '-')}-{ps[1]}")
def mig(request: pytest.FixtureRequest) -> Iterator[Migration]:
    pair, strategy = request.param
    old, new = (request.getfixturevalue(n) for n in pair.split(">"))
    m = make_migration(old, new, strategy)
    yield m
    m.close()


def _probe_reads(m: Migration, side: Side) -> None:
    """A row that exists only in ``side``: the app sees it iff its reads are served from there."""
    store: Store = m.writer.data[side]
    t = m.models.customers
    probe_id = -1000 - m.epoch  # negative: never an id the stores generate
    ph = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"INSERT INTO {t} (id, tenant, name, balance, active, created_at, version) "
                    f"VALUES ({ph}, 'probe', 'probe', 0, {'true' if store.dialect.value == 'postgresql' else 1}, "
                    f"{ph}, 1)", (probe_id, dt.datetime(2025, 1, 1)))
        cur.close()
        conn.commit()
    try:
        assert m.shop.get_customer(probe_id) is not None, f"reads are not served from {side.value}"
    finally:
        with store.connect() as conn:
            cur = conn.cursor()
            cur.execute(f"DELETE FROM {t} WHERE id = {ph}", (probe_id,))
            cur.close()
            conn.commit()


@pytest.mark.parametrize("phase", PHASES)
def test_the_other_store_follows_per_phase(mig: Migration, phase: str) -> None:
    rules = RULES[phase]
    mig.publish(phase)
    keys = scenario(mig.shop, tenant=f"t-{phase.lower()}")
    if rules.mirror_to is not None and mig.spec.strategy.value != "sync":
        res = mig.relay()
        assert res.entries > 0 and res.failed == 0
    elif mig.spec.strategy.value == "triggers" and rules.authoritative is Side.NEW:
        mig.relay(discard_new=True)  # the old store is retired: captured keys are dropped, not mirrored

    auth, other = rules.authoritative.value, rules.authoritative.other.value
    cust, orders = mig.models.customers, mig.models.orders
    a, b, c = keys["customers"]
    o1, o2, o3, o4 = keys["orders"]
    # the authoritative store has the app's writes
    ada = mig.row(auth, cust, a)
    assert ada is not None and ada["name"] == "Ada L." and ada["version"] >= 4
    assert mig.row(auth, cust, c) is None and mig.row(auth, orders, o2) is None and mig.row(auth, orders, o4) is None
    shipped = mig.row(auth, orders, o1)
    assert shipped is not None and shipped["status"] == "shipped"
    # discounted by the ORM bulk UPDATE (only the open order of Bob)
    o3row = mig.row(auth, orders, o3)
    assert o3row is not None and str(o3row["total"]) == "6.99"
    if rules.mirror_to is not None:
        assert mig.diffs(cust, keys["customers"]) == []
        assert mig.diffs(orders, keys["orders"]) == []
    else:
        assert all(mig.row(other, cust, k) is None for k in keys["customers"])
        assert all(mig.row(other, orders, k) is None for k in keys["orders"])
    # the audit table is not migrated: it stays in the old store whatever the phase
    with mig.old.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {mig.models.audit} WHERE tenant = {mig.old.paramstyle}",
                    (f"t-{phase.lower()}",))
        assert cur.fetchone()[0] == 4
        cur.close()
        conn.rollback()
    if mig.spec.strategy.value != "sync":
        time.sleep(mig.writer.options.read_your_writes_seconds)  # until then it reads its own writes
    _probe_reads(mig, rules.reads_from)
    stats: Any = mig.writer.stats.snapshot()
    assert stats.count("secondary", "failure:*") == 0
