"""The write adapter's Core API: phase-aware writes by key on SQLAlchemy connections, and reads with shadows.

An application writes in *its* schema (the old store's table and column names) and never names a store:
each unit of work is routed by the phase in force for it (DESIGN.md's table, with per-tenant / per-entity
overrides and the sticky ramp):

1. the authoritative store is written first, in one transaction on a SQLAlchemy connection; if that fails
   the request fails and nothing else is written (the seed's failure table);
2. then, by strategy:

   - ``sync``: right after the commit the same keys are mirrored to the other store. The adapter already
     holds the committed row image (``RETURNING``), so it writes that image with a version-guarded upsert,
     one round trip; on any doubt (no version column, no image, a delete, a slow commit) it falls back to
     :func:`dualwrite.mirror.mirror_keys`, which re-reads the source under lock. A failure or timeout never
     fails the request: it is counted by error class and the keys go to the durable repair queue;
   - ``outbox``: the keys are appended to ``dualwrite_outbox`` *inside* the authoritative transaction (on
     PostgreSQL folded into the same statement, so it costs no extra round trip); the relay mirrors them;
   - ``triggers``: nothing: triggers on the store capture the keys and the relay mirrors them.
   - ``strict`` (:mod:`dualwrite.adapter.strict`): *before* the authoritative commit, inside its open
     transaction, the keys are noted durably and the other store is written and committed; a failure of
     either store fails the request and neither keeps the write;
   - ``async`` (:mod:`dualwrite.adapter.lagged`): the keys are queued for background workers; the request
     returns right after the authoritative commit.

   A table may choose its own strategy among strict, sync and async (``tables[].strategy``).

After write cutover the new store is authoritative: the same calls write the new store (column names
translated through the mapping) and mirror back to the old one with ``mapping.reversed()``. A column the
mapping computes (a split ``name`` -> ``first_name`` + ``last_name``) is computed from the application's
values in the write itself (``expr`` in SQL on the new store, ``transform`` in Python), and reads served by
the new store rebuild the application's columns with the spec's ``reverse`` rules: the application keeps
its schema from the first phase to the last.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import NoSuchTableError

from dualwrite import bypass, control, hooks, outbox, spill
from dualwrite import stats as st
from dualwrite.adapter.lagged import AsyncMirror
from dualwrite.adapter.phase import PhaseCache, Routing, Side
from dualwrite.adapter.strict import StrictStrategy, ensure_notes, strict_groups
from dualwrite.config import StoreRef, StoreResolver
from dualwrite.errors import (
    Problem,
    SchemaError,
    StoreUnavailableError,
    StrictWriteError,
    WriteFencedError,
)
from dualwrite.errors import RoutingError as RoutingError  # re-exported by dualwrite.adapter
from dualwrite.mapping import ColumnPlan, SourceKind, TableMapping, compile_table
from dualwrite.mirror import mirror_keys, normal_key
from dualwrite.rows import adapt, adapters_for
from dualwrite.shadow import RecentWrites, Scheduler, ShadowOptions, ShadowReader, TableComparator
from dualwrite.spec import MigrationSpec, Strategy, TableSpec
from dualwrite.sqlgen import target_side, upsert_sql, user_expr
from dualwrite.store import Dialect, Kind, Store, is_mysql_error

log = logging.getLogger("dualwrite.adapter")

Key = tuple[Any, ...]
LAT_FENCE = "latency.fence_wait"
"""How long a write waited for a write fence to lift (observed only for writes that waited)."""
KeyLike = Any  # a scalar, a tuple in key order, or a mapping of key column -> value


@dataclass
class AdapterOptions:
    """Knobs of the adapter; the defaults suit production."""

    sample_ratio: float = 1.0
    """Share of eligible reads that are shadow-compared (the control state's ``shadow_sample`` wins)."""
    shadow_timeout: float = 0.5
    shadow_batch_window: float = 0.02
    """Sampled reads are compared in batches: one read of the other store per table per window."""
    shadow_log_values: bool | None = None
    """Log shadow mismatches with keys and values in clear (None: ``$DUALWRITE_SHADOW_LOG_VALUES`` is 1 /
    true); by default a mismatch line carries the table, the column and short hashes only."""
    shadow_after_write_cutover: bool = False
    """CUTOVER_WRITES: also compare reads (DESIGN: optional)."""
    ignore_fields: Mapping[str, Sequence[str]] = field(default_factory=dict)
    normalizers: Mapping[str, Mapping[str, Callable[[Any], Any]]] = field(default_factory=dict)
    recent_write_seconds: float = 2.0
    read_your_writes_seconds: float = 1.0
    """outbox / triggers: while the relay may still lag, this instance's reads of a key (Core API) or of a
    table (ORM) it wrote within this many seconds are served by the authoritative store, so a request after
    a write sees it even in CUTOVER_READS. 0 turns it off."""
    recheck_delay: float = 0.25
    recheck_attempts: int = 2
    phase_ttl: float = 1.0
    heartbeat_seconds: float = 5.0
    stats_window_seconds: float = 10.0
    secondary_timeout: float = 2.0
    """Statement / connect timeout (seconds) of every secondary write and shadow read."""
    fast_path: bool = True
    fast_path_max_delay: float = 0.2
    """A row image older than this (seconds since the commit) is not trusted: mirror_keys re-reads it."""
    delete_recheck_seconds: float = 2.0
    """A sync delete is mirrored again this much later, so a concurrent insert's late image cannot
    resurrect the row."""
    background: bool = True
    """Keep the phase fresh, flush stats and retry buffered repairs on a daemon thread."""
    workers: int = 4
    pool_size: int = 5
    ensure_schema: bool = True
    """Create the control, stats and outbox tables if missing (needs DDL rights)."""
    prometheus: bool = False
    prometheus_registry: Any = None
    fence_max_wait: float = 15.0
    """A write of a fenced scope (authority moving between the stores) waits at most this long for the fence
    to lift, then fails with :class:`WriteFencedError` (it never writes in the wrong order)."""
    fence_poll: float = 0.025
    """While fenced, the control state is read this often (bypassing the phase cache's ttl)."""
    strict_note_grace: float = 30.0
    """strict: a note of a write in flight older than this is swept into the repair queue (only a crash
    between the two commits, or a failed clean-up, leaves it there that long)."""
    async_queue_size: int = 10_000
    """async: keys queued at most; beyond it they go to the durable repair queue (the request never waits)."""
    async_workers: int = 2
    async_batch: int = 200
    async_batch_wait: float = 0.1
    """async: a worker that finds fewer than ``async_batch`` keys waits this long for more (the lag it adds
    buys fewer, larger mirror batches: less CPU beside the requests)."""
    spill_dir: str | None = None
    """Where repair keys the control store could not take are written at exit, and re-queued from at the
    next start (a local directory of the application's host; default ``$DUALWRITE_SPILL_DIR``, else the
    user's state directory, ``~/.local/state/dualwrite/spill``)."""


def _log_values(option: bool | None) -> bool:
    if option is not None:
        return option
    return os.environ.get("DUALWRITE_SHADOW_LOG_VALUES", "").strip().lower() in ("1", "true", "yes")


def error_class(exc: BaseException) -> str:
    """A short, stable class name for counting failures ("unavailable", "timeout", or the exception type)."""
    if isinstance(exc, StrictWriteError) and exc.__cause__ is not None:
        return error_class(exc.__cause__)  # what the store said, not the wrapper
    if isinstance(exc, StoreUnavailableError):
        return "unavailable"
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    if sqlstate in ("57014", "55P03"):
        return "timeout"
    if sqlstate.startswith("08"):
        return "unavailable"
    args = getattr(exc, "args", ())
    if is_mysql_error(exc) and args and isinstance(args[0], int):
        if args[0] in (1205, 3024, 1969):
            return "timeout"
        if args[0] in (2002, 2003, 2006, 2013):
            return "unavailable"
    if type(exc).__module__.startswith("psycopg") and type(exc).__name__ == "OperationalError" and not sqlstate:
        return "unavailable"  # the connection broke (no SQLSTATE: the server never answered)
    orig = getattr(exc, "orig", None)
    if orig is not None and orig is not exc:
        return error_class(orig)
    return type(exc).__name__


def is_disconnect(exc: BaseException) -> bool:
    """A connection that died under us (not a refused one, not an error the server reported)."""
    if type(exc).__module__.startswith("psycopg"):
        return type(exc).__name__ == "OperationalError" and not getattr(exc, "sqlstate", None)
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    return is_mysql_error(exc) and len(args) > 0 and args[0] in (2006, 2013)


def _short(exc: BaseException) -> str:
    from dualwrite.config import redact  # noqa: PLC0415

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:200]


# ---------------------------------------------------------------------------------------------------------
# tables


class SideTable:
    """One migrated table on one store, as the application addresses it (application column names)."""

    def __init__(self, side: Side, store: Store, table: str, columns: Sequence[str], app_to_col: Mapping[str, str],
                 key: Sequence[str], version: str | None, version_kind: Kind | None, writable: bool,
                 defaults: Mapping[str, Any] | None = None, computed: Sequence[ColumnPlan] = (),
                 app_reads: Sequence[ColumnPlan] = (), why_not_writable: str = "") -> None:
        self.side = side
        self.store = store
        self.dialect = store.dialect
        self.table = table
        self.qtable = store.quote(table)
        self.columns = tuple(columns)
        self.app_to_col = dict(app_to_col)
        self.col_to_app = {v: k for k, v in self.app_to_col.items()}
        self.key = tuple(key)
        self.version = version
        self.version_kind = version_kind
        self.writable = writable
        self.defaults = dict(defaults or {})  # side column -> constant (new columns with a spec default)
        self.computed = tuple(computed)  # side columns computed from application values (forward expr/transform)
        self.app_reads = tuple(app_reads)  # application columns rebuilt from a side row (reverse rules)
        self.why_not_writable = why_not_writable
        self.ph = store.paramstyle
        self.sql: dict[Any, str] = {}
        q = store.quote
        self.returning_all = ", ".join(q(c) for c in self.columns)
        self.where_key = " AND ".join(f"{q(k)} = {self.ph}" for k in self.key)

    def col(self, app_name: str) -> str:
        try:
            return self.app_to_col[app_name]
        except KeyError:
            raise RoutingError(f"column {app_name!r} of table {self.table} cannot be written on the "
                               f"{self.side.value} store (not a plain column there)") from None

    def assignments(self, values: Mapping[str, Any]) -> list[tuple[str, str, list[Any]]]:
        """(side column, SQL of its value, parameters) for a write given in application column names.

        Renamed columns take a placeholder; a computed column is computed from the values it is made of
        (all of them must be given, or the stored value would mix old and new inputs). An ``expr`` runs
        in the statement itself over a one-row derived table of those values, so it costs no round trip.
        """
        out: list[tuple[str, str, list[Any]]] = []
        fed: set[str] = set()
        for plan in self.computed:
            if not any(i in values for i in plan.inputs):
                continue
            missing = [i for i in plan.inputs if i not in values]
            if missing:
                raise RoutingError(f"table {self.table}: column {plan.target!r} is computed from "
                                   f"{', '.join(plan.inputs)}; give {', '.join(missing)} too")
            fed.update(plan.inputs)
            out.append(self._computed(plan, values))
        plain = [(self.col(c), self.ph, [v]) for c, v in values.items() if c in self.app_to_col or c not in fed]
        return plain + out

    def _computed(self, plan: ColumnPlan, values: Mapping[str, Any]) -> tuple[str, str, list[Any]]:
        if plan.kind is SourceKind.TRANSFORM:
            assert plan.transform is not None
            arg = values[plan.source] if plan.source is not None else dict(values)
            return plan.target, self.ph, [plan.transform(arg)]
        assert plan.expr is not None
        q = self.store.quote
        cols = ", ".join(f"{self.ph} AS {q(i)}" for i in plan.inputs)
        return (plan.target, f"(SELECT {user_expr(plan.expr, self.store)} FROM (SELECT {cols}) AS dw_app)",
                [values[i] for i in plan.inputs])

    def read_sql(self) -> str:
        """SELECT of one row by key: the side's columns, then the SQL-rebuilt application columns."""
        exprs = [user_expr(p.expr, self.store) for p in self.app_reads if p.kind is SourceKind.EXPR and p.expr]
        return f"SELECT {', '.join([self.returning_all, *exprs])} FROM {self.qtable} WHERE {self.where_key}"

    def split_row(self, r: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A row read with :meth:`read_sql` -> (the side's row in its own names, the application's row).

        The application's row carries the renamed columns under their application names and the columns
        the reverse rules rebuild (the old ``name`` joined from ``first_name`` and ``last_name``)."""
        n = len(self.columns)
        row = dict(zip(self.columns, r[:n], strict=True))
        app = {self.col_to_app.get(c, c): v for c, v in row.items()}
        extra = iter(r[n:])
        for p in self.app_reads:
            if p.kind is SourceKind.EXPR:
                app[p.target] = next(extra)
            elif p.kind is SourceKind.COLUMN:
                app[p.target] = row[p.source or ""]
            elif p.transform is not None:
                app[p.target] = p.transform(row[p.source] if p.source is not None else dict(row))
        return row, app

    def version_bump(self, qualifier: str = "") -> str:
        """The new version of an updated row: +1, or the database clock for a timestamp version."""
        if self.version_kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
            return _now_sql(self.dialect)
        return f"{qualifier}{self.store.quote(self.version or '')} + 1"

    def version_initial(self) -> tuple[str, tuple[Any, ...]]:
        if self.version_kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
            return _now_sql(self.dialect), ()
        return self.ph, (1,)


def _now_sql(dialect: Dialect) -> str:
    if dialect is Dialect.POSTGRESQL:
        return "clock_timestamp()"
    if dialect is Dialect.MYSQL:
        return "UTC_TIMESTAMP(6)"
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


class FastPath:
    """Writing a committed row image straight to the other store (one guarded upsert)."""

    def __init__(self, mapping: TableMapping, target: Store, source_columns: Sequence[str]) -> None:
        self.mapping = mapping
        self.target = target
        self.sql = upsert_sql(mapping, target_side(mapping, target), only_if_newer=True, insert_only=False)
        self.adapters = adapters_for(mapping, target.dialect)
        self.source_columns = tuple(source_columns)
        self._plans = mapping.columns

    def row(self, image: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for plan in self._plans:
            if plan.kind is SourceKind.COLUMN:
                out.append(image[plan.source])  # type: ignore[index]
            elif plan.kind is SourceKind.DEFAULT:
                out.append(plan.value)
            else:
                assert plan.transform is not None
                out.append(plan.transform(image[plan.source]) if plan.source else plan.transform(dict(image)))
        return tuple(out)


class TableRuntime:
    """Everything the adapter knows about one migrated table."""

    def __init__(self, spec: TableSpec, forward: TableMapping, old: Store, new: Store,
                 strategy: Strategy = Strategy.SYNC) -> None:
        self.name = spec.source
        self.spec = spec
        self.strategy = strategy
        self.forward = forward
        try:
            self.backward: TableMapping | None = forward.reversed()
        except ValueError:
            self.backward = None
        self.key = forward.source_key
        self.version = forward.version[0] if forward.version else None
        self.tenant_column = spec.tenant_column
        src, dst = forward.source_info, forward.target_info
        self.old = SideTable(Side.OLD, old, forward.source_table, list(src.columns), {c: c for c in src.columns},
                             forward.source_key, self.version,
                             src.columns[self.version].kind if self.version else None, writable=True)
        plain = {p.source: p.target for p in forward.columns if p.kind is SourceKind.COLUMN and p.source}
        defaults = {p.target: p.value for p in forward.columns if p.kind is SourceKind.DEFAULT}
        computed = [p for p in forward.columns if p.kind in (SourceKind.EXPR, SourceKind.TRANSFORM)]
        vnew = forward.version[1] if forward.version else None
        self.new = SideTable(Side.NEW, new, forward.target_table, list(dst.columns), plain, forward.target_key, vnew,
                             dst.columns[vnew].kind if vnew else None, writable=self.backward is not None,
                             defaults=defaults, computed=computed, app_reads=forward.reverse,
                             why_not_writable=_irreversible_text(forward))
        self.sides = {Side.OLD: self.old, Side.NEW: self.new}
        self.orm_compatible = (forward.source_table == forward.target_table and self.backward is not None
                               and all(p.source == p.target for p in forward.columns))
        # the image path computes columns in Python: a mapping with SQL (expr) re-reads the source instead
        self.fast: dict[Side, FastPath | None] = {Side.OLD: None, Side.NEW: None}
        # the fast path trusts the version guard only where a refused image can be told from a written one
        # (the upsert's row count); MariaDB/MySQL report a matched row as written, so an image refused there
        # would be lost silently: their side always re-reads the authoritative row (mirror_keys)
        if forward.version is not None and not _has_expr(forward) and new.dialect is not Dialect.MYSQL:
            self.fast[Side.OLD] = FastPath(forward, new, self.old.columns)
        if (forward.version is not None and self.backward is not None and not _has_expr(self.backward)
                and old.dialect is not Dialect.MYSQL):
            self.fast[Side.NEW] = FastPath(self.backward, old, self.new.columns)
        self.read_sql: dict[Side, str] = {}
        self.comparator = TableComparator(forward)

    def mapping_from(self, side: Side) -> TableMapping:
        if side is Side.OLD:
            return self.forward
        if self.backward is None:
            raise RoutingError(f"table {self.name}: {self.new.why_not_writable}, so the new store cannot be "
                               "mirrored back to the old one (write cutover is not possible for it)")
        return self.backward

    def key_of(self, key: KeyLike) -> Key:
        """A key given as scalar, tuple or mapping -> tuple in key order (application names)."""
        if isinstance(key, Mapping):
            try:
                return tuple(key[k] for k in self.key)
            except KeyError as exc:
                raise RoutingError(f"table {self.name}: key column {exc.args[0]!r} missing") from None
        if isinstance(key, tuple | list):
            if len(key) != len(self.key):
                raise RoutingError(f"table {self.name}: key has {len(key)} parts, expected {len(self.key)}")
            return tuple(key)
        if len(self.key) != 1:
            raise RoutingError(f"table {self.name}: composite key {self.key}: give a tuple or a mapping")
        return (key,)

    def key_from_values(self, values: Mapping[str, Any]) -> Key | None:
        if all(k in values for k in self.key):
            return tuple(values[k] for k in self.key)
        return None


def _has_expr(mapping: TableMapping) -> bool:
    return any(p.kind is SourceKind.EXPR for p in mapping.columns)


def _irreversible_text(mapping: TableMapping) -> str:
    """Why a mapping cannot be mirrored back, for the error a write after cutover gets."""
    missing = mapping.needs_reverse()
    if not missing:
        return ""
    olds = sorted({c for cols in missing.values() for c in cols})
    return (f"its mapping computes {', '.join(missing)} from {', '.join(olds)} and has no reverse rule for "
            f"{'it' if len(olds) == 1 else 'them'} (add 'reverse:' to the table's spec)")


@dataclass
class Touched:
    """A key written in a unit of work, with the committed row image when the statement returned it."""

    table: TableRuntime
    key: Key
    image: dict[str, Any] | None = None
    deleted: bool = False


@dataclass
class _Pending:
    """Repairs that could not be enqueued (the control store was unreachable): retried later."""

    table: str
    keys: list[Key]
    reason: str
    authoritative: str


@dataclass(frozen=True)
class CloseReport:
    """What :meth:`DualWriter.close` did with the repair keys it still held in memory (counts, no keys)."""

    pending: int = 0
    """keys held in memory at close (their secondary write failed and the control store had not taken them)"""
    enqueued: int = 0
    """of those, queued to the control store's repair queue at close"""
    spilled: int = 0
    """of those, written to the spill file (re-queued by the next writer of the migration)"""
    lost: int = 0
    """of those, neither queued nor spilled (the spill file could not be written): a verification finds them"""
    spill_path: str | None = None


# ---------------------------------------------------------------------------------------------------------
# the writer

_LIVE: weakref.WeakSet[DualWriter] = weakref.WeakSet()


@atexit.register
def _spill_at_exit() -> None:
    """An application that exits without ``close()`` must not take its pending repair keys with it."""
    for writer in list(_LIVE):
        with contextlib.suppress(Exception):
            if not writer._closed and writer.pending_repairs:
                n, path = writer.spill_pending()
                log.warning("migration %s: exiting without close(): %d repair key(s) spilled to %s (re-queued "
                            "by the next start)", writer.migration, n, path)


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _data_store(store: Store, timeout: float, pool_size: int) -> Store:
    """A private copy of a store for secondary writes and shadow reads, with connect/statement timeouts.

    Private, so timeouts never touch the application's own connections, and so the secondary path has a
    pool of its own that a slow secondary cannot starve the primary of.
    """
    # no pre-ping: a round trip per checkout is a third of a secondary write; after a restart of the store the
    # first write on a stale connection fails, is queued for repair, and the pool is refreshed
    clone = Store(StoreRef(store.name, store.ref.url), pool_size=pool_size, pre_ping=False)
    ms = max(1, int(timeout * 1000))

    def add_timeouts(_dialect: Any, _rec: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        if clone.dialect is Dialect.POSTGRESQL:
            cparams.setdefault("connect_timeout", max(2, int(timeout + 0.999)))
            opts = str(cparams.get("options", ""))
            cparams["options"] = f"{opts} -c statement_timeout={ms} -c lock_timeout={ms}".strip()
        elif clone.dialect is Dialect.MYSQL:
            cparams.setdefault("connect_timeout", max(1, int(timeout + 0.999)))
            cparams.setdefault("read_timeout", max(1, int(timeout * 2 + 0.999)))
            cparams.setdefault("write_timeout", max(1, int(timeout * 2 + 0.999)))
        bypass.connect_options(clone.dialect, cparams)  # the adapter's own pools: every write is marked

    sa.event.listen(clone.engine, "do_connect", add_timeouts)
    return clone


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
        self.options = opts = options or AdapterOptions()
        self.instance_id = instance_id or default_instance_id()
        self.old_store, self.new_store = old, new
        self.control = control_store or old
        self.engines: dict[Side, Engine] = {Side.OLD: old_engine or old.engine, Side.NEW: new_engine or new.engine}
        self.data: dict[Side, Store] = {Side.OLD: _data_store(old, opts.secondary_timeout, opts.pool_size),
                                        Side.NEW: _data_store(new, opts.secondary_timeout, opts.pool_size)}
        self.marks_writes = bypass.adapter_marks(spec)
        """Mark the authoritative transactions as the adapter's, so bypass capture tells them from raw writes."""
        self.tables: dict[str, TableRuntime] = {}
        problems: list[Problem] = []
        for t in spec.tables:
            try:
                src_info = self.data[Side.OLD].describe(t.source)
                dst_info = self.data[Side.NEW].describe(t.target_table)
            except NoSuchTableError as exc:
                problems.append(Problem(f"table {t.source}", f"table {exc} does not exist"))
                continue
            mapping, found = compile_table(t, src_info, dst_info)
            if mapping is None:
                problems += found
                continue
            self.tables[t.source] = TableRuntime(t, mapping, self.data[Side.OLD], self.data[Side.NEW],
                                                 spec.strategy_of(t.source))
        if problems:
            for s in self.data.values():
                s.dispose()
            raise SchemaError(problems, "the adapter cannot map the migration's tables")
        for name, fields in opts.ignore_fields.items():
            if name in self.tables:
                rt = self.tables[name]
                rt.comparator = TableComparator(rt.forward, ignore=frozenset(fields),
                                                normalizers=opts.normalizers.get(name))
        for name, norms in opts.normalizers.items():
            if name in self.tables and name not in opts.ignore_fields:
                rt = self.tables[name]
                rt.comparator = TableComparator(rt.forward, normalizers=norms)
        if opts.ensure_schema:
            control.ensure_schema(self.control)
            st.ensure_schema(self.control)
            if self.strategy is Strategy.OUTBOX:
                outbox.ensure_log(old, outbox.OUTBOX)
                outbox.ensure_log(new, outbox.OUTBOX)
        self.stats = st.Stats(self.migration, self.instance_id)
        if opts.prometheus:
            self.stats.enable_prometheus(opts.prometheus_registry)
        self.phase = PhaseCache(self.control, self.migration, self.instance_id, ttl=opts.phase_ttl,
                                heartbeat_seconds=opts.heartbeat_seconds)
        self.recent = RecentWrites(opts.recent_write_seconds)
        self.executor = ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="dualwrite-shadow")
        self.scheduler = Scheduler()
        self.shadow = ShadowReader(self.migration, {n: t.comparator for n, t in self.tables.items()},
                                   self.read_row_direct, self.stats, self.executor, self.scheduler, self.recent,
                                   ShadowOptions(sample_ratio=opts.sample_ratio, timeout=opts.shadow_timeout,
                                                 recent_write_seconds=opts.recent_write_seconds,
                                                 recheck_delay=opts.recheck_delay,
                                                 recheck_attempts=opts.recheck_attempts,
                                                 batch_window=opts.shadow_batch_window,
                                                 log_values=_log_values(opts.shadow_log_values)),
                                   read_rows=self.read_rows_direct)
        self.phase.on_change(self._on_state)
        self._pending: list[_Pending] = []
        self._pending_lock = threading.Lock()
        self.spill_dir = Path(opts.spill_dir).expanduser() if opts.spill_dir else spill.default_spill_dir()
        self._spill_waiting = self.requeue_spilled() is None
        self._closed = False
        self._close_report: CloseReport | None = None
        _LIVE.add(self)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.phase.refresh(force=True)
        used = {rt.strategy for rt in self.tables.values()}
        self.strict = StrictStrategy(self) if Strategy.STRICT in used else None
        if self.strict is not None:
            if opts.ensure_schema:
                ensure_notes(old)
                ensure_notes(new)
            if opts.background:
                self.strict.start()
        self.lagged = (AsyncMirror(self, capacity=opts.async_queue_size, workers=opts.async_workers,
                                  batch=opts.async_batch, batch_wait=opts.async_batch_wait)
                       if Strategy.ASYNC in used else None)
        if opts.background:
            self._thread = threading.Thread(target=self._background, name="dualwrite-runtime", daemon=True)
            self._thread.start()

    @classmethod
    def from_resolver(cls, spec: MigrationSpec, resolver: StoreResolver | None = None, **kw: Any) -> DualWriter:
        """Resolve the spec's store names (``DUALWRITE_STORE_<NAME>`` or the config file) and build a writer."""
        res = resolver or StoreResolver()
        old, new = Store(res.resolve(spec.old)), Store(res.resolve(spec.new))
        ctl = Store(res.resolve(spec.control_store)) if spec.control_store else None
        return cls(spec, old, new, control_store=ctl, **kw)

    # -- phase --------------------------------------------------------------------------------------------

    def _on_state(self, state: control.ControlState) -> None:
        sample = state.overrides.get("shadow_sample") if isinstance(state.overrides, Mapping) else None
        self.shadow.sample_override = float(sample) if isinstance(sample, int | float) else None

    def route(self, tenant: str | None = None, entity: str | None = None) -> Routing:
        """The routing in force for a tenant / entity now (cached phase, ~1 s)."""
        return self.phase.route(tenant, entity)

    def engine(self, side: Side) -> Engine:
        return self.engines[side]

    def table(self, name: str) -> TableRuntime:
        try:
            return self.tables[name]
        except KeyError:
            raise RoutingError(f"table {name!r} is not part of migration {self.migration}") from None

    def read_side(self, rt: TableRuntime, routing: Routing, key: Key | None = None) -> Side:
        """Where this instance reads ``rt`` from: the phase's store, unless it must read its own writes."""
        side = routing.reads_from
        if side is routing.authoritative or rt.strategy in (Strategy.SYNC, Strategy.STRICT):
            return side  # sync / strict: the other store had the write before the request returned
        window = self.options.read_your_writes_seconds
        if window > 0 and (self.recent.recent(rt.name, key, window) if key is not None
                           else self.recent.table_recent(rt.name, window)):
            return routing.authoritative
        return side

    def shadow_enabled(self, routing: Routing) -> bool:
        return routing.rules.shadow or (routing.rules.shadow_optional and self.options.shadow_after_write_cutover)

    # -- write fence --------------------------------------------------------------------------------------

    def begin_write(self, tenant: str | None = None, entity: str | None = None, *,
                    routing: Routing | None = None) -> Routing:
        """Route a unit of work that writes, waiting while its scope is fenced; counts it in flight until
        :meth:`end_write` (the barrier of a later epoch waits for it). Raises :class:`WriteFencedError`
        after ``fence_max_wait``."""
        return self.begin_write_many([(tenant, entity)], routing=routing)[0]

    def begin_write_many(self, subjects: list[tuple[str | None, str | None]], *,
                         routing: Routing | None = None) -> list[Routing]:
        waited_since: float | None = None
        while True:
            self.phase.state()  # refresh a stale cache (outside the in-flight lock)
            routes = self.phase.try_enter(subjects)
            if routes is not None:
                return self._fence_checked(routes, routing, waited_since)
            now = time.monotonic()
            if waited_since is None:
                waited_since = now
            self._fence_wait_step(subjects, waited_since, now)
            time.sleep(self.options.fence_poll)
            with contextlib.suppress(Exception):
                self.phase.refresh(force=True)

    def _fence_wait_step(self, subjects: list[tuple[str | None, str | None]], since: float, now: float) -> None:
        if now - since >= self.options.fence_max_wait:
            who = ", ".join(sorted({f"tenant {t}" for t, _ in subjects if t is not None})) or "the migration"
            raise WriteFencedError(
                f"migration {self.migration}: writes of {who} are fenced while authority moves between the "
                f"stores, and the fence did not lift within {self.options.fence_max_wait:g} s; nothing was "
                "written, retry the request")

    def _fence_checked(self, routes: list[Routing], given: Routing | None, waited_since: float | None
                       ) -> list[Routing]:
        if waited_since is not None:
            self.stats.observe(LAT_FENCE, (time.monotonic() - waited_since) * 1000)
        if given is None:
            return routes
        if waited_since is not None and given.authoritative is not routes[0].authoritative:
            self.phase.leave(routes[0].epoch)
            raise WriteFencedError(f"migration {self.migration}: the routing given was decided before authority "
                                   f"moved to the {routes[0].authoritative.value} store; route the write again")
        if given.epoch != routes[0].epoch:
            # in flight under the epoch the given routing was decided in (an older one holds the barrier back)
            self.phase.hold(given.epoch)
            self.phase.leave(routes[0].epoch)
        return [given]

    def end_write(self, routing: Routing) -> None:
        """The unit of work routed by :meth:`begin_write` is over."""
        self.phase.leave(routing.epoch)

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
            try:
                with self.engines[side].connect() as conn:
                    if self.marks_writes and bypass.marks(route.phase):
                        bypass.mark_transaction(conn, self.data[side].dialect)
                    uow = UnitOfWork(self, route, conn)
                    yield uow
                    uow._before_commit()
                    self.commit_unit(route, uow.touched, conn)
            except BaseException as exc:
                if not isinstance(exc, GeneratorExit) and not _secondary_only(exc):
                    self.stats.count(st.PRIMARY, f"failure:{error_class(exc)}")
                raise
            committed = time.perf_counter()
            self.finish(route, uow.touched, started, committed)
        finally:
            self.end_write(route)

    def commit_unit(self, route: Routing, touched: Sequence[Touched], conn: Connection) -> None:
        """Commit the authoritative transaction; tables with the strict strategy write the other store
        first, inside it (:mod:`dualwrite.adapter.strict`)."""
        strict = strict_groups(touched) if self.strict is not None and route.mirror_to is not None else []
        if not strict:
            conn.commit()
            return
        assert self.strict is not None
        self.strict.commit(route, strict, conn.connection.dbapi_connection, conn.commit)

    def finish(self, route: Routing, touched: list[Touched], started: float, committed: float) -> None:
        """After an authoritative commit: remember the keys, mirror them (sync) or queue them (async), record
        the latencies (strict tables were written to both stores before the commit)."""
        hooks.point("adapter.after_primary_commit")
        for t in touched:
            self.recent.add(t.table.name, t.key)
        primary_ms = (committed - started) * 1000
        lat_side = st.LAT_OLD if route.authoritative is Side.OLD else st.LAT_NEW
        if route.mirror_to is not None and touched:
            sync = [t for t in touched if t.table.strategy is Strategy.SYNC]
            if sync:
                self.mirror_now(route, sync, committed)
            if self.lagged is not None:
                lagged = [t for t in touched if t.table.strategy is Strategy.ASYNC]
                if lagged:
                    self.lagged.submit(route, lagged)
        done = time.perf_counter()
        self.stats.record(counts=[(st.PRIMARY, "success", 1)],
                          latencies=[(lat_side, primary_ms), (st.LAT_DIRECT, primary_ms),
                                     (st.LAT_CALL, (done - started) * 1000)])

    def insert(self, table: str, values: Mapping[str, Any], *, tenant: str | None = None) -> Key:
        """Insert one row; returns its key (also when the database generated it)."""
        rt = self.table(table)
        with self.unit_of_work(tenant=self._tenant(rt, values, tenant), entity=self._entity(rt, values)) as uow:
            return uow.insert(table, values)

    def update(self, table: str, key: KeyLike, values: Mapping[str, Any], *, tenant: str | None = None) -> int:
        """Update one row by key; returns the number of rows changed (0 or 1)."""
        rt = self.table(table)
        k = rt.key_of(key)
        with self.unit_of_work(tenant=self._tenant(rt, values, tenant), entity=_entity_of(rt, k)) as uow:
            return uow.update(table, k, values)

    def upsert(self, table: str, values: Mapping[str, Any], *, tenant: str | None = None) -> Key:
        rt = self.table(table)
        with self.unit_of_work(tenant=self._tenant(rt, values, tenant), entity=self._entity(rt, values)) as uow:
            return uow.upsert(table, values)

    def delete(self, table: str, key: KeyLike, *, tenant: str | None = None) -> int:
        rt = self.table(table)
        k = rt.key_of(key)
        with self.unit_of_work(tenant=tenant, entity=_entity_of(rt, k)) as uow:
            return uow.delete(table, k)

    def _tenant(self, rt: TableRuntime, values: Mapping[str, Any], tenant: str | None) -> str | None:
        if tenant is not None:
            return tenant
        if rt.tenant_column and values.get(rt.tenant_column) is not None:
            return str(values[rt.tenant_column])
        return None

    def _entity(self, rt: TableRuntime, values: Mapping[str, Any]) -> str | None:
        k = rt.key_from_values(values)
        return None if k is None else _entity_of(rt, k)

    # -- reads --------------------------------------------------------------------------------------------

    def read(self, table: str, key: KeyLike, *, tenant: str | None = None, routing: Routing | None = None
             ) -> dict[str, Any] | None:
        """Read one row by key from the store reads are served from (application column names).

        In SHADOW_READ / CUTOVER_READS a sampled read also reads the other store concurrently and compares
        the two off the request path; the result returned is always the serving store's.
        """
        rt = self.table(table)
        k = rt.key_of(key)
        route = routing or self.route(tenant, _entity_of(rt, k))
        side = self.read_side(rt, route, k)
        handoff = None
        if self.shadow_enabled(route) and self.shadow.sampled():
            handoff = self.shadow.start(rt.name, k, side.value)
        started = time.perf_counter()
        try:
            with self.engines[side].connect() as conn:
                found = self._select(conn, rt, side, k)
        except BaseException:
            if handoff is not None:
                handoff.cancel()
            raise
        self.stats.observe(st.LAT_READ, (time.perf_counter() - started) * 1000)
        row, app = found if found is not None else (None, None)
        if handoff is not None:
            handoff.set(row)  # the shadow compares store rows, in each store's own column names
        return app

    def _select(self, conn: Connection, rt: TableRuntime, side: Side, key: Key
                ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(the store's row, the application's row) of one key, or None."""
        s = rt.sides[side]
        sql = rt.read_sql.get(side)
        if sql is None:
            sql = rt.read_sql[side] = s.read_sql()
        r = conn.exec_driver_sql(sql, tuple(key)).first()
        return None if r is None else s.split_row(tuple(r))

    def read_row_direct(self, table: str, side: str, key: Key) -> dict[str, Any] | None:
        """Read a row by key on one store through the adapter's own pool (that store's column names)."""
        rt = self.table(table)
        sd = Side(side)
        s = rt.sides[sd]
        store = self.data[sd]
        sql = s.sql.get("read")
        if sql is None:
            sql = s.sql["read"] = f"SELECT {s.returning_all} FROM {s.qtable} WHERE {s.where_key}"

        def run() -> Any:
            with store.connect() as conn:
                cur = conn.cursor()
                cur.execute(sql, tuple(key))
                r = cur.fetchone()
                cur.close()
                conn.rollback()
            return r

        r = self.retry_stale(run, sd)
        return None if r is None else dict(zip(s.columns, r, strict=True))

    def read_rows_direct(self, table: str, side: str, keys: list[Key]) -> dict[Key, dict[str, Any] | None]:
        """Read many rows by key in one statement (the shadow reader's batches): {requested key: row}."""
        rt = self.table(table)
        sd = Side(side)
        s = rt.sides[sd]
        store = self.data[sd]
        wanted = {normal_key(k): k for k in keys}
        q = store.quote
        ph = store.paramstyle
        if len(s.key) == 1:
            where = f"{q(s.key[0])} IN ({', '.join([ph] * len(keys))})"
            params: list[Any] = [k[0] for k in keys]
        else:
            one = "(" + ", ".join([ph] * len(s.key)) + ")"
            where = f"({', '.join(q(k) for k in s.key)}) IN ({', '.join([one] * len(keys))})"
            params = [v for k in keys for v in k]
        sql = f"SELECT {s.returning_all} FROM {s.qtable} WHERE {where}"
        positions = [s.columns.index(k) for k in s.key]

        def run() -> list[Any]:
            with store.connect() as conn:
                auto = False
                if store.dialect is Dialect.POSTGRESQL:
                    with contextlib.suppress(Exception):
                        conn.autocommit = True  # a lone SELECT: no transaction to end afterwards
                        auto = True
                try:
                    cur = conn.cursor()
                    cur.execute(sql, tuple(params))
                    rows = list(cur.fetchall())
                    cur.close()
                    if not auto:
                        conn.rollback()
                finally:
                    if auto:
                        conn.autocommit = False
            return rows

        out: dict[Key, dict[str, Any] | None] = {}
        for r in self.retry_stale(run, sd):
            requested = wanted.get(normal_key(tuple(r[p] for p in positions)))
            if requested is not None:
                out[requested] = dict(zip(s.columns, r, strict=True))
        return out

    # -- the secondary write ------------------------------------------------------------------------------

    def mirror_now(self, route: Routing, touched: Sequence[Touched], committed_at: float) -> None:
        """Sync strategy: make the other store follow the keys just committed; never raises."""
        a, b = route.authoritative, route.mirror_to
        assert b is not None
        by_table: dict[str, list[Touched]] = defaultdict(list)
        for t in touched:
            by_table[t.table.name].append(t)
        lat_name = st.LAT_NEW if b is Side.NEW else st.LAT_OLD
        for items in by_table.values():
            rt = items[0].table
            keys = list(dict.fromkeys(normal_key(t.key) for t in items))
            started = time.perf_counter()
            try:
                fast = rt.fast[a] if self.options.fast_path else None
                fresh = started - committed_at <= self.options.fast_path_max_delay
                images: dict[Key, dict[str, Any]] = {}
                slow: list[Key] = []
                last: dict[Key, Touched] = {}
                for t in items:
                    last[normal_key(t.key)] = t
                for k, t in last.items():
                    if fast is not None and fresh and t.image is not None and not t.deleted:
                        images[k] = t.image
                    else:
                        slow.append(k)

                def write(rt: TableRuntime = rt, fast: FastPath | None = fast, images: dict[Key, Any] = images,
                          slow: list[Key] = slow) -> None:
                    if images:
                        assert fast is not None
                        applied = self._write_images(fast, list(images.values()))
                        if applied is not None and applied < len(images):
                            # the version guard refused an image: either a newer one is there already, or
                            # the target holds a stale row whose version is higher (a key deleted and
                            # re-inserted, an application that set its version backwards, two ORM
                            # processes that bumped the same version). The version column is not proof:
                            # re-read the authoritative rows under their lock (DESIGN.md rule 1)
                            mirror_keys(self.data[a], self.data[b], rt.mapping_from(a), list(images))
                    if slow:
                        mirror_keys(self.data[a], self.data[b], rt.mapping_from(a), slow)

                self.retry_stale(write, a, b)
                if fast is not None and any(t.deleted for t in last.values()):
                    deleted = [k for k, t in last.items() if t.deleted]
                    self.scheduler.call_later(self.options.delete_recheck_seconds,
                                              functools.partial(self._recheck_deletes, rt, a, b, deleted))
                self.stats.record(counts=[(st.SECONDARY, "attempt", len(keys)), (st.SECONDARY, "success", len(keys))],
                                  latencies=[(lat_name, (time.perf_counter() - started) * 1000)])
            except Exception as exc:  # noqa: BLE001 - a secondary failure never fails the request
                cls = error_class(exc)
                self.stats.record(counts=[(st.SECONDARY, "attempt", len(keys)),
                                          (st.SECONDARY, f"failure:{cls}", len(keys))],
                                  latencies=[(lat_name, (time.perf_counter() - started) * 1000)])
                log.warning("migration %s: secondary write of %d key(s) of %s to %s failed (%s): %s; queued "
                            "for repair", self.migration, len(keys), rt.name, b.value, cls, _short(exc))
                self.enqueue_repair(rt.name, keys, reason=f"sync {cls}: {_short(exc)}", authoritative=a.value)

    def retry_stale(self, fn: Callable[[], Any], *sides: Side) -> Any:
        """Run ``fn``; if a pooled connection turns out dead (the store restarted), drop the pool and run it
        once more. Only for idempotent work (mirrors, reads): the secondary pools do not pre-ping."""
        try:
            return fn()
        except Exception as exc:
            if not is_disconnect(exc):
                raise
            for side in sides:
                self.data[side].engine.dispose()
            return fn()

    def _write_images(self, fast: FastPath, images: list[dict[str, Any]]) -> int | None:
        """Write committed images with the guarded upsert; the number of rows it wrote, or None where the
        driver cannot tell a refused image from a written one (MySQL/MariaDB report a matched row as 1)."""
        rows = adapt([fast.row(img) for img in images], fast.adapters)
        store = fast.target
        with store.connect() as conn:
            auto = False
            if store.dialect is Dialect.POSTGRESQL and len(rows) == 1:
                with contextlib.suppress(Exception):
                    conn.autocommit = True  # one statement: no separate COMMIT round trip
                    auto = True
            try:
                cur = conn.cursor()
                if len(rows) == 1:
                    cur.execute(fast.sql, rows[0])
                else:
                    cur.executemany(fast.sql, rows)
                applied = cur.rowcount
                cur.close()
                if not auto:
                    conn.commit()
            finally:
                if auto:
                    conn.autocommit = False
        if store.dialect is Dialect.MYSQL or applied is None or applied < 0:
            return None
        return int(applied)

    def _recheck_deletes(self, rt: TableRuntime, a: Side, b: Side, keys: list[Key]) -> None:
        def run() -> None:
            try:
                mirror_keys(self.data[a], self.data[b], rt.mapping_from(a), keys)
            except Exception as exc:  # noqa: BLE001
                self.enqueue_repair(rt.name, keys, reason=f"delete re-check {error_class(exc)}",
                                    authoritative=a.value)

        with contextlib.suppress(RuntimeError):
            self.executor.submit(run)

    def enqueue_repair(self, table: str, keys: Sequence[Key], *, reason: str, authoritative: str) -> None:
        """Durably queue keys for the repair drain; buffered in memory (and retried) while that fails."""
        try:
            control.enqueue_repair(self.control, self.migration, table, list(keys), reason=reason,
                                   authoritative=authoritative)
            self.stats.count(st.REPAIR, "enqueued", len(keys))
        except Exception as exc:  # noqa: BLE001
            with self._pending_lock:
                self._pending.append(_Pending(table, list(keys), reason, authoritative))
            self.stats.count(st.REPAIR, "buffered", len(keys))
            log.warning("migration %s: cannot queue %d key(s) for repair (%s); kept in memory and retried",
                        self.migration, len(keys), error_class(exc))

    def retry_pending_repairs(self) -> int:
        with self._pending_lock:
            pending, self._pending = self._pending, []
        done = 0
        for i, p in enumerate(pending):
            try:
                control.enqueue_repair(self.control, self.migration, p.table, p.keys, reason=p.reason,
                                       authoritative=p.authoritative)
                done += len(p.keys)
                self.stats.count(st.REPAIR, "enqueued", len(p.keys))
            except Exception:  # noqa: BLE001 - still down: keep the rest for later
                with self._pending_lock:
                    self._pending = pending[i:] + self._pending
                break
        return done

    @property
    def pending_repairs(self) -> int:
        with self._pending_lock:
            return sum(len(p.keys) for p in self._pending)

    def requeue_spilled(self) -> int | None:
        """Queue the keys an earlier run of this migration spilled at exit (this host's spill directory);
        returns how many, or None when the control store cannot take them yet (the files stay)."""
        if not spill.spilled_files(self.spill_dir, self.migration):
            return 0

        def enqueue(table: str, keys: list[Key], reason: str, side: str) -> None:
            control.enqueue_repair(self.control, self.migration, table, keys, reason=reason, authoritative=side)
            self.stats.count(st.REPAIR, "enqueued", len(keys))

        try:
            return spill.requeue(self.spill_dir, self.migration, enqueue)
        except Exception as exc:  # noqa: BLE001 - the control store is still down: retried later
            log.warning("migration %s: cannot re-queue spilled repair keys yet (%s); retried later", self.migration,
                        error_class(exc))
            return None

    def spill_pending(self) -> tuple[int, str | None]:
        """Write the keys held in memory to this instance's spill file; returns (keys spilled, path)."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        entries = [spill.SpillEntry(p.table, tuple(k), p.authoritative, p.reason) for p in pending for k in p.keys]
        if not entries:
            return 0, None
        try:
            path, n = spill.spill(self.spill_dir, self.migration, self.instance_id, entries)
        except OSError:
            with self._pending_lock:
                self._pending = pending + self._pending
            raise
        self.stats.count(st.REPAIR, "spilled", n)
        return n, str(path)

    # -- maintenance --------------------------------------------------------------------------------------

    def mapping_for(self, table: str, reverse: bool) -> TableMapping:
        """(source table, reverse) -> mapping: what the relay and repair drains need."""
        rt = self.table(table)
        return rt.mapping_from(Side.NEW if reverse else Side.OLD)

    def drain_repairs(self) -> int:
        """Mirror every due key of this migration's repair queue now (the core drain; returns keys mirrored)."""
        from dualwrite.relay import drain_repairs  # noqa: PLC0415

        self.retry_pending_repairs()
        res = drain_repairs(self.control, self.data[Side.OLD], self.data[Side.NEW], self.migration, self.mapping_for,
                            base_backoff_seconds=0.5)
        return res.mirrored

    def flush_stats(self) -> bool:
        try:
            return self.stats.flush(self.control)
        except Exception as exc:  # noqa: BLE001 - kept for the next window
            log.warning("migration %s: cannot flush statistics (%s)", self.migration, error_class(exc))
            return False

    def _background(self) -> None:
        ttl = max(0.05, self.options.phase_ttl)
        next_flush = time.monotonic() + self.options.stats_window_seconds
        next_requeue = time.monotonic() + 5.0
        while not self._stop.wait(min(ttl / 2, 0.5)):
            with contextlib.suppress(Exception):
                self.phase.refresh(force=True)
            if self._pending:
                with contextlib.suppress(Exception):
                    self.retry_pending_repairs()
            if self._spill_waiting and time.monotonic() >= next_requeue:
                self._spill_waiting = self.requeue_spilled() is None
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
        pending = self.pending_repairs
        enqueued = self.retry_pending_repairs() if pending else 0
        spilled, path, lost = 0, None, 0
        if self.pending_repairs:
            try:
                spilled, path = self.spill_pending()
            except OSError as exc:
                lost = self.pending_repairs
                log.error("migration %s: %d repair key(s) could not be spilled to %s (%s); a verification will "
                          "find their rows", self.migration, lost, self.spill_dir, type(exc).__name__)
        self._close_report = report = CloseReport(pending=pending, enqueued=enqueued, spilled=spilled, lost=lost,
                                                  spill_path=path)
        if pending:
            log.warning("migration %s: closing with %d repair key(s) pending: %d queued for repair, %d spilled to "
                        "%s (re-queued by the next start), %d lost", self.migration, pending, enqueued, spilled,
                        path or "-", lost)
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


def _secondary_only(exc: BaseException) -> bool:
    """A strict write that failed on the other store: the authoritative store did not fail (it was rolled
    back on purpose), so it is not counted as a primary failure (the secondary failure is counted)."""
    return isinstance(exc, StrictWriteError) and exc.role == "secondary"


def _entity_of(rt: TableRuntime, key: Key) -> str:
    return f"{rt.name}:" + "/".join(str(v) for v in key)


# ---------------------------------------------------------------------------------------------------------
# the unit of work


@dataclass
class Statement:
    """One planned write: the SQL, its parameters, and what to record when it has run."""

    rt: TableRuntime
    side: SideTable
    sql: str
    params: list[Any]
    key: Key | None
    deleted: bool = False
    mode: str = "plain"
    """'plain', 'returning' (rows come back: images or generated keys) or 'fold' (outbox folded in)."""
    want_image: bool = False
    moved_from: Key | None = None
    """An update that changed the key: the row left this key."""


class UnitOfWorkBase:
    """Plans writes by key in application column names; subclasses run them (sync or asyncio)."""

    def __init__(self, writer: DualWriter, routing: Routing) -> None:
        self.writer = writer
        self.routing = routing
        self.side = routing.authoritative
        self.touched: list[Touched] = []
        self._log: list[tuple[TableRuntime, Key]] = []
        strategy = writer.strategy
        self._outbox = strategy is Strategy.OUTBOX and routing.mirror_to is not None
        self._image = routing.mirror_to is not None and writer.options.fast_path  # sync tables only (below)

    def _side(self, rt: TableRuntime) -> SideTable:
        s = rt.sides[self.side]
        if not s.writable:
            raise RoutingError(f"table {rt.name}: the new store cannot be written in the application's schema "
                               f"({s.why_not_writable}); write cutover is not possible for it")
        return s

    def _values(self, s: SideTable, values: Mapping[str, Any], *, version: bool) -> tuple[list[str], list[str],
                                                                                          list[Any]]:
        cols: list[str] = []
        exprs: list[str] = []
        params: list[Any] = []
        for col, sql, vals in s.assignments(values):
            cols.append(col)
            exprs.append(sql)
            params += vals
        for col, val in s.defaults.items():
            if col not in cols:
                cols.append(col)
                exprs.append(s.ph)
                params.append(val)
        if version and s.version and s.version not in cols:
            expr, p = s.version_initial()
            cols.append(s.version)
            exprs.append(expr)
            params += p
        return cols, exprs, params

    def plan_insert(self, table: str, values: Mapping[str, Any]) -> Statement:
        rt = self.writer.table(table)
        s = self._side(rt)
        q = s.store.quote
        cols, exprs, params = self._values(s, values, version=True)
        key = rt.key_from_values(values)
        sql = f"INSERT INTO {s.qtable} ({', '.join(q(c) for c in cols)}) VALUES ({', '.join(exprs)})"
        return self._finish_plan(Statement(rt, s, sql, params, key), returning_key=key is None)

    def plan_update(self, table: str, key: KeyLike, values: Mapping[str, Any]) -> Statement:
        rt = self.writer.table(table)
        s = self._side(rt)
        k = rt.key_of(key)
        q = s.store.quote
        sets: list[str] = []
        params: list[Any] = []
        for col, sql, vals in s.assignments(values):
            sets.append(f"{q(col)} = {sql}")
            params += vals
        if s.version and rt.version not in values:
            sets.append(f"{q(s.version)} = {s.version_bump()}")
        if not sets:
            raise RoutingError(f"table {rt.name}: an update needs values")
        new_key = rt.key_from_values({**dict(zip(rt.key, k, strict=True)), **values})
        sql = f"UPDATE {s.qtable} SET {', '.join(sets)} WHERE {s.where_key}"
        st_ = Statement(rt, s, sql, [*params, *k], k)
        if new_key is not None and new_key != k:
            st_.key, st_.moved_from = new_key, k
        return self._finish_plan(st_)

    def plan_upsert(self, table: str, values: Mapping[str, Any]) -> Statement:
        rt = self.writer.table(table)
        s = self._side(rt)
        key = rt.key_from_values(values)
        if key is None:
            raise RoutingError(f"table {rt.name}: an upsert needs every key column ({', '.join(rt.key)})")
        q = s.store.quote
        versioned = s.version is not None and s.version not in [c for c, _, _ in s.assignments(values)]
        cols, exprs, params = self._values(s, values, version=True)
        keyset = set(s.key)
        rest = [c for c in cols if c not in keyset and not (versioned and c == s.version)]
        head = f"INSERT INTO {s.qtable} ({', '.join(q(c) for c in cols)}) VALUES ({', '.join(exprs)})"
        vq = q(s.version or "")
        if s.dialect is Dialect.MYSQL:
            sets = [f"{q(c)} = VALUES({q(c)})" for c in rest]
            if versioned:
                sets.append(f"{vq} = {s.version_bump()}")
            k0 = q(s.key[0])
            sql = f"{head} ON DUPLICATE KEY UPDATE {', '.join(sets) if sets else f'{k0} = {k0}'}"
        else:
            sets = [f"{q(c)} = excluded.{q(c)}" for c in rest]
            if versioned:
                sets.append(f"{vq} = {s.version_bump(s.qtable + '.')}")
            conflict = ", ".join(q(k) for k in s.key)
            sql = f"{head} ON CONFLICT ({conflict}) " + (f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING")
        return self._finish_plan(Statement(rt, s, sql, params, key))

    def plan_delete(self, table: str, key: KeyLike) -> Statement:
        rt = self.writer.table(table)
        s = self._side(rt)
        k = rt.key_of(key)
        return self._finish_plan(Statement(rt, s, f"DELETE FROM {s.qtable} WHERE {s.where_key}", list(k), k,
                                           deleted=True))

    def _finish_plan(self, st_: Statement, *, returning_key: bool = False) -> Statement:
        """Decide RETURNING (row image / generated key) or the folded outbox append (PostgreSQL)."""
        s, rt = st_.side, st_.rt
        # MariaDB returns rows from a plain INSERT only (not from UPDATE or ON DUPLICATE KEY UPDATE)
        can_return = s.dialect is not Dialect.MYSQL or (st_.sql.startswith("INSERT") and "DUPLICATE" not in st_.sql)
        st_.want_image = (not st_.deleted and can_return and self._image and rt.fast[self.side] is not None
                          and st_.moved_from is None and rt.strategy in (Strategy.SYNC, Strategy.STRICT))
        if self._outbox and st_.key is not None and s.dialect is Dialect.POSTGRESQL and st_.moved_from is None:
            cached = s.sql.get(("cte", st_.sql))
            if cached is None:
                cached = s.sql[("cte", st_.sql)] = outbox.pg_cte_sql(f"{st_.sql} RETURNING 1")
            st_.sql, st_.mode = cached, "fold"
            st_.params = [*st_.params, self.writer.migration, rt.name, outbox.key_json(st_.key)]
        elif st_.want_image or returning_key:
            st_.sql, st_.mode = f"{st_.sql} RETURNING {s.returning_all}", "returning"
        return st_

    def record_result(self, st_: Statement, rowcount: int, rows: Sequence[Sequence[Any]] | None) -> Key | None:
        """Record what a statement wrote; returns the key (generated keys included)."""
        rt, s = st_.rt, st_.side
        if st_.moved_from is not None:
            self._record(rt, st_.moved_from, None, deleted=True)
        if st_.mode == "returning":
            first: Key | None = None
            for r in rows or ():
                image = dict(zip(s.columns, r, strict=True))
                k = tuple(image[c] for c in s.key)
                first = first or k
                self._record(rt, k, image if st_.want_image else None, deleted=False)
            if first is None and st_.key is None:
                raise RoutingError(f"table {rt.name}: the insert returned no key")
            if not rows and st_.key is not None:
                self._record(rt, st_.key, None, deleted=st_.deleted)
            return first or st_.key
        if st_.key is not None:
            self._record(rt, st_.key, None, deleted=st_.deleted, logged=st_.mode == "fold")
        return st_.key

    def touch(self, table: str, *keys: KeyLike) -> None:
        """Declare keys written by statements of your own on ``connection``: they are mirrored as well."""
        rt = self.writer.table(table)
        for key in keys:
            self._record(rt, rt.key_of(key), None, deleted=False)

    def _record(self, rt: TableRuntime, key: Key, image: dict[str, Any] | None, *, deleted: bool,
                logged: bool = False) -> None:
        self.touched.append(Touched(rt, key, image, deleted))
        if self._outbox and not logged:
            self._log.append((rt, key))

    def pending_log(self) -> tuple[str, list[tuple[Any, ...]]] | None:
        """The outbox rows still to append before the commit (those not folded into a statement)."""
        if not self._log:
            return None
        sql = outbox.append_sql(self.writer.data[self.side])
        rows = [(self.writer.migration, rt.name, outbox.key_json(k)) for rt, k in
                dict.fromkeys((rt, normal_key(k)) for rt, k in self._log)]
        self._log.clear()
        return sql, rows


class UnitOfWork(UnitOfWorkBase):
    """Writes by key inside one authoritative transaction (application column names throughout).

    ``connection`` is the SQLAlchemy connection of that transaction, for anything else the request does
    there (name the keys such statements write with :meth:`touch`).
    """

    def __init__(self, writer: DualWriter, routing: Routing, connection: Connection) -> None:
        super().__init__(writer, routing)
        self.connection = connection
        self._last_rowcount = 0

    def _execute(self, st_: Statement) -> Key | None:
        res = self.connection.exec_driver_sql(st_.sql, tuple(st_.params))
        rows = res.fetchall() if st_.mode == "returning" else None
        n = len(rows) if rows is not None else int(res.rowcount or 0)
        self._last_rowcount = n
        return self.record_result(st_, n, rows)

    def insert(self, table: str, values: Mapping[str, Any]) -> Key:
        """Insert one row; returns its key (also when the database generated it)."""
        key = self._execute(self.plan_insert(table, values))
        assert key is not None
        return key

    def update(self, table: str, key: KeyLike, values: Mapping[str, Any]) -> int:
        """Update one row by key; returns the number of rows changed."""
        self._execute(self.plan_update(table, key, values))
        return self._last_rowcount

    def upsert(self, table: str, values: Mapping[str, Any]) -> Key:
        key = self._execute(self.plan_upsert(table, values))
        assert key is not None
        return key

    def delete(self, table: str, key: KeyLike) -> int:
        self._execute(self.plan_delete(table, key))
        return self._last_rowcount

    def _before_commit(self) -> None:
        pending = self.pending_log()
        if pending is not None:
            sql, rows = pending
            self.connection.exec_driver_sql(sql, rows if len(rows) > 1 else rows[0])
