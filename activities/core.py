"""The activities: thin adapters from Temporal to the dualwrite core.

They own two things the core does not know about:

- **heartbeats**: long-running activities (a whole key range, a whole table verification, a repair
  long-poll) heartbeat their cursor after every committed batch, and watch cancellation and worker
  shutdown between batches;
- **error mapping**: a bad spec, a schema mismatch or an unknown store is permanent and becomes a
  non-retryable ``ApplicationError`` whose type is the dualwrite error class; an unreachable store is
  retryable. Messages that reach history are redacted and cut to their first line, because database
  errors append row images ("Failing row contains ...") in their detail lines (DESIGN rules 6 and 7).

Every activity is synchronous (the drivers block) and runs on the worker's thread pool.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import random
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.owners import OwnerCheck
from activities.stores import StoreCache
from dualwrite import control, gates, hooks
from dualwrite.config import StoreResolver, redact
from dualwrite.backfill_copy import CopyProgress, copy_range, plan_bounds
from dualwrite.errors import (
    ConfigError,
    DualwriteError,
    RowRejectedError,
    SchemaError,
    StorePermissionError,
    StoreUnavailableError,
    is_permanent,
    is_permission_denied,
    is_row_rejected,
)
from dualwrite.keys import decode_key, encode_key
from dualwrite.mirror import mirror_keys
from dualwrite.spec import MigrationSpec
from dualwrite.store import Dialect, Store, without_row_values
from dualwrite.triggers import authoritative_side
from workflows import phases
from workflows.models import (
    ActivityNames,
    BarrierStatus,
    CheckpointScope,
    ControlInput,
    CopyRangeInput,
    GateInput,
    GateResult,
    KeyRange,
    PlanRangesInput,
    PrepareInput,
    PrepareResult,
    RangeCheckpoint,
    RangePlan,
    RangeResult,
    RepairDrainInput,
    RepairDrainResult,
    RetiredTable,
    RetireInput,
    RetireResult,
    TableProgress,
    TableVerification,
    TriggerWatchInput,
    TriggerWatchResult,
    VerifyTableInput,
)

log = logging.getLogger("dualwrite.activities")

T = TypeVar("T")

LIVE_SECONDS_ENV = "DUALWRITE_INSTANCE_LIVE_SECONDS"
REPAIR_ROUNDS = 3


def safe_message(exc: BaseException, limit: int = 400) -> str:
    """First line of an error, redacted and bounded: fit for history and logs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify(exc: BaseException) -> BaseException:
    """A driver error that no retry can fix, as the dualwrite error that says so (others unchanged).

    A refused privilege or ownership (``must be owner of table ...``) becomes :class:`StorePermissionError`;
    a row the target rejects (unique violation, bad value) :class:`RowRejectedError`, without the values."""
    if isinstance(exc, DualwriteError):
        return exc
    if is_permission_denied(exc):
        return StorePermissionError(f"permission denied: {safe_message(exc)}; grant it (or run the worker "
                                    "as the owner), then retry")
    if is_row_rejected(exc):
        clean = without_row_values(getattr(exc, "orig", None) or exc, "writing the target")
        return clean if isinstance(clean, DualwriteError) else RowRejectedError(
            f"writing the target: the target rejected a row ({type(exc).__name__}); values are not shown")
    return exc


def to_application_error(exc: BaseException) -> ApplicationError:
    """Map a dualwrite (or driver) error to the ApplicationError Temporal records.

    Permanent errors (:data:`dualwrite.errors.PERMANENT` and below) are non-retryable, so the phase work
    fails at once with the reason in status and history; everything else (an unreachable store, a
    deadlock) is retried with backoff."""
    if isinstance(exc, ApplicationError):
        return exc
    exc = classify(exc)
    if isinstance(exc, ConfigError):
        # every problem, one per line: names of tables / columns / stores, never a URL or row value
        return ApplicationError(redact(str(exc))[:4000], type=type(exc).__name__, non_retryable=True)
    if isinstance(exc, StoreUnavailableError):
        return ApplicationError(safe_message(exc), type="StoreUnavailable")
    if isinstance(exc, DualwriteError):
        return ApplicationError(safe_message(exc), type=type(exc).__name__, non_retryable=is_permanent(exc))
    return ApplicationError(f"{type(exc).__name__}: {safe_message(exc)}", type=type(exc).__name__)


@contextmanager
def heartbeating(every: float | None = None) -> Iterator[None]:
    """Heartbeat from a background thread while the activity's thread is busy in one long call (a
    preflight, a planning query, a rename waiting for a lock), so the server learns within its short
    heartbeat timeout that the worker died, not after the start-to-close timeout.

    Only for activities whose heartbeat details carry nothing to resume from (they send none)."""
    info = activity.info()
    timeout = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 0.0
    period = every if every is not None else max(0.5, min(5.0, timeout / 4)) if timeout else 5.0
    stop = threading.Event()
    ctx = contextvars.copy_context()  # the activity context lives in a context variable

    def beat() -> None:
        while not stop.wait(period):
            try:
                activity.heartbeat()
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the work
                log.debug("background heartbeat failed: %s", exc)

    thread = threading.Thread(target=ctx.run, args=(beat,), name=f"heartbeat-{info.activity_type}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Re-raise anything as a mapped ApplicationError *without* its cause chain (which may hold rows)."""
    try:
        yield
    except ApplicationError:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        if type(exc).__name__ == "CancelledError":
            raise
        mapped = to_application_error(exc)
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        log.warning("activity %s failed%s: %s", activity.info().activity_type, where, mapped.message)
        raise mapped from None


def _stopping() -> bool:
    return activity.is_cancelled() or activity.is_worker_shutdown()


def _raise_if_stopping() -> None:
    if activity.is_cancelled():
        from temporalio.exceptions import CancelledError  # noqa: PLC0415

        raise CancelledError("activity cancelled")
    if activity.is_worker_shutdown():
        # retryable: another worker picks the range up from the last checkpoint
        raise ApplicationError("worker shutting down; the work resumes from its checkpoint elsewhere",
                               type="WorkerShutdown")


def _sleep(seconds: float) -> None:
    """Sleep in small steps so cancellation and shutdown are noticed quickly."""
    end = time.monotonic() + seconds
    while not _stopping():
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.2, left))


class DualwriteActivities:
    """All activities of the project, sharing one :class:`StoreCache` per worker."""

    def __init__(self, resolver: StoreResolver, *, pool_size: int = 8, live_seconds: float | None = None) -> None:
        self.stores = StoreCache(resolver, pool_size=pool_size)
        self.owners = OwnerCheck()
        env = os.environ.get(LIVE_SECONDS_ENV)
        self.live_seconds = live_seconds if live_seconds is not None else float(env) if env else \
            control.DEFAULT_LIVE_SECONDS

    def all(self) -> list[Callable[..., Any]]:
        return [self.prepare, self.publish_state, self.await_barrier, self.plan_ranges, self.copy_range,
                self.clear_checkpoints, self.verify_table, self.drain_repairs, self.evaluate_gate,
                self.watch_rollback_triggers, self.retire_old_store]

    def close(self) -> None:
        self.stores.close()

    def _control(self, name: str) -> Store:
        store = self.stores.store(name)
        if not self.stores.control_ready(name):
            control.ensure_schema(store)
            self.stores.mark_control_ready(name)
        return store

    # -- PREPARE ----------------------------------------------------------------------------------------

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
                if store.dialect is not Dialect.SQLITE:  # connecting would create a missing SQLite file
                    with store.connect() as conn:
                        conn.rollback()
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
                                            _count_rows(old, mapping.source_table)))
            self._control(spec.control)
            return PrepareResult(ok=True, tables=tables)

    # -- control plane ----------------------------------------------------------------------------------

    @activity.defn(name=ActivityNames.PUBLISH_STATE, no_thread_cancel_exception=True)
    def publish_state(self, inp: ControlInput) -> None:
        """Publish (phase, epoch, paused, overrides) for applications; idempotent, never rewinds."""
        with mapped_errors(), heartbeating():
            store = self._control(inp.control_store)
            control.publish_state(store, inp.migration, inp.phase.value, inp.epoch, paused=inp.paused,
                                  overrides=inp.overrides)

    @activity.defn(name=ActivityNames.AWAIT_BARRIER, no_thread_cancel_exception=True)
    def await_barrier(self, inp: ControlInput) -> BarrierStatus:
        """Poll until every live instance has seen the epoch, for at most ``max_wait_seconds``.

        Polling inside one activity keeps a slow barrier at a handful of history events."""
        with mapped_errors():
            store = self._control(inp.control_store)
            live = inp.live_seconds if inp.live_seconds is not None else self.live_seconds
            deadline = time.monotonic() + inp.max_wait_seconds
            while True:
                state = control.barrier(store, inp.migration, inp.epoch, live)
                status = BarrierStatus(passed=state.passed, epoch=inp.epoch, live_instances=state.live,
                                       lagging=state.lagging[:20])
                if state.passed or time.monotonic() >= deadline:
                    return status
                activity.heartbeat(status)
                _sleep(inp.poll_seconds)
                _raise_if_stopping()

    # -- BACKFILL ---------------------------------------------------------------------------------------

    @activity.defn(name=ActivityNames.PLAN_RANGES, no_thread_cancel_exception=True)
    def plan_ranges(self, inp: PlanRangesInput) -> RangePlan:
        """Split a table's key space into ``ranges`` ranges of about equal row counts.

        Boundaries come from :func:`dualwrite.backfill_copy.plan_bounds` (index walks, or a sample for string keys
        compared bytewise), so only a few key values reach history. A background thread heartbeats while
        its queries run: a dead worker's plan moves to another worker within the heartbeat timeout."""
        with mapped_errors(), heartbeating():
            src, _, mapping = self.stores.mapping(inp.table.spec, inp.table.source, reverse=inp.table.reverse)
            total = _estimate_rows(src, mapping.source_table)
            activity.heartbeat(0)
            n = max(1, min(inp.ranges, math.ceil(total / max(1, min(mapping.batch_size, 1000)))))
            bounds: list[list[Any] | None] = [encode_key(k) for k in plan_bounds(src, mapping, total, n)]
            edges: list[list[Any] | None] = [None, *bounds, None]
            ranges = [KeyRange(index=i, lo=edges[i], hi=edges[i + 1]) for i in range(len(edges) - 1)]
            return RangePlan(rows_estimate=total, ranges=ranges)

    @activity.defn(name=ActivityNames.COPY_RANGE, no_thread_cancel_exception=True)
    def copy_range(self, inp: CopyRangeInput) -> RangeResult:
        """Copy one key range batch by batch; checkpoint and heartbeat the cursor after every commit.

        The checkpoint is written to the control store right after each batch commits, and also sent as
        heartbeat details (which Temporal throttles). On a retry the further of the two wins, so a worker
        killed at any instant redoes at most the batch that was in flight."""
        with mapped_errors():
            info = activity.info()
            spec = inp.table.spec
            src, dst, mapping = self.stores.mapping(spec, inp.table.source, reverse=inp.table.reverse)
            ctl = self._control(spec.control)
            scope = f"{info.workflow_id}/{inp.table.source}"
            start = RangeCheckpoint(cursor=inp.range.lo)
            if info.heartbeat_details:
                start = _checkpoint_from(info.heartbeat_details[0]) or start
            saved = control.load_checkpoint(ctl, spec.name, scope, inp.range.index)
            if saved is not None and saved.batches > start.batches:
                start = RangeCheckpoint(cursor=saved.cursor, rows=saved.rows, batches=saved.batches)
            resumed = start.batches > 0 or info.attempt > 1
            kinds = mapping.key_kinds
            prog = CopyProgress(cursor=decode_key(start.cursor, kinds), rows=start.rows, batches=start.batches,
                                conflict_batches=0, fixed_keys=start.fixed_keys)
            if resumed:
                log.info("range %s of %s resumes after %d batches (attempt %d)", inp.range.index,
                         inp.table.source, start.batches, info.attempt)

            def on_batch(p: CopyProgress) -> None:
                wire = encode_key(p.cursor)
                control.save_checkpoint(ctl, spec.name, scope, inp.range.index, wire, p.rows, p.batches)
                activity.heartbeat(RangeCheckpoint(cursor=wire, rows=p.rows, batches=p.batches,
                                                   conflict_batches=p.conflict_batches,
                                                   fixed_keys=p.fixed_keys, attempt=info.attempt))

            began = time.monotonic()
            done = copy_range(src, dst, mapping, lo=decode_key(inp.range.lo, kinds),
                              hi=decode_key(inp.range.hi, kinds), batch_size=inp.batch_size,
                              on_batch=on_batch, should_stop=_stopping, progress=prog)
            if not done.done:
                _raise_if_stopping()
                raise ApplicationError("the range copy stopped before its end", type="CopyInterrupted")
            return RangeResult(index=inp.range.index, rows=done.rows, batches=done.batches,
                               conflict_batches=done.conflict_batches, fixed_keys=done.fixed_keys,
                               seconds=time.monotonic() - began, attempts=info.attempt, resumed=resumed,
                               redone_batches=done.conflict_batches if resumed else 0)

    @activity.defn(name=ActivityNames.CLEAR_CHECKPOINTS, no_thread_cancel_exception=True)
    def clear_checkpoints(self, inp: CheckpointScope) -> int:
        with mapped_errors(), heartbeating():
            ctl = self._control(inp.control_store)
            return control.clear_checkpoints(ctl, inp.migration, inp.scope)

    # -- verification -----------------------------------------------------------------------------------

    @activity.defn(name=ActivityNames.VERIFY_TABLE, no_thread_cancel_exception=True)
    def verify_table(self, inp: VerifyTableInput) -> TableVerification:
        """Verify one table chunk by chunk; repair what differs and verify again.

        Returns counts by class (missing / extra / field-different) and the names of differing columns;
        never a row value. Comparing zero rows raises VerificationError: a verifier must prove it looked."""
        with mapped_errors(), heartbeating():
            from dualwrite import tenancy  # noqa: PLC0415 - heavy, and only here
            from dualwrite.repair import repair  # noqa: PLC0415
            from dualwrite.verify import verify_keys, verify_range  # noqa: PLC0415

            spec = inp.table.spec
            src, dst, mapping = self.stores.mapping(spec, inp.table.source, reverse=inp.table.reverse)
            chunks = [0]

            def on_chunk(*_args: Any, **_kwargs: Any) -> None:
                chunks[0] += 1
                activity.heartbeat({"chunks": chunks[0]})
                if activity.is_cancelled():
                    _raise_if_stopping()

            if inp.tenant is not None:
                report = tenancy.verify_tenant(src, dst, mapping, inp.tenant)
                activity.heartbeat({"tenant_keys": report.rows_source + report.rows_target})
            else:
                report = verify_range(src, dst, mapping, chunk_size=inp.chunk_size, on_chunk=on_chunk,
                                      allow_empty=spec.table(inp.table.source).allow_empty)
                # rows of tenants whose authority runs the other way are theirs to verify, never ours to repair
                report = tenancy.without_tenants(report, src, dst, mapping, inp.exclude_tenants)
            out = TableVerification(
                source=inp.table.source, target=mapping.target_table, rows_source=report.rows_source,
                rows_target=report.rows_target, chunks=report.chunks, mismatched_chunks=report.mismatched_chunks,
                missing=report.missing, extra=report.extra, field_different=report.field_different,
                fields=sorted(report.field_counts), ok=report.ok)
            settle = self._in_flight_filter(spec, inp.table.source, src, dst, mapping, inp.table.reverse)
            if not report.ok and not inp.repair:
                # compare only (a gate's evidence): a write caught between its two commits settles within
                # moments, so only differences that persist on a re-check count as unresolved
                after, out.in_flight = settle(report)
                for attempt in range(REPAIR_ROUNDS - 1):
                    if after.ok or _stopping():
                        break
                    _sleep(0.5 * (attempt + 1))
                    activity.heartbeat({"recheck": attempt + 1})
                    after, out.in_flight = settle(verify_keys(src, dst, mapping, after.keys(), allow_empty=True))
                unseen = max(0, report.total_differences - len(report.differences))
                out.unresolved = after.total_differences + unseen
                out.sample_keys = tenancy.describe_keys(after.keys() or report.keys())
                out.ok = out.unresolved == 0
            if not report.ok and inp.repair:
                # Under live traffic a re-verification can catch a write between its authoritative commit
                # and its mirror; such a difference settles within moments, so repair again a few times.
                # Keys still waiting in a key log are in flight: the relay mirrors them in the direction of
                # the write that logged them, and a repair must not overwrite one logged by the other side.
                after, out.in_flight = settle(report)
                for attempt in range(REPAIR_ROUNDS):
                    if after.ok or _stopping():
                        break
                    if attempt:
                        _sleep(0.5 * attempt)
                        activity.heartbeat({"repair_round": attempt + 1})
                    fixed = repair(src, dst, mapping, after)
                    out.repaired += fixed.repaired_keys
                    after, out.in_flight = settle(fixed.after)
                out.ok = after.ok
                out.unresolved = after.total_differences
                if not out.ok:
                    out.sample_keys = tenancy.describe_keys(after.keys())
                    out.error = (f"still different after repair: missing {after.missing}, extra {after.extra}, "
                                 f"field-different {after.field_different}")
            return out

    def _in_flight_filter(self, spec: MigrationSpec, source: str, src: Store, dst: Store, mapping: Any,
                          reverse: bool) -> Callable[[Any], tuple[Any, int]]:
        """For ``outbox`` / ``triggers``: a function splitting a report's differences into those whose key
        waits in a key log of either store (in flight: returned as a count) and the rest (a new report).

        A listed difference with no entry is compared once more: the relay may have taken its entry between
        the comparison and the look-up (then the row is level now). Only what still differs, with no entry
        before or after, is a difference. ``sync`` has no key logs: the report is returned as it is."""
        if spec.strategy.inline:  # strict / sync / async: no key logs
            return lambda report: (report, 0)
        from dualwrite import outbox  # noqa: PLC0415 - only here
        from dualwrite.verify import verify_keys  # noqa: PLC0415

        logs = (outbox.OUTBOX,) if spec.strategy.value == "outbox" else (outbox.CHANGELOG,)
        other = self.stores.mapping(spec, source, reverse=not reverse)[2]
        sides = ((src, mapping.source_table, mapping.key_kinds), (dst, other.source_table, other.key_kinds))

        def pending() -> set[tuple[Any, ...]]:
            keys: set[tuple[Any, ...]] = set()
            if spec.strategy.value == "cdc":  # in flight: captured in a store's log, not applied yet
                from dualwrite.cdc.capture import pending_keys  # noqa: PLC0415

                for store, (table, key, kinds) in ((src, (mapping.source_table, mapping.source_key,
                                                            mapping.key_kinds)),
                                                   (dst, (other.source_table, other.source_key, other.key_kinds))):
                    keys |= pending_keys(store, self._control(spec.control), spec.name, table, key, kinds)
                return keys
            for store, table, kinds in sides:
                keys |= pending_log_keys(store, spec.name, {source, table}, kinds, logs)
            return keys

        def settle(report: Any) -> tuple[Any, int]:
            if report.ok or not report.differences:
                return report, 0
            kept, flying = without_keys(report, pending())
            if kept.ok or kept.truncated:
                return kept, flying
            again = verify_keys(src, dst, mapping, kept.keys(), allow_empty=True)
            again, more = without_keys(again, pending())
            return again, flying + more

        return settle

    # -- repair queue -----------------------------------------------------------------------------------

    @activity.defn(name=ActivityNames.DRAIN_REPAIRS, no_thread_cancel_exception=True)
    def drain_repairs(self, inp: RepairDrainInput) -> RepairDrainResult:
        """Long-poll the repair queue and mirror due keys, with exponential backoff on failure.

        Per key only the newest entry counts: it names the side that was authoritative when the latest
        write failed, so a key queued before and after a rollback is mirrored in the right direction."""
        with mapped_errors():
            spec = inp.spec
            ctl = self._control(spec.control)
            out = RepairDrainResult()
            started = time.monotonic()
            worked = False
            while not _stopping():
                authority = repair_authority(ctl, spec, under_fence=inp.under_fence)
                entries = [] if authority == "fenced" else control.due_repairs(ctl, spec.name, inp.batch)
                if entries:
                    worked = True
                    self._repair_batch(spec, ctl, entries, inp, out, authority)
                    activity.heartbeat(out)
                    if time.monotonic() - started > inp.max_seconds:
                        break
                    continue
                if worked or time.monotonic() - started > inp.max_idle_seconds:
                    break
                activity.heartbeat(out)
                _sleep(inp.poll_seconds)
            out.remaining = control.repair_queue_depth(ctl, spec.name)
            out.due_in_seconds = control.next_repair_due_in(ctl, spec.name)
            return out

    def _repair_batch(self, spec: MigrationSpec, ctl: Store, entries: list[control.RepairEntry],
                      inp: RepairDrainInput, out: RepairDrainResult, authority: str | None) -> None:
        latest: dict[tuple[str, str], control.RepairEntry] = {}
        ids: dict[tuple[str, str], list[int]] = defaultdict(list)
        for e in entries:
            k = (e.table, repr(e.key))
            ids[k].append(e.id)
            if k not in latest or e.id > latest[k].id:
                latest[k] = e
        groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for k, e in latest.items():
            # a repair writes only into the store that is not authoritative *now* (DESIGN.md rule 4): the side
            # recorded at enqueue time decides only where authority is per tenant
            groups[(e.table, authority or e.authoritative)].append(k)
        for (table, side), keys in groups.items():
            all_ids = [i for k in keys for i in ids[k]]
            try:
                src, dst, mapping = self.stores.mapping(spec, table, reverse=side == "new")
                decoded = [decode_key(latest[k].key, mapping.key_kinds) for k in keys]
                mirror_keys(src, dst, mapping, [d for d in decoded if d is not None], force=False)
            except Exception as exc:  # noqa: BLE001 - one bad group must not stop the drain
                attempts = max(latest[k].attempts for k in keys)
                delay = min(inp.max_backoff_seconds, inp.base_backoff_seconds * 2 ** attempts)
                delay *= 0.8 + 0.4 * random.random()  # noqa: S311 - jitter, not crypto
                control.defer_repairs(ctl, all_ids, delay)
                out.failed += len(keys)
                msg = f"table {table}: {safe_message(exc, 200)}"
                if msg not in out.errors and len(out.errors) < 5:
                    out.errors.append(msg)
                log.warning("repair of %d keys of %s failed, retry in %.0fs: %s", len(keys), table, delay, msg)
                continue
            control.complete_repairs(ctl, all_ids)
            out.mirrored += len(keys)

    # -- gates ------------------------------------------------------------------------------------------

    @activity.defn(name=ActivityNames.EVALUATE_GATE, no_thread_cancel_exception=True)
    def evaluate_gate(self, inp: GateInput) -> GateResult:
        """Decide a gate: read the live statistics of the window (every application instance's flushed
        windows, merged; the tenant's own scope when there is one) and apply the pure rules to them and to
        the workflow's evidence. The result, with every metric's value / threshold / samples / verdict, is
        what history records."""
        with mapped_errors(), heartbeating():
            traffic = None
            if inp.to in phases.TRAFFIC_GATED:
                store = self._control(inp.spec.control)
                traffic = gates.read_traffic(store, inp.spec.name, inp.spec.gates.window_seconds, inp.tenant)
            return phases.evaluate_gate(inp, traffic)

    @activity.defn(name=ActivityNames.WATCH_TRIGGERS, no_thread_cancel_exception=True)
    def watch_rollback_triggers(self, inp: TriggerWatchInput) -> TriggerWatchResult:
        """Read the statistics every ``check_seconds`` and return as soon as a rollback trigger trips (or,
        quietly, after ``max_seconds``), so a healthy cutover costs a few history events per period.

        Statistics flushed before a scope entered its phase are left out (the window shrinks to the time
        since); too few samples never trips. Heartbeats also come from a background thread while it sleeps
        between checks, so its heartbeat timeout need not grow with ``check_seconds``."""
        with mapped_errors(), heartbeating():
            cfg = inp.spec.rollback_triggers
            store = self._control(inp.spec.control)
            started = time.monotonic()
            out = TriggerWatchResult()
            while True:
                if inp.spec.strategy.value == "triggers":
                    # no adapter compares reads: the worker samples rows for the shadow-mismatch trigger
                    from activities.sample import sample_and_record  # noqa: PLC0415 - it imports this module

                    try:
                        sample_and_record(self.stores, inp.spec, cfg.min_shadow_samples, 2.0)
                    except Exception as exc:  # noqa: BLE001 - no sample this round: the triggers see fewer
                        log.warning("worker shadow sample for the rollback triggers failed: %s", safe_message(exc))
                now = datetime.now(UTC)
                for scope in inp.scopes:
                    since = scope.since if scope.since.tzinfo else scope.since.replace(tzinfo=UTC)
                    seconds = min(float(cfg.window_seconds), max(1.0, (now - since).total_seconds()))
                    traffic = gates.read_traffic(store, inp.spec.name, seconds, scope.tenant,
                                                 ensure_schema=not out.checks)
                    evaluation = gates.evaluate_triggers(traffic, scope.phase.value, cfg, inp.spec.strategy.value)
                    out.evaluation, out.tenant, out.phase = evaluation, scope.tenant, scope.phase
                    if evaluation.tripped:
                        out.tripped = True
                        return out
                out.checks += 1
                activity.heartbeat(out.checks)
                if time.monotonic() - started >= inp.max_seconds:
                    return out
                _sleep(cfg.check_seconds)
                _raise_if_stopping()

    # -- CLEANUP ----------------------------------------------------------------------------------------

    @activity.defn(name=ActivityNames.RETIRE_OLD, no_thread_cancel_exception=True)
    def retire_old_store(self, inp: RetireInput) -> RetireResult:
        """Retire the old store after the CLEANUP barrier (applications no longer mirror): remove capture
        triggers (both stores), mirror what the old store's key logs still hold and discard the entries
        towards the old store, drop key logs left empty, discard queued repairs, then rename each old
        table to ``<table>_dw_retired_<stamp>`` (or drop it when ``drop``). Idempotent: a retry finds the
        retired names and reports them."""
        with mapped_errors(), heartbeating():
            from dualwrite import outbox, relay, triggers  # noqa: PLC0415 - only here

            spec = inp.spec
            old, new = self.stores.store(spec.old), self.stores.store(spec.new)
            ctl = self._control(spec.control)
            out = RetireResult()
            mappings = {}
            for t in spec.tables:
                if table_exists(old, t.source):
                    mappings[t.source] = self.stores.mapping(spec, t.source)[2]
            for source, mapping in mappings.items():
                triggers.remove_triggers(old, spec.name, mapping.source_table)
                triggers.remove_triggers(new, spec.name, mapping.target_table)
                out.triggers_removed += [f"{old.name}/{mapping.source_table}", f"{new.name}/{mapping.target_table}"]
                activity.heartbeat(source)
            if mappings:
                res = relay.drain(old, new, spec.name, lambda table, reverse: self.stores.mapping(
                    spec, table, reverse=reverse)[2], discard=("new",), control_store=ctl, should_stop=_stopping)
                out.log_entries_mirrored, out.log_entries_discarded = res.mirrored, res.discarded
            for store in (old, new):
                for log_table in outbox.LOGS:
                    dropped = _drop_log_if_unused(store, spec.name, log_table)
                    if dropped:
                        out.logs_dropped.append(f"{store.name}/{log_table}")
            out.repair_entries_discarded = _discard_repairs(ctl, spec.name)
            for t in spec.tables:
                out.tables.append(_retire_table(old, t.source, inp.stamp, drop=inp.drop))
                activity.heartbeat(t.source)
            return out


# ---------------------------------------------------------------------------------------------------------
# helpers

RETIRED_INFIX = "_dw_retired_"
MAX_IDENT = 63  # PostgreSQL's limit (MariaDB allows 64)


def retired_name(table: str, stamp: str) -> str:
    """``<table>_dw_retired_<stamp>`` in the table's schema, shortened (with a hash) to fit an identifier."""
    import hashlib  # noqa: PLC0415

    schema, dot, name = table.rpartition(".")
    suffix = f"{RETIRED_INFIX}{stamp}"
    if len(name) + len(suffix) > MAX_IDENT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:6]
        name = f"{name[:MAX_IDENT - len(suffix) - 7]}_{digest}"
    return f"{schema}{dot}{name}{suffix}"


MAX_PENDING_READ = 200_000
"""At most this many key-log entries are read to tell in-flight differences from real ones."""
IN_FLIGHT_SECONDS = 30.0
"""A key-log entry older than this is not "in flight" but a relay that does not keep up (or does not run):
its key's difference counts, so a stalled relay cannot make a verification pass."""


def log_point(store: Store, migration: str, log_table: str) -> int | None:
    """The id of a migration's newest entry in a key log (None when it has none)."""
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT MAX(id) FROM {log_table} WHERE migration = {p}", (migration,))
        (point,) = cur.fetchone()
        cur.close()
        conn.rollback()
    return None if point is None else int(point)


def logs_behind(store: Store, migration: str, log_table: str, point: int) -> int:
    """Entries of a migration at or below ``point`` still waiting in a key log."""
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {log_table} WHERE migration = {p} AND id <= {p}", (migration, point))
        (n,) = cur.fetchone()
        cur.close()
        conn.rollback()
    return int(n)


def pending_log_keys(store: Store, migration: str, tables: set[str], kinds: Any, logs: tuple[str, ...]
                     ) -> set[tuple[Any, ...]]:
    """Keys logged for any of ``tables`` (the outbox names the spec's source table, a capture trigger the
    table it is on), normalized, in the store's own key terms, with recent entries (younger than
    ``IN_FLIGHT_SECONDS``) waiting in the store's key logs."""
    from dualwrite import outbox  # noqa: PLC0415
    from dualwrite.mirror import normal_key  # noqa: PLC0415

    present = store.table_names()
    out: set[tuple[Any, ...]] = set()
    p = store.paramstyle
    for log_table in logs:
        if log_table not in present:
            continue
        with store.connect() as conn:
            cur = conn.cursor()
            names = sorted(tables)
            cur.execute(f"SELECT key_json FROM {log_table} WHERE migration = {p} "
                        f"AND table_name IN ({', '.join([p] * len(names))}) "
                        f"AND {outbox.age_seconds_sql(store)} <= {float(IN_FLIGHT_SECONDS)} "
                        f"ORDER BY id LIMIT {MAX_PENDING_READ}", (migration, *names))
            rows = cur.fetchall()
            cur.close()
            conn.rollback()
        for (wire,) in rows:
            try:
                key = decode_key(json.loads(wire), kinds)
            except (ValueError, TypeError):
                continue  # not a key of this table's shape: it cannot match a difference
            if key is not None:
                out.add(normal_key(key))
    return out


def without_keys(report: Any, keys: set[tuple[Any, ...]]) -> tuple[Any, int]:
    """``report`` without the differences of ``keys`` (counts adjusted), and how many were left out.

    Differences beyond the report's cap were never listed: they stay counted (they may be real)."""
    import dataclasses  # noqa: PLC0415

    from dualwrite.mirror import normal_key  # noqa: PLC0415
    from dualwrite.verify import DiffKind  # noqa: PLC0415

    if not keys:
        return report, 0
    flying = [d for d in report.differences if normal_key(tuple(d.key)) in keys]
    if not flying:
        return report, 0
    field_counts = dict(report.field_counts)
    for d in flying:
        for f in d.fields:
            field_counts[f.name] = field_counts.get(f.name, 0) - 1
    kept = dataclasses.replace(
        report, differences=[d for d in report.differences if normal_key(tuple(d.key)) not in keys],
        missing=report.missing - sum(d.kind is DiffKind.MISSING for d in flying),
        extra=report.extra - sum(d.kind is DiffKind.EXTRA for d in flying),
        field_different=report.field_different - sum(d.kind is DiffKind.FIELD for d in flying),
        field_counts={k: v for k, v in field_counts.items() if v > 0},
        mismatched_ranges=list(report.mismatched_ranges))
    return kept, len(flying)


def table_exists(store: Store, table: str) -> bool:
    from sqlalchemy.exc import NoSuchTableError  # noqa: PLC0415

    try:
        store.describe(table, refresh=True)
    except NoSuchTableError:
        return False
    return True


def _retire_table(store: Store, table: str, stamp: str, *, drop: bool) -> RetiredTable:
    """Rename (or drop) one old table; on a retry report what the first attempt did."""
    new_name = retired_name(table, stamp)
    if not table_exists(store, table):
        if drop:
            return RetiredTable(source=table, action="already-dropped")
        if table_exists(store, new_name):
            return RetiredTable(source=table, action="already-renamed", retired_as=new_name)
        raise ApplicationError(f"old table {table} is gone and no {new_name} exists: it was not retired by "
                               "this migration", type="RetireError", non_retryable=True)
    bare = new_name.rpartition(".")[2]
    if drop:
        sql = f"DROP TABLE {store.quote(table)}"
    elif store.dialect is Dialect.MYSQL:
        sql = f"RENAME TABLE {store.quote(table)} TO {store.quote(new_name)}"
    else:
        sql = f"ALTER TABLE {store.quote(table)} RENAME TO {store.quote(bare)}"
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(sql)
        cur.close()
        conn.commit()
    log.info("retired old table %s of store %s: %s", table, store.name, "dropped" if drop else f"renamed to {new_name}")
    return RetiredTable(source=table, action="dropped" if drop else "renamed", retired_as=None if drop else new_name)


def _drop_log_if_unused(store: Store, migration: str, log_table: str) -> bool:
    """Delete this migration's key-log entries; drop the log when no other migration uses it."""
    if not table_exists(store, log_table):
        return False
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"DELETE FROM {log_table} WHERE migration = {p}", (migration,))
        cur.execute(f"SELECT COUNT(*) FROM {log_table}")
        (left,) = cur.fetchone()
        if not left:
            cur.execute(f"DROP TABLE {log_table}")
        cur.close()
        conn.commit()
    return not left


def _discard_repairs(store: Store, migration: str) -> int:
    """Keys queued to be mirrored into a store that is now retired: nothing left to do for them."""
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"DELETE FROM {control.REPAIR_QUEUE} WHERE migration = {p}", (migration,))
        n = int(cur.rowcount or 0)
        cur.close()
        conn.commit()
    return n


def _count_rows(store: Store, table: str) -> int:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {store.quote(table)}")
        (n,) = cur.fetchone()
        cur.close()
        conn.rollback()
    return int(n)


EXACT_COUNT_BELOW = 5_000_000


def _estimate_rows(store: Store, table: str) -> int:
    """The catalog's row estimate for big tables (an exact COUNT(*) of a billion rows takes minutes and
    cannot heartbeat), an exact count below ``EXACT_COUNT_BELOW``. Ranges only need to be roughly even."""
    estimate = -1
    with store.connect() as conn:
        cur = conn.cursor()
        if store.dialect is Dialect.POSTGRESQL:
            cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (store.quote(table),))
            row = cur.fetchone()
            estimate = int(row[0]) if row and row[0] is not None else -1
        elif store.dialect is Dialect.MYSQL:
            schema, _, name = table.rpartition(".")
            cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                        "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s", (schema or None, name))
            row = cur.fetchone()
            estimate = int(row[0]) if row and row[0] is not None else -1
        cur.close()
        conn.rollback()
    return estimate if estimate >= EXACT_COUNT_BELOW else _count_rows(store, table)


def _checkpoint_from(raw: Any) -> RangeCheckpoint | None:
    """Heartbeat details come back as plain dicts: rebuild the model (or ignore what is not one)."""
    if isinstance(raw, RangeCheckpoint):
        return raw
    if isinstance(raw, dict):
        try:
            return RangeCheckpoint.model_validate(raw)
        except Exception:  # noqa: BLE001 - details from an older worker version: start over
            return None
    return None


def repair_authority(ctl: Store, spec: MigrationSpec, *, under_fence: bool = False) -> str | None:
    """Which store repairs read from, from the published state: 'old' / 'new'; None where authority is per
    tenant (then each entry's recorded side decides); 'fenced' while a write fence is published and the
    caller is not the workflow's own fenced drain (authority is moving: no repair may write then)."""
    state = control.read_state(ctl, spec.name)
    if state is None:
        return "old"
    if control.is_fenced(state.overrides, None) and not under_fence:
        return "fenced"
    if spec.tenant_tables and (state.overrides or {}).get("tenants"):
        return None
    return authoritative_side(state.phase)

