"""Bypass capture: thin Temporal adapters around :mod:`dualwrite.bypass` (install / remove the capture
triggers, collect their records). Idempotent; only counts and writer identities are returned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio import activity

from activities.errors import mapped_errors
from activities.stores import StoreCache
from dualwrite import bypass
from dualwrite.retire import table_exists
from dualwrite.store import Kind
from dualwrite.stores import is_redis
from workflows.bypass import (
    BYPASS_CAPTURE,
    BYPASS_COLLECT,
    BYPASS_REFUSE_OLD,
    BypassCollectResult,
    BypassGroup,
    BypassRefuseResult,
)
from workflows.models import BypassCaptureInput, BypassCollectInput, BypassRefuseInput


class BypassActivities:
    """Bypass capture's activities, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache) -> None:
        self.stores = stores

    def all(self) -> list[Any]:
        return [self.capture, self.collect, self.refuse_old]

    @activity.defn(name=BYPASS_CAPTURE, no_thread_cancel_exception=True)
    def capture(self, inp: BypassCaptureInput) -> None:
        """Install capture on the sides in ``install``, remove it from those in ``remove``."""
        with mapped_errors():
            spec, _ = self.stores.spec_of(inp)
            stores = {"old": self.stores.store(spec.old), "new": self.stores.store(spec.new)}
            # a Redis store has no triggers: writes that bypass the adapter there cannot be captured (README)
            stores = {side: s for side, s in stores.items() if not is_redis(s)}
            inp = inp.model_copy(update={"install": [x for x in inp.install if x in stores],
                                         "remove": [x for x in inp.remove if x in stores]})
            for t in spec.tables:
                for side in inp.remove:
                    store = stores[side]
                    table = t.source if side == "old" else t.target_table
                    if table_exists(store, table):
                        bypass.remove(store, spec.name, table)
                for side in inp.install:
                    mapping = self.stores.mapping(spec, t.source)[2]
                    if side == "old":
                        bypass.install(stores[side], spec.name, t.source, mapping.source_table,
                                       list(mapping.source_key))
                    else:
                        bypass.install(stores[side], spec.name, t.source, mapping.target_table,
                                       list(mapping.target_key))
                activity.heartbeat(t.source)
            if inp.discard:
                for store in {id(s): s for s in stores.values()}.values():
                    bypass.discard(store, spec.name)

    @activity.defn(name=BYPASS_COLLECT, no_thread_cancel_exception=True)
    def collect(self, inp: BypassCollectInput) -> BypassCollectResult:
        """Collect both stores' bypass records: keys to the repair queue, counts per (table, writer) back."""
        with mapped_errors():
            spec, _ = self.stores.spec_of(inp)
            ctl = self.stores.store(spec.control)
            kinds: dict[str, Sequence[Kind]] = {t.source: list(self.stores.mapping(spec, t.source)[2].key_kinds)
                                                for t in spec.tables}
            out = BypassCollectResult()
            seen: set[int] = set()
            for side, ref in (("old", spec.old), ("new", spec.new)):
                store = self.stores.store(ref)
                if id(store) in seen or is_redis(store):
                    continue
                seen.add(id(store))
                for table, writer, n, last in bypass.collect(store, ctl, spec.name, kinds, authoritative=side):
                    out.groups.append(BypassGroup(table=table, writer=writer, count=n, last_seen=last))
                    out.queued += n
            if inp.refusing_old:
                old = self.stores.store(spec.old)
                out.old_refused = _refused_total(old, spec.name, [t.source for t in spec.tables])
            return out

    @activity.defn(name=BYPASS_REFUSE_OLD, no_thread_cancel_exception=True)
    def refuse_old(self, inp: BypassRefuseInput) -> BypassRefuseResult:
        """After write cutover: the old store's migrated tables refuse writes that bypass the adapter (or accept
        them again). Idempotent; the old tables already gone (renamed at CLEANUP) are skipped."""
        with mapped_errors():
            spec, _ = self.stores.spec_of(inp)
            store = self.stores.store(spec.old)
            tables = [t.source for t in spec.tables]
            if is_redis(store):
                note = ("not supported on a Redis store (no triggers); raw writes to the old store after write "
                        "cutover are not refused and not measured")
                return BypassRefuseResult(refusing=False, note=note if inp.refuse else "")
            if not inp.refuse:
                bypass.allow_old(store, spec.name, [t for t in tables if table_exists(store, t)], final=inp.final)
                return BypassRefuseResult(refused=_refused_total(store, spec.name, tables) if not inp.final else None)
            why = bypass.refuse_old(store, spec.name, tables)
            return BypassRefuseResult(refusing=not why, note=why,
                                      refused=None if why else _refused_total(store, spec.name, tables))


def _refused_total(store: Any, migration: str, tables: Sequence[str]) -> int | None:
    """Writes the old store refused, over the migrated tables (None: not measured on this engine)."""
    per_table = bypass.old_refused(store, migration, tables)
    return sum(per_table.values()) if per_table else None
