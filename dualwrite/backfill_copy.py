"""Copy a key range chunk by chunk: the backfill's engine (store-neutral: it works through store kinds).

Each chunk is ``cursor < key <= bound`` where ``bound`` is the key ``batch_size`` rows further on the
source. A chunk is committed on its own and the cursor is reported after the commit, so a crash redoes at
most one chunk, and redoing it is harmless.

Live writes win over backfill (rule 4, docs/architecture.md):
- rows are *inserted*, never overwrite: on a conflict the chunk falls back to an upsert that updates only
  when the incoming version is newer (or not at all without a version column: whatever a live mirror wrote
  is at least as new as the backfill's snapshot), ``MappedTable.insert_chunk`` (the SQL kind stages the
  chunk and merges it with one guarded statement);
- after the commit the chunk's key set is compared on both sides (:mod:`dualwrite.keycheck`); a row
  deleted while the chunk was in flight, or a live write whose mirror is still on its way, is settled
  through the mirror primitive, which reads the source row under lock. A target without range reads
  (Redis) is compared by the keys the chunk wrote, not by a scan of its keyspace per chunk. The check runs in a second
  thread while the next chunk is written; that chunk commits only after the check, so a chunk is
  reported (``on_batch``) once it is both committed and checked, one chunk behind the copy.

Routes, chosen per mapping (``CopyProgress.extra["route"]`` says which one ran): a store kind may offer
fast routes for a pair of its own stores (:meth:`dualwrite.stores.StoreKind.copy_routes`; the SQL kind's
``pg-binary`` and ``mysql-text`` pass-throughs into PostgreSQL), and every pair can take ``generic``:
mapped rows read from the source's :class:`~dualwrite.stores.MappedTable` and inserted into the
target's. Routes that read rows read the next chunk in a third thread while the current one is written.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from dualwrite import hooks
from dualwrite.background import KeyChecker, ReadAhead
from dualwrite.mapping import TableMapping
from dualwrite.mirror import MirrorResult
from dualwrite.store import Store
from dualwrite.stores import CopyRoute, Key, MappedTable, Role, StoreKind, kind_for

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


class RowRoute:
    """The route every pair of stores can take: mapped rows read from the source's table, inserted into
    the target's (optimistically, where the kind can; guarded against live writes either way)."""

    name = "generic"
    reads_ahead = True

    def __init__(self, source: MappedTable, target: MappedTable, insert_only: bool) -> None:
        self.src, self.dst, self.insert_only = source, target, insert_only
        self.fallbacks = 0

    def read(self, conn: Any, lo: Key | None, hi: Key | None) -> Any:
        return self.src.read_range(conn, lo, hi)

    def write(self, sconn: Any, tconn: Any, lo: Key | None, hi: Key | None, payload: Any) -> tuple[int, bool]:
        """Write the chunk into the target (uncommitted); (rows, took the conflict path)."""
        return self.dst.insert_chunk(tconn, payload, insert_only=self.insert_only)


ROUTES = ("pg-binary", "mysql-text", "generic")


def choose_route(source: Store, target: Store, mapping: TableMapping, *, force: str | None = None) -> CopyRoute:
    """The fastest route that can carry this mapping (the source's kind offers fast routes for pairs of
    its own stores); ``force="generic"`` picks the row path (tests, benchmarks). Forcing a fast path that
    does not fit raises ValueError."""
    if force is not None and force not in ROUTES:
        raise ValueError(f"unknown route {force!r} (one of {', '.join(ROUTES)})")
    skind, tkind = kind_for(source), kind_for(target)
    fast = skind.copy_routes(source, target, mapping) if skind is tkind else []
    generic = RowRoute(skind.table(source, mapping, Role.SOURCE), tkind.table(target, mapping, Role.TARGET),
                       insert_only=mapping.version is None)
    if force is None:
        return fast[0] if fast else generic
    if force == "generic":
        return generic
    for route in fast:
        if route.name == force:
            return route
    raise ValueError(f"route {force!r} cannot copy {source} -> {target} for this mapping")


# -- chunk planning -----------------------------------------------------------------------


def _chunks(conn: Any, table: MappedTable, route: CopyRoute, start: Key | None, hi: Key | None, batch: int
            ) -> Generator[_Chunk, None, None]:
    """Chunks from ``start`` to ``hi``, each read (when the route reads ahead) on ``conn``."""
    low = start
    while True:
        found = table.nth_key(conn, low, hi, batch - 1)
        bound: Key | None = found if found is not None else hi
        payload = route.read(conn, low, bound) if route.reads_ahead else None
        conn.commit()
        yield _Chunk(low, bound, found is None, payload)
        if found is None:
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
    skind, tkind = kind_for(source), kind_for(target)
    planner = skind.table(source, mapping, Role.SOURCE)
    prog = progress or CopyProgress(cursor=cursor if cursor is not None else lo)
    prog.extra["route"] = chosen.name
    timings = prog.extra.setdefault("seconds", {"read_wait": 0.0, "write": 0.0, "check_wait": 0.0})
    start = prog.cursor if prog.cursor is not None else (cursor if cursor is not None else lo)
    started = time.monotonic() - prog.seconds
    # A target with one writer (SQLite): a key-check repair could not run beside an open chunk write.
    overlap = tkind.capabilities(target).concurrent_writers
    # A target without range reads is key-checked by the keys each chunk wrote (keycheck.settle_range).
    by_written = not tkind.capabilities(target).range_reads
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
        sconn = stack.enter_context(skind.connect(source))
        tconn = stack.enter_context(tkind.connect(target))
        checker = stack.enter_context(KeyChecker(source, target, mapping)) if check_keys else None
        if chosen.reads_ahead and read_ahead:
            def make() -> Iterator[_Chunk]:
                with skind.connect(source) as rconn:
                    yield from _chunks(rconn, planner, chosen, start, hi, batch)
            chunks: Iterator[_Chunk] = iter(stack.enter_context(ReadAhead(make)))
        else:
            chunks = stack.enter_context(contextlib.closing(_chunks(sconn, planner, chosen, start, hi, batch)))
        t0 = time.monotonic()
        for chunk in chunks:
            t1 = time.monotonic()
            timings["read_wait"] += t1 - t0
            prog.in_flight = (chunk.lo, chunk.hi)
            if should_stop is not None and should_stop():
                break
            # The previous chunk's check runs while this chunk is written; this chunk commits only after
            # the previous one is reported, so at most one committed chunk is ever unreported.
            n, conflicted = _write_chunk(_Writer(chosen, mapping, skind, tkind), sconn, tconn, chunk,
                                         before_commit=report_pending)
            t0 = time.monotonic()
            timings["write"] += t0 - t1
            written = _written_keys(planner, chunk) if by_written and checker is not None else None
            check = checker.submit(chunk.lo, chunk.hi, written) if checker is not None else None
            pending.append((chunk, n, conflicted, check))
            if not overlap:
                report_pending()
        report_pending()
    prog.in_flight = None
    if chosen.fallbacks:
        prog.extra["fallback_chunks"] = prog.extra.get("fallback_chunks", 0) + chosen.fallbacks
    prog.seconds = time.monotonic() - started
    return prog


def _written_keys(planner: MappedTable, chunk: _Chunk) -> list[Key] | None:
    """The normal keys of a chunk's rows (a route that streams holds no rows: None)."""
    if not isinstance(chunk.payload, list):
        return None
    return [planner.row_key(row) for row in chunk.payload]


@dataclass(frozen=True)
class _Writer:
    """What writing one chunk needs: the route, and the two kinds that classify its errors."""

    route: CopyRoute
    mapping: TableMapping
    skind: StoreKind
    tkind: StoreKind

    @property
    def what(self) -> str:
        return f"copying {self.mapping.source_table} -> {self.mapping.target_table}"

    def transient(self, exc: BaseException) -> bool:
        return self.tkind.is_transient(exc) or self.skind.is_transient(exc)


def _write_chunk(writer: _Writer, sconn: Any, tconn: Any, chunk: _Chunk,
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
            result = writer.route.write(sconn, tconn, chunk.lo, chunk.hi, chunk.payload)
        except Exception as exc:
            _rollback(sconn, tconn)
            if not writer.transient(exc) or attempt >= MAX_ATTEMPTS:
                clean = writer.tkind.scrub_error(exc, writer.what)
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
            if not writer.transient(exc) or attempt >= MAX_ATTEMPTS:
                raise
            log.info("chunk commit hit a transient conflict, retrying (%s)", type(exc).__name__)


def _rollback(*conns: Any) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.rollback()


# -- range planning --------------------------------------------------------------------------------------


def plan_bounds(store: Store, mapping: TableMapping, total: int, ranges: int,
                on_bound: Callable[[int], None] | None = None) -> list[Key]:
    """Up to ``ranges - 1`` increasing source keys splitting about ``total`` rows into ranges of roughly
    equal size (``lo < key <= hi`` each), as the store's kind plans them (a sample of keys where the
    store can draw one cheaply, else a walk of the key order)."""
    hooks.point("copy.before_plan")
    return kind_for(store).plan_bounds(store, mapping, total, ranges, on_bound)
