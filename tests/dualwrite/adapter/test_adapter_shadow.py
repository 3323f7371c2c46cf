"""Shadow reads: the authoritative answer is served, the other store is compared field by field, and every
mismatch is reported with the exact field and values, classified; read-your-write races are re-checked
and not counted as drift."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from app.endpoints import scenario
from app.harness import Migration, make_migration
from structlog.testing import capture_logs

from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.store import Store


def quiet(w: DualWriter, timeout: float = 15.0) -> None:
    """Wait until every shadow comparison (and re-check) has reached its verdict."""
    deadline = time.monotonic() + timeout
    while w.shadow.in_flight() or w.scheduler.pending():
        assert time.monotonic() < deadline, "shadow comparisons did not finish"
        time.sleep(0.02)


def sql(store: Store, stmt: str, params: tuple[Any, ...] = ()) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(stmt.replace("%s", store.paramstyle), params)
        cur.close()
        conn.commit()


def mismatches(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "shadow_mismatch"]


@pytest.fixture
def shadow_mig(pg_old: Store, pg_new: Store) -> Iterator[Migration]:
    m = make_migration(pg_old, pg_new, "sync", options=AdapterOptions(
        background=False, phase_ttl=3600, recheck_delay=0.05, recheck_attempts=2, shadow_log_values=True))
    m.publish("SHADOW_READ")
    yield m
    m.close()


def test_mismatch_logs_carry_hashes_not_values_or_keys_by_default(pg_old: Store, pg_new: Store) -> None:
    """Keys (an e-mail, a name) and values are data: unless the operator asks, a mismatch line names the
    table and the column and carries short hashes, equal for equal values, so drift can still be followed."""
    m = make_migration(pg_old, pg_new, "sync", options=AdapterOptions(
        background=False, phase_ttl=3600, recheck_delay=0.05, recheck_attempts=2))
    try:
        m.publish("SHADOW_READ")
        w, t = m.writer, m.models.customers
        a = m.shop.signup("acme", "Ada Secretname", "ada.secret@example.com")
        b = m.shop.signup("acme", "Bob", "bob@example.com")
        sql(m.new, f"UPDATE {t} SET email = %s WHERE id IN (%s, %s)", ("eve.secret@example.com", a, b))
        with capture_logs() as logs:
            w.read(t, a)
            w.read(t, b)
            quiet(w)
        found = mismatches(logs)
        assert len(found) == 2, found
        text = repr(found)
        for secret in ("ada.secret@example.com", "eve.secret@example.com", "bob@example.com", "Secretname"):
            assert secret not in text
        for e in found:
            assert e["table"] == t and e["field"] == "email" and e["kind"] == "field_different"
            assert "old_value" not in e and "new_value" not in e and "entity_id" not in e
            assert len(e["new_hash"]) == 12 and e["old_hash"] != e["new_hash"]
        assert found[0]["new_hash"] == found[1]["new_hash"]  # equal values, equal hashes
        assert found[0]["entity_hash"] != found[1]["entity_hash"]
    finally:
        m.close()


def test_field_mismatch_reported_with_exact_field_and_values(shadow_mig: Migration) -> None:
    m, w, t = shadow_mig, shadow_mig.writer, shadow_mig.models.customers
    a = m.shop.signup("acme", "Ada", "ada@example.com")
    sql(m.new, f"UPDATE {t} SET name = %s, balance = %s WHERE id = %s", ("Eve", Decimal("9.99"), a))
    with capture_logs() as logs:
        row = w.read(t, a)  # Core API
        assert row is not None and row["name"] == "Ada"  # the authoritative answer
        quiet(w)
        assert m.shop.get_customer(a)["name"] == "Ada"  # ORM: the same, through the load hook
        quiet(w)
    found = mismatches(logs)
    assert len(found) == 4, found  # two fields, two reads
    by_field = {(e["field"], e["old_value"], e["new_value"]) for e in found}
    assert by_field == {("name", "Ada", "Eve"), ("balance", "0.00", "9.99")}
    for e in found:
        assert e["migration"] == m.name and e["table"] == t and e["entity_id"] == str(a)
        assert e["kind"] == "field_different" and e["log_level"] == "warning"
    snap = w.stats.snapshot()
    assert snap.count("shadow", "field_different") == 2
    assert snap.shadow_match_rate() == 0.0


def test_missing_and_extra_are_classified(shadow_mig: Migration) -> None:
    m, w, t = shadow_mig, shadow_mig.writer, shadow_mig.models.customers
    a = m.shop.signup("acme", "Gone")
    sql(m.new, f"DELETE FROM {t} WHERE id = %s", (a,))
    sql(m.new, f"INSERT INTO {t} (id, tenant, name, balance, active, created_at, version) "
               f"VALUES (-77, 'acme', 'ghost', 0, true, now(), 1)")
    with capture_logs() as logs:
        assert w.read(t, a) is not None
        assert w.read(t, -77) is None  # served by old, which does not have it
        quiet(w)
    kinds = {(e["kind"], e["entity_id"]) for e in mismatches(logs)}
    assert kinds == {("missing", str(a)), ("extra", "-77")}
    snap = w.stats.snapshot()
    assert snap.count("shadow", "missing") == 1 and snap.count("shadow", "extra") == 1


def test_cutover_reads_serves_new_and_compares_with_old(shadow_mig: Migration) -> None:
    m, w, t = shadow_mig, shadow_mig.writer, shadow_mig.models.customers
    m.publish("CUTOVER_READS")
    a = m.shop.signup("acme", "Newton")
    sql(m.old, f"UPDATE {t} SET email = %s WHERE id = %s", ("old@example.com", a))
    with capture_logs() as logs:
        assert w.read(t, a)["email"] is None  # served by new
        quiet(w)
    (e,) = mismatches(logs)
    assert (e["field"], e["old_value"], e["new_value"]) == ("email", "old@example.com", None)


def test_read_your_write_race_is_rechecked_not_counted(pg_old: Store, pg_new: Store) -> None:
    """outbox: a read right after a write finds the new store behind; the re-check after the relay ran
    finds them equal, so nothing is reported."""
    m = make_migration(pg_old, pg_new, "outbox", options=AdapterOptions(
        background=False, phase_ttl=3600, recheck_delay=0.3, recheck_attempts=2))
    try:
        m.publish("SHADOW_READ")
        t = m.models.customers
        with capture_logs() as logs:
            a = m.shop.signup("acme", "Racer")
            assert m.writer.read(t, a)["name"] == "Racer"
            time.sleep(0.05)
            assert m.row("new", t, a) is None  # not relayed yet: a mismatch right now
            m.relay()
            quiet(m.writer)
        assert mismatches(logs) == []
        snap = m.writer.stats.snapshot()
        assert snap.count("shadow", "match") == 1 and snap.count("shadow", "rechecked") == 1
        assert snap.count("shadow", "missing") == 0
    finally:
        m.close()


def test_ignore_rules_normalisers_and_sampling(pg_old: Store, pg_new: Store) -> None:
    prefix = f"a{secrets.token_hex(3)}"
    t = f"{prefix}_customers"
    opts = AdapterOptions(background=False, phase_ttl=3600, recheck_delay=0.02, sample_ratio=0.0,
                          ignore_fields={t: ["email"]}, normalizers={t: {"name": lambda v: str(v).lower()}})
    m = make_migration(pg_old, pg_new, "sync", options=opts, prefix=prefix)
    try:
        m.publish("SHADOW_READ")
        a = m.writer.insert(t, {"tenant": "x", "name": "Ada", "email": "a@x", "balance": 1, "active": True,
                                "created_at": "2025-01-01 00:00:00"})[0]
        sql(m.new, f"UPDATE {t} SET name = 'ADA', email = 'other' WHERE id = %s", (a,))
        with capture_logs() as logs:
            m.writer.read(t, a)  # sampling 0: nothing compared
            quiet(m.writer)
            assert m.writer.stats.snapshot().count("shadow") == 0
            m.publish("SHADOW_READ", overrides={"shadow_sample": 1.0})  # the control state's ratio wins
            m.writer.read(t, a)
            quiet(m.writer)
        assert mismatches(logs) == []  # email ignored, name compared case-insensitively
        assert m.writer.stats.snapshot().count("shadow", "match") == 1
    finally:
        m.close()


def test_no_false_positives_across_engines(my_old: Store, pg_new: Store) -> None:
    """MariaDB -> PostgreSQL: tinyint vs boolean, DECIMAL text, DATETIME(6) vs timestamp compare equal."""
    m = make_migration(my_old, pg_new, "sync", options=AdapterOptions(background=False, phase_ttl=3600,
                                                                      recheck_delay=0.02))
    try:
        m.publish("DUAL_WRITE")
        keys = scenario(m.shop, "cross")
        m.publish("SHADOW_READ")
        with capture_logs() as logs:
            for k in keys["customers"]:
                m.writer.read(m.models.customers, k)
                m.shop.get_customer(k)
            for k in keys["orders"]:
                m.writer.read(m.models.orders, k)
            m.shop.list_orders(keys["customers"][0])
            quiet(m.writer)
        assert mismatches(logs) == [], mismatches(logs)
        snap = m.writer.stats.snapshot()
        assert snap.count("shadow", "match") >= 8 and snap.shadow_match_rate() == 1.0
    finally:
        m.close()


def test_a_slow_other_store_is_counted_as_timeout(shadow_mig: Migration) -> None:
    m, w, t = shadow_mig, shadow_mig.writer, shadow_mig.models.customers
    a = m.shop.signup("acme", "Slow")
    w.shadow.options = type(w.shadow.options)(timeout=0.0)
    assert w.read(t, a) is not None
    quiet(w)
    assert w.stats.snapshot().count("shadow", "timeout") == 1

