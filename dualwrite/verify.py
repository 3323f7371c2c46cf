"""Verification: prove that a key range holds the same rows on both stores, or say exactly how it differs.

Verification is store-neutral: it works through each store's kind (:mod:`dualwrite.stores`). A range is
walked in chunks of the *source* key (``lo < key <= hi``, bounds from ``MappedTable.nth_key`` like the
copy), and every chunk is compared on both stores at once (two threads; the drivers release the GIL while
the databases work), with the next chunk's bound looked up meanwhile:

- **pushdown** (the kind can checksum both stores alike: for SQL the same engine and no Python
  transforms, :mod:`dualwrite.stores.sql._checksums`): each side returns only a row count and an
  order-independent aggregate (XOR) of a per-row 64-bit hash computed by the store. Nothing but two
  numbers per chunk crosses the network.
- **python** (across engines or kinds, or with Python transforms): both sides' canonical rows are read
  (``MappedTable.canonical_range``, in :mod:`dualwrite.canonical` form: most columns arrive canonical
  straight from the driver, decimals and timestamps as text the database renders) and compared in C
  (list and tuple equality). A target that cannot read key ranges (Redis: ``range_reads`` False) is read
  by the source's keys of each chunk (``canonical_keys``) plus its own keys inside the chunk, taken from
  one ``range_keys`` scan per verification, so rows only the target holds are still reported as extra.

A chunk that does not match is narrowed to keys (pushdown first re-checksums sub-ranges of a few thousand
rows, found in one window-function pass, then fetches only mismatching sub-ranges; rows are set-differenced
as hashed tuples before anything is looked at key by key) and every difference is classified: *missing*
(in the source only), *extra* (in the target only) or *field-different* with the differing target column
names and both canonical values. Counts are exact; only the list of differences kept for inspection and
repair is capped at ``max_differences``. Each chunk is read in its own short transaction on each side, so
under live writes a verification reports the rows that differ at the moment each chunk was read; the
repair path settles them (:mod:`dualwrite.repair`).

Rule 9 of the design: a verification that compared zero rows, or whose chunks do not tile the requested
range, raises :class:`~dualwrite.errors.VerificationError` instead of passing. Row values never reach a log
or :meth:`VerifyReport.summary` (which may go into Temporal history); only counts and column names do.
"""

from __future__ import annotations

import bisect
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dualwrite.errors import VerificationError
from dualwrite.mapping import TableMapping
from dualwrite.store import Store
from dualwrite.stores import Bounds, Key, MappedTable, Role, Row, StoreKind, kind_for, normal_key

#: default chunk sizes: a pushdown chunk costs two small aggregates, a python chunk holds rows in memory
PUSHDOWN_CHUNK = 250_000
PYTHON_CHUNK = 50_000
#: pushdown narrowing: a mismatching chunk is re-checksummed in sub-ranges of about this many rows, and
#: only mismatching sub-ranges are fetched and compared row by row
NARROW_ROWS = 5_000
#: keys per round trip when comparing an explicit key list
KEY_BATCH = 1_000


class DiffKind(StrEnum):
    MISSING = "missing"
    EXTRA = "extra"
    FIELD = "field-different"


@dataclass
class FieldDiff:
    """One differing target column of one row, with both sides' canonical values."""

    name: str
    source_value: Any
    target_value: Any


@dataclass
class Difference:
    """One differing row. ``key`` holds source-key values as read (usable with ``mirror_keys``)."""

    key: Key
    kind: DiffKind
    fields: list[FieldDiff] = field(default_factory=list)


@dataclass
class VerifyProgress:
    """After each chunk: resume with ``lo=cursor`` (an open range ends with ``cursor=None, done=True``)."""

    chunks_done: int
    rows_source: int
    rows_target: int
    cursor: Key | None
    done: bool = False


@dataclass
class VerifyReport:
    """What a verification compared and found. Counts are exact; ``differences`` is capped."""

    table: str
    rows_source: int = 0
    rows_target: int = 0
    chunks: int = 0
    mismatched_chunks: int = 0
    missing: int = 0
    extra: int = 0
    field_different: int = 0
    differences: list[Difference] = field(default_factory=list)
    method: str = "python"
    seconds: float = 0.0
    field_counts: dict[str, int] = field(default_factory=dict)
    # beyond the orchestration contract, used by repair and by operators
    max_differences: int = 1000
    mismatched_ranges: list[Bounds] = field(default_factory=list)
    rechecked_chunks: int = 0  # pushdown mismatches that the row-by-row comparison found equal
    cursor: Key | None = None  # upper bound of the last chunk compared

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.field_different == 0

    @property
    def total_differences(self) -> int:
        return self.missing + self.extra + self.field_different

    @property
    def truncated(self) -> bool:
        """More differences were counted than kept: a repair needs more than one round."""
        return self.total_differences > len(self.differences)

    def keys(self) -> list[Key]:
        """Source-key values of the differences kept (each once, in the order found)."""
        return list(dict.fromkeys(d.key for d in self.differences))

    def summary(self) -> dict[str, Any]:
        """Counts and column names only, never a row value or key: safe for logs and Temporal history."""
        return {
            "table": self.table, "method": self.method, "ok": self.ok,
            "rows_source": self.rows_source, "rows_target": self.rows_target, "chunks": self.chunks,
            "mismatched_chunks": self.mismatched_chunks, "missing": self.missing, "extra": self.extra,
            "field_different": self.field_different, "field_counts": dict(self.field_counts),
            "differences_kept": len(self.differences), "truncated": self.truncated,
            "rechecked_chunks": self.rechecked_chunks, "seconds": round(self.seconds, 3),
        }

    def add(self, diff: Difference) -> None:
        if diff.kind is DiffKind.MISSING:
            self.missing += 1
        elif diff.kind is DiffKind.EXTRA:
            self.extra += 1
        else:
            self.field_different += 1
            for f in diff.fields:
                self.field_counts[f.name] = self.field_counts.get(f.name, 0) + 1
        if len(self.differences) < self.max_differences:
            self.differences.append(diff)

    def merge(self, other: VerifyReport) -> None:
        """Fold another report (of the same table) into this one."""
        self.rows_source += other.rows_source
        self.rows_target += other.rows_target
        self.chunks += other.chunks
        self.mismatched_chunks += other.mismatched_chunks
        self.rechecked_chunks += other.rechecked_chunks
        self.missing += other.missing
        self.extra += other.extra
        self.field_different += other.field_different
        for name, n in other.field_counts.items():
            self.field_counts[name] = self.field_counts.get(name, 0) + n
        room = max(0, self.max_differences - len(self.differences))
        self.differences += other.differences[:room]
        self.mismatched_ranges += other.mismatched_ranges
        self.seconds += other.seconds


# ---------------------------------------------------------------------------------------------------------
# comparing canonical rows


def _key_getter(positions: Sequence[int]) -> Callable[[Row], Key]:
    pos = tuple(positions)
    if len(pos) == 1:
        p = pos[0]
        return lambda r: (r[p],)
    return lambda r: tuple(r[i] for i in pos)


def _aligned_differences(s_can: list[Row], t_can: list[Row], key: Callable[[Row], Key]
                         ) -> tuple[list[int], list[int]] | None:
    """Updated rows only (the common case): same length, and every differing pair has the same key."""
    if len(s_can) != len(t_can):
        return None
    idx = [i for i, (a, b) in enumerate(zip(s_can, t_can, strict=True)) if a != b]
    if all(key(s_can[i]) == key(t_can[i]) for i in idx):
        return idx, idx
    return None


def _unaligned_differences(s_can: list[Row], t_can: list[Row]) -> tuple[list[int], list[int]]:
    """Rows (by position) present on one side only as a whole: hashed in C as sets of tuples."""
    try:
        t_set, s_set = set(t_can), set(s_can)
    except TypeError:  # an unhashable value (a normaliser gave up on it): compare every row by key
        return list(range(len(s_can))), list(range(len(t_can)))
    return [i for i, r in enumerate(s_can) if r not in t_set], [j for j, r in enumerate(t_can) if r not in s_set]


def diff_rows(mapping: TableMapping, src: tuple[list[Row], list[Row]], tgt: tuple[list[Row], list[Row]]
              ) -> Iterator[Difference]:
    """Classify every difference between two sets of rows of one range (raw and canonical lists).

    Rows that differ at all are found first in C (a positional pass when only values changed, else a
    set difference of hashed tuples), so only those are looked at key by key: a mismatching chunk of
    50,000 rows costs milliseconds.
    """
    s_raw, s_can = src
    t_raw, t_can = tgt
    key = _key_getter(mapping.key_positions)
    names = mapping.target_columns
    s_idx, t_idx = _aligned_differences(s_can, t_can, key) or _unaligned_differences(s_can, t_can)
    t_by_key = {key(t_can[j]): j for j in t_idx}
    matched: set[int] = set()
    for i in s_idx:
        row = s_can[i]
        j = t_by_key.get(key(row))
        if j is None:
            yield Difference(normal_key(key(s_raw[i])), DiffKind.MISSING)
            continue
        matched.add(j)
        other = t_can[j]
        fields = [FieldDiff(names[c], a, b) for c, (a, b) in enumerate(zip(row, other, strict=True)) if a != b]
        if fields:
            yield Difference(normal_key(key(s_raw[i])), DiffKind.FIELD, fields)
    for j in t_idx:
        if j not in matched:
            yield Difference(normal_key(key(t_raw[j])), DiffKind.EXTRA)


# ---------------------------------------------------------------------------------------------------------
# the chunk pipeline


class _Conns:
    """A few connections to one store, opened once per verification and lent to worker threads."""

    def __init__(self, stack: contextlib.ExitStack, kind: StoreKind, store: Store, n: int) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(n):
            self._q.put(stack.enter_context(kind.connect(store)))

    @contextlib.contextmanager
    def use(self) -> Iterator[Any]:
        conn = self._q.get()
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            self._q.put(conn)


class _Run:
    """One verification: the stores, the plan for each side, and the report being filled."""

    def __init__(self, source: Store, target: Store, mapping: TableMapping, *, method: str,
                 max_differences: int, depth: int, stack: contextlib.ExitStack) -> None:
        self.source, self.target, self.mapping = source, target, mapping
        self.method = method
        skind, tkind = kind_for(source), kind_for(target)
        self.src, self.tgt = _tables(source, target, mapping)
        self.summers = skind.pair_checksums(source, target, mapping) if method == "pushdown" else None
        self.report = VerifyReport(table=mapping.source_table, method=method, max_differences=max_differences)
        self.sconns = _Conns(stack, skind, source, depth + 1)
        self.tconns = _Conns(stack, tkind, target, depth)
        self.pool = stack.enter_context(ThreadPoolExecutor(max_workers=2 * depth + 1,
                                                           thread_name_prefix="dw-verify"))
        self.depth = depth
        # a target that cannot read key ranges (Redis) is read by the source's keys of each chunk, plus the
        # keys it holds inside the chunk that the source lacks, found by one scan per run (_TargetKeys)
        self.target_keys = None if tkind.capabilities(target).range_reads else _TargetKeys(self.tgt)

    # -- bounds ------------------------------------------------------------------------------------------

    def next_bound(self, low: Key | None, hi: Key | None, size: int) -> tuple[Key | None, bool]:
        """The upper bound of the chunk starting after ``low``, and whether it is the last chunk."""
        with self.sconns.use() as conn:
            found = self.src.nth_key(conn, low, hi, size - 1)
            conn.rollback()
        if found is None:
            return hi, True
        return found, hi is not None and found == tuple(hi)

    def chunks(self, lo: Key | None, hi: Key | None, size: int) -> Iterator[Bounds]:
        """Tile ``(lo, hi]`` with chunks of ``size`` source rows; the next bound is looked up meanwhile."""
        pending: Future[tuple[Key | None, bool]] = self.pool.submit(self.next_bound, lo, hi, size)
        low = lo
        while True:
            bound, last = pending.result()
            if not last:
                pending = self.pool.submit(self.next_bound, bound, hi, size)
            yield low, bound
            if last:
                return
            low = bound

    def sub_ranges(self, lo: Key | None, hi: Key | None, step: int) -> list[Bounds]:
        """Tile ``(lo, hi]`` with ranges of ``step`` source rows, all bounds found in one index pass."""
        with self.sconns.use() as conn:
            bounds: list[Key | None] = list(self.src.every_nth_key(conn, lo, hi, step))
        if not bounds or bounds[-1] != hi:
            bounds.append(hi)
        return list(zip([lo, *bounds[:-1]], bounds, strict=True))

    # -- one side of one chunk ---------------------------------------------------------------------------

    def read_source(self, lo: Key | None, hi: Key | None) -> tuple[list[Row], list[Row]]:
        with self.sconns.use() as conn:
            return self.src.canonical_range(conn, lo, hi)

    def read_target(self, lo: Key | None, hi: Key | None) -> tuple[list[Row], list[Row]]:
        with self.tconns.use() as conn:
            return self.tgt.canonical_range(conn, lo, hi)

    def read_target_by_keys(self, lo: Key | None, hi: Key | None, source: Future[tuple[list[Row], list[Row]]]
                            ) -> tuple[list[Row], list[Row]]:
        """The target rows of a chunk when the target has no range reads: those of the source's keys,
        then those of the target's own keys inside the chunk (extras, when the source lacks them)."""
        assert self.target_keys is not None
        with self.tconns.use() as conn:
            keys = dict.fromkeys(self.src.row_key(r) for r in source.result()[0])
            others = [k for k in self.target_keys.inside(conn, lo, hi) if k not in keys]
            keys.update(dict.fromkeys(self.source_lacks(others)))
            return self.tgt.canonical_keys(conn, list(keys))

    def source_lacks(self, keys: list[Key]) -> list[Key]:
        """The keys the source has no row for: a key the source orders into another chunk (a collation
        that is not the target's order) is compared there, not called extra here."""
        if not keys:
            return keys
        with self.sconns.use() as conn:
            present = {self.src.row_key(r) for r in self.src.read_keys(conn, keys)}
            conn.rollback()
        return [k for k in keys if k not in present]

    def sum_source(self, lo: Key | None, hi: Key | None) -> tuple[int, int]:
        assert self.summers is not None
        with self.sconns.use() as conn:
            return self.summers[0].checksum(conn, lo, hi)

    def sum_target(self, lo: Key | None, hi: Key | None) -> tuple[int, int]:
        assert self.summers is not None
        with self.tconns.use() as conn:
            return self.summers[1].checksum(conn, lo, hi)

    def submit(self, lo: Key | None, hi: Key | None) -> tuple[Future[Any], Future[Any]]:
        if self.method == "pushdown":
            return self.pool.submit(self.sum_source, lo, hi), self.pool.submit(self.sum_target, lo, hi)
        fs = self.pool.submit(self.read_source, lo, hi)
        if self.target_keys is not None:
            return fs, self.pool.submit(self.read_target_by_keys, lo, hi, fs)
        return fs, self.pool.submit(self.read_target, lo, hi)

    # -- judging one chunk -------------------------------------------------------------------------------

    def settle(self, lo: Key | None, hi: Key | None, s: Any, t: Any) -> None:
        """Count one finished chunk and, if it differs, narrow it to keys and record the differences."""
        rep = self.report
        rep.chunks += 1
        rep.cursor = hi
        if self.method == "pushdown":
            rep.rows_source += s[0]
            rep.rows_target += t[0]
            if s == t:
                return
            found = self.narrow(lo, hi, s[0] + t[0])
        else:
            rep.rows_source += len(s[0])
            rep.rows_target += len(t[0])
            if s[1] == t[1]:
                return
            found = self.record(diff_rows(self.mapping, s, t))
        if found:
            rep.mismatched_chunks += 1
            rep.mismatched_ranges.append((lo, hi))
        else:
            rep.rechecked_chunks += 1

    def record(self, diffs: Iterable[Difference]) -> int:
        n = 0
        for d in diffs:
            self.report.add(d)
            n += 1
        return n

    def compare_rows(self, lo: Key | None, hi: Key | None) -> int:
        fs = self.pool.submit(self.read_source, lo, hi)
        ft = self.pool.submit(self.read_target, lo, hi)
        return self.record(diff_rows(self.mapping, fs.result(), ft.result()))

    def narrow(self, lo: Key | None, hi: Key | None, rows: int) -> int:
        """Pushdown mismatch: checksum sub-ranges of ~NARROW_ROWS rows, compare rows of the bad ones."""
        if rows <= 2 * NARROW_ROWS:
            return self.compare_rows(lo, hi)
        subs = self.sub_ranges(lo, hi, NARROW_ROWS)
        if len(subs) == 1:  # the source has few rows here (the target holds extras): compare directly
            return self.compare_rows(lo, hi)
        sums = [self.submit(a, b) for a, b in subs]
        found = 0
        for (a, b), (fs, ft) in zip(subs, sums, strict=True):
            if fs.result() != ft.result():
                found += self.compare_rows(a, b)
        return found

    # -- driving -----------------------------------------------------------------------------------------

    def run(self, ranges: Iterable[Bounds], on_chunk: Callable[[VerifyProgress], None] | None) -> None:
        """Keep ``depth`` chunks in flight; settle them in key order (progress is reported in order)."""
        inflight: deque[tuple[Key | None, Key | None, Future[Any], Future[Any]]] = deque()

        def settle_oldest(done: bool) -> None:
            a, b, fs, ft = inflight.popleft()
            self.settle(a, b, fs.result(), ft.result())
            if on_chunk is not None:
                r = self.report
                on_chunk(VerifyProgress(r.chunks, r.rows_source, r.rows_target, r.cursor, done))

        try:
            for lo, hi in ranges:
                inflight.append((lo, hi, *self.submit(lo, hi)))
                if len(inflight) >= self.depth:
                    settle_oldest(False)
            while inflight:
                settle_oldest(len(inflight) == 1)
        except BaseException:
            for _a, _b, fs, ft in inflight:
                fs.cancel()
                ft.cancel()
            raise


class _TargetKeys:
    """Every key of a target without range reads, scanned once per verification (on first use) and kept
    sorted, so each chunk takes the keys inside its bounds by bisection."""

    def __init__(self, table: MappedTable) -> None:
        self._table = table
        self._keys: list[Key] | None = None
        self._lock = threading.Lock()

    def inside(self, conn: Any, lo: Key | None, hi: Key | None) -> list[Key]:
        with self._lock:
            if self._keys is None:
                self._keys = self._table.range_keys(conn, None, None)
        keys = self._keys
        start = 0 if lo is None else bisect.bisect_right(keys, normal_key(tuple(lo)))
        end = len(keys) if hi is None else bisect.bisect_right(keys, normal_key(tuple(hi)))
        return keys[start:end]


def _check_tiling(ranges: Iterable[Bounds], lo: Key | None, hi: Key | None) -> Iterator[Bounds]:
    """Pass chunk bounds through, failing if they do not tile ``(lo, hi]`` exactly (rule 9: no skips)."""
    expect = lo
    n = 0
    for a, b in ranges:
        if a != expect:
            raise VerificationError(f"chunk {n + 1} does not start where chunk {n} ended: a range was skipped")
        n += 1
        expect = b
        yield a, b
    if n == 0 or expect != hi:
        raise VerificationError("the chunks do not reach the end of the range: a range was skipped")


def can_push_down(mapping: TableMapping, source: Store, target: Store) -> bool:
    """Can both stores checksum this mapping's rows alike (same engine, no Python in the mapping)?"""
    skind = kind_for(source)
    return skind is kind_for(target) and skind.pair_checksums(source, target, mapping) is not None


def _tables(source: Store, target: Store, mapping: TableMapping) -> tuple[MappedTable, MappedTable]:
    return (kind_for(source).table(source, mapping, Role.SOURCE),
            kind_for(target).table(target, mapping, Role.TARGET))


def _method_for(mapping: TableMapping, source: Store, target: Store, method: str | None) -> str:
    if method is None:
        return "pushdown" if can_push_down(mapping, source, target) else "python"
    if method not in ("pushdown", "python"):
        raise ValueError(f"method must be 'pushdown' or 'python', not {method!r}")
    if method == "pushdown" and not can_push_down(mapping, source, target):
        raise ValueError("pushdown needs both stores on the same engine (PostgreSQL or MariaDB) and no "
                         "Python transforms")
    return method


def _finish(report: VerifyReport, started: float, allow_empty: bool) -> VerifyReport:
    report.seconds = time.monotonic() - started
    if report.rows_source + report.rows_target == 0 and not allow_empty:
        raise VerificationError(f"verification of {report.table} compared zero rows (a verifier must prove it "
                                f"looked); if {report.table} is meant to be empty, set 'allow_empty: true' on "
                                "the table in the spec (allow_empty=True from Python)")
    return report


def verify_range(source: Store, target: Store, mapping: TableMapping, *, lo: Key | None = None,
                 hi: Key | None = None, chunk_size: int | None = None, max_differences: int = 1000,
                 on_chunk: Callable[[VerifyProgress], None] | None = None, allow_empty: bool = False,
                 method: str | None = None, depth: int = 2) -> VerifyReport:
    """Compare source rows with ``lo < key <= hi`` (either bound open) against the target.

    ``on_chunk`` runs after every chunk, in key order (heartbeat ``cursor`` there: a verification
    resumed with ``lo=cursor`` covers the rest). ``method`` forces "pushdown" or "python" (default:
    pushdown whenever possible). ``depth`` is how many chunks are in flight at once.
    """
    started = time.monotonic()
    how = _method_for(mapping, source, target, method)
    size = chunk_size or (PUSHDOWN_CHUNK if how == "pushdown" else PYTHON_CHUNK)
    if size < 1:
        raise ValueError("chunk_size must be positive")
    with contextlib.ExitStack() as stack:
        run = _Run(source, target, mapping, method=how, max_differences=max_differences, depth=max(1, depth),
                   stack=stack)
        run.run(_check_tiling(run.chunks(lo, hi, size), lo, hi), on_chunk)
    return _finish(run.report, started, allow_empty)


def verify_ranges(source: Store, target: Store, mapping: TableMapping, ranges: Sequence[Bounds], *,
                  max_differences: int = 1000, allow_empty: bool = False, method: str | None = None
                  ) -> VerifyReport:
    """Compare exactly the given chunk ranges (each ``lo < key <= hi``), e.g. the mismatching chunks of
    an earlier report after a repair. Each range is compared as one chunk."""
    started = time.monotonic()
    how = _method_for(mapping, source, target, method)
    with contextlib.ExitStack() as stack:
        run = _Run(source, target, mapping, method=how, max_differences=max_differences, depth=2, stack=stack)
        run.run(list(ranges), None)
    return _finish(run.report, started, allow_empty)


def verify_keys(source: Store, target: Store, mapping: TableMapping, keys: Sequence[Key], *,
                max_differences: int = 1000, allow_empty: bool = False) -> VerifyReport:
    """Compare the rows of the given source keys on both stores (absent on both sides counts as equal)."""
    started = time.monotonic()
    unique = list(dict.fromkeys(normal_key(tuple(k)) for k in keys))
    report = VerifyReport(table=mapping.source_table, method="python", max_differences=max_differences)
    if not unique:
        return _finish(report, started, allow_empty)
    src, tgt = _tables(source, target, mapping)
    skind, tkind = kind_for(source), kind_for(target)
    with skind.connect(source) as sconn, tkind.connect(target) as tconn, ThreadPoolExecutor(2) as pool:
        for start in range(0, len(unique), KEY_BATCH):
            batch = unique[start:start + KEY_BATCH]
            fs = pool.submit(src.canonical_keys, sconn, batch)
            ft = pool.submit(tgt.canonical_keys, tconn, batch)
            s, t = fs.result(), ft.result()
            report.chunks += 1
            report.rows_source += len(s[0])
            report.rows_target += len(t[0])
            found = 0
            for d in diff_rows(mapping, s, t):
                report.add(d)
                found += 1
            report.mismatched_chunks += int(found > 0)
    report.seconds = time.monotonic() - started
    return report
