"""CLEANUP: retire the old store once applications no longer mirror into it (:mod:`dualwrite.retire`)."""

from __future__ import annotations

from temporalio import activity

from activities.errors import mapped_errors
from activities.heartbeat import heartbeating, stopping
from activities.stores import StoreCache
from dualwrite import outbox, relay, retire, triggers
from dualwrite.keyvalue import stream_outbox
from dualwrite.keyvalue.intact import remove_markers
from dualwrite.stores import is_redis
from workflows.models import ActivityNames, RetiredTable, RetireInput, RetireResult

__all__ = ["CleanupActivities"]


class CleanupActivities:
    """The retirement of the old store, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache) -> None:
        self.stores = stores

    @activity.defn(name=ActivityNames.RETIRE_OLD, no_thread_cancel_exception=True)
    def retire_old_store(self, inp: RetireInput) -> RetireResult:
        """Retire the old store after the CLEANUP barrier (applications no longer mirror): remove capture
        triggers (both stores), mirror what the old store's key logs still hold and discard the entries
        towards the old store, drop key logs left empty, discard queued repairs, then rename each old
        table to ``<table>_dw_retired_<stamp>`` (or drop it when ``drop``); a Redis new store loses this
        migration's ``__dualwrite__:<migration>:*`` keys. Idempotent: a retry finds the
        retired names and reports them."""
        with mapped_errors(), heartbeating():
            spec, digest = self.stores.spec_of(inp)
            rs = self.stores.relay_stores(spec, digest)
            ctl = self.stores.control_store(spec.control)
            out = RetireResult()
            mappings = {t.source: self.stores.mapping(spec, t.source)[2] for t in spec.tables
                        if retire.table_exists(rs.old, t.source)}
            sql_new = not is_redis(rs.new)  # a Redis new store has no triggers and no key logs
            for source, mapping in mappings.items():
                triggers.remove_triggers(rs.old, spec.name, mapping.source_table)
                out.triggers_removed.append(f"{rs.old.name}/{mapping.source_table}")
                if sql_new:
                    triggers.remove_triggers(rs.new, spec.name, mapping.target_table)
                    out.triggers_removed.append(f"{rs.new.name}/{mapping.target_table}")
                activity.heartbeat(source)
            if mappings and sql_new:
                res = relay.drain(rs.old, rs.new, spec.name, rs.mapping_for, discard=("new",), control_store=ctl,
                                  should_stop=stopping)
                out.log_entries_mirrored, out.log_entries_discarded = res.mirrored, res.discarded
            for store in (rs.old, rs.new) if sql_new else (rs.old,):
                for log_table in outbox.LOGS:
                    if retire.drop_log_if_unused(store, spec.name, log_table):
                        out.logs_dropped.append(f"{store.name}/{log_table}")
            if not sql_new:  # the Redis outbox stream: what it still holds is towards the retired old store
                n = stream_outbox.drop_stream(rs.new, spec.name)
                if n:
                    out.log_entries_discarded += n
                out.logs_dropped.append(f"{rs.new.name}/{stream_outbox.stream_key(spec.name)}")
            out.repair_entries_discarded = retire.discard_repairs(ctl, spec.name)
            if not sql_new:  # the intact marker and the rest of this migration's keys (keyvalue.intact)
                remove_markers(rs.new, spec.name)
            for t in spec.tables:
                done = retire.retire_table(rs.old, t.source, inp.stamp, drop=inp.drop)
                out.tables.append(RetiredTable(source=done.source, action=done.action, retired_as=done.retired_as))
                activity.heartbeat(t.source)
            return out
