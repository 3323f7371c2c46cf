"""Gates a migration can actually pass: empty tables allowed by the spec, and worker-produced evidence for
the ``triggers`` strategy (no adapter in the application, so the worker samples both stores itself).

Real Temporal dev server, the session's in-process worker, real PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import threading
from typing import Any

import pytest
from conftest import MigrationDriver, create_pg, fast_tuning, spec_for
from temporalio.client import Client

from dualwrite.store import Store
from workflows.relay import relay_workflow_id


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def _empty_table_migration(dw: MigrationDriver, pg_old: Store, pg_new: Store, table: str,
                                 allow_empty: bool) -> tuple[Any, Any]:
    """An empty table through BACKFILL (manual mode); returns the settled status and a dry-run advance."""
    from dualwrite.spec import MigrationSpec

    create_pg(pg_old, table, 0)
    create_pg(pg_new, table, 0)
    name = _name("empty")
    doc = spec_for(name, "pgold", "pgnew", table).model_dump(mode="json", by_alias=True, exclude_none=True)
    if allow_empty:
        doc["tables"][0]["allow_empty"] = True
    handle = await dw.start(MigrationSpec.model_validate(doc))
    try:
        st = await dw.advance_to(handle, "SHADOW_READ")
        dry = await dw.update(handle, "advance", by="pytest", reason="dry run", dry_run=True)
        return st, dry
    finally:
        with contextlib.suppress(Exception):
            await handle.terminate("test over")


async def test_empty_table_with_allow_empty_passes_verification_and_the_gate(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    st, dry = await _empty_table_migration(dw, pg_old, pg_new, table_name, allow_empty=True)
    v = st.last_verification
    assert v is not None and v.ok, v
    assert [t.error for t in v.tables] == [""], v.tables
    assert dry.gate is not None and dry.gate.passed, dry.gate.reasons if dry.gate else dry.message


async def test_empty_table_without_allow_empty_fails_and_names_allow_empty(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    st, dry = await _empty_table_migration(dw, pg_old, pg_new, table_name, allow_empty=False)
    v = st.last_verification
    assert v is not None and not v.ok
    # the message a user sees says what to write in the spec, not a Python keyword argument
    assert "allow_empty: true" in v.tables[0].error and table_name in v.tables[0].error, v.tables[0].error
    assert dry.gate is not None and not dry.gate.passed
    assert any("allow_empty: true" in r for r in dry.gate.reasons), dry.gate.reasons


class RawSqlWriter:
    """An application that cannot be changed: plain SQL on the old store, no adapter, no outbox. Only the
    capture triggers see its writes."""

    def __init__(self, store: Store, table: str) -> None:
        self.store, self.table = store, table
        self.stop = threading.Event()
        self.writes = 0
        self.errors: list[str] = []

    def run(self) -> None:
        rnd = random.Random(5)
        next_id = 5_000_000
        while not self.stop.is_set():
            try:
                with self.store.connect() as conn:
                    cur = conn.cursor()
                    for _ in range(10):
                        if rnd.random() < 0.3:
                            next_id += 1
                            cur.execute(f"INSERT INTO {self.table} VALUES (%s, %s, 2.5, '2025-01-01', 1)",
                                        (next_id, f"raw-{next_id}"))
                        else:
                            cur.execute(f"UPDATE {self.table} SET name = %s, version = version + 1 WHERE id = %s",
                                        (f"raw-upd-{self.writes}", rnd.randint(1, 2000)))
                        self.writes += 1
                    cur.close()
                    conn.commit()
            except Exception as exc:  # noqa: BLE001 - recorded, the test asserts none happened
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stop.wait(0.02)


async def test_triggers_in_auto_mode_reaches_cutover_reads_on_worker_evidence(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 2000)
    create_pg(pg_new, table_name, 0)
    name = _name("trigauto")
    # the spec's default sample minimums: nothing in the application produces a single sample
    spec = spec_for(name, "pgold", "pgnew", table_name, strategy="triggers", mode="auto",
                    gates={"min_shadow_samples": 1000, "min_write_samples": 1000, "min_latency_samples": 1000})
    writer = RawSqlWriter(pg_old, table_name)
    thread = threading.Thread(target=writer.run, daemon=True)
    handle = await dw.start(spec, tuning=fast_tuning())
    try:
        await dw.wait(handle, lambda s: s.phase != "PREPARE", "DUAL_WRITE", timeout=60)
        thread.start()
        st = await dw.wait(handle, lambda s: any(t.to_phase == "CUTOVER_READS" for t in s.transitions),
                           "CUTOVER_READS reached by itself", timeout=180)
        entered = next(t for t in st.transitions if t.to_phase == "CUTOVER_READS")
        assert (entered.from_phase, entered.kind, entered.gate_passed) == ("SHADOW_READ", "auto", True), entered
        gate = next(g for g in await _gate_results(temporal_client, handle.id) if g["to"] == "CUTOVER_READS"
                    and g["passed"])
        metrics = {m["name"]: m for m in gate["metrics"]}
        shadow = metrics["shadow_match_rate"]
        assert shadow["verdict"] == "pass" and shadow["samples"] >= 1000, shadow
        assert shadow["source"] == "worker shadow sample" and "worker shadow sample" in shadow["detail"], shadow
        writes = metrics["secondary_write_success_rate"]
        assert writes["verdict"] == "pass" and writes["samples"] >= 1000 and writes["source"] == "relay", writes
        latency = metrics["p99_latency_impact"]
        assert latency["verdict"] == "n/a" and "triggers" in latency["detail"], latency
        assert metrics["relay_lag_seconds"]["verdict"] == "pass", metrics["relay_lag_seconds"]
        assert writer.errors == [] and writer.writes > 0
    finally:
        writer.stop.set()
        if thread.is_alive():
            thread.join(timeout=10)
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
        with contextlib.suppress(Exception):
            await temporal_client.get_workflow_handle(relay_workflow_id(name)).terminate("test over")


async def _gate_results(client: Client, workflow_id: str) -> list[dict[str, Any]]:
    """Every evaluate_gate result recorded in the migration's history (the evidence an operator reads)."""
    from conftest import migration_histories

    out = []
    for h in await migration_histories(client, workflow_id):
        scheduled: dict[int, str] = {}
        for e in h.events:
            if e.HasField("activity_task_scheduled_event_attributes"):
                scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
            elif e.HasField("activity_task_completed_event_attributes"):
                a = e.activity_task_completed_event_attributes
                if scheduled.get(a.scheduled_event_id) == "evaluate_gate":
                    out.append(json.loads(a.result.payloads[0].data))
    return out


def test_worker_sample_counts_what_differs_and_reaches_its_size_on_skewed_keys(
        pg_old: Store, pg_new: Store, table_name: str) -> None:
    """The sampler is no rubber stamp: rows changed behind the migration's back on the new store are counted
    as mismatches, and ids that jump by millions still yield the sample size asked for."""
    from conftest import execute

    from dualwrite.mapping import identity_mapping
    from dualwrite.sample import random_keys, sample_table

    create_pg(pg_old, table_name, 300)
    create_pg(pg_new, table_name, 300)
    for store in (pg_old, pg_new):
        execute(store, f"INSERT INTO {table_name} SELECT g, 'far-' || g, 1.0, timestamp '2024-01-01', 1 "
                       "FROM generate_series(7000001, 7000200) g")
    execute(pg_new, f"UPDATE {table_name} SET name = 'drifted' WHERE id % 5 = 0")  # 60 + 40 rows
    mapping = identity_mapping(pg_old.describe(table_name, refresh=True), pg_new.describe(table_name, refresh=True))
    rng = random.Random(1)
    assert len(set(random_keys(pg_old, mapping, 400, rng))) == 400
    res = sample_table(pg_old, pg_new, mapping, "no-such-migration", recent=0, random_n=500,
                       pending=lambda: set(), rng=rng)
    assert (res.compared, res.mismatch, res.match, res.in_flight) == (500, {"field_different": 100}, 400, 0)
    assert not res.exhaustive
    # a sample larger than the table compares every row once, and says so
    res = sample_table(pg_old, pg_new, mapping, "no-such-migration", recent=0, random_n=2000,
                       pending=lambda: set(), rng=rng)
    assert (res.compared, res.exhaustive) == (500, True)


def test_a_table_smaller_than_the_sample_is_enough_evidence_once_every_row_was_compared() -> None:
    from dualwrite.gates import TrafficFacts, shadow_match_metric
    from dualwrite.spec import Gates

    whole = shadow_match_metric(TrafficFacts(sampled_match=50, sampled_exhaustive=1), Gates(), "triggers")
    assert whole.verdict == "pass" and "every row of every table" in whole.detail, whole
    partial = shadow_match_metric(TrafficFacts(sampled_match=50), Gates(), "triggers")
    assert partial.verdict == "not-yet", partial
    drift = shadow_match_metric(TrafficFacts(sampled_match=49, sampled_mismatch={"missing": 1}, sampled_exhaustive=1),
                                Gates(), "triggers")
    assert drift.verdict == "fail", drift


def test_check_says_which_evidence_the_strategy_provides_and_points_to_allow_empty(
        tmp_path: Any, pg_old: Store, pg_new: Store, table_name: str) -> None:
    from typer.testing import CliRunner

    from starter.cli import _register, app

    _register()
    create_pg(pg_old, table_name, 0)
    create_pg(pg_new, table_name, 0)
    env = {"DUALWRITE_CONFIG": "", "DUALWRITE_STORE_PGOLD": pg_old.ref.url, "DUALWRITE_STORE_PGNEW": pg_new.ref.url}

    def check(strategy: str, allow_empty: bool, *args: str) -> str:
        spec = tmp_path / f"{strategy}-{allow_empty}.yaml"
        spec.write_text(f"name: ev\nold: pgold\nnew: pgnew\nstrategy: {strategy}\ntables:\n"
                        f"  - source: {table_name}\n    allow_empty: {'true' if allow_empty else 'false'}\n")
        result = CliRunner().invoke(app, ["check", str(spec), *args], env=env)
        assert result.exit_code == 0, result.output
        return str(result.stdout)  # stderr carries notes (e.g. Temporal not reached)

    out = check("triggers", allow_empty=False)
    assert "gate evidence with strategy triggers:" in out, out
    assert "shadow_match_rate: the worker's shadow samples" in out
    assert "p99_latency_impact: not applicable" in out
    assert f"{table_name} is empty" in out and "allow_empty: true" in out, out
    assert out.splitlines()[-1] == "Nothing was written."

    doc = json.loads(check("triggers", False, "--json"))
    assert doc["gate_evidence"]["strategy"] == "triggers"
    assert doc["gate_evidence"]["p99_latency_impact"].startswith("not applicable")
    assert len(doc["notes"]) == 1 and "allow_empty: true" in doc["notes"][0]

    out = check("sync", allow_empty=True)
    assert "secondary_write_success_rate: the application adapters' in-line secondary writes" in out, out
    assert "allow_empty" not in out, out


async def test_triggers_rollback_trigger_trips_on_worker_samples(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str) -> None:
    """In CUTOVER_READS with triggers, rows that drift on the new store (behind the capture's back) trip the
    shadow-mismatch rollback trigger on the worker's samples: the migration steps back by itself."""
    from conftest import execute

    from dualwrite import triggers
    from dualwrite.config import StoreRef

    create_pg(pg_old, table_name, 1000)
    create_pg(pg_new, table_name, 0)
    name = _name("trigrb")
    spec = spec_for(name, "pgold", "pgnew", table_name, strategy="triggers",
                    rollback_triggers={"check_seconds": 1.0, "min_shadow_samples": 100})
    handle = await dw.start(spec)
    try:
        await dw.advance_to(handle, "CUTOVER_READS")
        sneaky = Store(StoreRef("sneaky", pg_new.ref.url))
        triggers.mark_replica(sneaky)  # a write the capture does not see: drift, not a change to mirror
        execute(sneaky, f"UPDATE {table_name} SET name = 'drifted' WHERE id % 2 = 0")
        sneaky.dispose()
        st = await dw.wait(handle, lambda s: any(t.kind == "auto-rollback" for t in s.transitions),
                           "an automatic rollback", timeout=90)
        rb = next(t for t in st.transitions if t.kind == "auto-rollback")
        assert (rb.from_phase, rb.to_phase) == ("CUTOVER_READS", "SHADOW_READ"), rb
        assert "shadow_mismatch_rate" in rb.reason and "sampled by the worker" in rb.reason, rb.reason
    finally:
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
        with contextlib.suppress(Exception):
            await temporal_client.get_workflow_handle(relay_workflow_id(name)).terminate("test over")


@pytest.mark.parametrize("engine", ["pg", "mariadb"])
@pytest.mark.parametrize("kind", ["email", "uuid"])
def test_worker_sample_of_string_and_uuid_keys(request: pytest.FixtureRequest, engine: str, kind: str,
                                               pg_new: Store, table_name: str) -> None:
    """Random key ranges work for string (e-mail) and UUID keys, on PostgreSQL and across engines."""
    import uuid

    from conftest import execute

    from dualwrite.mapping import identity_mapping
    from dualwrite.sample import sample_table

    old: Store = request.getfixturevalue("pg_old" if engine == "pg" else "my_old")
    col = "varchar(64)" if kind == "email" else ("uuid" if engine == "pg" else "char(36)")
    rnd = random.Random(3)
    keys = [f"user{rnd.randint(0, 10**9)}@example{i % 7}.com" if kind == "email"
            else str(uuid.UUID(int=rnd.getrandbits(128))) for i in range(400)]
    for store in (old, pg_new):
        key_type = "uuid" if kind == "uuid" and store is pg_new else col
        execute(store, f"CREATE TABLE {table_name} (k {key_type} PRIMARY KEY, v int NOT NULL)")
        with store.connect() as conn:
            cur = conn.cursor()
            cur.executemany(f"INSERT INTO {table_name} VALUES (%s, %s)", [(k, i) for i, k in enumerate(keys)])
            cur.close()
            conn.commit()
    execute(pg_new, f"UPDATE {table_name} SET v = -1 WHERE v < 40")
    mapping = identity_mapping(old.describe(table_name, refresh=True), pg_new.describe(table_name, refresh=True))
    res = sample_table(old, pg_new, mapping, "no-such-migration", recent=0, random_n=400, pending=lambda: set(),
                       rng=random.Random(9))
    assert (res.compared, res.mismatch) == (400, {"field_different": 40}), res
