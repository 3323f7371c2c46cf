"""Prometheus metrics of the worker and the adapter, one catalogue for the seed's monitoring checklist.

Two processes produce metrics, and each checklist item is covered by one of them:

| checklist item                    | metric                                                         | from    |
|-----------------------------------|----------------------------------------------------------------|---------|
| write success rate per store      | ``dualwrite_primary_writes_total`` / ``_secondary_writes_total``| adapter |
|                                   | ``dualwrite_write_success_ratio{store,role}``                  | worker  |
| write latency per store p50/95/99 | ``dualwrite_latency_seconds{path}``              | adapter |
|                                   | ``dualwrite_write_latency_seconds{store,quantile}``            | worker  |
| read comparison match rate        | ``dualwrite_shadow_compares_total{result}``                    | adapter |
|                                   | ``dualwrite_shadow_match_ratio``, ``dualwrite_shadow_samples`` | worker  |
| backfill progress                 | ``dualwrite_backfill_progress_ratio{table}``, ``_backfill_rows``| worker  |
| reconciliation queue depth        | ``dualwrite_repair_queue_depth``, ``dualwrite_verification_*``  | worker  |
| error rate by failure type        | ``dualwrite_activity_failures_total{error_type}``,             | worker  |
|                                   | ``dualwrite_secondary_writes_total{error_class}``              | adapter |
| feature flag state per tenant     | ``dualwrite_migration_phase{phase}``,                          | worker  |
|                                   | ``dualwrite_phase_override{scope,subject,phase}``              |         |

The adapter's metrics are the ones :mod:`dualwrite.stats` records when ``AdapterOptions(prometheus=True)``
(its ``_Prometheus`` class defines them; this module does not define them twice, because a metric name may
be registered only once per registry). Applications expose them with :func:`serve` or their own
``/metrics``. The worker's are defined here: activity outcomes (recorded by the activity interceptor in
:mod:`activities.observe`) and the *migration gauges*, which :class:`MigrationGauges` sets from the
workflow's status and the control tables every few seconds, so every worker reports the same truth and a
dashboard can take ``max by (migration)``. The windowed numbers (success ratio, latency quantiles, match
ratio) are the *merged* windows of every application instance, exactly what the cutover gates read.

``serve`` puts one ``/metrics`` endpoint up that also carries the Temporal SDK's runtime metrics (Temporal
serves those itself on an internal port; they are appended to each scrape), so Prometheus scrapes one
target per worker. No Temporal import here: applications use this module.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import threading
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dualwrite import stats as st

log = logging.getLogger("dualwrite.metrics")

PHASES = ("PREPARE", "DUAL_WRITE", "BACKFILL", "SHADOW_READ", "CUTOVER_READS", "CUTOVER_WRITES", "CLEANUP", "DONE")
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class MetricDoc:
    name: str
    kind: str
    labels: tuple[str, ...]
    help: str
    source: str  # "adapter" | "worker"


#: Every metric name this project exports (without the ``_total`` / ``_bucket`` suffixes Prometheus adds).
#: The README lists them; a test keeps the two in step and checks each is really exported.
CATALOGUE: tuple[MetricDoc, ...] = (
    # -- adapter (dualwrite.stats._Prometheus) -------------------------------------------------------
    MetricDoc("dualwrite_primary_writes", "counter", ("migration", "outcome", "error_class"),
              "authoritative writes by outcome (success, failure) and error class", "adapter"),
    MetricDoc("dualwrite_secondary_writes", "counter", ("migration", "outcome", "error_class"),
              "secondary (mirror) writes by outcome (attempt, success, failure) and error class", "adapter"),
    MetricDoc("dualwrite_shadow_compares", "counter", ("migration", "result"),
              "shadow-read comparisons: match, missing, extra, field_different, timeout, error, rechecked",
              "adapter"),
    MetricDoc("dualwrite_events", "counter", ("migration", "name", "label"),
              "repair-queue and relay events (enqueued, buffered, mirrored, failed)", "adapter"),
    MetricDoc("dualwrite_latency_seconds", "histogram", ("migration", "path"),
              "latency per store (old, new), of the authoritative part (primary), the whole adapter call "
              "(call) and reads (read)", "adapter"),
    MetricDoc("dualwrite_gauge", "gauge", ("migration", "name"), "relay lag (seconds) and depth; async queue "
              "depth (async.depth) and oldest entry age (async.oldest_seconds)", "adapter"),
    # -- worker: activities ----------------------------------------------------------------------------
    MetricDoc("dualwrite_activities", "counter", ("activity", "outcome"),
              "activities run by this worker: completed, failed, cancelled", "worker"),
    MetricDoc("dualwrite_activity_failures", "counter", ("activity", "error_type"),
              "failed activity attempts by failure type (StoreUnavailable, SchemaError, VerificationError, ...)",
              "worker"),
    MetricDoc("dualwrite_activity_seconds", "histogram", ("activity",), "activity duration", "worker"),
    MetricDoc("dualwrite_backfill_rows_copied", "counter", ("migration", "table"),
              "rows copied by this worker's backfill ranges", "worker"),
    # -- worker: migration gauges ---------------------------------------------------------------------
    MetricDoc("dualwrite_migration_phase", "gauge", ("migration", "phase"), "1 for the current phase", "worker"),
    MetricDoc("dualwrite_migration_epoch", "gauge", ("migration",), "published epoch", "worker"),
    MetricDoc("dualwrite_migration_paused", "gauge", ("migration",), "1 while paused", "worker"),
    MetricDoc("dualwrite_phase_override", "gauge", ("migration", "scope", "subject", "phase"),
              "1 per tenant / entity pinned to a phase (scope tenant or entity)", "worker"),
    MetricDoc("dualwrite_phase_ramp_percent", "gauge", ("migration", "phase"),
              "sticky ramp: share of subjects in the ramped phase", "worker"),
    MetricDoc("dualwrite_backfill_progress_ratio", "gauge", ("migration", "table"), "0..1 per table", "worker"),
    MetricDoc("dualwrite_backfill_rows", "gauge", ("migration", "table", "kind"),
              "rows copied / estimated (kind copied or estimate)", "worker"),
    MetricDoc("dualwrite_repair_queue_depth", "gauge", ("migration",),
              "keys waiting in the durable repair queue (reconciliation backlog)", "worker"),
    MetricDoc("dualwrite_bypassed_writes", "gauge", ("migration", "table"),
              "writes that bypassed the adapter (runtime bypass capture), collected since capture started; "
              "the writers are named in `dualwrite status`", "worker"),
    MetricDoc("dualwrite_old_store_refused_writes", "gauge", ("migration",),
              "after write cutover (adapter strategies): raw writes the old store refused, as counted at the last "
              "bypass collection; absent where not measured (SQLite, MySQL, Redis)", "worker"),
    MetricDoc("dualwrite_verification_rows_compared", "gauge", ("migration",),
              "rows compared by the last verification", "worker"),
    MetricDoc("dualwrite_verification_differences", "gauge", ("migration", "class"),
              "differences found by the last verification: missing, extra, field_different, repaired",
              "worker"),
    MetricDoc("dualwrite_verification_ok", "gauge", ("migration",), "1 when the last verification was clean",
              "worker"),
    MetricDoc("dualwrite_gate_passed", "gauge", ("migration", "to"),
              "last gate decision for entering a phase: 1 passed, 0 held", "worker"),
    MetricDoc("dualwrite_write_success_ratio", "gauge", ("migration", "store", "role"),
              "write success over the gate window, all application instances (role primary / secondary)",
              "worker"),
    MetricDoc("dualwrite_write_latency_seconds", "gauge", ("migration", "store", "quantile"),
              "write latency quantiles (0.5, 0.95, 0.99) per store over the gate window, all instances",
              "worker"),
    MetricDoc("dualwrite_write_latency_impact_ratio", "gauge", ("migration",),
              "p99 of the adapter call over p99 of the direct write, minus one", "worker"),
    MetricDoc("dualwrite_shadow_match_ratio", "gauge", ("migration",),
              "shadow-read match rate over the gate window, all instances", "worker"),
    MetricDoc("dualwrite_shadow_samples", "gauge", ("migration",), "shadow compares in the gate window",
              "worker"),
    MetricDoc("dualwrite_async_queue_depth", "gauge", ("migration",),
              "strategy async: most keys queued in one instance in the gate window", "worker"),
    MetricDoc("dualwrite_async_lag_seconds", "gauge", ("migration",),
              "strategy async: age of the oldest queued key, worst in the gate window", "worker"),
    MetricDoc("dualwrite_secondary_write_failures", "gauge", ("migration", "error_class"),
              "failed secondary writes in the gate window by error class", "worker"),
)


def metric_names(source: str | None = None) -> list[str]:
    return [m.name for m in CATALOGUE if source is None or m.source == source]


def _doc(name: str) -> MetricDoc:
    for m in CATALOGUE:
        if m.name == name:
            return m
    raise KeyError(name)


class WorkerMetrics:
    """The worker's metrics in one registry (a fresh one per worker, so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        def counter(name: str) -> Counter:
            d = _doc(name)
            return Counter(d.name, d.help, list(d.labels), registry=r)

        def gauge(name: str) -> Gauge:
            d = _doc(name)
            return Gauge(d.name, d.help, list(d.labels), registry=r)

        self.activities = counter("dualwrite_activities")
        self.activity_failures = counter("dualwrite_activity_failures")
        d = _doc("dualwrite_activity_seconds")
        self.activity_seconds = Histogram(d.name, d.help, list(d.labels), registry=r,
                                          buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200))
        self.backfill_rows_copied = counter("dualwrite_backfill_rows_copied")
        self.phase = gauge("dualwrite_migration_phase")
        self.epoch = gauge("dualwrite_migration_epoch")
        self.paused = gauge("dualwrite_migration_paused")
        self.override = gauge("dualwrite_phase_override")
        self.ramp = gauge("dualwrite_phase_ramp_percent")
        self.backfill_ratio = gauge("dualwrite_backfill_progress_ratio")
        self.backfill_rows = gauge("dualwrite_backfill_rows")
        self.repair_depth = gauge("dualwrite_repair_queue_depth")
        self.bypassed = gauge("dualwrite_bypassed_writes")
        self.old_refused = gauge("dualwrite_old_store_refused_writes")
        self.verify_rows = gauge("dualwrite_verification_rows_compared")
        self.verify_diff = gauge("dualwrite_verification_differences")
        self.verify_ok = gauge("dualwrite_verification_ok")
        self.gate_passed = gauge("dualwrite_gate_passed")
        self.write_success = gauge("dualwrite_write_success_ratio")
        self.write_latency = gauge("dualwrite_write_latency_seconds")
        self.latency_impact = gauge("dualwrite_write_latency_impact_ratio")
        self.match_ratio = gauge("dualwrite_shadow_match_ratio")
        self.shadow_samples = gauge("dualwrite_shadow_samples")
        self.secondary_failures = gauge("dualwrite_secondary_write_failures")
        self.async_depth = gauge("dualwrite_async_queue_depth")
        self.async_lag = gauge("dualwrite_async_lag_seconds")
        self._lock = threading.Lock()
        self._label_sets: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}

    # -- activities (called by the interceptor) ---------------------------------------------------------

    def activity_done(self, activity: str, seconds: float, *, outcome: str, error_type: str | None = None) -> None:
        self.activities.labels(activity, outcome).inc()
        self.activity_seconds.labels(activity).observe(seconds)
        if error_type:
            self.activity_failures.labels(activity, error_type).inc()

    def rows_copied(self, migration: str, table: str, rows: int) -> None:
        if rows > 0:
            self.backfill_rows_copied.labels(migration, table).inc(rows)

    # -- migration gauges ---------------------------------------------------------------------------------

    def _set(self, seen: set[tuple[Gauge, tuple[str, ...]]], gauge: Gauge, labels: tuple[str, ...],
             value: float | None) -> None:
        if value is None:
            return
        gauge.labels(*labels).set(value)
        seen.add((gauge, labels))

    def set_migration(self, migration: str, view: MigrationView) -> None:
        """Replace every gauge of one migration with ``view`` (label sets that vanished are removed, so an
        override that was lifted does not linger)."""
        seen: set[tuple[Gauge, tuple[str, ...]]] = set()
        m = migration
        for phase in PHASES:
            self._set(seen, self.phase, (m, phase), 1.0 if phase == view.phase else 0.0)
        self._set(seen, self.epoch, (m,), view.epoch)
        self._set(seen, self.paused, (m,), 1.0 if view.paused else 0.0)
        for scope, subjects in (("tenant", view.tenant_overrides), ("entity", view.entity_overrides)):
            for subject, phase in subjects.items():
                self._set(seen, self.override, (m, scope, subject, phase), 1.0)
        if view.ramp_phase:
            self._set(seen, self.ramp, (m, view.ramp_phase), view.ramp_percent)
        for table, (copied, estimate, ratio) in view.backfill.items():
            self._set(seen, self.backfill_ratio, (m, table), ratio)
            self._set(seen, self.backfill_rows, (m, table, "copied"), copied)
            self._set(seen, self.backfill_rows, (m, table, "estimate"), estimate)
        self._set(seen, self.repair_depth, (m,), view.repair_queue_depth)
        for table, n in view.bypassed.items():
            self._set(seen, self.bypassed, (m, table), n)
        if view.old_refused is not None:
            self._set(seen, self.old_refused, (m,), view.old_refused)
        if view.verification is not None:
            v = view.verification
            self._set(seen, self.verify_rows, (m,), v.get("rows_compared"))
            for cls in ("missing", "extra", "field_different", "repaired"):
                self._set(seen, self.verify_diff, (m, cls), v.get(cls, 0))
            self._set(seen, self.verify_ok, (m,), 1.0 if v.get("ok") else 0.0)
        for to, passed in view.gates.items():
            self._set(seen, self.gate_passed, (m, to), 1.0 if passed else 0.0)
        if view.window is not None:
            self._set_window(seen, m, view.phase, view.window)
        with self._lock:
            stale = self._label_sets.get(m, set()) - seen
            self._label_sets[m] = seen
        for gauge, labels in stale:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def forget_migration(self, migration: str) -> None:
        """A migration that finished: drop its gauges."""
        with self._lock:
            stale = self._label_sets.pop(migration, set())
        for gauge, labels in stale:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def _set_window(self, seen: set[tuple[Gauge, tuple[str, ...]]], m: str, phase: str,
                    w: st.StatsWindow) -> None:
        primary = "new" if phase in ("CUTOVER_WRITES", "CLEANUP", "DONE") else "old"
        secondary = "old" if primary == "new" else "new"
        p_ok, p_fail = w.count(st.PRIMARY, "success"), w.count(st.PRIMARY, "failure:*")
        if p_ok + p_fail:
            self._set(seen, self.write_success, (m, primary, "primary"), p_ok / (p_ok + p_fail))
        rate = w.secondary_success_rate()
        if rate is not None:
            self._set(seen, self.write_success, (m, secondary, "secondary"), rate)
        for store, hist in (("old", st.LAT_OLD), ("new", st.LAT_NEW)):
            for q in QUANTILES:
                ms = w.quantile(hist, q)
                if ms is not None:
                    self._set(seen, self.write_latency, (m, store, str(q)), ms / 1000.0)
        self._set(seen, self.latency_impact, (m,), w.p99_write_latency_impact())
        self._set(seen, self.match_ratio, (m,), w.shadow_match_rate())
        self._set(seen, self.shadow_samples, (m,), w.shadow_samples)
        for cls, n in w.failures_by_class(st.SECONDARY).items():
            self._set(seen, self.secondary_failures, (m, cls), n)
        self._set(seen, self.async_depth, (m,), w.gauges.get(st.ASYNC_DEPTH))
        self._set(seen, self.async_lag, (m,), w.gauges.get(st.ASYNC_AGE))

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


@dataclass
class MigrationView:
    """What the gauges of one migration show; built by the worker's monitor from the workflow status
    (a pydantic ``MigrationStatus``) and the control tables."""

    phase: str
    epoch: int = 0
    paused: bool = False
    tenant_overrides: Mapping[str, str] = ()  # type: ignore[assignment]
    entity_overrides: Mapping[str, str] = ()  # type: ignore[assignment]
    ramp_phase: str | None = None
    ramp_percent: float = 0.0
    backfill: Mapping[str, tuple[int, int, float]] = ()  # type: ignore[assignment]
    repair_queue_depth: int = 0
    verification: Mapping[str, Any] | None = None
    gates: Mapping[str, bool] = ()  # type: ignore[assignment]
    window: st.StatsWindow | None = None
    bypassed: Mapping[str, int] = ()  # type: ignore[assignment]
    old_refused: int | None = None

    def __post_init__(self) -> None:
        for name in ("tenant_overrides", "entity_overrides", "backfill", "gates", "bypassed"):
            if not isinstance(getattr(self, name), Mapping):
                setattr(self, name, {})

    @classmethod
    def from_status(cls, status: Any, overrides: Mapping[str, Any] | None = None,
                    window: st.StatsWindow | None = None) -> MigrationView:
        """``status`` is a ``workflows.models.MigrationStatus`` (duck-typed: no import of the workflows)."""
        ov = overrides or {}
        ramp = ov.get("ramp") if isinstance(ov.get("ramp"), Mapping) else None
        backfill: dict[str, tuple[int, int, float]] = {}
        for t in getattr(status, "tables", []) or []:
            est = max(int(t.rows_estimate or 0), 0)
            ratio = 1.0 if t.done else (min(1.0, t.rows_copied / est) if est else t.percent / 100.0)
            backfill[str(t.source)] = (int(t.rows_copied), est, ratio)
        v = getattr(status, "last_verification", None)
        verification = None if v is None else {
            "rows_compared": v.rows_compared, "missing": v.missing, "extra": v.extra,
            "field_different": v.field_different, "repaired": v.repaired, "ok": v.ok}
        gates: dict[str, bool] = {}
        gate = getattr(status, "gate", None)
        if isinstance(gate, Mapping) and gate.get("to"):
            gates[str(gate["to"])] = bool(gate.get("passed"))
        bypassed: dict[str, int] = {}
        for g in getattr(getattr(status, "bypass", None), "groups", None) or []:
            bypassed[str(g.table)] = bypassed.get(str(g.table), 0) + int(g.count)
        return cls(
            phase=str(getattr(status.phase, "value", status.phase)), epoch=int(status.epoch),
            paused=bool(status.paused),
            tenant_overrides={str(k): str(v) for k, v in (ov.get("tenants") or {}).items()},
            entity_overrides={str(k): str(v) for k, v in (ov.get("entities") or {}).items()},
            ramp_phase=str(ramp["phase"]) if ramp and ramp.get("phase") else None,
            ramp_percent=float(ramp.get("percent", 0)) if ramp else 0.0,
            backfill=backfill, repair_queue_depth=int(status.repair_queue_depth or 0),
            verification=verification, gates=gates, window=window, bypassed=bypassed,
            old_refused=getattr(getattr(status, "bypass", None), "old_refused", None))


# ---------------------------------------------------------------------------------------------------------
# one /metrics endpoint


class _Handler(http.server.BaseHTTPRequestHandler):
    registries: Iterable[CollectorRegistry] = ()
    upstream: str | None = None

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = b"".join(bytes(generate_latest(r)) for r in self.registries)
        if self.upstream:
            try:
                with urllib.request.urlopen(self.upstream, timeout=5) as resp:  # noqa: S310 - our own port
                    body += resp.read()
            except OSError as exc:
                log.warning("cannot read the Temporal runtime metrics (%s)", type(exc).__name__)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return  # a scrape every 15 s is not news


class MetricsServer:
    """``/metrics`` on ``host:port`` from a daemon thread: the given registries, then (when ``upstream``
    names the Temporal runtime's own endpoint) its text appended."""

    def __init__(self, port: int, host: str = "0.0.0.0", registries: Iterable[CollectorRegistry] = (),  # noqa: S104 - scraped from outside
                 upstream: str | None = None) -> None:
        handler = type("Handler", (_Handler,), {"registries": tuple(registries), "upstream": upstream})
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="dualwrite-metrics", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(port: int, host: str = "0.0.0.0", registry: CollectorRegistry | None = None) -> MetricsServer:  # noqa: S104 - scraped from outside
    """For applications: serve the adapter's metrics (the default registry unless one is given)."""
    from prometheus_client import REGISTRY  # noqa: PLC0415 - optional at run time

    return MetricsServer(port, host, [registry if registry is not None else REGISTRY])
