"""Copy a key range chunk by chunk: the backfill's engine.

Each chunk is ``cursor < key <= bound`` where ``bound`` is the key ``batch_size`` rows further on the
source. A chunk is committed on its own and the cursor is reported after the commit, so a crash redoes at
most one chunk, and redoing it is harmless.

Live writes win over backfill (DESIGN rule 4):
- rows are *inserted*, never overwrite: on a conflict the chunk falls back to a staging table and an
  ``INSERT ... ON CONFLICT`` that updates only when the incoming version is newer (or not at all without a
  version column: whatever a live mirror wrote is at least as new as the backfill's snapshot);
- after the commit the chunk's key set is compared on both sides (:mod:`dualwrite.keycheck`); a row
  deleted while the chunk was in flight, or a live write whose mirror is still on its way, is settled
  through the mirror primitive, which reads the source row under lock. The check runs in a second
  thread while the next chunk is written; that chunk commits only after the check, so a chunk is
  reported (``on_batch``) once it is both committed and checked, one chunk behind the copy.

Routes, chosen per mapping (``CopyProgress.extra["route"]`` says which one ran):
- ``pg-binary``: PostgreSQL -> PostgreSQL without Python transforms; binary COPY pass-through.
- ``mysql-text``: MariaDB -> PostgreSQL without Python transforms; MariaDB renders COPY text.
- ``generic``: anything else; rows through the DBAPI, optimistic COPY when the target is PostgreSQL.
The two row-reading routes read the next chunk in a third thread while the current one is written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from dualwrite import fastpath, hooks, sqlgen
from dualwrite import rows as rowio
from dualwrite.background import KeyChecker, ReadAhead
from dualwrite.mapping import TableMapping
from dualwrite.mirror import MirrorResult
from dualwrite.sqlgen import Key, Side, source_side, target_side
from dualwrite.store import Dialect, Store, is_transient, is_unique_violation, without_row_values

log = logging.getLogger(__name__)

#: attempts per chunk when the target reports a deadlock or serialization failure
MAX_ATTEMPTS = 5
#: how long a written, uncommitted chunk waits for the previous chunk's key check (see _write_chunk)
CHECK_WAIT_SECONDS = 5.0


@dataclass
class CopyProgress:
    """Where a range copy stands: enough to resume it (``cursor``) and to report it."""

    cursor: Key | None
    rows: int = 0
    batches: int = 0
    conflict_batches: int = 0
    fixed_keys: int = 0
    seconds: float = 0.0
    done: bool = False
    last_batch_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: bounds of the chunk about to be written (read, not yet committed); None between copies
    in_flight: tuple[Key | None, Key | None] | None = None


class StopRequested(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a ``should_stop`` callback's owner to end a copy after the current chunk."""


@dataclass
class _Chunk:
    lo: Key | None
    hi: Key | None
    last: bool
    payload: Any = None  # rows or COPY text read ahead; None when the route streams while writing


# -- routes ----------------------------------------------------------------------------------------------


class _Route:
    """How one chunk is read from the source and written to the target."""

    name = "generic"
    reads_ahead = True

    def __init__(self, mapping: TableMapping, src: Side, dst: Side) -> None:
        self.mapping, self.src, self.dst = mapping, src, dst
        self.insert_only = mapping.version is None

    def read(self, conn: Any, lo: Key | None, hi: Key | None) -> Any:
        return rowio.read_range(conn, self.mapping, self.src, lo, hi)

    def write(self, sconn: Any, tconn: Any, chunk: _Chunk) -> tuple[int, bool]:
        """Write the chunk into the target (uncommitted); (rows, took the conflict path)."""
        rows: list[rowio.Row] = chunk.payload
        if self.dst.store.dialect is Dialect.POSTGRESQL and rows:
            try:
                return rowio.pg_copy_rows(tconn, self.mapping, self.dst, rows), False
            except Exception as exc:
                if not is_unique_violation(exc):
                    raise
            tconn.rollback()
            rowio.write_rows(tconn, self.mapping, self.dst, rows, insert_only=self.insert_only, only_if_newer=True)
            return len(rows), True
        rowio.write_rows(tconn, self.mapping, self.dst, rows, insert_only=self.insert_only, only_if_newer=True)
        return len(rows), False


class _PgBinaryRoute(_Route):
    name = "pg-binary"
    reads_ahead = False  # source and target COPY stream concurrently; nothing to read ahead

    def read(self, conn: Any, lo: Key | None, hi: Key | None) -> Any:
        return None

    def write(self, sconn: Any, tconn: Any, chunk: _Chunk) -> tuple[int, bool]:
        return fastpath.pg_binary_chunk(sconn, tconn, self.mapping, self.src, self.dst, chunk.lo, chunk.hi,
                                        insert_only=self.insert_only)


class _MysqlTextRoute(_Route):
    name = "mysql-text"

    def __init__(self, mapping: TableMapping, src: Side, dst: Side) -> None:
        super().__init__(mapping, src, dst)
        self.defaults = fastpath.mysql_text_defaults(mapping)
        self.fallbacks = 0

    def read(self, conn: Any, lo: Key | None, hi: Key | None) -> Any:
        return fastpath.mysql_read_text_chunk(conn, self.mapping, self.src, lo, hi, self.defaults)

    def write(self, sconn: Any, tconn: Any, chunk: _Chunk) -> tuple[int, bool]:
        try:
            return fastpath.pg_write_text_chunk(tconn, self.mapping, self.dst, chunk.payload,
                                                insert_only=self.insert_only)
        except Exception as exc:
            if not str(getattr(exc, "sqlstate", "") or "").startswith("22"):
                raise
            # A value PostgreSQL cannot read as MariaDB spelled it (zero dates, out-of-range times...):
            # redo this chunk through the driver's conversions. Never log the message: it quotes the row.
            log.warning("chunk fell back to the generic path (sqlstate %s)", getattr(exc, "sqlstate", "?"))
            self.fallbacks += 1
        tconn.rollback()
        rows = rowio.read_range(sconn, self.mapping, self.src, chunk.lo, chunk.hi)
        return super().write(sconn, tconn, _Chunk(chunk.lo, chunk.hi, chunk.last, rows))


ROUTES = ("pg-binary", "mysql-text", "generic")


def choose_route(source: Store, target: Store, mapping: TableMapping, *, force: str | None = None) -> _Route:
    """The fastest route that can carry this mapping; ``force="generic"`` picks the row path (tests,
    benchmarks). Forcing a fast path that does not fit raises ValueError."""
    src, dst = source_side(mapping, source), target_side(mapping, target)
    if force is not None:
        if force not in ROUTES:
            raise ValueError(f"unknown route {force!r} (one of {', '.join(ROUTES)})")
        if force == "generic":
            return _Route(mapping, src, dst)
        chosen = choose_route(source, target, mapping)
        if chosen.name != force:
            raise ValueError(f"route {force!r} cannot copy {source.dialect} -> {target.dialect} for this mapping")
        return chosen
    if target.dialect is Dialect.POSTGRESQL and not mapping.needs_python:
        if source.dialect is Dialect.POSTGRESQL:
            return _PgBinaryRoute(mapping, src, dst)
        if source.dialect is Dialect.MYSQL and fastpath.mysql_text_supported(mapping):
            return _MysqlTextRoute(mapping, src, dst)
    return _Route(mapping, src, dst)


# -- chunk planning -----------------------------------------------------------------------


def _chunks(conn: Any, route: _Route, start: Key | None, hi: Key | None, batch: int
            ) -> Generator[_Chunk, None, None]:
    """Chunks from ``start`` to ``hi``, each read (when the route reads ahead) on ``conn``."""
    low = start
    while True:
        found = rowio.fetch(conn, *sqlgen.nth_key_sql(route.src, low, hi, batch - 1))
        bound: Key | None = tuple(found[0]) if found else hi
        payload = route.read(conn, low, bound) if route.reads_ahead else None
        conn.commit()
        yield _Chunk(low, bound, not found, payload)
        if not found:
            return
        low = bound


# -- the copy loop ---------------------------------------------------------------------------------------


def copy_range(
    source: Store,
    target: Store,
    mapping: TableMapping,
    *,
    lo: Key | None = None,
    hi: Key | None = None,
    cursor: Key | None = None,
    batch_size: int | None = None,
    check_keys: bool = True,
    on_batch: Callable[[CopyProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: CopyProgress | None = None,
    read_ahead: bool = True,
    route: str | None = None,
) -> CopyProgress:
    """Copy source rows with ``lo < key <= hi`` into the target, resuming after ``cursor``.

    ``on_batch`` runs after every committed and key-checked chunk (heartbeat the cursor there); it runs
    while the next chunk is being written, so it lags one chunk behind the copy. ``should_stop`` is polled
    before each chunk is written (``progress.in_flight`` holds that chunk's bounds); when it returns True
    the copy returns early with ``done=False`` and ``cursor`` is the last reported bound: pass it back as
    ``cursor`` to resume. At most one committed chunk is ever unreported, so a crash redoes at most one.
    ``read_ahead`` reads the next chunk in a second thread while the current one is written (routes that
    read rows into Python only). ``route`` forces a route by name (see :func:`choose_route`).
    """
    batch = batch_size or mapping.batch_size
    chosen = choose_route(source, target, mapping, force=route)
    prog = progress or CopyProgress(cursor=cursor if cursor is not None else lo)
    prog.extra["route"] = chosen.name
    timings = prog.extra.setdefault("seconds", {"read_wait": 0.0, "write": 0.0, "check_wait": 0.0})
    start = prog.cursor if prog.cursor is not None else (cursor if cursor is not None else lo)
    started = time.monotonic() - prog.seconds
    # A SQLite target allows one writer: a key-check repair could not run beside an open chunk write.
    overlap = target.dialect is not Dialect.SQLITE
    pending: list[tuple[_Chunk, int, bool, Future[MirrorResult] | None]] = []

    def report_pending(timeout: float | None = None) -> None:
        """Wait for the previous chunk's key check, then report that chunk as done."""
        if not pending:
            return
        chunk, n, conflicted, check = pending[0]
        t = time.monotonic()
        fixed = check.result(timeout).keys if check is not None else 0
        timings["check_wait"] += time.monotonic() - t
        pending.clear()
        prog.fixed_keys += fixed
        prog.rows += n
        prog.batches += 1
        prog.last_batch_rows = n
        prog.conflict_batches += int(conflicted)
        prog.cursor = chunk.hi if chunk.hi is not None else prog.cursor
        prog.done = chunk.last
        prog.seconds = time.monotonic() - started
        if on_batch is not None:
            on_batch(prog)

    with contextlib.ExitStack() as stack:
        sconn = stack.enter_context(source.connect())
        tconn = stack.enter_context(target.connect())
        checker = stack.enter_context(KeyChecker(source, target, mapping)) if check_keys else None
        if chosen.reads_ahead and read_ahead:
            def make() -> Iterator[_Chunk]:
                with source.connect() as rconn:
                    yield from _chunks(rconn, chosen, start, hi, batch)
            chunks: Iterator[_Chunk] = iter(stack.enter_context(ReadAhead(make)))
        else:
            chunks = stack.enter_context(contextlib.closing(_chunks(sconn, chosen, start, hi, batch)))
        t0 = time.monotonic()
        for chunk in chunks:
            t1 = time.monotonic()
            timings["read_wait"] += t1 - t0
            prog.in_flight = (chunk.lo, chunk.hi)
            if should_stop is not None and should_stop():
                break
            # The previous chunk's check runs while this chunk is written; this chunk commits only after
            # the previous one is reported, so at most one committed chunk is ever unreported.
            n, conflicted = _write_chunk(chosen, sconn, tconn, chunk, before_commit=report_pending)
            t0 = time.monotonic()
            timings["write"] += t0 - t1
            check = checker.submit(chunk.lo, chunk.hi) if checker is not None else None
            pending.append((chunk, n, conflicted, check))
            if not overlap:
                report_pending()
        report_pending()
    prog.in_flight = None
    if isinstance(chosen, _MysqlTextRoute) and chosen.fallbacks:
        prog.extra["fallback_chunks"] = prog.extra.get("fallback_chunks", 0) + chosen.fallbacks
    prog.seconds = time.monotonic() - started
    return prog


def _write_chunk(route: _Route, sconn: Any, tconn: Any, chunk: _Chunk,
                 before_commit: Callable[[float | None], None]) -> tuple[int, bool]:
    """Write and commit one chunk, retrying the whole chunk on deadlocks and serialization failures.

    ``before_commit(timeout)`` runs once the chunk is written and before it commits (it waits for the
    previous chunk's key check). The written chunk holds row locks on the target while it waits, and a
    live mirror spanning both chunks could be waiting for them while holding a source lock that the
    check's repair needs: a wait no database can see. So the wait is bounded; past the bound the chunk
    is rolled back, the check is awaited without locks held, and the chunk is written again.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            result = route.write(sconn, tconn, chunk)
        except Exception as exc:
            _rollback(sconn, tconn)
            if not is_transient(exc) or attempt >= MAX_ATTEMPTS:
                clean = without_row_values(exc, f"copying {route.mapping.source_table} -> {route.mapping.target_table}")
                if clean is exc:
                    raise
                raise clean from None
            log.info("chunk write hit a transient conflict, retrying (%s)", type(exc).__name__)
            time.sleep(0.02 * 2 ** attempt)
            continue
        try:
            before_commit(CHECK_WAIT_SECONDS)
        except FutureTimeout:
            _rollback(sconn, tconn)
            log.info("the previous chunk's key check is slow: writing this chunk again after it")
            before_commit(None)
            attempt -= 1
            continue
        except BaseException:
            _rollback(sconn, tconn)
            raise
        try:
            hooks.point("copy.before_batch_commit")
            tconn.commit()
            sconn.commit()
            hooks.point("copy.after_batch_commit")
            return result
        except Exception as exc:
            _rollback(sconn, tconn)
            if not is_transient(exc) or attempt >= MAX_ATTEMPTS:
                raise
            log.info("chunk commit hit a transient conflict, retrying (%s)", type(exc).__name__)


def _rollback(*conns: Any) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.rollback()


# -- range planning --------------------------------------------------------------------------------------

#: range bounds are quantiles of a sample of about this many keys (one sampled scan and one small sort)
PLAN_SAMPLE_KEYS = 50_000


def plan_bounds(store: Store, mapping: TableMapping, total: int, ranges: int,
                on_bound: Callable[[int], None] | None = None) -> list[Key]:
    """Up to ``ranges - 1`` increasing source keys splitting about ``total`` rows into ranges of roughly
    equal size (``lo < key <= hi`` each).

    On PostgreSQL and MariaDB/MySQL the bounds are quantiles of a sample of about ``PLAN_SAMPLE_KEYS``
    keys (every key of a smaller table) - PostgreSQL's ``TABLESAMPLE SYSTEM``, a ``RAND()`` filter on
    MySQL - sorted once in range order. Chained ``OFFSET`` queries walk the key index instead, which is
    cheap for an integer key inserted in order but not for a random string key (a UUID as CHAR(36)):
    each index entry sends the walk to a random heap page, and a bytewise order under a linguistic
    collation (``COLLATE "C"``) cannot use the index at all, so every boundary sorted the whole table
    (~20 s for a few million keys). Ranges only need to be roughly even. SQLite, and a sample smaller
    than ``ranges``, use the offset walk."""
    hooks.point("copy.before_plan")
    side = source_side(mapping, store)
    if ranges <= 1 or total <= 0:
        return []
    if store.dialect in (Dialect.POSTGRESQL, Dialect.MYSQL):
        sample = _sample_keys(store, side, total)
        if len(sample) >= ranges:
            bounds: list[Key] = []
            for j in range(1, ranges):
                key = sample[len(sample) * j // ranges]
                if not bounds or key != bounds[-1]:
                    bounds.append(key)
                    if on_bound is not None:
                        on_bound(len(bounds))
            return bounds
    step = math.ceil(total / ranges)
    out: list[Key] = []
    lo: Key | None = None
    with store.connect() as conn:
        for _ in range(ranges - 1):
            found = rowio.fetch(conn, *sqlgen.nth_key_sql(side, lo, None, step - 1))
            if not found:
                break
            lo = tuple(found[0])
            out.append(lo)
            if on_bound is not None:
                on_bound(len(out))
        conn.rollback()
    return out


def _sample_keys(store: Store, side: Side, total: int) -> list[Key]:
    """About ``PLAN_SAMPLE_KEYS`` keys of the table (all of a smaller one), sorted in range order."""
    fraction = min(1.0, PLAN_SAMPLE_KEYS / max(1, total))
    source, where = side.qtable, ""
    if fraction < 1.0 and store.dialect is Dialect.POSTGRESQL:
        source = f"{side.qtable} TABLESAMPLE SYSTEM ({fraction * 100:.6f})"
    elif fraction < 1.0 and store.dialect is Dialect.MYSQL:
        where = f" WHERE RAND() < {fraction:.8f}"
    sql = f"SELECT {side.key_list()} FROM {source}{where} ORDER BY {side.order_by()}"
    with store.connect() as conn:
        keys = [tuple(r) for r in rowio.fetch(conn, sql, [])]
        conn.rollback()
    return keys
