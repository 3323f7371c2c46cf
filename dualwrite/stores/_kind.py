"""The store half of dualwrite's two plug-in seams: what the data path needs from a kind of store.

Copy, mirror, verification, shadow reads, repair and preflight never speak a store's language; they
ask the store's *kind* (:func:`dualwrite.stores.kind_for`) for a :class:`MappedTable` (one side of a
table mapping on one store) and work through it. SQL databases are one kind (PostgreSQL, MariaDB/MySQL,
SQLite, :mod:`dualwrite.stores.sql`); a key-value store such as Redis (one hash per row under a key
template like ``customer:{id}``) is meant to be the next. So only plain Python values cross this seam:

- a **key** is a tuple of key-column values in *normal* form (:func:`normal_key`: text UUIDs, ``bytes``,
  naive UTC datetimes), whatever the store's driver hands back; each kind adapts keys to its driver;
- a **row** is a tuple of values in the mapping's *target* column order (``TableMapping.target_columns``):
  on the source side it is the mapped row (Python transforms applied), on the target side the stored one;
- a **canonical row** is a row whose values are in :mod:`dualwrite.canonical` form, so equal data compares
  equal across kinds.

Ranges are ``lo < key <= hi`` in the mapping's key order (either bound open): bytewise for text, the
order every kind must be able to walk if it claims ``range_reads``. A kind without ordered range reads
(a hash-partitioned key-value store) says so in :class:`Capabilities`, and callers plan by other means.
Connections are opaque: whatever :meth:`StoreKind.connect` yields, with ``commit()`` and ``rollback()``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dualwrite.mapping import TableMapping

Key = tuple[Any, ...]
Row = tuple[Any, ...]
Bounds = tuple[Key | None, Key | None]


class Role(StrEnum):
    """Which side of a mapping a table is read as: rows are always in the target's column order."""

    SOURCE = "source"
    TARGET = "target"


@dataclass(frozen=True)
class Capabilities:
    """What a store of one kind can do; the data path picks its strategy from these facts, never by name."""

    transactions: bool
    """Writes of several rows commit or roll back together."""
    row_locks: bool
    """Rows can be read under a lock held until commit (``FOR UPDATE``): the mirror's ordering guarantee."""
    skip_locked: bool
    """Locked rows can be skipped by a reader (``SKIP LOCKED``): queue draining by several workers."""
    native_upsert: bool
    """Insert-or-update in one statement, with a version guard."""
    range_reads: bool
    """Rows can be read in key order between two bounds (chunked copy and verification)."""
    concurrent_writers: bool
    """More than one connection may hold an open write transaction (SQLite: no)."""
    sampling: bool
    """A cheap random sample of keys exists (range planning without walking the key index)."""
    row_estimate: bool
    """A catalog can estimate a table's row count without scanning it."""


class Connection(Protocol):
    """A kind's connection as the data path sees it: a unit of work it can end either way."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class MappedTable(Protocol):
    """One side of a table mapping on one store: every data operation copy, mirror and verify need.

    Methods take a connection from :meth:`StoreKind.connect` of the same store and never end its
    transaction unless they say so; reads that say "ends the transaction" hold no snapshot afterwards.
    """

    role: Role

    # -- reading rows ------------------------------------------------------------------------------------

    def read_range(self, conn: Any, lo: Key | None, hi: Key | None, *, lock: bool = False) -> list[Row]:
        """Rows with ``lo < key <= hi`` in key order (source: mapped, transforms applied)."""
        ...

    def read_keys(self, conn: Any, keys: Sequence[Key], *, lock: bool = False) -> list[Row]:
        """The rows of these keys that exist; ``lock`` holds them until the caller ends the transaction."""
        ...

    def row_key(self, row: Row) -> Key:
        """The normal key of a row read from this side."""
        ...

    def stored_rows(self, conn: Any, keys: Sequence[Key]) -> dict[Key, dict[str, Any]]:
        """The rows of these keys as this side's table stores them (every column, by that store's column
        names), by normal key; a key without a row is left out. Shadow reads compare these. Ends the
        transaction."""
        ...

    # -- writing rows (target side) ----------------------------------------------------------------------

    def upsert(self, conn: Any, rows: list[Row], *, insert_only: bool, only_if_newer: bool) -> None:
        """Insert rows, or update the ones present (``insert_only``: leave them; ``only_if_newer``:
        update only when the incoming version is greater). The caller commits."""
        ...

    def insert_chunk(self, conn: Any, rows: list[Row], *, insert_only: bool) -> tuple[int, bool]:
        """A backfill chunk: insert, and where some key exists already fall back to a version-guarded
        upsert (live writes win). Returns (rows, took the conflict path). May roll back the open
        transaction on the way (the chunk is the only work in it). The caller commits."""
        ...

    def delete(self, conn: Any, keys: Sequence[Key]) -> int:
        """Delete the rows of these keys; the number deleted. The caller commits."""
        ...

    # -- walking keys -----------------------------------------------------------------------------------

    def nth_key(self, conn: Any, lo: Key | None, hi: Key | None, offset: int) -> Key | None:
        """The key ``offset`` rows after ``lo`` (within ``hi``), or None: the upper bound of the next chunk."""
        ...

    def every_nth_key(self, conn: Any, lo: Key | None, hi: Key | None, step: int) -> list[Key]:
        """Every ``step``-th key of ``lo < key <= hi`` in one pass (sub-ranges); ends the transaction."""
        ...

    def range_keys(self, conn: Any, lo: Key | None, hi: Key | None) -> list[Key]:
        """The normal keys of ``lo < key <= hi`` in key order."""
        ...

    def key_digest(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[str, int, int] | None:
        """(scheme, count, XOR of per-key hashes) of a range, or None when the store cannot hash keys.
        Two digests compare only when their schemes are equal."""
        ...

    # -- canonical rows (verification) -------------------------------------------------------------------

    def canonical_range(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[list[Row], list[Row]]:
        """(rows as read, canonical rows) of a range in key order; ends the transaction. The rows as
        read keep the key values :meth:`row_key` normalises (for repair)."""
        ...

    def canonical_keys(self, conn: Any, keys: Sequence[Key]) -> tuple[list[Row], list[Row]]:
        """(rows as read, canonical rows) of these keys; ends the transaction."""
        ...


class RangeChecksum(Protocol):
    """One side of a verification pushed down into the store: (row count, order-free hash) of a range."""

    def checksum(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[int, int]: ...


class CopyRoute(Protocol):
    """A way of moving one backfill chunk from a source to a target that a kind offers for a pair of its
    own stores (a pass-through that never builds Python rows). ``read`` may return None when the route
    streams while writing (``reads_ahead`` False)."""

    name: str
    reads_ahead: bool
    fallbacks: int

    def read(self, conn: Any, lo: Key | None, hi: Key | None) -> Any: ...

    def write(self, sconn: Any, tconn: Any, lo: Key | None, hi: Key | None, payload: Any) -> tuple[int, bool]: ...


class StoreKind(Protocol):
    """A kind of store (SQL, key-value...): connections, mapped tables, and what a pair of its stores can
    do together. ``store`` is whatever object the kind's stores are (:class:`dualwrite.store.Store` for SQL)."""

    name: str

    def capabilities(self, store: Any) -> Capabilities: ...

    def connect(self, store: Any) -> AbstractContextManager[Any]:
        """A connection for one thread, returned (or closed) when the block ends."""
        ...

    def table(self, store: Any, mapping: TableMapping, role: Role) -> MappedTable: ...

    def row_estimate(self, store: Any, table: str) -> int | None:
        """A cheap estimate of a table's rows (a catalog's), or None when the store keeps none."""
        ...

    def plan_bounds(self, store: Any, mapping: TableMapping, total: int, ranges: int,
                    on_bound: Callable[[int], None] | None = None) -> list[Key]:
        """Up to ``ranges - 1`` increasing source keys splitting about ``total`` rows evenly."""
        ...

    def pair_checksums(self, source: Any, target: Any, mapping: TableMapping
                       ) -> tuple[RangeChecksum, RangeChecksum] | None:
        """Checksums both stores compute alike for this mapping, or None (compare canonical rows)."""
        ...

    def copy_routes(self, source: Any, target: Any, mapping: TableMapping) -> list[CopyRoute]:
        """Fast routes for this pair, best first (may be empty: the generic row route always works)."""
        ...

    def is_transient(self, exc: BaseException) -> bool:
        """A conflict between concurrent transactions that retrying the whole unit of work resolves."""
        ...

    def scrub_error(self, exc: BaseException, what: str) -> BaseException:
        """A rejected-row error with the row values taken out of its message (others unchanged)."""
        ...


def _normal(value: object) -> object:
    # keys read back from different drivers: UUID objects vs text, bytes vs memoryview, aware vs naive UTC
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return str(value) if isinstance(value, uuid.UUID) else value


def normal_key(key: Key) -> Key:
    """A key in the form that crosses the seam: equal on every kind and driver for equal key values."""
    return tuple(_normal(v) for v in key)
