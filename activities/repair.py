"""The repair queue's long poll: mirror due keys batch by batch (:func:`dualwrite.relay.repair_batch`)."""

from __future__ import annotations

import time

from temporalio import activity

from activities.errors import mapped_errors, safe_message
from activities.heartbeat import heartbeating, raise_if_stopping, sleep, stopping
from activities.stores import StoreCache
from dualwrite import control
from dualwrite.async_tails import LostTails, TableSides, level_lost_tails
from dualwrite.relay import expedite_repairs, repair_authority, repair_batch
from dualwrite.repair_guard import authority_for
from dualwrite.spec import MigrationSpec, Strategy
from dualwrite.store import Store
from dualwrite.stuck_repairs import stuck_tables
from workflows.models import ActivityNames, RepairDrainInput, RepairDrainResult, StuckRepairs, TableRef

__all__ = ["RepairActivities"]


class RepairActivities:
    """The repair drain, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache) -> None:
        self.stores = stores

    @activity.defn(name=ActivityNames.DRAIN_REPAIRS, no_thread_cancel_exception=True)
    def drain_repairs(self, inp: RepairDrainInput) -> RepairDrainResult:
        """Long-poll the repair queue and mirror due keys, with exponential backoff on failure.

        A repair writes only into the store that is not authoritative *now* (rule 4, docs/architecture.md), and none is
        written while a write fence is published, unless this is the workflow's own drain under the fence."""
        with mapped_errors():
            spec, digest = self.stores.spec_of(inp)
            ctl = self.stores.control_store(spec.control)
            rs = self.stores.relay_stores(spec, digest)
            out = RepairDrainResult()
            started = time.monotonic()
            worked = False
            if inp.under_fence:
                expedite_repairs(ctl, spec.name)  # every key is tried now: authority moves only when none is left
            while not stopping():
                authority = repair_authority(ctl, spec, under_fence=inp.under_fence)
                entries = [] if authority == "fenced" else control.due_repairs(ctl, spec.name, inp.batch)
                if entries:
                    worked = True
                    res = repair_batch(ctl, rs.old, rs.new, spec.name, rs.mapping_for, entries, authority=authority,
                                       base_backoff_seconds=inp.base_backoff_seconds,
                                       max_backoff_seconds=inp.max_backoff_seconds, under_fence=inp.under_fence)
                    out.mirrored += res.mirrored
                    out.failed += res.failed
                    for e in res.errors:
                        msg = safe_message(Exception(e), 300)
                        if msg not in out.errors and len(out.errors) < 5:
                            out.errors.append(msg)
                    activity.heartbeat(out)
                    if time.monotonic() - started > inp.max_seconds:
                        break
                    if res.refused and not res.mirrored and not res.failed:
                        sleep(inp.poll_seconds)  # a tenant's fence holds its keys: read the authority again soon
                    continue
                if worked or time.monotonic() - started > inp.max_idle_seconds:
                    break
                activity.heartbeat(out)
                sleep(inp.poll_seconds)
            if inp.under_fence and not stopping():
                with heartbeating():
                    tails = self._level_lost_tails(spec, ctl, inp.tenant)
                out.lost_tail_writers, out.lost_tail_repaired = len(tails.writers), tails.repaired
            out.remaining = control.repair_queue_depth(ctl, spec.name)
            out.due_in_seconds = control.next_repair_due_in(ctl, spec.name)
            if inp.under_fence and out.remaining:
                stuck = stuck_tables(ctl, spec.name, tenant=inp.tenant,
                                     tenant_columns={t.source: t.tenant_column for t in spec.tables},
                                     old=rs.old, new=rs.new, mapping_for=rs.mapping_for, errors=out.errors)
                out.stuck = [StuckRepairs(**vars(s)) for s in stuck]
                out.blocking = sum(s.blocking for s in stuck)
            elif inp.under_fence:
                out.blocking = 0
            return out

    def _level_lost_tails(self, spec: MigrationSpec, ctl: Store, tenant: str | None) -> LostTails:
        """Under the fence: what killed async writers acknowledged on the losing store and never mirrored
        reaches the gaining store before authority moves (:mod:`dualwrite.async_tails`)."""
        scope = spec.tenant_tables if tenant is not None else spec.tables
        lagged = [t.source for t in scope if spec.strategy_of(t.source) is Strategy.ASYNC]
        if not lagged:
            return LostTails(writers=[])
        state = control.read_state(ctl, spec.name)
        losing = authority_for(state.phase, state.overrides, tenant) if state is not None else "old"
        overrides = state.overrides if state is not None else {}
        own = overrides.get("tenants") if isinstance(overrides, dict) else None
        other_way = sorted(t for t in (own if isinstance(own, dict) else {})
                           if state is not None and authority_for(state.phase, overrides, t) != losing)
        tables: list[TableSides] = []
        for source in lagged:
            _, src, dst, mapping = self.stores.table(TableRef(spec=spec, source=source, reverse=losing == "new"))
            tables.append((source, src, dst, mapping))
        return level_lost_tails(ctl, spec.name, tables, losing=losing, tenant=tenant,
                                exclude_tenants=other_way if tenant is None else (), sleep=_sleep_or_stop)


def _sleep_or_stop(seconds: float) -> None:
    """Sleep between polls of the async watermarks; a cancelled activity or a stopping worker ends the wait."""
    sleep(seconds)
    raise_if_stopping()
