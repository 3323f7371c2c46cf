"""The activity behind ``dualwrite abort``: remove what a migration left in the stores once authority is back
with the old store and every live application instance has seen it.

What goes: the method's capture on both stores (the capture triggers and denied writes of ``triggers``), this
migration's key-log entries (the log tables stay, other migrations may share them), its queued repairs,
backfill checkpoints, statistics and, when ``remove_state``, its published state and instance rows. What
stays: every row of the old store (nothing here writes to the migrated tables) and the new store's tables and
data, left for the operator to drop or keep.
"""

from __future__ import annotations

import logging
from typing import Any

from temporalio import activity

from activities.errors import mapped_errors
from activities.heartbeat import heartbeating
from activities.stores import StoreCache
from dualwrite import bypass, control, outbox, watermark
from dualwrite import stats as st
from dualwrite.capture.store_side import store_side
from dualwrite.retire import delete_migration_rows, table_exists
from workflows.models import AbortCleanupInput, AbortCleanupResult, ActivityNames

__all__ = ["AbortActivities"]

log = logging.getLogger(__name__)


class AbortActivities:
    """The abort's store cleanup, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache) -> None:
        self.stores = stores

    def all(self) -> list[Any]:
        return [self.abort_cleanup]

    @activity.defn(name=ActivityNames.ABORT_CLEANUP, no_thread_cancel_exception=True)
    def abort_cleanup(self, inp: AbortCleanupInput) -> AbortCleanupResult:
        """Idempotent: a retry finds less to remove."""
        with mapped_errors(), heartbeating():
            spec = inp.spec
            rs = self.stores.relay_stores(spec)
            old, new, ctl = rs.old, rs.new, rs.control
            out = AbortCleanupResult()
            out.triggers_removed = store_side(spec).abort(rs, table_exists)
            if bypass.applies(spec):  # bypass capture: gone from both stores, with its records
                for t in spec.tables:
                    for store, table in ((old, t.source), (new, t.target_table)):
                        if table_exists(store, table):
                            bypass.remove(store, spec.name, table)
                for store in {id(s): s for s in (old, new)}.values():
                    bypass.discard(store, spec.name)
            for store in {id(s): s for s in (old, new)}.values():
                for log_table in outbox.LOGS:
                    out.log_entries_deleted += delete_migration_rows(store, log_table, spec.name)
            out.repair_entries_deleted = delete_migration_rows(ctl, control.REPAIR_QUEUE, spec.name)
            tables = [control.CHECKPOINTS, st.STATS]
            if inp.remove_state:
                tables += [control.STATE, control.INSTANCES, control.SPECS, watermark.WATERMARKS]
            for table in tables:
                out.control_rows_deleted += delete_migration_rows(ctl, table, spec.name)
            log.info("migration %s aborted: %d triggers removed, %d key-log entries, %d repairs and %d control rows "
                     "deleted", spec.name, len(out.triggers_removed), out.log_entries_deleted,
                     out.repair_entries_deleted, out.control_rows_deleted)
            return out
