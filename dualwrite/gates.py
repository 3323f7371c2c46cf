"""Cutover gates and automatic rollback triggers, decided from numbers alone.

Why pure: the same decision is made by an activity (from the live statistics), by ``advance --dry-run``
and by the tests at exact boundary values, and none of them should need a database to agree that 999
matches out of 1,000 shadow reads is *not* "> 99.9 %". The inputs are counts (:class:`TrafficFacts`, the
merged ``dualwrite_stats`` windows of every application instance over a window, and
:class:`ReconFacts`, the last verification); the outputs are :class:`GateMetric` rows (value, threshold,
sample count, verdict) small enough for Temporal history and the Web UI. No row value ever appears here:
at most the key of a row a verification could not reconcile, like a key-range bound.

Verdicts: ``pass``; ``fail``; ``not-yet`` (too few samples, or no recent verification: never a pass);
``n/a`` (the spec asks for no samples, ``min_*_samples: 0``, and none were seen: it does not hold the gate).

Comparisons are exact decimal arithmetic (:class:`fractions.Fraction` of the printed float), so a value
exactly at its threshold behaves the same on every machine: it fails a strict ``>`` or ``<``.

Only :func:`read_traffic` touches a database (lazily imported), for the activities.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from dualwrite.capture import CaptureMethod, Evidence, method_for

if TYPE_CHECKING:
    from dualwrite.spec import Gates, RollbackTriggers
    from dualwrite.store import Store

SHADOW_MISMATCH_CLASSES = ("missing", "extra", "field_different")
TENANT_SCOPE_SEP = "#tenant="

#: where a traffic metric's evidence comes from (named in the metric's ``source`` and detail)
ADAPTER_SOURCE = "application adapters"
WORKER_SAMPLE_SOURCE = "worker shadow sample"
RELAY_SOURCE = "relay"
#: a relay further behind than this (the age of the oldest change it has not mirrored) holds the gate, for
#: every capture method whose relay runs behind the application's writes (``relay_lag_gated``)
MAX_RELAY_LAG_SECONDS = 60.0
#: the gates that read a Redis new store's intact marker (``new_store_intact``, :mod:`dualwrite.keyvalue.intact`):
#: into CUTOVER_READS, the first phase that serves from the new store, through CLEANUP. Before, a wiped new
#: store holds nothing the phases need yet and verification's repair copies it again; after CLEANUP the
#: marker is gone with the migration's other keys, and the old store is retired (nothing to copy from)
INTACT_GATED = frozenset({"CUTOVER_READS", "CUTOVER_WRITES", "CLEANUP"})


def _method(strategy: str | CaptureMethod) -> CaptureMethod:
    """The capture method the gates read their facts from: callers pass the spec's strategy (a ``Strategy``
    member or its name, as the workflow and the activities always have) or the method itself."""
    return strategy if isinstance(strategy, CaptureMethod) else method_for(strategy)


def _log_name(m: CaptureMethod) -> str:
    """What the relay mirrors from, in the operator's words."""
    if m.reads_database_log:
        return "the database's log"
    return "the outbox" if m.key_log == "dualwrite_outbox" else "the change log"


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NOT_YET = "not-yet"
    NA = "n/a"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GateMetric(_Model):
    """One metric of a gate (or of the rollback triggers) with its evidence."""

    name: str
    value: float | None = None
    threshold: float
    op: str = Field(description="how value must compare with threshold to pass: >, <, <=, >=, ==")
    samples: int = 0
    min_samples: int = 0
    verdict: Verdict
    detail: str = ""
    source: str = Field(default="", description="what produced the samples: application adapters, worker "
                                                "shadow sample, relay (empty: the workflow's own evidence)")

    @property
    def ok(self) -> bool:
        """Does this metric let the gate pass? (``not-yet`` never does.)"""
        return self.verdict in (Verdict.PASS, Verdict.NA)


class TrafficFacts(_Model):
    """What the gates read from the live statistics: merged counts of all instances over a window."""

    scope: str = Field(default="", description="the statistics scope read: '<migration>' or "
                                               "'<migration>#tenant=<id>'")
    window_seconds: float = 0.0
    instances: int = 0
    shadow_match: int = 0
    shadow_mismatch: dict[str, int] = Field(default_factory=dict, description="by class")
    secondary_success: int = 0
    secondary_failure: dict[str, int] = Field(default_factory=dict, description="by error class")
    primary_success: int = 0
    primary_failure: dict[str, int] = Field(default_factory=dict, description="by error class")
    p99_call_ms: float | None = None
    p99_direct_ms: float | None = None
    latency_samples: int = 0
    sampled_match: int = Field(default=0, description="the worker's own shadow comparisons (triggers)")
    sampled_mismatch: dict[str, int] = Field(default_factory=dict, description="worker samples, by class")
    sampled_in_flight: int = Field(default=0, description="worker samples still on their way (not judged)")
    sampled_exhaustive: int = Field(default=0, description="worker samples that compared every row of every "
                                                           "table (the tables are smaller than the sample)")
    relay_mirrored: int = Field(default=0, description="keys the relay mirrored from the key logs")
    relay_failed: int = Field(default=0, description="keys the relay could not mirror (sent to repair)")
    relay_lag_seconds: float | None = Field(default=None, description="the largest relay lag seen in the window")
    async_depth: float | None = Field(default=None, description="strategy async: most keys queued in one "
                                      "instance in the window (None: no instance writes async)")
    async_lag_seconds: float | None = Field(default=None, description="strategy async: oldest queued key's "
                                            "age, the worst seen in the window")
    async_unclean: list[str] = Field(default_factory=list, description="async instances that stopped in the "
                                     "window without a clean close (their queued keys may be lost)")

    @property
    def shadow_samples(self) -> int:
        return self.shadow_match + sum(self.shadow_mismatch.values())

    @property
    def sampled_samples(self) -> int:
        return self.sampled_match + sum(self.sampled_mismatch.values())

    @property
    def secondary_failures(self) -> int:
        return sum(self.secondary_failure.values())

    @property
    def primary_failures(self) -> int:
        return sum(self.primary_failure.values())

    @property
    def empty(self) -> bool:
        return not (self.shadow_samples or self.secondary_success or self.secondary_failures
                    or self.primary_success or self.primary_failures or self.latency_samples
                    or self.sampled_samples or self.relay_mirrored or self.relay_failed)

    @classmethod
    def from_window(cls, window: Any, *, scope: str = "", seconds: float = 0.0) -> TrafficFacts:
        """From a merged :class:`dualwrite.stats.StatsWindow` (duck-typed, so this module stays pure)."""
        from dualwrite import stats as st  # noqa: PLC0415 - keep the pure part free of the store layer

        counters: Mapping[str, Mapping[str, int]] = window.counters

        def failures(name: str) -> dict[str, int]:
            return {k.split(":", 1)[1]: int(n) for k, n in counters.get(name, {}).items() if k.startswith("failure:")}

        shadow = counters.get(st.SHADOW, {})
        sampled = counters.get(st.SHADOW_SAMPLE, {})
        relay = counters.get(st.RELAY, {})
        lag = window.gauges.get(st.RELAY_LAG)
        call, direct = window.histograms.get(st.LAT_CALL), window.histograms.get(st.LAT_DIRECT)
        return cls(
            scope=scope, window_seconds=seconds, instances=len(window.instances),
            shadow_match=int(shadow.get("match", 0)),
            shadow_mismatch={c: int(shadow[c]) for c in SHADOW_MISMATCH_CLASSES if shadow.get(c)},
            secondary_success=int(counters.get(st.SECONDARY, {}).get("success", 0)),
            secondary_failure=failures(st.SECONDARY),
            primary_success=int(counters.get(st.PRIMARY, {}).get("success", 0)),
            primary_failure=failures(st.PRIMARY),
            p99_call_ms=window.quantile(st.LAT_CALL, 0.99), p99_direct_ms=window.quantile(st.LAT_DIRECT, 0.99),
            latency_samples=min(call.count if call is not None else 0, direct.count if direct is not None else 0),
            sampled_match=int(sampled.get("match", 0)),
            sampled_mismatch={c: int(sampled[c]) for c in SHADOW_MISMATCH_CLASSES if sampled.get(c)},
            sampled_in_flight=int(sampled.get("in_flight", 0)),
            sampled_exhaustive=int(sampled.get("exhaustive", 0)),
            relay_mirrored=int(relay.get("mirrored", 0)), relay_failed=int(relay.get("failed", 0)),
            relay_lag_seconds=None if lag is None else float(lag),
            async_depth=window.gauges.get(st.ASYNC_DEPTH), async_lag_seconds=window.gauges.get(st.ASYNC_AGE),
        )


class ReconFacts(_Model):
    """The last verification, as the reconciliation metric needs it (counts, names, a few keys)."""

    at: datetime | None = None
    direction: str = ""
    expected_direction: str = "old->new"
    rows_compared: int = 0
    unresolved: int = 0
    repaired: int = 0
    problems: list[str] = Field(default_factory=list, description="per table: what is unresolved, the "
                                                                  "differing fields and a few keys")
    empty_allowed: bool = Field(default=False, description="every table verified is empty and the spec allows "
                                                           "it (allow_empty): zero rows compared is a pass")


class RepairTable(_Model):
    """One table's keys in the repair queue when a gate is decided (counts, never keys)."""

    table: str
    keys: int = Field(description="distinct keys of the table queued")
    of_scope: int = Field(description="of those, the keys of the scope that moves")
    attempts: int = Field(default=0, description="the most attempts any of them has had")


class RepairFacts(_Model):
    """What the repair queue holds when a gate is decided, and how much of it belongs to the scope that moves.

    The same count as the write fence's (``dualwrite.stuck_repairs``): the whole queue when the migration moves;
    when a tenant moves, its keys of tables that move by tenant and those whose tenant cannot be told, never a
    shared table's or another tenant's (those wait for their own move)."""

    scope: str = Field(description="'tenant <id>' or 'the migration'")
    queued: int = Field(description="keys queued for the whole migration")
    of_scope: int = Field(description="keys of the scope that moves: they hold its gate")
    tables: list[RepairTable] = Field(default_factory=list)

    def per_table(self, *, of_scope: bool = True) -> str:
        """'table T: N key(s) after A attempt(s); ...' for the scope's keys (or for the others')."""
        parts = []
        for t in self.tables:
            n = t.of_scope if of_scope else t.keys - t.of_scope
            if n > 0:
                parts.append(f"table {t.table}: {n:,} key(s) after {t.attempts} attempt(s)")
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# exact comparisons


def _dec(x: float) -> Fraction:
    """A float as the decimal it prints as (0.999 is 999/1000, not the nearest binary fraction)."""
    return Fraction(repr(float(x)))


def _pct(x: float | Fraction | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{float(x) * 100:.{digits}f}".rstrip("0").rstrip(".") + "%"


def _classes(by_class: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(by_class.items()) if v)


def _too_few(name: str, value: float | None, threshold: float, op: str, samples: int, min_samples: int,
             what: str) -> GateMetric | None:
    """The not-yet / n/a verdicts shared by every sampled metric, or None when there are enough samples."""
    if samples == 0 and min_samples == 0:
        return GateMetric(name=name, value=None, threshold=threshold, op=op, samples=0, min_samples=0,
                          verdict=Verdict.NA, detail=f"no {what} in the window; the spec requires none")
    if samples < max(min_samples, 1):
        return GateMetric(name=name, value=value, threshold=threshold, op=op, samples=samples,
                          min_samples=min_samples, verdict=Verdict.NOT_YET,
                          detail=f"{samples:,} of the {max(min_samples, 1):,} {what} needed")
    return None


def rate_above(name: str, good: int, total: int, threshold: float, min_samples: int, what: str,
               bad: Mapping[str, int] | None = None) -> GateMetric:
    """``good / total`` must be strictly greater than ``threshold``, over at least ``min_samples``."""
    value = good / total if total else None
    early = _too_few(name, value, threshold, ">", total, min_samples, what)
    if early is not None:
        return early
    passed = Fraction(good, total) > _dec(threshold)
    failed = total - good
    detail = (f"{good:,} of {total:,} {what} ok ({_pct(value)}), {failed:,} not"
              + (f" ({_classes(bad)})" if bad and _classes(bad) else "")
              + f"; needs > {_pct(threshold)}")
    return GateMetric(name=name, value=value, threshold=threshold, op=">", samples=total,
                      min_samples=min_samples, verdict=Verdict.PASS if passed else Verdict.FAIL, detail=detail)


def rate_at_most(name: str, bad: int, total: int, maximum: float, min_samples: int, noun: str, verb: str,
                 by_class: Mapping[str, int] | None = None) -> GateMetric:
    """For triggers: ``bad / total`` must stay at or below ``maximum``; above it the metric fails (trips)."""
    value = bad / total if total else None
    early = _too_few(name, value, maximum, "<=", total, min_samples, noun)
    if early is not None:
        return early
    tripped = Fraction(bad, total) > _dec(maximum)
    detail = (f"{bad:,} of {total:,} {noun} {verb} ({_pct(value)})"
              + (f": {_classes(by_class)}" if by_class and _classes(by_class) else "")
              + f"; limit {_pct(maximum)}")
    return GateMetric(name=name, value=value, threshold=maximum, op="<=", samples=total, min_samples=min_samples,
                      verdict=Verdict.FAIL if tripped else Verdict.PASS, detail=detail)


# ---------------------------------------------------------------------------------------------------------
# the gate's metrics


def _sourced(m: GateMetric, source: str) -> GateMetric:
    """Name where a metric's samples came from (in its ``source`` and, for the worker's own evidence, in
    the detail line the operator reads)."""
    m.source = source
    if source != ADAPTER_SOURCE:
        m.detail = f"{source}: {m.detail}"
    return m


def shadow_match_metric(t: TrafficFacts, g: Gates, strategy: str | CaptureMethod = "sync") -> GateMetric:
    """Shadow reads of the application adapters; where no adapter reads both stores (``Evidence.WORKER``:
    triggers, cdc) the worker's own samples."""
    if _method(strategy).evidence is Evidence.WORKER:
        # tables smaller than the sample: comparing every row of them is all the evidence there can be
        whole = t.sampled_exhaustive > 0 and t.sampled_samples > 0
        need = min(g.min_shadow_samples, t.sampled_samples) if whole else g.min_shadow_samples
        m = rate_above("shadow_match_rate", t.sampled_match, t.sampled_samples, g.shadow_match_rate,
                       need, "rows compared", t.sampled_mismatch)
        if whole and need < g.min_shadow_samples:
            m.min_samples = g.min_shadow_samples
            m.detail += f" (every row of every table compared: fewer than the {g.min_shadow_samples:,} asked)"
        if t.sampled_in_flight:
            m.detail += f" ({t.sampled_in_flight:,} more still on their way, not judged)"
        return _sourced(m, WORKER_SAMPLE_SOURCE)
    return _sourced(rate_above("shadow_match_rate", t.shadow_match, t.shadow_samples, g.shadow_match_rate,
                               g.min_shadow_samples, "shadow reads", t.shadow_mismatch), ADAPTER_SOURCE)


def write_success_metric(t: TrafficFacts, g: Gates, strategy: str | CaptureMethod = "sync") -> GateMetric:
    """Secondary writes: the adapter's own (inline methods), or the relay's mirrors (relayed methods: outbox,
    triggers, cdc, where the relay makes the secondary writes: keys mirrored against keys it had to send to
    repair)."""
    if _method(strategy).relayed:
        good = t.relay_mirrored + t.secondary_success
        bad = {"relay": t.relay_failed} if t.relay_failed else {}
        bad.update(t.secondary_failure)
        return _sourced(rate_above("secondary_write_success_rate", good, good + sum(bad.values()),
                                   g.secondary_write_success_rate, g.min_write_samples, "mirrored keys", bad),
                        RELAY_SOURCE)
    total = t.secondary_success + t.secondary_failures
    return _sourced(rate_above("secondary_write_success_rate", t.secondary_success, total,
                               g.secondary_write_success_rate, g.min_write_samples, "secondary writes",
                               t.secondary_failure), ADAPTER_SOURCE)


def relay_lag_metric(t: TrafficFacts, g: Gates | None = None) -> GateMetric:
    """``relay_lag_gated`` methods (triggers, cdc): the relay must keep up; its largest lag in the window
    stays below :data:`MAX_RELAY_LAG_SECONDS` (a relay that stopped shows as a growing age of the oldest
    entry). No lag measured is ``not-yet``, or ``n/a`` where the spec asks for no write samples
    (``min_write_samples: 0``), as for the other metrics."""
    name, thr = "relay_lag_seconds", MAX_RELAY_LAG_SECONDS
    if t.relay_lag_seconds is None and g is not None and g.min_write_samples == 0:
        return _sourced(GateMetric(name=name, threshold=thr, op="<", samples=0, min_samples=0, verdict=Verdict.NA,
                                   detail="no relay lag measured in the window; the spec requires none"),
                        RELAY_SOURCE)
    if t.relay_lag_seconds is None:
        return _sourced(GateMetric(name=name, threshold=thr, op="<", samples=0, min_samples=1,
                                   verdict=Verdict.NOT_YET, detail="no relay lag measured in the window"),
                        RELAY_SOURCE)
    lag = t.relay_lag_seconds
    return _sourced(GateMetric(name=name, value=lag, threshold=thr, op="<", samples=1, min_samples=1,
                               verdict=Verdict.PASS if lag < thr else Verdict.FAIL,
                               detail=f"largest lag {lag:.1f}s in the window; needs < {thr:.0f}s"), RELAY_SOURCE)


def latency_metric(t: TrafficFacts, g: Gates, strategy: str | CaptureMethod = "sync") -> GateMetric:
    """Adapter p99 over the authoritative write's p99, minus one, must stay below the allowed increase.

    Not applicable where the method is not ``latency_measurable`` (triggers, cdc): the application writes
    straight to the database, so there is no adapter call to time against the write alone (the capture's
    cost is inside the application's own write and cannot be separated from it). It is said so in the
    evidence, and it does not hold the gate."""
    name, thr = "p99_latency_impact", g.p99_latency_increase
    m = _method(strategy)
    if not m.latency_measurable:
        cost = ("the capture trigger's cost is part of the application's own write" if m.key_log else
                "the log capture's cost is part of the database's own commit")
        return GateMetric(name=name, threshold=thr, op="<", verdict=Verdict.NA,
                          detail=f"not measurable with {m.name}: no adapter in the application to time; {cost}")
    impact = None
    if t.p99_call_ms is not None and t.p99_direct_ms:
        impact = t.p99_call_ms / t.p99_direct_ms - 1.0
    early = _too_few(name, impact, thr, "<", t.latency_samples, g.min_latency_samples, "timed writes")
    if early is not None:
        return early
    if impact is None or t.p99_call_ms is None or not t.p99_direct_ms:
        return GateMetric(name=name, threshold=thr, op="<", samples=t.latency_samples,
                          min_samples=g.min_latency_samples, verdict=Verdict.NOT_YET,
                          detail="no latency histogram for the direct write")
    passed = _dec(t.p99_call_ms) < _dec(t.p99_direct_ms) * (1 + _dec(thr))
    detail = (f"adapter p99 {t.p99_call_ms:.3g} ms vs authoritative write p99 {t.p99_direct_ms:.3g} ms: "
              f"{'+' if impact >= 0 else ''}{_pct(impact, 1)}; needs < +{_pct(thr, 1)}")
    return GateMetric(name=name, value=impact, threshold=thr, op="<", samples=t.latency_samples,
                      min_samples=g.min_latency_samples, verdict=Verdict.PASS if passed else Verdict.FAIL,
                      detail=detail)


def backfill_metric(percent: int, done: bool, tables: int) -> GateMetric:
    complete = done and percent >= 100
    return GateMetric(name="backfill_completion", value=min(percent, 100) / 100, threshold=1.0, op=">=",
                      samples=tables if complete else 0, min_samples=tables,
                      verdict=Verdict.PASS if complete else Verdict.FAIL,
                      detail="every table copied and verified" if complete else
                      f"backfill is {percent}% done, needs 100%")


def reconciliation_metric(r: ReconFacts, now: datetime, window_seconds: float) -> GateMetric:
    """Unresolved differences of a verification younger than the window, in the right direction: 0."""
    name = "reconciliation_gap"

    def metric(verdict: Verdict, detail: str, value: float | None = None) -> GateMetric:
        return GateMetric(name=name, value=value, threshold=0, op="==", samples=r.rows_compared,
                          min_samples=1, verdict=verdict, detail=detail)

    if r.at is None:
        return metric(Verdict.NOT_YET, "no verification has run yet")
    age = (now - r.at).total_seconds()
    if age > window_seconds:
        return metric(Verdict.NOT_YET, f"the last verification is {age:.0f}s old; needs one younger than "
                                       f"{window_seconds:.0f}s")
    if r.direction != r.expected_direction:
        return metric(Verdict.NOT_YET, f"the last verification compared {r.direction}; needs "
                                       f"{r.expected_direction}")
    if r.rows_compared <= 0 and not (r.empty_allowed and not r.unresolved):
        return metric(Verdict.FAIL, "the last verification compared zero rows (a verifier must prove it looked)"
                      + (": " + "; ".join(r.problems) if r.problems else
                         "; a table meant to be empty needs 'allow_empty: true' in the spec"), float(r.unresolved))
    if r.rows_compared <= 0:
        return metric(Verdict.PASS, f"every table is empty and allowed to be (allow_empty), verified {r.direction} "
                                    f"{age:.0f}s ago", 0.0)
    if r.unresolved:
        return metric(Verdict.FAIL, f"{r.unresolved:,} unresolved of {r.rows_compared:,} rows compared "
                                    f"{r.direction}: " + "; ".join(r.problems), float(r.unresolved))
    repaired = f", {r.repaired:,} repaired" if r.repaired else ""
    return metric(Verdict.PASS, f"{r.rows_compared:,} rows compared {r.direction} {age:.0f}s ago, none "
                                f"unresolved{repaired}", 0.0)


def repair_queue_metric(depth: int, facts: RepairFacts | None = None) -> GateMetric:
    """An empty repair queue - of the scope that moves when ``facts`` says which keys are its own (a tenant's
    gate is not held by another tenant's key, nor by a shared table's); ``depth`` alone counts every key."""
    if facts is None:
        return GateMetric(name="repair_queue", value=float(depth), threshold=0, op="==", samples=1, min_samples=1,
                          verdict=Verdict.PASS if depth == 0 else Verdict.FAIL,
                          detail="no key waits for repair" if depth == 0 else
                          f"{depth:,} keys wait in the repair queue")
    n, others = facts.of_scope, facts.queued - facts.of_scope
    of = "" if facts.scope == "the migration" else f" of {facts.scope}"
    if n == 0:
        detail = f"no key{of} waits for repair"
    else:
        detail = f"{n:,} keys{of} wait in the repair queue ({facts.per_table() or 'no breakdown'})"
    if others > 0:
        detail += (f" ({others:,} key(s) of other tenants or shared tables wait for their own move: "
                   f"{facts.per_table(of_scope=False)})")
    return GateMetric(name="repair_queue", value=float(n), threshold=0, op="==", samples=1, min_samples=1,
                      verdict=Verdict.PASS if n == 0 else Verdict.FAIL, detail=detail)


def approval_metric(approved: bool, to: str) -> GateMetric:
    return GateMetric(name="approval", value=1.0 if approved else 0.0, threshold=1, op="==", samples=1,
                      min_samples=1, verdict=Verdict.PASS if approved else Verdict.FAIL,
                      detail="approved" if approved else f"the spec requires an approval to enter {to}")


def async_lag_metric(t: TrafficFacts, g: Gates) -> GateMetric:
    """strategy async: the secondary's lag (the oldest queued key of any instance, worst in the window)."""
    lag = t.async_lag_seconds or 0.0
    if t.async_unclean:
        return GateMetric(name="async_lag_seconds", value=lag, threshold=g.max_async_lag_seconds, op="<=",
                          samples=1, min_samples=1, verdict=Verdict.FAIL,
                          detail=f"{len(t.async_unclean)} async instance(s) stopped without a clean close in the "
                                 f"window ({', '.join(t.async_unclean[:3])}): keys they had queued may be missing "
                                 "from the other store; the gate holds until they leave the window, and then "
                                 "needs a verification younger than it (run one with repair to level them now)")
    passed = _dec(lag) <= _dec(g.max_async_lag_seconds)
    return GateMetric(name="async_lag_seconds", value=lag, threshold=g.max_async_lag_seconds, op="<=", samples=1,
                      min_samples=1, verdict=Verdict.PASS if passed else Verdict.FAIL,
                      detail=f"the async queue lagged at most {lag:.3g}s ({int(t.async_depth or 0):,} keys queued "
                             f"at most) in the window; needs <= {g.max_async_lag_seconds:g}s")


def traffic_metrics(t: TrafficFacts | None, g: Gates, strategy: str | CaptureMethod = "sync"
                    ) -> list[GateMetric]:
    """The metrics read from the live statistics (not-yet for all of them without statistics); which
    evidence each capture method provides is :func:`evidence_sources`; the async lag only when an instance
    writes with the async strategy."""
    facts = t if t is not None else TrafficFacts()
    m = _method(strategy)
    out = [shadow_match_metric(facts, g, m), write_success_metric(facts, g, m), latency_metric(facts, g, m)]
    if m.relay_lag_gated:
        out.append(relay_lag_metric(facts, g))
    if facts.async_lag_seconds is not None:
        out.append(async_lag_metric(facts, g))
    return out


def evidence_sources(strategy: str | CaptureMethod) -> list[tuple[str, str]]:
    """(metric, where its evidence comes from) for a strategy: what ``dualwrite check`` tells the operator."""
    m = _method(strategy)
    log = _log_name(m)
    if m.evidence is Evidence.WORKER:
        shadow = ("shadow_match_rate", f"the worker's shadow samples: recently changed keys (from {log}, "
                                       "once mirrored) and random key ranges, read from both stores and compared")
    else:
        shadow = ("shadow_match_rate", "the application adapters' shadow reads (SHADOW_READ / CUTOVER_READS)")
    if m.relayed:
        write = ("secondary_write_success_rate", f"the relay: keys mirrored from {log} vs keys it had to send to "
                                                 "repair")
    else:
        write = ("secondary_write_success_rate", "the application adapters' in-line secondary writes")
    out = [shadow, write]
    if m.relay_lag_gated:
        what = "change" if m.reads_database_log else "change-log entry"
        out.append(("relay_lag_seconds", f"the relay: age of the oldest unmirrored {what}, below "
                                         f"{MAX_RELAY_LAG_SECONDS:.0f}s"))
    if m.latency_measurable:
        out.append(("p99_latency_impact", "the application adapters: whole call vs authoritative write, p99"))
    else:
        out.append(("p99_latency_impact", "not applicable: no adapter in the application to time (does not hold "
                                          "the gate)"))
    return out


def reasons(metrics: list[GateMetric]) -> list[str]:
    """One line per metric that holds the gate, for the operator."""
    return [f"{m.name} {m.verdict.value}: {m.detail}" for m in metrics if not m.ok]


# ---------------------------------------------------------------------------------------------------------
# automatic rollback triggers


class TriggerEvaluation(_Model):
    tripped: bool
    metrics: list[GateMetric] = Field(default_factory=list)
    reason: str = ""
    scope: str = ""


def new_store_errors(t: TrafficFacts, phase: str) -> tuple[int, int, dict[str, int], str]:
    """(failures, attempts, by class, noun) of writes to the *new* store in ``phase``: it is the secondary
    until write cutover (CUTOVER_READS) and the primary from then on (CUTOVER_WRITES)."""
    if phase == "CUTOVER_WRITES":
        return (t.primary_failures, t.primary_success + t.primary_failures, t.primary_failure,
                "writes to the new store (authoritative)")
    return (t.secondary_failures, t.secondary_success + t.secondary_failures, t.secondary_failure,
            "writes to the new store (mirror)")


def evaluate_triggers(t: TrafficFacts, phase: str, cfg: RollbackTriggers, strategy: str | CaptureMethod = "sync"
                      ) -> TriggerEvaluation:
    """Should the workflow roll back one step by itself? Too few samples never trips. Where no adapter reads
    both stores (``Evidence.WORKER``: triggers, cdc) the shadow evidence is the worker's samples; where no
    adapter writes at all (not ``through_adapter``), before write cutover the relay's failed mirrors are the
    new store's write errors."""
    m = _method(strategy)
    if m.evidence is Evidence.WORKER:
        shadow = rate_at_most("shadow_mismatch_rate", sum(t.sampled_mismatch.values()), t.sampled_samples,
                              cfg.max_shadow_mismatch_rate, cfg.min_shadow_samples, "rows sampled by the worker",
                              "mismatched", t.sampled_mismatch)
    else:
        mism = sum(t.shadow_mismatch.values())
        shadow = rate_at_most("shadow_mismatch_rate", mism, t.shadow_samples, cfg.max_shadow_mismatch_rate,
                              cfg.min_shadow_samples, "shadow reads", "mismatched", t.shadow_mismatch)
    bad, total, by_class, noun = new_store_errors(t, phase)
    if not m.through_adapter and phase != "CUTOVER_WRITES":
        bad, total = t.relay_failed, t.relay_mirrored + t.relay_failed
        by_class, noun = ({"relay": t.relay_failed} if t.relay_failed else {}), "writes to the new store (relay)"
    errors = rate_at_most("new_store_error_rate", bad, total, cfg.max_new_store_error_rate, cfg.min_write_samples,
                          noun, "failed", by_class)
    metrics = [shadow, errors]
    tripped = [m for m in metrics if m.verdict is Verdict.FAIL]
    reason = "; ".join(f"{m.name} {_pct(m.value, 2)} > {_pct(m.threshold, 2)} ({m.detail})" for m in tripped)
    if tripped:
        reason += f" over the last {t.window_seconds:.0f}s"
    return TriggerEvaluation(tripped=bool(tripped), metrics=metrics, reason=reason, scope=t.scope)


# ---------------------------------------------------------------------------------------------------------
# reading the statistics (activities only)


def stats_scope(migration: str, tenant: str | None = None) -> str:
    """The ``migration`` value under which statistics of one tenant are flushed, when an application does.

    Applications flush migration-wide windows; an adapter may also flush per-tenant windows under this
    scope. The gate of a tenant prefers them and falls back to the migration-wide ones (the evidence says
    which scope it read)."""
    return migration if tenant is None else f"{migration}{TENANT_SCOPE_SEP}{tenant}"


def read_traffic(store: Store, migration: str, seconds: float, tenant: str | None = None, *,
                 ensure_schema: bool = True) -> TrafficFacts:
    """Merge every instance's windows of the last ``seconds`` (the tenant's scope first, when it has any).

    ``ensure_schema``: create ``dualwrite_stats`` first (a gate may run before any application flushed)."""
    from dualwrite import stats as st  # noqa: PLC0415 - the store layer stays out of the pure part

    if ensure_schema:
        st.ensure_schema(store)
    seconds = max(1.0, float(seconds))
    if tenant is not None:
        scope = stats_scope(migration, tenant)
        facts = TrafficFacts.from_window(st.read_stats(store, scope, seconds), scope=scope, seconds=seconds)
        if not facts.empty:
            return facts
    facts = TrafficFacts.from_window(st.read_stats(store, migration, seconds), scope=migration, seconds=seconds)
    if facts.async_lag_seconds is not None:
        facts.async_unclean = st.unclean_async_instances(store, migration, seconds)
    return facts
