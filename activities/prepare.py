"""PREPARE: check the spec against the live stores, create the control tables, size each table."""

from __future__ import annotations

from temporalio import activity

from activities.errors import mapped_errors
from activities.heartbeat import heartbeating
from activities.owners import OwnerCheck
from activities.stores import StoreCache
from dualwrite import hooks
from dualwrite.cdc import capture as cdc_capture
from dualwrite.errors import SchemaError, StoreUnavailableError
from dualwrite.keyvalue.intact import mark_intact
from dualwrite.rowcount import count_rows
from dualwrite.spec import Strategy
from dualwrite.store import Dialect
from dualwrite.stores import as_redis, is_redis
from workflows.models import ActivityNames, PrepareInput, PrepareResult, TableProgress

__all__ = ["PrepareActivities"]


class PrepareActivities:
    """The preflight activity, sharing the worker's :class:`StoreCache`; ``owners`` asks Temporal which
    migrations own the tables (the single-owner rule)."""

    def __init__(self, stores: StoreCache, owners: OwnerCheck) -> None:
        self.stores = stores
        self.owners = owners

    @activity.defn(name=ActivityNames.PREPARE, no_thread_cancel_exception=True)
    def prepare(self, inp: PrepareInput) -> PrepareResult:
        """Check the spec against the live stores (every problem at once), create the control tables and
        estimate each table's size. Permanent problems fail the workflow before anything is written."""
        with mapped_errors(), heartbeating():
            from dualwrite.preflight import preflight  # noqa: PLC0415 - heavy, and only here

            spec = inp.spec
            hooks.point("prepare.before_preflight")
            for name in dict.fromkeys((spec.old, spec.new, spec.control)):
                # a store that is down now may be up in a minute: StoreUnavailableError is retried with
                # backoff, while the preflight would report it as a (permanent) problem of the spec
                store = self.stores.store(name)
                if is_redis(store):
                    as_redis(store).ping()
                elif store.dialect is not Dialect.SQLITE:  # connecting would create a missing SQLite file
                    with store.connect() as conn:
                        conn.rollback()
            if inp.rollback and spec.strategy is Strategy.CDC:
                # back in PREPARE nothing is migrated: the slots and publications kept from before hold WAL for
                # nothing (and the preflight refuses a slot it finds); the denial that follows sets capture up
                # afresh, before the next backfill's first range
                rs = self.stores.relay_stores(spec)
                for store in (rs.old, rs.new):
                    cdc_capture.teardown(store, rs.control, spec.name)
            report = preflight(spec, self.stores.resolver)
            lost = [s.name for s in report.stores if not s.reachable and s.dialect is not None]
            if lost:
                # opened but not answering (down, restarting, out of connections): transient, retried
                why = [str(p) for p in report.problems if any(repr(n) in p.where for n in lost)]
                raise StoreUnavailableError(f"store {', '.join(map(repr, lost))} did not answer the preflight: "
                                            f"{why[0] if why else 'unreachable'}")
            problems = [*report.problems, *self.owners.problems(spec, self.stores.resolver)]  # single owner
            if problems:
                raise SchemaError(problems, "preflight failed")
            counted = {t.source: t.rows for t in report.tables}
            tables: list[TableProgress] = []
            for t in spec.tables:
                old, _, mapping = self.stores.mapping(spec, t.source, refresh=True)
                rows = counted.get(t.source)
                tables.append(TableProgress(source=t.source, target=t.target_table,
                                            rows_estimate=rows if rows is not None else
                                            count_rows(old, mapping.source_table)))
            ctl = self.stores.control_store(spec.control)
            cdc_capture.reopen(ctl, spec.name)  # a new run: capture of an earlier, aborted one may start again
            new = self.stores.store(spec.new)
            if is_redis(new):
                mark_intact(new, spec.name)  # a wipe from now on is noticed by the gates (keyvalue.intact)
            return PrepareResult(ok=True, tables=tables)
