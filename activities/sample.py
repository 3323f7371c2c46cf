"""The worker shadow sample: thin Temporal adapter around :mod:`dualwrite.sample`.

One call compares a sample of rows of every table on both stores (recently changed keys once the relay has
mirrored them, from the method's key log or the database's own log, and random key ranges), records the
verdicts in ``dualwrite_stats`` under the migration's scope (as the instance
``worker-shadow-sample@host:pid``, counter ``shadow_sample``) together with the relay's current lag, and
returns the counts. The gate then reads them like any application's statistics, and names them as a worker
shadow sample in its evidence. Reads only; heartbeats per table.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from temporalio import activity

from activities.errors import mapped_errors
from activities.heartbeat import stopping
from activities.stores import StoreCache
from dualwrite import outbox
from dualwrite import stats as st
from dualwrite.capture import method_for
from dualwrite.capture.store_side import store_side
from dualwrite.sample import SampleResult, recent_changes_for, sample_table
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from workflows.sampling import SAMPLE_SHADOW, ShadowSampleInput, ShadowSampleResult

MIN_SAMPLES = 100
MAX_SAMPLES = 20_000


class SampleActivities:
    """The sampler's activity, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache, *, identity: str | None = None) -> None:
        self.stores = stores
        self.identity = identity or f"worker-shadow-sample@{socket.gethostname()}:{os.getpid()}"

    def all(self) -> list[Any]:
        return [self.sample_shadow]

    @activity.defn(name=SAMPLE_SHADOW, no_thread_cancel_exception=True)
    def sample_shadow(self, inp: ShadowSampleInput) -> ShadowSampleResult:
        """Compare a sample of rows on both stores and record the verdicts for the gate (counts only)."""
        with mapped_errors():
            spec, _ = self.stores.spec_of(inp)
            wanted = inp.samples or spec.gates.min_shadow_samples
            return sample_and_record(self.stores, spec, wanted, inp.wait_seconds, self.identity)


def sample_and_record(stores: StoreCache, spec: MigrationSpec, wanted: int, wait_seconds: float,
                      identity: str | None = None) -> ShadowSampleResult:
    """One worker shadow sample of about ``wanted`` rows over the spec's tables, recorded in
    ``dualwrite_stats`` (with the relay's current lag) for the gates and the rollback triggers."""
    started = time.monotonic()
    identity = identity or f"worker-shadow-sample@{socket.gethostname()}:{os.getpid()}"
    old, new, ctl = stores.store(spec.old), stores.store(spec.new), stores.store(spec.control)
    st.ensure_schema(ctl)
    wanted = max(MIN_SAMPLES, min(MAX_SAMPLES, wanted))
    per_table = max(1, -(-wanted // max(1, len(spec.tables))))
    # recent and in-flight keys come from the method's capture: its key log (triggers), the database's own
    # log (cdc: replication slot, binlog), both through the method's store side
    rs = stores.relay_stores(spec)
    side = store_side(spec)
    changes = recent_changes_for(rs, side)
    key_log = method_for(spec.strategy).key_log
    total = SampleResult()
    for t in spec.tables:
        if stopping():
            break
        mapping = stores.mapping(spec, t.source)[2]
        other = stores.mapping(spec, t.source, reverse=True)[2]
        sides = ((old, mapping), (new, other))

        def pending(sides: Any = sides, table: str = t.source) -> set[tuple[Any, ...]]:
            keys: set[tuple[Any, ...]] = set()
            for store, m in sides:
                keys |= side.pending_keys(store, ctl, spec.name, table, m)
            return keys

        res = sample_table(old, new, mapping, spec.name, recent=per_table // 2,
                           random_n=per_table - per_table // 2, pending=pending, wait_seconds=wait_seconds,
                           should_stop=stopping, changes=changes, spec_table=t.source)
        total += res
        activity.heartbeat({"table": t.source, "compared": total.compared})
    lag = _relay_lag(old, new, spec.name, (key_log,) if key_log is not None else ())
    stats = st.Stats(spec.name, identity)
    counts = [(st.SHADOW_SAMPLE, "match", total.match), (st.SHADOW_SAMPLE, "in_flight", total.in_flight)]
    counts += [(st.SHADOW_SAMPLE, cls, n) for cls, n in total.mismatch.items()]
    counts.append((st.SHADOW_SAMPLE, "exhaustive", int(total.exhaustive)))
    stats.record(counts=[c for c in counts if c[2]])
    if lag is not None:
        stats.gauge(st.RELAY_LAG, lag)
    stats.flush(ctl)
    return ShadowSampleResult(compared=total.compared, match=total.match, mismatch=dict(total.mismatch),
                              in_flight=total.in_flight, recent=total.recent, exhaustive=total.exhaustive,
                              relay_lag_seconds=lag,
                              seconds=time.monotonic() - started)


def _relay_lag(old: Store, new: Store, migration: str, logs: tuple[str, ...]) -> float | None:
    """The age of the oldest entry waiting in the key logs of either store (0 when they are empty); None when
    no key log exists yet (the relay has not set up) or the method has none (cdc: the relay gauges its lag
    itself as it reads the database's log)."""
    lag: float | None = None
    for store in (old, new):
        present = store.table_names()
        for lg in logs:
            if lg not in present:
                continue
            _n, age = outbox.log_depth(store, migration, log=lg)
            lag = max(lag or 0.0, age or 0.0)
    return lag
