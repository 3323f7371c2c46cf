"""The worker shadow sample: thin Temporal adapter around :mod:`dualwrite.sample`.

One call compares a sample of rows of every table on both stores (recently changed keys once the relay has
mirrored them, and random key ranges), records the verdicts in ``dualwrite_stats`` under the migration's
scope (as the instance ``worker-shadow-sample@host:pid``, counter ``shadow_sample``) together with the
relay's current lag, and returns the counts. The gate then reads them like any application's statistics,
and names them as a worker shadow sample in its evidence. Reads only; heartbeats per table.
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
from dualwrite.capture.keylog_side import pending_log_keys
from dualwrite.sample import SampleResult, sample_table
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
            wanted = inp.samples or inp.spec.gates.min_shadow_samples
            return sample_and_record(self.stores, inp.spec, wanted, inp.wait_seconds, self.identity)


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
    # recent and pending keys come from the method's key log; a method without one (cdc) finds none there
    logs = (method_for(spec.strategy).key_log or outbox.CHANGELOG,)
    total = SampleResult()
    for t in spec.tables:
        if stopping():
            break
        _src, _dst, mapping = stores.mapping(spec, t.source)
        other = stores.mapping(spec, t.source, reverse=True)[2]
        sides = ((old, {t.source, mapping.source_table}, mapping.key_kinds),
                 (new, {t.source, other.source_table}, other.key_kinds))

        def pending(sides: Any = sides) -> set[tuple[Any, ...]]:
            keys: set[tuple[Any, ...]] = set()
            for store, tables, kinds in sides:
                keys |= pending_log_keys(store, spec.name, tables, kinds, logs)
            return keys

        res = sample_table(old, new, mapping, spec.name, recent=per_table // 2,
                           random_n=per_table - per_table // 2, pending=pending,
                           wait_seconds=wait_seconds, log_table=logs[0], should_stop=stopping)
        total += res
        activity.heartbeat({"table": t.source, "compared": total.compared})
    lag = _relay_lag(old, new, spec.name, logs)
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
    no key log exists yet (the relay has not set up)."""
    lag: float | None = None
    for store in (old, new):
        present = store.table_names()
        for lg in logs:
            if lg not in present:
                continue
            _n, age = outbox.log_depth(store, migration, log=lg)
            lag = max(lag or 0.0, age or 0.0)
    return lag
