"""Live statistics of the application side: windowed, mergeable across instances, durable in a control table.

Every application instance (and every relay) counts what it does in a :class:`Stats` recorder and flushes
one *window* at a time to ``dualwrite_stats`` in the control store. The cutover gates read those rows back
and merge them (:func:`read_stats`), so the evidence for "secondary write success > 99.95 %" or "shadow
match rate > 99.9 %" is the traffic of *all* instances, not of whichever one a gate happened to ask.

Everything in a window merges by addition, which is why latencies are fixed-bucket histograms (the same
buckets everywhere, so bucket counts add) instead of quantiles (which do not). Gauges (the relay's lag)
merge by maximum. Names are small and fixed; only counts and bucket numbers are stored, never keys or row
values. The same numbers are exported as Prometheus metrics when enabled (:meth:`Stats.enable_prometheus`).

No Temporal imports: applications use this module.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dualwrite import bookkeeping as bk
from dualwrite.store import Store

STATS = "dualwrite_stats"

#: latency bucket upper bounds in milliseconds; one more bucket (+Inf) follows. Never change them in place:
#: windows written with other buckets would no longer merge (bump STATS_FORMAT instead).
BUCKETS_MS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                                 7.5, 10.0, 15.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                                 10000.0)
STATS_FORMAT = 1

# counter names (label = outcome / error class / compare class)
SECONDARY = "secondary"          # labels: attempt, success, failure:<ErrorClass>
PRIMARY = "primary"              # labels: attempt, success, failure:<ErrorClass>
SHADOW = "shadow"                # labels: match, missing, extra, field_different, timeout, error, skipped,
#                                   rechecked (a mismatch that a re-check resolved: counted as a match too)
SHADOW_SAMPLE = "shadow_sample"  # the worker's own shadow comparisons (triggers: no adapter reads both stores);
#                                   labels: match, missing, extra, field_different, in_flight,
#                                   exhaustive (samples that compared every row of every table)
REPAIR = "repair"                # labels: enqueued, enqueue_failed, buffered, spilled
RELAY = "relay"                  # labels: mirrored, entries, failed, discarded
# histogram names
LAT_OLD = "latency.old"          # the statements on the old store (authoritative or mirrored)
LAT_NEW = "latency.new"
LAT_CALL = "latency.call"        # the whole adapter call (unit of work, including the secondary write)
LAT_DIRECT = "latency.primary"   # the authoritative part alone: the "direct write" a gate compares with
LAT_READ = "latency.read"        # a read through the adapter (primary read only)
# gauges
RELAY_LAG = "relay.lag_seconds"
RELAY_DEPTH = "relay.depth"
REFUSED_WRITES = "relay.refused_writes"
ASYNC = "async"                  # labels: closed (a clean close flushed the queue), overflow
ASYNC_DEPTH = "async.depth"            # strategy async: keys queued in an instance, not yet mirrored
ASYNC_AGE = "async.oldest_seconds"     # strategy async: age of the oldest of them (the secondary's lag)

SHADOW_MISMATCH_CLASSES = ("missing", "extra", "field_different")


class Histogram:
    """Counts per fixed bucket (``BUCKETS_MS`` + Inf), plus sum and count: adds up across instances."""

    __slots__ = ("counts", "sum_ms")

    def __init__(self, counts: list[int] | None = None, sum_ms: float = 0.0) -> None:
        self.counts = counts if counts is not None else [0] * (len(BUCKETS_MS) + 1)
        self.sum_ms = sum_ms

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_MS, ms)] += 1
        self.sum_ms += ms

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum_ms += other.sum_ms

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in ms, interpolated inside its bucket (None without observations)."""
        total = self.count
        if not total:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                lo = BUCKETS_MS[i - 1] if i > 0 else 0.0
                hi = BUCKETS_MS[i] if i < len(BUCKETS_MS) else BUCKETS_MS[-1] * 2
                return lo + (hi - lo) * max(0.0, min(1.0, (rank - seen) / n))
            seen += n
        return BUCKETS_MS[-1] * 2

    def to_json(self) -> dict[str, Any]:
        # sparse: most buckets are empty
        return {"b": {str(i): n for i, n in enumerate(self.counts) if n}, "s": round(self.sum_ms, 4)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Histogram:
        h = cls()
        for i, n in doc.get("b", {}).items():
            idx = int(i)
            if 0 <= idx < len(h.counts):
                h.counts[idx] += int(n)
        h.sum_ms = float(doc.get("s", 0.0))
        return h


@dataclass
class StatsWindow:
    """One window of one instance, or the merge of many."""

    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    windows: int = 0
    instances: set[str] = field(default_factory=set)

    # -- recording (callers hold the recorder's lock) ------------------------------------------------------

    def add(self, name: str, label: str, n: int = 1) -> None:
        bucket = self.counters.get(name)
        if bucket is None:
            bucket = self.counters[name] = {}
        bucket[label] = bucket.get(label, 0) + n

    def observe(self, name: str, ms: float) -> None:
        h = self.histograms.get(name)
        if h is None:
            h = self.histograms[name] = Histogram()
        h.observe(ms)

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = max(value, self.gauges.get(name, value))

    @property
    def empty(self) -> bool:
        return not (self.counters or self.histograms or self.gauges)

    # -- merging -----------------------------------------------------------------------------------------

    def merge(self, other: StatsWindow) -> StatsWindow:
        for name, labels in other.counters.items():
            for label, n in labels.items():
                self.add(name, label, n)
        for name, h in other.histograms.items():
            mine = self.histograms.get(name)
            if mine is None:
                self.histograms[name] = Histogram(list(h.counts), h.sum_ms)
            else:
                mine.merge(h)
        for name, v in other.gauges.items():
            self.gauge(name, v)
        self.seconds = max(self.seconds, other.seconds)
        self.windows += other.windows
        self.instances |= other.instances
        return self

    # -- reading (the gate's inputs) -----------------------------------------------------------------------

    def count(self, name: str, label: str | None = None) -> int:
        labels = self.counters.get(name, {})
        if label is None:
            return sum(labels.values())
        if label.endswith(":*"):
            prefix = label[:-1]
            return sum(n for k, n in labels.items() if k.startswith(prefix))
        return labels.get(label, 0)

    def failures_by_class(self, name: str = SECONDARY) -> dict[str, int]:
        return {k.split(":", 1)[1]: n for k, n in self.counters.get(name, {}).items() if k.startswith("failure:")}

    @property
    def secondary_attempts(self) -> int:
        return self.count(SECONDARY, "attempt")

    @property
    def secondary_successes(self) -> int:
        return self.count(SECONDARY, "success")

    @property
    def secondary_failures(self) -> int:
        return self.count(SECONDARY, "failure:*")

    def secondary_success_rate(self) -> float | None:
        done = self.secondary_successes + self.secondary_failures
        return None if not done else self.secondary_successes / done

    @property
    def shadow_samples(self) -> int:
        """Compared reads that reached a verdict (match or a mismatch class)."""
        return self.count(SHADOW, "match") + sum(self.count(SHADOW, c) for c in SHADOW_MISMATCH_CLASSES)

    def shadow_match_rate(self) -> float | None:
        n = self.shadow_samples
        return None if not n else self.count(SHADOW, "match") / n

    def quantile(self, name: str, q: float) -> float | None:
        h = self.histograms.get(name)
        return None if h is None else h.quantile(q)

    def p99_write_latency_impact(self) -> float | None:
        """p99 of the whole adapter call over p99 of its authoritative part, minus one (0.12 = +12 %)."""
        call, direct = self.quantile(LAT_CALL, 0.99), self.quantile(LAT_DIRECT, 0.99)
        if call is None or not direct:
            return None
        return call / direct - 1.0

    def summary(self) -> dict[str, Any]:
        """Counts and rates only: small, fit for logs and Temporal history."""
        return {
            "instances": len(self.instances), "windows": self.windows,
            "secondary_attempts": self.secondary_attempts, "secondary_successes": self.secondary_successes,
            "secondary_failures": self.failures_by_class(), "secondary_success_rate": self.secondary_success_rate(),
            "shadow": dict(self.counters.get(SHADOW, {})), "shadow_match_rate": self.shadow_match_rate(),
            "p99_call_ms": self.quantile(LAT_CALL, 0.99), "p99_primary_ms": self.quantile(LAT_DIRECT, 0.99),
            "p99_write_latency_impact": self.p99_write_latency_impact(),
            "relay_lag_seconds": self.gauges.get(RELAY_LAG),
            "async_queue_depth": self.gauges.get(ASYNC_DEPTH), "async_lag_seconds": self.gauges.get(ASYNC_AGE),
        }

    # -- wire form ---------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"v": STATS_FORMAT, "c": self.counters,
                           "h": {k: h.to_json() for k, h in self.histograms.items()},
                           "g": self.gauges, "s": round(self.seconds, 3)}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, instance: str | None = None) -> StatsWindow:
        doc = json.loads(text)
        w = cls(seconds=float(doc.get("s", 0.0)), windows=1, instances={instance} if instance else set())
        if doc.get("v") != STATS_FORMAT:
            return w  # a window of another format does not merge; count it as seen but empty
        for name, labels in doc.get("c", {}).items():
            for label, n in labels.items():
                w.add(name, label, int(n))
        for name, h in doc.get("h", {}).items():
            w.histograms[name] = Histogram.from_json(h)
        for name, v in doc.get("g", {}).items():
            w.gauges[name] = float(v)
        return w


class Stats:
    """The thread-safe recorder of one instance: count, observe, then :meth:`swap` a window out to flush."""

    def __init__(self, migration: str, instance_id: str) -> None:
        self.migration = migration
        self.instance_id = instance_id
        self._lock = threading.Lock()
        self._window = StatsWindow()
        self._started = time.monotonic()
        self._prom: _Prometheus | None = None

    def count(self, name: str, label: str, n: int = 1) -> None:
        with self._lock:
            self._window.add(name, label, n)
        if self._prom is not None:
            self._prom.count(self.migration, name, label, n)

    def observe(self, name: str, ms: float) -> None:
        with self._lock:
            self._window.observe(name, ms)
        if self._prom is not None:
            self._prom.observe(self.migration, name, ms)

    def record(self, counts: Iterable[tuple[str, str, int]] = (), latencies: Iterable[tuple[str, float]] = ()
               ) -> None:
        """Several observations under one lock acquisition (the adapter's hot path)."""
        counts, latencies = list(counts), list(latencies)
        with self._lock:
            w = self._window
            for name, label, n in counts:
                w.add(name, label, n)
            for name, ms in latencies:
                w.observe(name, ms)
        if self._prom is not None:
            for name, label, n in counts:
                self._prom.count(self.migration, name, label, n)
            for name, ms in latencies:
                self._prom.observe(self.migration, name, ms)

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self._window.gauge(name, value)
        if self._prom is not None:
            self._prom.gauge(self.migration, name, value)

    def snapshot(self) -> StatsWindow:
        """A copy of the current (unflushed) window."""
        with self._lock:
            copy = StatsWindow().merge(self._window)
        copy.seconds = time.monotonic() - self._started
        copy.instances = {self.instance_id}
        return copy

    def swap(self) -> StatsWindow:
        """Take the current window out (and start a new one)."""
        with self._lock:
            window, self._window = self._window, StatsWindow()
            now = time.monotonic()
            window.seconds, self._started = now - self._started, now
        window.windows = 1
        window.instances = {self.instance_id}
        return window

    def restore(self, window: StatsWindow) -> None:
        """Put back a window whose flush failed: it is merged into the next one, nothing is lost."""
        with self._lock:
            seconds = window.seconds
            self._window.merge(window)
            self._started -= seconds

    def flush(self, store: Store) -> bool:
        """Write the current window to ``dualwrite_stats``; on failure keep it for the next flush."""
        window = self.swap()
        if window.empty:
            return True
        try:
            write_window(store, self.migration, self.instance_id, window)
        except Exception:
            self.restore(window)
            raise
        return True

    def enable_prometheus(self, registry: Any = None) -> None:
        """Mirror every observation into prometheus_client metrics (in ``registry``, default the global one)."""
        self._prom = _Prometheus.get(registry)


class _Prometheus:
    """prometheus_client metrics; one set per registry (metric names must be unique in a registry), shared
    by every migration of the process (``migration`` is a label)."""

    _by_registry: ClassVar[dict[int, _Prometheus]] = {}
    _lock = threading.Lock()

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415 - optional at run time

        kw: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.secondary = Counter("dualwrite_secondary_writes", "Secondary (mirror) writes by outcome",
                                 ["migration", "outcome", "error_class"], **kw)
        self.primary = Counter("dualwrite_primary_writes", "Authoritative writes by outcome",
                               ["migration", "outcome", "error_class"], **kw)
        self.shadow = Counter("dualwrite_shadow_compares", "Shadow-read comparisons by result",
                              ["migration", "result"], **kw)
        self.other = Counter("dualwrite_events", "Repair queue and relay events",
                             ["migration", "name", "label"], **kw)
        self.latency = Histogram("dualwrite_latency_seconds", "Latency per store and for the whole adapter call",
                                 ["migration", "path"], buckets=[b / 1000 for b in BUCKETS_MS], **kw)
        self.gauges = Gauge("dualwrite_gauge", "Relay lag and depth", ["migration", "name"], **kw)

    @classmethod
    def get(cls, registry: Any) -> _Prometheus:
        with cls._lock:
            key = id(registry)
            prom = cls._by_registry.get(key)
            if prom is None:
                prom = cls._by_registry[key] = cls(registry)
            return prom

    def count(self, migration: str, name: str, label: str, n: int) -> None:
        if name in (SECONDARY, PRIMARY):
            outcome, _, cls = label.partition(":")
            metric = self.secondary if name == SECONDARY else self.primary
            metric.labels(migration, outcome, cls).inc(n)
        elif name == SHADOW:
            self.shadow.labels(migration, label).inc(n)
        else:
            self.other.labels(migration, name, label).inc(n)

    def observe(self, migration: str, name: str, ms: float) -> None:
        self.latency.labels(migration, name.removeprefix("latency.")).observe(ms / 1000.0)

    def gauge(self, migration: str, name: str, value: float) -> None:
        self.gauges.labels(migration, name).set(value)


# ---------------------------------------------------------------------------------------------------------
# the control table


def _ddl(store: Store) -> list[str]:
    ts, ident, suffix = bk.ts_type(store), bk.identity_pk(store), bk.table_suffix(store)
    return [
        f"CREATE TABLE IF NOT EXISTS {STATS} (id {ident}, migration VARCHAR(128) NOT NULL, "
        f"instance_id VARCHAR(255) NOT NULL, window_end {ts} NOT NULL, seconds DOUBLE PRECISION NOT NULL, "
        f"data TEXT NOT NULL){suffix}",
        f"CREATE INDEX IF NOT EXISTS {STATS}_window ON {STATS} (migration, window_end)",
    ]


def ensure_schema(store: Store) -> None:
    """Create ``dualwrite_stats`` if missing; safe to call from several processes at once."""
    bk.create_all(store, _ddl(store))


def write_window(store: Store, migration: str, instance_id: str, window: StatsWindow) -> None:
    p = store.paramstyle
    bk.execute(store, f"INSERT INTO {STATS} (migration, instance_id, window_end, seconds, data) "
                      f"VALUES ({p}, {p}, {bk.now_sql(store)}, {p}, {p})",
               (migration, instance_id[:255], float(window.seconds), window.to_json()))


def read_stats(store: Store, migration: str, seconds: float = 300.0) -> StatsWindow:
    """Every window flushed in the last ``seconds`` (database clock) by any instance, merged."""
    p = store.paramstyle
    since, param = bk.now_plus(store, -float(seconds))
    rows = bk.query(store, f"SELECT instance_id, data FROM {STATS} WHERE migration = {p} "
                           f"AND window_end >= {since} ORDER BY id", (migration, param))
    merged = StatsWindow()
    for instance_id, data in rows:
        merged.merge(StatsWindow.from_json(str(data), str(instance_id)))
    return merged


def unclean_async_instances(store: Store, migration: str, seconds: float = 300.0,
                            quiet_seconds: float = 60.0) -> list[str]:
    """Instances that wrote with the async strategy in the last ``seconds`` and then stopped flushing
    (nothing for ``quiet_seconds``) without a clean close: they may have died with keys still queued.

    An async instance flushes a window at least every ``stats_window_seconds`` (its queue gauges are never
    empty), and its ``close()`` counts ``async:closed`` in its last window."""
    p = store.paramstyle
    since, param = bk.now_plus(store, -float(seconds))
    quiet, qparam = bk.now_plus(store, -float(quiet_seconds))
    rows = bk.query(store, f"SELECT instance_id, data, CASE WHEN window_end < {quiet} THEN 1 ELSE 0 END "
                           f"FROM {STATS} WHERE migration = {p} AND window_end >= {since} ORDER BY id",
                    (qparam, migration, param))
    seen: dict[str, list[bool]] = {}  # instance -> [wrote async, closed, flushed recently]
    for instance_id, data, old in rows:
        w = StatsWindow.from_json(str(data))
        flags = seen.setdefault(str(instance_id), [False, False, False])
        flags[0] = flags[0] or ASYNC_DEPTH in w.gauges
        flags[1] = flags[1] or w.count(ASYNC, "closed") > 0
        flags[2] = flags[2] or not int(old)
    return sorted(i for i, (wrote, closed, recent) in seen.items() if wrote and not closed and not recent)


def prune_stats(store: Store, migration: str, older_than_seconds: float = 86400.0) -> int:
    """Drop windows older than the retention (a gate looks at minutes, not days)."""
    p = store.paramstyle
    since, param = bk.now_plus(store, -float(older_than_seconds))
    return bk.execute(store, f"DELETE FROM {STATS} WHERE migration = {p} AND window_end < {since}",
                      (migration, param))
