"""A worker resolves a spec reference from the control store: the spec is published once (on each of the
three control-store dialects), a worker's cache answers later lookups without hashing the spec, and a worker
whose cache was cleared (or a new worker process) loads it again from the control store."""

from __future__ import annotations

import secrets

import pytest
from conftest import spec_for

import activities.stores as stores_module
from activities.stores import StoreCache
from dualwrite import control
from dualwrite.config import StoreResolver
from dualwrite.errors import SpecError
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from workflows.models import (
    CopyRangeInput,
    GateInput,
    KeyRange,
    RepairDrainInput,
    SpecCarrier,
    SpecRef,
    TableRef,
    TriggerWatchInput,
    spec_digest,
)
from workflows.relay import CatchUpInput, RelayDrainInput
from workflows.sampling import ShadowSampleInput


@pytest.mark.parametrize("store_fixture", ["pg_old", "my_old", "sqlite_old"])
def test_publish_and_load_spec_on_every_dialect(store_fixture: str, request: pytest.FixtureRequest) -> None:
    store: Store = request.getfixturevalue(store_fixture)
    control.ensure_schema(store)
    spec = spec_for(f"pub-{secrets.token_hex(3)}", "pgold", "pgnew", "items")
    ref = SpecRef.of(spec)
    assert control.load_spec(store, spec.name, ref.digest) is None
    control.publish_spec(store, spec.name, ref.digest, spec.model_dump_json())
    control.publish_spec(store, spec.name, ref.digest, spec.model_dump_json())  # idempotent
    assert control.load_spec(store, spec.name, ref.digest) == spec.model_dump_json()


def test_worker_resolves_a_ref_after_its_cache_is_cleared(dw_resolver: StoreResolver, pg_old: Store,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_for(f"ref-{secrets.token_hex(3)}", "pgold", "pgnew", "items")
    ref = SpecRef.of(spec)
    assert ref.control_store == "pgold"
    cache = StoreCache(dw_resolver, pool_size=2)
    try:
        with pytest.raises(SpecError, match="not published"):
            cache.spec(ref)
        control.publish_spec(cache.control_store("pgold"), spec.name, ref.digest, spec.model_dump_json())
        assert cache.spec(ref) == spec

        loads: list[str] = []
        real_load = control.load_spec

        def counting_load(store: Store, migration: str, digest: str) -> str | None:
            loads.append(digest)
            return real_load(store, migration, digest)

        monkeypatch.setattr(control, "load_spec", counting_load)
        assert cache.spec(ref) == spec and loads == []  # cached by digest: no query, no hashing
        cache.forget_specs()
        assert cache.spec(ref) == spec and loads == [ref.digest]  # loaded again from the control store
        # a fresh worker process (an empty cache) resolves it the same way
        fresh = StoreCache(dw_resolver, pool_size=2)
        try:
            assert fresh.spec(ref) == spec and len(loads) == 2
        finally:
            fresh.close()
        # a TableRef by reference and one with the spec inline name the same spec
        by_ref = TableRef(spec_ref=ref, source="items")
        assert by_ref.spec is None and TableRef(spec=spec, source="items").spec == cache.spec(ref)
    finally:
        cache.close()


def test_table_ref_carries_exactly_one_spec() -> None:
    spec = spec_for("one", "pgold", "pgnew", "items")
    with pytest.raises(ValueError, match="exactly one"):
        TableRef(source="items")
    with pytest.raises(ValueError, match="exactly one"):
        TableRef(spec=spec, spec_ref=SpecRef.of(spec), source="items")


def test_an_inline_spec_is_hashed_once_per_object(dw_resolver: StoreResolver,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Inputs that still carry the spec inline: several mapping lookups in one activity call hash it once."""
    hashed: list[str] = []
    real = spec_digest

    def counting(spec: MigrationSpec) -> str:
        hashed.append(spec.name)
        return real(spec)

    monkeypatch.setattr(stores_module, "spec_digest", counting)
    spec = spec_for("memo", "pgold", "pgnew", "items")
    cache = StoreCache(dw_resolver, pool_size=2)
    try:
        assert cache.digest(spec) == cache.digest(spec) == SpecRef.of(spec).digest
        assert hashed == ["memo"]
        copy = spec.model_copy()
        assert cache.digest(copy) == cache.digest(spec) and hashed == ["memo", "memo"]
    finally:
        cache.close()


def test_logs_and_metrics_name_the_migration_of_an_input_by_ref() -> None:
    from activities.observe import activity_context

    spec = spec_for("ctx", "pgold", "pgnew", "items")
    for table in (TableRef(spec_ref=SpecRef.of(spec), source="items"), TableRef(spec=spec, source="items")):
        inp = CopyRangeInput(table=table, range=KeyRange(index=0))
        assert activity_context([inp]) == {"migration": "ctx", "table": "items"}


@pytest.mark.parametrize("model", [RepairDrainInput, GateInput, TriggerWatchInput, ShadowSampleInput,
                                   RelayDrainInput, CatchUpInput])
def test_whole_spec_inputs_carry_exactly_one_spec(model: type[SpecCarrier]) -> None:
    spec = spec_for("one-spec", "pgold", "pgnew", "items")
    ref = SpecRef.of(spec)
    extra = {"phase": "DUAL_WRITE", "to": "BACKFILL", "backfill_percent": 0, "backfill_done": False,
             "scopes": []}  # the fields GateInput / TriggerWatchInput require (others ignore them)
    assert model.model_validate({"spec_ref": ref.model_dump(), **extra}).spec is None
    assert model.model_validate({"spec": spec.model_dump(mode="json"), **extra}).inline_spec() == spec
    for both_or_none in ({}, {"spec": spec.model_dump(mode="json"), "spec_ref": ref.model_dump()}):
        with pytest.raises(ValueError, match="exactly one of spec and spec_ref"):
            model.model_validate({**both_or_none, **extra})


def test_a_whole_spec_input_resolves_by_ref_or_inline(dw_resolver: StoreResolver) -> None:
    spec = spec_for(f"carrier-{secrets.token_hex(3)}", "pgold", "pgnew", "items")
    ref = SpecRef.of(spec)
    cache = StoreCache(dw_resolver, pool_size=2)
    try:
        control.publish_spec(cache.control_store("pgold"), spec.name, ref.digest, spec.model_dump_json())
        assert cache.spec_of(RepairDrainInput(spec_ref=ref)) == (spec, ref.digest)
        assert cache.spec_of(RepairDrainInput(spec=spec)) == (spec, ref.digest)
    finally:
        cache.close()
