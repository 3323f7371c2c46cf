"""Verification with the ``async`` strategy: keys still queued in a live writer are late, not lost.

The verification activity (run in Temporal's activity environment, on real PostgreSQL) first waits until every
live async writer's watermark has passed its start, and waits again before it counts or repairs a difference,
so under live async traffic it reports 0 differences and repairs nothing. A writer killed with SIGKILL stops
heart-beating: it is not waited for, and its lost tail is found and repaired. A repair is refused once
authority has moved or while the write fence is up (it would copy in the old direction).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from app.endpoints import NOW
from app.harness import Migration, make_migration
from temporalio.testing import ActivityEnvironment

from activities.stores import StoreCache
from activities.verify import VerifyActivities
from dualwrite import control, hooks, relay, watermark
from dualwrite.adapter import AdapterOptions
from dualwrite.config import StoreResolver, env_var_for
from dualwrite.store import Store
from workflows.models import TableRef, TableVerification, VerifyTableInput

TESTS = Path(__file__).resolve().parents[2]


def _verify(m: Migration, table: str, *, repair: bool, reverse: bool = False) -> TableVerification:
    env = {env_var_for(s.name): s.ref.url for s in (m.old, m.new)}
    stores = StoreCache(StoreResolver(environ=env))
    inp = VerifyTableInput(table=TableRef(spec=m.spec, source=table, reverse=reverse), repair=repair)
    out: TableVerification = ActivityEnvironment().run(VerifyActivities(stores).verify_table, inp)
    return out


def _row(i: int, tenant: str = "v") -> dict[str, object]:
    return {"tenant": tenant, "name": f"n{i}", "balance": i, "active": True, "created_at": NOW, "version": 1}


@pytest.fixture
def chaos_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "hooks.json"
    path.write_text("{}")
    monkeypatch.setenv(hooks.ENV, str(path))
    yield path


@pytest.mark.parametrize("repair", [False, True])
def test_verification_during_a_live_async_writer_finds_nothing(pg_old: Store, pg_new: Store, chaos_file: Path,
                                                               repair: bool) -> None:
    """Every mirror batch of the writer is held 1.5 s before its commit, and it keeps writing while the
    verification compares: without the wait a compare-only gate counts the queued keys as differences and a
    repair rewrites them."""
    m = make_migration(pg_old, pg_new, "async", options=AdapterOptions(background=False, phase_ttl=0.05))
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        i = 0
        while not stop.is_set():
            written.append(m.writer.insert(m.models.customers, _row(i))[0])
            i += 1
            time.sleep(0.01)

    try:
        m.publish("DUAL_WRITE")
        for i in range(20):
            m.writer.insert(m.models.customers, _row(i))
        assert m.writer.lagged is not None and m.writer.lagged.flush(10)
        chaos_file.write_text(json.dumps({"mirror.before_commit": {"action": "delay", "seconds": 1.5}}))
        time.sleep(0.3)  # hook rules are re-read at most every 0.2 s
        t = threading.Thread(target=write)
        t.start()
        time.sleep(0.5)
        assert m.writer.lagged.depth()[0] > 0  # acknowledged, still queued
        try:
            out = _verify(m, m.models.customers, repair=repair)
        finally:
            stop.set()
            t.join()
        chaos_file.write_text("{}")
        assert out.ok, out
        assert (out.unresolved, out.repaired) == (0, 0), out
        # what the comparison saw differ was written after it started and still queued: counted in flight
        assert out.in_flight == out.missing + out.extra + out.field_different, out
        assert m.writer.lagged.flush(30)
        assert m.diffs(m.models.customers, written) == []
    finally:
        stop.set()
        m.close()


def test_killed_async_writer_lost_tail_is_found_and_repaired(pg_old: Store, pg_new: Store, tmp_path: Path) -> None:
    m = make_migration(pg_old, pg_new, "async", options=AdapterOptions(background=False, phase_ttl=0.05))
    hooks_file = tmp_path / "child-hooks.json"
    hooks_file.write_text(json.dumps({"mirror.before_commit": {"action": "pause", "seconds": 30}}))
    env = {**os.environ, hooks.ENV: str(hooks_file),
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    prefix = m.models.customers.removesuffix("_customers")
    try:
        m.publish("DUAL_WRITE")
        m.writer.insert(m.models.customers, _row(0))  # a row both stores have
        child = subprocess.Popen([sys.executable, str(TESTS / "app" / "async_crash_child.py"), prefix,
                                  pg_old.ref.url, pg_new.ref.url, "5"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            assert line.startswith("COMMITTED "), (line, child.stderr.read() if child.poll() is not None else "")
            lost = [int(x) for x in line.split()[1:]]
        finally:
            child.kill()  # SIGKILL: its queue (all five keys) dies with it
            child.wait()
        assert all(m.row("old", m.models.customers, k) is not None for k in lost)
        assert all(m.row("new", m.models.customers, k) is None for k in lost)
        started = time.monotonic()
        out = _verify(m, m.models.customers, repair=True)
        took = time.monotonic() - started
        assert out.ok and out.missing == 5 and out.repaired == 5, out
        assert took < 15, took  # the dead writer is not waited for past its liveness window
        assert m.diffs(m.models.customers, lost) == []
        marks = watermark.marks(m.control, m.name, watermark.db_now(m.control), live_seconds=5)
        dead = [mk for mk in marks if not mk.live]
        assert len(dead) == 1 and not dead[0].passed, marks  # the child's row: stale, stuck before its writes
    finally:
        m.close()


def _unmirrored_row(m: Migration) -> int:
    """A row only the old store has (written around the adapter)."""
    t = m.models.Customer.__table__
    with m.old.engine.begin() as conn:
        return int(conn.execute(sa.insert(t).values(**_row(7, "x")).returning(t.c.id)).scalar_one())


@pytest.mark.parametrize("phase, overrides", [("CUTOVER_WRITES", None),
                                              ("CUTOVER_READS", {"fence": {"all": True}})])
def test_repair_is_refused_once_authority_moved_or_fenced(pg_old: Store, pg_new: Store, phase: str,
                                                          overrides: dict[str, object] | None) -> None:
    m = make_migration(pg_old, pg_new, "async", options=AdapterOptions(background=False, phase_ttl=0.05))
    try:
        m.publish("DUAL_WRITE")
        m.writer.insert(m.models.customers, _row(0))
        k = _unmirrored_row(m)
        m.publish(phase, overrides)
        out = _verify(m, m.models.customers, repair=True)  # old -> new: the direction before the flip
        assert not out.ok and out.repaired == 0 and out.missing == 1
        assert out.error is not None and "repair refused" in out.error, out.error
        assert m.row("new", m.models.customers, k) is None  # nothing copied in the old direction
        m.publish("CUTOVER_READS")  # authority back on the old store, no fence: the repair goes ahead
        out = _verify(m, m.models.customers, repair=True)
        assert out.ok and out.repaired == 1, out
    finally:
        m.close()


def test_repair_is_refused_when_authority_moves_while_it_waits(pg_old: Store, pg_new: Store,
                                                               chaos_file: Path) -> None:
    """The flip lands after the verification compared and before it repairs: the guard re-reads the state."""
    m = make_migration(pg_old, pg_new, "sync", options=AdapterOptions(background=False, phase_ttl=0.05))
    try:
        m.publish("DUAL_WRITE")
        m.writer.insert(m.models.customers, _row(0))
        k = _unmirrored_row(m)
        chaos_file.write_text(json.dumps({"verify.before_repair": {"action": "pause", "seconds": 2}}))
        time.sleep(0.3)  # hook rules are re-read at most every 0.2 s
        flip = threading.Timer(0.5, m.publish, ("CUTOVER_WRITES",))
        flip.start()
        try:
            out = _verify(m, m.models.customers, repair=True)
        finally:
            flip.join()
        assert not out.ok and out.repaired == 0 and out.error is not None and "authority moved" in out.error, out
        assert m.row("new", m.models.customers, k) is None
    finally:
        m.close()


def test_repair_queue_batch_is_refused_when_authority_moved_since_it_was_read(pg_old: Store, pg_new: Store) -> None:
    """The drain reads the authority, then mirrors a batch that may take seconds (a store that hangs): a batch
    whose authority is stale by then must not land in the old direction; its keys stay queued."""
    m = make_migration(pg_old, pg_new, "async", options=AdapterOptions(background=False, phase_ttl=0.05))
    try:
        m.publish("DUAL_WRITE")
        k = _unmirrored_row(m)
        control.enqueue_repair(m.control, m.name, m.models.customers, [(k,)], reason="test", authoritative="old")
        authority = relay.repair_authority(m.control, m.spec)
        assert authority == "old"
        m.publish("CUTOVER_WRITES")  # the flip lands between the read and the batch
        entries = control.due_repairs(m.control, m.name)
        res = relay.repair_batch(m.control, m.old, m.new, m.name, m.writer.mapping_for, entries, authority=authority)
        assert res.mirrored == 0 and m.row("new", m.models.customers, k) is None
        assert control.repair_queue_depth(m.control, m.name) == 1  # kept for the drain in the new direction
        res = relay.repair_batch(m.control, m.old, m.new, m.name, m.writer.mapping_for, entries,
                                 authority=relay.repair_authority(m.control, m.spec))
        assert res.mirrored == 1 and control.repair_queue_depth(m.control, m.name) == 0
        assert m.row("old", m.models.customers, k) is None  # levelled from the authority now: the new store
    finally:
        m.close()
