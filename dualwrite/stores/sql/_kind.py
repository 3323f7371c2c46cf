"""The SQL kind: PostgreSQL, MariaDB/MySQL and SQLite through :class:`dualwrite.store.Store`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from dualwrite.mapping import TableMapping
from dualwrite.store import Dialect, Store, is_transient, without_row_values
from dualwrite.stores._kind import Capabilities, CopyRoute, Key, MappedTable, RangeChecksum, Role
from dualwrite.stores.sql import _checksums, _plan, _routes
from dualwrite.stores.sql._table import SqlTable

_CAPABILITIES = {
    Dialect.POSTGRESQL: Capabilities(transactions=True, row_locks=True, skip_locked=True, native_upsert=True,
                                     range_reads=True, concurrent_writers=True, sampling=True, row_estimate=True),
    Dialect.MYSQL: Capabilities(transactions=True, row_locks=True, skip_locked=True, native_upsert=True,
                                range_reads=True, concurrent_writers=True, sampling=True, row_estimate=True),
    # one writer at a time; no FOR UPDATE (the database-wide write lock orders writers instead)
    Dialect.SQLITE: Capabilities(transactions=True, row_locks=False, skip_locked=False, native_upsert=True,
                                 range_reads=True, concurrent_writers=False, sampling=False, row_estimate=False),
}


def _sql_store(store: Any) -> Store:
    if not isinstance(store, Store):
        raise TypeError(f"the SQL store kind serves dualwrite.store.Store, not {type(store).__name__}")
    return store


class SqlKind:
    """Stores reached through SQLAlchemy and their raw DBAPI connections."""

    name = "sql"

    def capabilities(self, store: Any) -> Capabilities:
        return _CAPABILITIES[_sql_store(store).dialect]

    def connect(self, store: Any) -> AbstractContextManager[Any]:
        conn: AbstractContextManager[Any] = _sql_store(store).connect()
        return conn

    def table(self, store: Any, mapping: TableMapping, role: Role) -> MappedTable:
        return SqlTable(_sql_store(store), mapping, role)

    def row_estimate(self, store: Any, table: str) -> int | None:
        return _plan.row_estimate(_sql_store(store), table)

    def plan_bounds(self, store: Any, mapping: TableMapping, total: int, ranges: int,
                    on_bound: Callable[[int], None] | None = None) -> list[Key]:
        return _plan.plan_bounds(_sql_store(store), mapping, total, ranges, on_bound)

    def pair_checksums(self, source: Any, target: Any, mapping: TableMapping
                       ) -> tuple[RangeChecksum, RangeChecksum] | None:
        if not (isinstance(source, Store) and isinstance(target, Store)):
            return None
        if not _checksums.can_push_down(mapping, source, target):
            return None
        return _checksums.pair_checksums(mapping, source, target)

    def copy_routes(self, source: Any, target: Any, mapping: TableMapping) -> list[CopyRoute]:
        if not (isinstance(source, Store) and isinstance(target, Store)):
            return []
        return _routes.copy_routes(source, target, mapping)

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def scrub_error(self, exc: BaseException, what: str) -> BaseException:
        return without_row_values(exc, what)


SQL = SqlKind()
