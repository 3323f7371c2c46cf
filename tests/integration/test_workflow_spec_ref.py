"""Activity inputs carry a spec reference, not the spec (rule 6, docs/architecture.md).

A three-table migration runs through the backfill and the verification after it; then every activity the
migration and its children scheduled is read back from their histories: the backfill's and the
verification's inputs (plan_ranges, copy_range, verify_table) name the spec by (migration, control store,
digest) and hold neither its table list nor its data stores' names, and the spec itself was published once
to the control store. Nor does any other activity input of the migration (the gates, the repair drains, ...),
except the few listed in ``SPEC_INLINE``. The migration's outcome is the same as with the spec inline: every
row copied, the verification clean.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from conftest import (
    MigrationDriver,
    create_pg,
    fast_tuning,
    migration_histories,
    rows_of,
    save_histories,
    spec_for,
)
from temporalio.client import Client

from dualwrite import control
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from workflows.bypass import BYPASS_CAPTURE, BYPASS_COLLECT
from workflows.migration import SPEC_REF_PATCH
from workflows.models import ActivityNames, spec_digest
from workflows.relay import RELAY_CATCH_UP, RELAY_DENY, RELAY_DRAIN, RELAY_SETUP, RELAY_TEARDOWN, relay_workflow_id
from workflows.sampling import SAMPLE_SHADOW

BY_REF = {ActivityNames.PLAN_RANGES, ActivityNames.COPY_RANGE, ActivityNames.VERIFY_TABLE}
SPEC_INLINE = {
    ActivityNames.PUBLISH_SPEC,  # publishes it
    ActivityNames.PREPARE,  # the preflight runs before the spec is published
    # not converted: the abort's cleanup may run before the spec is published (and must not wait for it)
    ActivityNames.ABORT_CLEANUP,
}
"""The activities whose input still carries the whole spec; every other one names it by (migration, control
store, digest) or not at all. (The relay's drain carries the reference the migration hands it; a relay started
by hand, without one, carries the spec.)"""
SPEC_SECTIONS = ("strategy", "rollback_triggers", "gates", "backfill_concurrency", "verify_interval_seconds")
"""Keys of a spec's JSON that no other input of this run uses."""
WHOLE_SPEC_REF = {ActivityNames.DRAIN_REPAIRS, ActivityNames.EVALUATE_GATE, ActivityNames.WATCH_TRIGGERS,
                  SAMPLE_SHADOW, RELAY_DRAIN, RELAY_CATCH_UP, RELAY_SETUP, RELAY_TEARDOWN, RELAY_DENY,
                  ActivityNames.RETIRE_OLD, BYPASS_CAPTURE, BYPASS_COLLECT}
"""Activities naming the whole migration, by reference now (this run schedules the repair drains; the others
need a gated transition, a cutover phase, a relayed strategy)."""


def scheduled_inputs(histories: list[Any]) -> list[tuple[str, dict[str, Any], int]]:
    """(activity name, decoded input, payload bytes) of every activity the histories scheduled."""
    out: list[tuple[str, dict[str, Any], int]] = []
    for h in histories:
        for e in h.events:
            if e.HasField("activity_task_scheduled_event_attributes"):
                a = e.activity_task_scheduled_event_attributes
                for p in a.input.payloads:
                    out.append((a.activity_type.name, json.loads(p.data), len(p.data)))
    return out


def markers(histories: list[Any]) -> list[str]:
    """The decoded details of every marker (a patch marker names its patch id)."""
    found: list[str] = []
    for h in histories:
        for e in h.events:
            if e.HasField("marker_recorded_event_attributes"):
                found.extend(p.data.decode("utf-8", "replace")
                             for ps in e.marker_recorded_event_attributes.details.values() for p in ps.payloads)
    return found


def assert_no_whole_spec(inputs: list[tuple[str, dict[str, Any], int]], name: str, digest: str) -> set[str]:
    """No input outside ``SPEC_INLINE`` holds the spec, a section of it or the new store's name; those naming
    the whole migration carry its reference. Returns the names of the activities checked."""
    checked: set[str] = set()
    for n, inp, _ in inputs:
        if n in SPEC_INLINE or n in BY_REF:
            continue
        checked.add(n)
        text = json.dumps(inp)
        assert inp.get("spec") is None and "pgnew" not in text, (n, text)
        # the spec's own sections (a gate's verification evidence lists tables too: that is not the spec)
        assert not any(f'"{k}"' in text for k in SPEC_SECTIONS), (n, text)
        if n in WHOLE_SPEC_REF:
            assert inp["spec_ref"] == {"migration": name, "control_store": "pgold", "digest": digest}, (n, inp)
    return checked


async def test_activity_inputs_carry_a_spec_ref(dw: MigrationDriver, temporal_client: Client, pg_old: Store,
                                                pg_new: Store, table_name: str) -> None:
    tables = [f"{table_name}_{i}" for i in range(3)]
    for i, t in enumerate(tables):
        create_pg(pg_old, t, 300 * (i + 1))
        create_pg(pg_new, t, 0)
    name = f"specref-{secrets.token_hex(3)}"
    one = spec_for(name, "pgold", "pgnew", tables[0], mode="manual", backfill_concurrency=2)
    spec = MigrationSpec.model_validate({**one.model_dump(mode="json"), "tables": [
        {**one.tables[0].model_dump(mode="json"), "source": t} for t in tables]})
    handle = await dw.start(spec, tuning=fast_tuning(backfill_ranges=4))
    await dw.advance_to(handle, "SHADOW_READ")
    final = await dw.status(handle)

    # the outcome: every row copied, the verification after the backfill clean
    for t in tables:
        assert rows_of(pg_old, t) == rows_of(pg_new, t)
    assert final.last_verification is not None and final.last_verification.ok
    assert final.counters["rows_copied"] >= 300 + 600 + 900

    histories = await migration_histories(temporal_client, handle.id)
    assert any(SPEC_REF_PATCH in m for m in markers(histories))
    inputs = scheduled_inputs(histories)
    digest = spec_digest(spec)
    published = [i for n, i, _ in inputs if n == ActivityNames.PUBLISH_SPEC]
    assert len(published) == 1 and published[0]["digest"] == digest
    by_ref = [(n, i, size) for n, i, size in inputs if n in BY_REF]
    assert {n for n, _, _ in by_ref} == BY_REF
    for n, inp, size in by_ref:
        ref = inp["table"]["spec_ref"]
        assert ref == {"migration": name, "control_store": "pgold", "digest": digest}, (n, ref)
        assert inp["table"].get("spec") is None, n
        text = json.dumps(inp)
        # beyond the ref (which names the control store): no data store's name, no other table
        assert "pgnew" not in text and '"tables"' not in text, (n, text)
        assert not any(t in text for t in tables if t != inp["table"]["source"]), (n, text)
        assert size < 600, (n, size)
    # nor does any other input (the repair drains here; the other test: the relay's, the gate, the worker's
    # shadow sample)
    seen = assert_no_whole_spec(inputs, name, digest)
    assert ActivityNames.DRAIN_REPAIRS in seen and BYPASS_CAPTURE in seen, seen  # sync: bypass capture runs
    # the workers resolved the reference through the spec the control store holds
    raw = control.load_spec(pg_old, name, digest)
    assert raw is not None and MigrationSpec.model_validate_json(raw) == spec
    await save_histories(temporal_client, handle.id, "spec-ref-inputs")
    await handle.terminate("test done")


async def test_relay_gate_and_sample_inputs_carry_a_spec_ref(dw: MigrationDriver, temporal_client: Client,
                                                             pg_old: Store, pg_new: Store, table_name: str) -> None:
    """With ``triggers`` the migration starts the relay with the reference to the spec it published, so the
    relay's setup and drains carry it, as does the denial of bypassing writes; a dry-run gate into
    CUTOVER_READS has the worker sample rows first: both inputs carry the reference too."""
    create_pg(pg_old, table_name, 200)
    create_pg(pg_new, table_name, 0)
    name = f"specrel-{secrets.token_hex(3)}"
    spec = spec_for(name, "pgold", "pgnew", table_name, strategy="triggers", mode="manual")
    handle = await dw.start(spec, tuning=fast_tuning())
    await dw.advance_to(handle, "SHADOW_READ")
    await dw.update(handle, "advance", by="pytest", reason="dry run", dry_run=True)
    histories = await migration_histories(temporal_client, handle.id)
    checked = assert_no_whole_spec(scheduled_inputs(histories), name, spec_digest(spec))
    assert {RELAY_SETUP, RELAY_DRAIN, RELAY_DENY, ActivityNames.EVALUATE_GATE, SAMPLE_SHADOW,
            ActivityNames.DRAIN_REPAIRS} <= checked
    await save_histories(temporal_client, handle.id, "spec-ref-relay")
    await handle.terminate("test done")
    await temporal_client.get_workflow_handle(relay_workflow_id(name)).terminate("test done")
