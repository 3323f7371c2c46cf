"""Cutover gates and automatic rollback triggers: read the live statistics, apply the pure rules."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from temporalio import activity

from activities.errors import mapped_errors, safe_message
from activities.heartbeat import heartbeating, raise_if_stopping, sleep
from activities.sample import sample_and_record
from activities.stores import StoreCache
from dualwrite import gates
from dualwrite.capture import Evidence, method_for
from dualwrite.cdc import capture as cdc_capture
from dualwrite.cdc.gate import capture_lost_metric
from dualwrite.gates import GateMetric
from dualwrite.keyvalue.authority import durability_metric
from dualwrite.keyvalue.intact import intact_metric
from dualwrite.spec import MigrationSpec, Strategy
from dualwrite.stores import is_redis
from dualwrite.stuck_repairs import gate_facts, stuck_tables
from workflows import phases
from workflows.models import ActivityNames, GateInput, GateResult, Phase, TriggerWatchInput, TriggerWatchResult

__all__ = ["GateActivities"]

log = logging.getLogger("dualwrite.activities")


class GateActivities:
    """The gate and the rollback-trigger watch, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache) -> None:
        self.stores = stores

    @activity.defn(name=ActivityNames.EVALUATE_GATE, no_thread_cancel_exception=True)
    def evaluate_gate(self, inp: GateInput) -> GateResult:
        """Decide a gate: read the live statistics of the window (every application instance's flushed
        windows, merged; the tenant's own scope when there is one) and apply the pure rules to them and to
        the workflow's evidence. The result, with every metric's value / threshold / samples / verdict, is
        what history records."""
        with mapped_errors(), heartbeating():
            spec, digest = self.stores.spec_of(inp)
            traffic = None
            if inp.to in phases.TRAFFIC_GATED:
                store = self.stores.control_store(spec.control)
                traffic = gates.read_traffic(store, spec.name, spec.gates.window_seconds, inp.tenant)
            result = phases.evaluate_gate(inp, traffic, spec, self._repairs(inp, spec, digest))
            new = self.stores.store(spec.new)
            extra = _capture_lost_metrics(self.stores, spec, inp)
            if is_redis(new):
                extra += _redis_metrics(new, spec.name, inp)
            for metric in extra:
                result.metrics.append(metric)
                result.checks[metric.name] = metric.ok
                if not metric.ok:
                    result.passed = False
                    result.reasons.append(f"{metric.name}: {metric.detail}")
            return result

    def _repairs(self, inp: GateInput, spec: MigrationSpec, digest: str) -> gates.RepairFacts | None:
        """The repair queue as the gate's scope sees it, read when the workflow's drain has left keys in it
        (``repair_queue_depth``): a tenant's gate counts only the keys that would hold its flip at the write
        fence (its own, and those whose tenant cannot be told), the migration's every key (rule 3; [T2-5])."""
        if not inp.repair_queue_depth:
            return None
        ctl = self.stores.control_store(spec.control)
        rs = self.stores.relay_stores(spec, digest)
        stuck = stuck_tables(ctl, spec.name, tenant=inp.tenant,
                             tenant_columns={t.source: t.tenant_column for t in spec.tables},
                             old=rs.old, new=rs.new, mapping_for=rs.mapping_for)
        return gate_facts(stuck, inp.tenant)

    @activity.defn(name=ActivityNames.WATCH_TRIGGERS, no_thread_cancel_exception=True)
    def watch_rollback_triggers(self, inp: TriggerWatchInput) -> TriggerWatchResult:
        """Read the statistics every ``check_seconds`` and return as soon as a rollback trigger trips (or,
        quietly, after ``max_seconds``), so a healthy cutover costs a few history events per period.

        Statistics flushed before a scope entered its phase are left out (the window shrinks to the time
        since); too few samples never trips. Heartbeats also come from a background thread while it sleeps
        between checks, so its heartbeat timeout need not grow with ``check_seconds``."""
        with mapped_errors(), heartbeating():
            spec, _ = self.stores.spec_of(inp)
            cfg = spec.rollback_triggers
            store = self.stores.control_store(spec.control)
            method = method_for(spec.strategy)
            # no adapter compares reads (triggers, cdc): the worker samples rows for the shadow-mismatch trigger
            worker_samples = method.evidence is Evidence.WORKER
            started = time.monotonic()
            out = TriggerWatchResult()
            while True:
                if worker_samples:
                    try:
                        sample_and_record(self.stores, spec, cfg.min_shadow_samples, 2.0)
                    except Exception as exc:  # noqa: BLE001 - no sample this round: the triggers see fewer
                        log.warning("worker shadow sample for the rollback triggers failed: %s", safe_message(exc))
                now = datetime.now(UTC)
                for scope in inp.scopes:
                    since = scope.since if scope.since.tzinfo else scope.since.replace(tzinfo=UTC)
                    seconds = min(float(cfg.window_seconds), max(1.0, (now - since).total_seconds()))
                    traffic = gates.read_traffic(store, spec.name, seconds, scope.tenant,
                                                 ensure_schema=not out.checks)
                    evaluation = gates.evaluate_triggers(traffic, scope.phase.value, cfg, spec.strategy.value)
                    out.evaluation, out.tenant, out.phase = evaluation, scope.tenant, scope.phase
                    if evaluation.tripped:
                        out.tripped = True
                        return out
                out.checks += 1
                activity.heartbeat(out.checks)
                if time.monotonic() - started >= inp.max_seconds:
                    return out
                sleep(cfg.check_seconds)
                raise_if_stopping()


def _capture_lost_metrics(stores: StoreCache, spec: MigrationSpec, inp: GateInput) -> list[GateMetric]:
    """Log capture that lost changes holds every gate into CUTOVER_READS and beyond until a verification
    with repair ran after the loss (:mod:`dualwrite.cdc.gate`)."""
    if spec.strategy is not Strategy.CDC or inp.to.rank < Phase.CUTOVER_READS.rank:
        return []
    rs = stores.relay_stores(spec)
    lost = cdc_capture.losses_at(rs.control, spec.name, [rs.old, rs.new])
    v = inp.last_verification
    metric = capture_lost_metric(lost, v.at if v is not None else None, v is not None and v.ok,
                                 v is not None and v.repair and v.tenant is None)
    return [metric] if metric is not None else []


def _redis_metrics(new: Any, migration: str, inp: GateInput) -> list[GateMetric]:
    """A Redis new store's own gate metrics: intact since PREPARE (into CUTOVER_READS through CLEANUP:
    ``gates.INTACT_GATED``), and, at CUTOVER_WRITES, durable (keeps its data on disk, never evicts; a forced
    advance with a reason overrides it, recorded in the transition history)."""
    out: list[GateMetric] = []
    if inp.to.value in gates.INTACT_GATED:
        v = inp.last_verification
        now = inp.at or datetime.now(UTC)
        clean = v is not None and v.verdict == "ok"  # one that had to repair is no proof of equality
        out.append(intact_metric(new, migration, v.at if v is not None else None, clean,
                                 now if now.tzinfo else now.replace(tzinfo=UTC)))
    if inp.to is Phase.CUTOVER_WRITES:
        out.append(durability_metric(new))
    return out
