"""The activity behind ``dualwrite abort``: remove what a migration left in the stores once authority is back
with the old store and every live application instance has seen it.

What goes: the method's capture on both stores (the capture triggers and denied writes of ``triggers``), this
migration's key-log entries (the log tables stay, other migrations may share them; a Redis new store's outbox
stream goes), its queued repairs, backfill checkpoints, statistics, its bookkeeping keys in a Redis new store
(``__dualwrite__:<migration>:*``) and, when ``remove_state``, its published state and instance rows. What
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
from dualwrite.cdc.capture import ENDED_SCOPE
from dualwrite.keyvalue.intact import remove_markers
from dualwrite.keyvalue.stream_outbox import drop_stream
from dualwrite.retire import delete_migration_rows, table_exists
from dualwrite.stores import is_redis
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
            # a Redis new store has no capture, bypass records or SQL key logs: its outbox stream and its
            # bookkeeping keys go
            sql_stores = [s for s in {id(s): s for s in (old, new)}.values() if not is_redis(s)]
            if bypass.applies(spec):  # bypass capture: gone from both stores, with its records (none on Redis)
                for t in spec.tables:
                    for store, table in ((old, t.source), (new, t.target_table)):
                        if not is_redis(store) and table_exists(store, table):
                            bypass.remove(store, spec.name, table)
                for store in sql_stores:
                    bypass.discard(store, spec.name)
                if not is_redis(old):  # after write cutover the old store refused raw writes: no more
                    bypass.allow_old(old, spec.name, [t.source for t in spec.tables if table_exists(old, t.source)],
                                     final=True)
            for store in (old, new):
                if is_redis(store):  # no SQL key logs there: the outbox stream goes whole
                    out.log_entries_deleted += drop_stream(store, spec.name)
            for store in sql_stores:
                for log_table in outbox.LOGS:
                    out.log_entries_deleted += delete_migration_rows(store, log_table, spec.name)
            if is_redis(new):
                remove_markers(new, spec.name)
            out.repair_entries_deleted = delete_migration_rows(ctl, control.REPAIR_QUEUE, spec.name)
            tables = [st.STATS]
            if inp.remove_state:
                tables += [control.STATE, control.INSTANCES, control.SPECS, watermark.WATERMARKS]
            for table in tables:
                out.control_rows_deleted += delete_migration_rows(ctl, table, spec.name)
            if table_exists(ctl, control.CHECKPOINTS):
                # all but the capture's end mark (cdc.capture.end): an activity that outlived the relay must
                # still find it, or it could create a replication slot again
                out.control_rows_deleted += control.clear_checkpoints_except(ctl, spec.name, ENDED_SCOPE)
            log.info("migration %s aborted: %d triggers removed, %d key-log entries, %d repairs and %d control rows "
                     "deleted", spec.name, len(out.triggers_removed), out.log_entries_deleted,
                     out.repair_entries_deleted, out.control_rows_deleted)
            return out
