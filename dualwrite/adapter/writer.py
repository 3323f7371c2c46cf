"""The write adapter's Core API: phase-aware writes by key on SQLAlchemy connections, and reads with shadows.

An application writes in *its* schema (the old store's table and column names) and never names a store:
each unit of work is routed by the phase in force for it (the phase table of docs/architecture.md, with
per-tenant / per-entity overrides and the sticky ramp):

1. the authoritative store is written first, in one transaction on a SQLAlchemy connection; if that fails
   the request fails and nothing else is written (the seed's failure table);
2. then, as the table's capture method (:func:`dualwrite.capture.method_for`) says:

   - ``mirrors_after_commit`` (sync, :mod:`._inline`): right after the commit the same keys are mirrored to
     the other store, from the committed row image when the adapter holds it (:mod:`._fast_path`), else with
     :func:`dualwrite.mirror.mirror_keys`. A failure or timeout never fails the request: it is counted by
     error class and the keys go to the durable repair queue (:mod:`._repairs`);
   - ``notes_keys`` (outbox, :mod:`._outbox_notes`): the keys are appended to ``dualwrite_outbox`` *inside*
     the authoritative transaction (on PostgreSQL folded into the same statement, so it costs no extra round
     trip); the relay mirrors them;
   - database capture (triggers, cdc): nothing: the database captures the keys and the relay mirrors them;
   - ``writes_before_commit`` (strict, :mod:`dualwrite.adapter.strict`): *before* the authoritative commit,
     inside its open transaction, the keys are noted durably and the other store is written and committed;
     a failure of either store fails the request and neither keeps the write;
   - ``queues_keys`` (async, :mod:`dualwrite.adapter.lagged`): the keys are queued for background workers;
     the request returns right after the authoritative commit.

   A table may choose its own strategy among strict, sync and async (``tables[].strategy``).

After write cutover the new store is authoritative: the same calls write the new store (column names
translated through the mapping) and mirror back to the old one with ``mapping.reversed()``. A column the
mapping computes (a split ``name`` -> ``first_name`` + ``last_name``) is computed from the application's
values in the write itself (``expr`` in SQL on the new store, ``transform`` in Python), and reads served by
the new store rebuild the application's columns with the spec's ``reverse`` rules: the application keeps
its schema from the first phase to the last.

:class:`DualWriter` is the facade over the pieces, each in a module of its own: the tables
(:mod:`._tables`), routing and the write fence (:mod:`._routing`), the unit of work (:mod:`._uow`), the
inline secondary write (:mod:`._inline`), the repair queue (:mod:`._repairs`), direct reads for the shadow
(:mod:`._reads`), the adapter's own pools (:mod:`._stores`) and what is timed and counted (:mod:`._timing`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine

from dualwrite import bypass, control, hooks, outbox, relay, spill
from dualwrite import stats as st
from dualwrite.adapter._errors import RoutingError, error_class, is_disconnect
from dualwrite.adapter._fast_path import FastPath
from dualwrite.adapter._inline import InlineMirror
from dualwrite.adapter._keyvalue import KeyValueSide, Via
from dualwrite.adapter._options import AdapterOptions, log_values
from dualwrite.adapter._reads import DirectReads
from dualwrite.adapter._repairs import CloseReport, RepairQueue
from dualwrite.adapter._routing import Router
from dualwrite.adapter._stores import data_store, default_instance_id, retry_stale
from dualwrite.adapter._tables import Key, KeyLike, SideTable, TableRuntime, Touched, build_tables, entity_of
from dualwrite.adapter._timing import LAT_FENCE, count_primary_failure, record_unit
from dualwrite.adapter._uow import Statement, UnitOfWork, UnitOfWorkBase
from dualwrite.adapter.lagged import AsyncMirror
from dualwrite.adapter.phase import PhaseCache, Routing, Side
from dualwrite.adapter.strict import StrictStrategy, ensure_notes, strict_groups
from dualwrite.capture import method_for
from dualwrite.config import StoreResolver
from dualwrite.errors import SchemaError
from dualwrite.mapping import TableMapping
from dualwrite.shadow import RecentWrites, Scheduler, ShadowOptions, ShadowReader
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from dualwrite.stores import is_redis, open_store

__all__ = [
    "LAT_FENCE", "AdapterOptions", "CloseReport", "DualWriter", "FastPath", "Key", "KeyLike", "RoutingError",
    "SideTable", "Statement", "TableRuntime", "Touched", "UnitOfWork", "UnitOfWorkBase", "default_instance_id",
    "error_class", "is_disconnect",
]

log = logging.getLogger("dualwrite.adapter")


_NO_SQL_ON_REDIS = ("the new store is Redis: it has no SQLAlchemy engine, so the asyncio adapter and units of "
                    "work of SQL statements cannot use it (the ORM hook writes the SQL store only, before write "
                    "cutover); write with DualWriter.insert / update / upsert / delete and read with DualWriter.read")


class DualWriter:
    """The application's handle on one migration: routing, writes, reads, shadow compares and statistics.

    Thread-safe; create one per process and migration, and :meth:`close` it on shutdown (that flushes the
    last statistics window and leaves the phase barrier at once instead of by timeout).
    """

    def __init__(self, spec: MigrationSpec, old: Store, new: Store, *, control_store: Store | None = None,
                 old_engine: Engine | None = None, new_engine: Engine | None = None,
                 options: AdapterOptions | None = None, instance_id: str | None = None) -> None:
        self.spec = spec
        self.migration = spec.name
        self.strategy = spec.strategy
        self.method = method_for(spec.strategy)
        """The migration's capture method (a table may choose its own inline one: ``TableRuntime.method``)."""
        self.options = opts = options or AdapterOptions()
        self.instance_id = instance_id or default_instance_id()
        self.old_store, self.new_store = old, new
        self.control = control_store or old
        self.kv = KeyValueSide(new, spec.name) if is_redis(new) else None
        """The Redis new store's reads and writes ([T2-6]); None when the new store is SQL."""
        self.engines: dict[Side, Engine] = {Side.OLD: old_engine or old.engine}
        if self.kv is None:
            self.engines[Side.NEW] = new_engine or new.engine
        self.data: dict[Side, Store] = {Side.OLD: data_store(old, opts.secondary_timeout, opts.pool_size),
                                        Side.NEW: data_store(new, opts.secondary_timeout, opts.pool_size)}
        self.marks_writes = bypass.adapter_marks(spec)
        """Mark the authoritative transactions as the adapter's, so bypass capture tells them from raw writes."""
        try:
            self.tables: dict[str, TableRuntime] = build_tables(spec, self.data[Side.OLD], self.data[Side.NEW], opts)
        except SchemaError:
            for s in self.data.values():
                s.dispose()
            raise
        if opts.ensure_schema:
            self._ensure_schema()
        self.stats = st.Stats(self.migration, self.instance_id)
        if opts.prometheus:
            self.stats.enable_prometheus(opts.prometheus_registry)
        self.phase = PhaseCache(self.control, self.migration, self.instance_id, ttl=opts.phase_ttl,
                                heartbeat_seconds=opts.heartbeat_seconds)
        self.recent = RecentWrites(opts.recent_write_seconds)
        self.router = Router(self.migration, self.phase, opts, self.stats, self.recent)
        self.executor = ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="dualwrite-shadow")
        self.scheduler = Scheduler()
        self.reads = DirectReads(self.table, self.data, self.kv)
        self.shadow = self._shadow_reader()
        self.phase.on_change(self._on_state)
        self.spill_dir = Path(opts.spill_dir).expanduser() if opts.spill_dir else spill.default_spill_dir()
        self.repairs = RepairQueue(self.control, self.migration, self.instance_id, self.stats, self.spill_dir)
        self._spill_waiting = self.repairs.requeue_spilled() is None
        self.inline = InlineMirror(self.migration, self.data, opts, self.stats, self.repairs, self.scheduler,
                                   self.executor, self.phase)
        self._closed = False
        self._close_report: CloseReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.phase.refresh(force=True)
        self.strict, self.lagged = self._strategies()
        if opts.background:
            self._thread = threading.Thread(target=self._background, name="dualwrite-runtime", daemon=True)
            self._thread.start()

    def _ensure_schema(self) -> None:
        """Create the control and statistics tables, and the outbox on both stores where keys are noted."""
        control.ensure_schema(self.control)
        st.ensure_schema(self.control)
        if self.method.notes_keys:
            outbox.ensure_log(self.old_store, outbox.OUTBOX)
            if self.kv is None:  # a Redis new store's outbox is a stream, created by its first entry
                outbox.ensure_log(self.new_store, outbox.OUTBOX)

    def _shadow_reader(self) -> ShadowReader:
        opts = self.options
        return ShadowReader(self.migration, {n: t.comparator for n, t in self.tables.items()},
                            self.reads.read_row, self.stats, self.executor, self.scheduler, self.recent,
                            ShadowOptions(sample_ratio=opts.sample_ratio, timeout=opts.shadow_timeout,
                                          recent_write_seconds=opts.recent_write_seconds,
                                          recheck_delay=opts.recheck_delay, recheck_attempts=opts.recheck_attempts,
                                          batch_window=opts.shadow_batch_window,
                                          log_values=log_values(opts.shadow_log_values)),
                            read_rows=self.reads.read_rows)

    def _strategies(self) -> tuple[StrictStrategy | None, AsyncMirror | None]:
        """The machinery of the methods some table uses: strict's notes and sweep, async's queue."""
        opts = self.options
        methods = [rt.method for rt in self.tables.values()]
        strict = StrictStrategy(self) if any(m.writes_before_commit for m in methods) else None
        if strict is not None:
            if opts.ensure_schema:
                ensure_notes(self.old_store)
                if self.kv is None:  # Redis keeps its strict notes in keys of its own (keyvalue.strict_notes)
                    ensure_notes(self.new_store)
            if opts.background:
                strict.start()
        lagged = (AsyncMirror(self, capacity=opts.async_queue_size, workers=opts.async_workers,
                              batch=opts.async_batch, batch_wait=opts.async_batch_wait)
                  if any(m.queues_keys for m in methods) else None)
        return strict, lagged

    @classmethod
    def from_resolver(cls, spec: MigrationSpec, resolver: StoreResolver | None = None, **kw: Any) -> DualWriter:
        """Resolve the spec's store names (``DUALWRITE_STORE_<NAME>`` or the config file) and build a writer."""
        res = resolver or StoreResolver()
        old, new = Store(res.resolve(spec.old)), open_store(res.resolve(spec.new))  # new: SQL or Redis
        ctl = Store(res.resolve(spec.control_store)) if spec.control_store else None
        return cls(spec, old, new, control_store=ctl, **kw)

    # -- phase and routing (:class:`Router`) --------------------------------------------------------------

    def _on_state(self, state: control.ControlState) -> None:
        sample = state.overrides.get("shadow_sample") if isinstance(state.overrides, Mapping) else None
        self.shadow.sample_override = float(sample) if isinstance(sample, int | float) else None

    def route(self, tenant: str | None = None, entity: str | None = None) -> Routing:
        """The routing in force for a tenant / entity now (cached phase, ~1 s)."""
        return self.router.route(tenant, entity)

    def engine(self, side: Side) -> Engine:
        try:
            return self.engines[side]
        except KeyError:  # a Redis new store has no SQLAlchemy engine
            raise RoutingError(_NO_SQL_ON_REDIS) from None

    def table(self, name: str) -> TableRuntime:
        try:
            return self.tables[name]
        except KeyError:
            raise RoutingError(f"table {name!r} is not part of migration {self.migration}") from None

    def read_side(self, rt: TableRuntime, routing: Routing, key: Key | None = None) -> Side:
        """Where this instance reads ``rt`` from: the phase's store, unless it must read its own writes."""
        return self.router.read_side(rt, routing, key)

    def shadow_enabled(self, routing: Routing) -> bool:
        return self.router.shadow_enabled(routing)

    def begin_write(self, tenant: str | None = None, entity: str | None = None, *,
                    routing: Routing | None = None) -> Routing:
        """Route a unit of work that writes, waiting while its scope is fenced; counts it in flight until
        :meth:`end_write` (the barrier of a later epoch waits for it). Raises :class:`WriteFencedError`
        after ``fence_max_wait``."""
        return self.router.begin_write_many([(tenant, entity)], routing=routing)[0]

    def begin_write_many(self, subjects: list[tuple[str | None, str | None]], *,
                         routing: Routing | None = None) -> list[Routing]:
        return self.router.begin_write_many(subjects, routing=routing)

    def end_write(self, routing: Routing) -> None:
        """The unit of work routed by :meth:`begin_write` is over."""
        self.router.end_write(routing)

    # -- Core API -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def unit_of_work(self, *, tenant: str | None = None, entity: str | None = None,
                     routing: Routing | None = None) -> Iterator[UnitOfWork]:
        """One transaction on the authoritative store; the other store is handled after it commits.

        Use ``uow.connection`` (a SQLAlchemy connection) for anything else in the same transaction, and
        :meth:`UnitOfWork.touch` to name the keys such statements wrote so they are mirrored too.
        """
        route = self.begin_write(tenant, entity, routing=routing)
        try:
            started = time.perf_counter()
            side = route.authoritative
            if side not in self.engines:
                raise RoutingError(f"migration {self.migration}: {_NO_SQL_ON_REDIS}")
            try:
                with self.engines[side].connect() as conn:
                    if self.marks_writes and bypass.marks(route.phase):
                        bypass.mark_transaction(conn, self.data[side].dialect)
                    uow = UnitOfWork(self, route, conn)
                    yield uow
                    uow.note_keys()
                    self.commit_unit(route, uow.touched, conn, txid=uow.txid)
            except BaseException as exc:
                if not isinstance(exc, GeneratorExit):
                    count_primary_failure(self.stats, exc)
                raise
            committed = time.perf_counter()
            self.finish(route, uow.touched, started, committed)
        finally:
            self.end_write(route)

    def commit_unit(self, route: Routing, touched: Sequence[Touched], conn: Connection, *,
                    txid: int | None = None) -> None:
        """Commit the authoritative transaction; tables with the strict strategy write the other store
        first, inside it (:mod:`dualwrite.adapter.strict`). ``txid``: the transaction's id when a statement
        returned it (PostgreSQL), so the strict commit marker costs no round trip."""
        strict = strict_groups(touched) if self.strict is not None and route.mirror_to is not None else []
        if not strict:
            conn.commit()
            return
        assert self.strict is not None
        self.strict.commit(route, strict, conn.connection.dbapi_connection, conn.commit, txid=txid)

    def finish(self, route: Routing, touched: list[Touched], started: float, committed: float) -> None:
        """After an authoritative commit: remember the keys, mirror them (sync) or queue them (async), record
        the latencies (strict tables were written to both stores before the commit)."""
        hooks.point("adapter.after_primary_commit")
        for t in touched:
            self.recent.add(t.table.name, t.key)
        if route.mirror_to is not None and touched:
            inline = [t for t in touched if t.table.method.mirrors_after_commit]
            if inline:
                self.inline.mirror(route, inline, committed)
            if self.lagged is not None:
                lagged = [t for t in touched if t.table.method.queues_keys]
                if lagged:
                    self.lagged.submit(route, lagged)
        record_unit(self.stats, route, started, committed)

    def _one_write(self, tenant: str | None, entity: str | None, sql: Callable[[UnitOfWork], Any],
                   kv: Callable[[KeyValueSide, bool, Via | None], tuple[Any, list[Touched]]],
                   rt: TableRuntime | None = None) -> Any:
        """One write by key: a SQL unit of work on the authoritative store, or (a Redis new store that is
        authoritative) the write on Redis, then the same mirror back as after a SQL commit. ``kv``'s flag:
        the other store follows (an ``outbox`` table notes the key in Redis' stream with the write)."""
        if self.kv is None:
            with self.unit_of_work(tenant=tenant, entity=entity) as uow:
                return sql(uow)
        route = self.begin_write(tenant, entity)
        try:
            if route.authoritative is not Side.NEW:
                with self.unit_of_work(tenant=tenant, entity=entity, routing=route) as uow:
                    return sql(uow)
            started = time.perf_counter()
            strict = (self.strict.kv if self.strict is not None and route.mirror_to is not None and rt is not None
                      and rt.method.writes_before_commit else None)
            try:
                try:
                    result, touched = kv(self.kv, route.mirror_to is not None,
                                         strict.put if strict is not None else None)
                except Exception as exc:
                    if strict is None:
                        raise
                    guarded = strict.guard(exc)  # strict: Redis's own failures name Redis
                    if guarded is exc:
                        raise
                    raise guarded from exc
            except BaseException as exc:
                count_primary_failure(self.stats, exc)
                raise
            self.finish(route, touched, started, time.perf_counter())
            return result
        finally:
            self.end_write(route)

    def insert(self, table: str, values: Mapping[str, Any], *, tenant: str | None = None) -> Key:
        """Insert one row; returns its key (also when the database generated it)."""
        rt = self.table(table)
        key: Key = self._one_write(rt.tenant_of(values, tenant), rt.entity_from(values),
                                   lambda uow: uow.insert(table, values),
                                   lambda kv, note, via: kv.insert(rt, values, note=note, via=via), rt)
        return key

    def update(self, table: str, key: KeyLike, values: Mapping[str, Any], *, tenant: str | None = None) -> int:
        """Update one row by key; returns the number of rows changed (0 or 1)."""
        rt = self.table(table)
        k = rt.key_of(key)
        n: int = self._one_write(rt.tenant_of(values, tenant), entity_of(rt, k),
                                 lambda uow: uow.update(table, k, values),
                                 lambda kv, note, via: kv.update(rt, k, values, note=note, via=via), rt)
        return n

    def upsert(self, table: str, values: Mapping[str, Any], *, tenant: str | None = None) -> Key:
        rt = self.table(table)
        key: Key = self._one_write(rt.tenant_of(values, tenant), rt.entity_from(values),
                                   lambda uow: uow.upsert(table, values),
                                   lambda kv, note, via: kv.upsert(rt, values, note=note, via=via), rt)
        return key

    def delete(self, table: str, key: KeyLike, *, tenant: str | None = None) -> int:
        rt = self.table(table)
        k = rt.key_of(key)
        n: int = self._one_write(tenant, entity_of(rt, k), lambda uow: uow.delete(table, k),
                                 lambda kv, note, via: kv.delete(rt, k, note=note, via=via), rt)
        return n

    # -- reads --------------------------------------------------------------------------------------------

    def read(self, table: str, key: KeyLike, *, tenant: str | None = None, routing: Routing | None = None
             ) -> dict[str, Any] | None:
        """Read one row by key from the store reads are served from (application column names).

        In SHADOW_READ / CUTOVER_READS a sampled read also reads the other store concurrently and compares
        the two off the request path; the result returned is always the serving store's.
        """
        rt = self.table(table)
        k = rt.key_of(key)
        route = routing or self.route(tenant, entity_of(rt, k))
        side = self.read_side(rt, route, k)
        handoff = None
        if self.shadow_enabled(route) and self.shadow.sampled():
            handoff = self.shadow.start(rt.name, k, side.value)
        started = time.perf_counter()
        try:
            if side not in self.engines:  # the Redis new store serves reads
                assert self.kv is not None
                found = self.kv.read(rt, k)
            else:
                with self.engines[side].connect() as conn:
                    found = rt.select(conn, side, k)
        except BaseException:
            if handoff is not None:
                handoff.cancel()
            raise
        self.stats.observe(st.LAT_READ, (time.perf_counter() - started) * 1000)
        row, app = found if found is not None else (None, None)
        if handoff is not None:
            handoff.set(row)  # the shadow compares store rows, in each store's own column names
        return app

    def read_row_direct(self, table: str, side: str, key: Key) -> dict[str, Any] | None:
        """Read a row by key on one store through the adapter's own pool (that store's column names)."""
        return self.reads.read_row(table, side, key)

    def read_rows_direct(self, table: str, side: str, keys: list[Key]) -> dict[Key, dict[str, Any] | None]:
        """Read many rows by key in one statement (the shadow reader's batches): {requested key: row}."""
        return self.reads.read_rows(table, side, keys)

    # -- secondary writes and repairs ---------------------------------------------------------------------

    def retry_stale(self, fn: Callable[[], Any], *sides: Side) -> Any:
        """Run idempotent ``fn`` once more after dropping the pools of ``sides`` if a pooled connection was
        dead (:func:`dualwrite.adapter._stores.retry_stale`)."""
        return retry_stale(self.data, fn, *sides)

    def enqueue_repair(self, table: str, keys: Sequence[Key], *, reason: str, authoritative: str) -> None:
        """Durably queue keys for the repair drain; buffered in memory (and retried) while that fails."""
        self.repairs.enqueue(table, keys, reason=reason, authoritative=authoritative)

    def retry_pending_repairs(self) -> int:
        return self.repairs.retry_pending()

    @property
    def pending_repairs(self) -> int:
        return self.repairs.pending

    def requeue_spilled(self) -> int | None:
        """Queue the keys an earlier run of this migration spilled at exit (:meth:`RepairQueue.requeue_spilled`)."""
        return self.repairs.requeue_spilled()

    def spill_pending(self) -> tuple[int, str | None]:
        """Write the keys held in memory to this instance's spill file; returns (keys spilled, path)."""
        return self.repairs.spill_pending()

    # -- maintenance --------------------------------------------------------------------------------------

    def mapping_for(self, table: str, reverse: bool) -> TableMapping:
        """(source table, reverse) -> mapping: what the relay and repair drains need."""
        rt = self.table(table)
        return rt.mapping_from(Side.NEW if reverse else Side.OLD)

    def drain_repairs(self) -> int:
        """Mirror every due key of this migration's repair queue now (the core drain; returns keys mirrored).

        Like the workflow's drain: into the store that is not authoritative now (per tenant where tenants
        moved on their own), under the repair guard, and nothing while a write fence is up."""
        self.retry_pending_repairs()
        authority = relay.repair_authority(self.control, self.spec)
        if authority == "fenced":
            return 0
        res = relay.drain_repairs(self.control, self.data[Side.OLD], self.data[Side.NEW], self.migration,
                                  self.mapping_for, base_backoff_seconds=0.5, authority=authority)
        return res.mirrored

    def flush_stats(self) -> bool:
        try:
            return self.stats.flush(self.control)
        except Exception as exc:  # noqa: BLE001 - kept for the next window
            log.warning("migration %s: cannot flush statistics (%s)", self.migration, error_class(exc))
            return False

    def _background(self) -> None:
        """Keep the phase fresh, retry held repair keys and spilled files, flush statistics windows."""
        ttl = max(0.05, self.options.phase_ttl)
        next_flush = time.monotonic() + self.options.stats_window_seconds
        next_requeue = time.monotonic() + 5.0
        while not self._stop.wait(min(ttl / 2, 0.5)):
            with contextlib.suppress(Exception):
                self.phase.refresh(force=True)
            if self.repairs.pending:
                with contextlib.suppress(Exception):
                    self.repairs.retry_pending()
            if self._spill_waiting and time.monotonic() >= next_requeue:
                self._spill_waiting = self.repairs.requeue_spilled() is None
                next_requeue = time.monotonic() + 5.0
            if time.monotonic() >= next_flush:
                self.flush_stats()
                next_flush = time.monotonic() + self.options.stats_window_seconds

    def close(self, *, leave_barrier: bool = True) -> CloseReport:
        """Stop background work, run due re-checks, flush the last stats window, leave the barrier.

        Repair keys still held in memory (the control store was unreachable) are queued if it is back, else
        spilled to this host's spill file, to be re-queued by the next writer of the migration: the
        returned :class:`CloseReport` (and one log line, with counts and the file, never keys) says which."""
        if self._closed:
            return self._close_report or CloseReport()
        self._closed = True
        self._close_strategies()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.scheduler.stop(run_pending=True)
        self.executor.shutdown(wait=True)
        self._close_report = report = self.repairs.settle()
        self.flush_stats()
        if leave_barrier:
            self.phase.forget()
        for s in self.data.values():
            s.dispose()
        return report

    def _close_strategies(self) -> None:
        """async: flush the queue (what cannot be flushed goes to the repair queue); strict: clear the notes."""
        if self.lagged is not None:
            self.lagged.close()
        if self.strict is not None:
            self.strict.close()

    def __enter__(self) -> DualWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
