"""The SQL kind's fast backfill routes: chunks moved into PostgreSQL without building Python rows.

- ``pg-binary``: PostgreSQL -> PostgreSQL; the source renders binary COPY cast to the target's types,
  the bytes stream straight into the target's COPY (:func:`dualwrite.fastpath.pg_binary_chunk`).
- ``mysql-text``: MariaDB -> PostgreSQL; MariaDB renders COPY text (:mod:`dualwrite.fastpath`). A chunk
  holding a value PostgreSQL cannot read as MariaDB spelled it is redone through the row path.

Both need a mapping without Python transforms; the generic row route (in the backfill) carries the rest.
"""

from __future__ import annotations

import logging
from typing import Any

from dualwrite import fastpath
from dualwrite.mapping import TableMapping
from dualwrite.store import Dialect, Store
from dualwrite.stores._kind import CopyRoute, Key, Role
from dualwrite.stores.sql._table import SqlTable

log = logging.getLogger("dualwrite.backfill_copy")


class PgBinaryRoute:
    name = "pg-binary"
    reads_ahead = False  # source and target COPY stream concurrently; nothing to read ahead

    def __init__(self, mapping: TableMapping, source: Store, target: Store) -> None:
        self.mapping = mapping
        self.src = SqlTable(source, mapping, Role.SOURCE)
        self.dst = SqlTable(target, mapping, Role.TARGET)
        self.insert_only = mapping.version is None
        self.fallbacks = 0

    def read(self, conn: Any, lo: Key | None, hi: Key | None) -> Any:
        return None

    def write(self, sconn: Any, tconn: Any, lo: Key | None, hi: Key | None, payload: Any) -> tuple[int, bool]:
        return fastpath.pg_binary_chunk(sconn, tconn, self.mapping, self.src.side, self.dst.side,
                                        self.src.bound(lo), self.src.bound(hi), insert_only=self.insert_only)


class MysqlTextRoute:
    name = "mysql-text"
    reads_ahead = True

    def __init__(self, mapping: TableMapping, source: Store, target: Store) -> None:
        self.mapping = mapping
        self.src = SqlTable(source, mapping, Role.SOURCE)
        self.dst = SqlTable(target, mapping, Role.TARGET)
        self.insert_only = mapping.version is None
        self.defaults = fastpath.mysql_text_defaults(mapping)
        self.fallbacks = 0

    def read(self, conn: Any, lo: Key | None, hi: Key | None) -> Any:
        return fastpath.mysql_read_text_chunk(conn, self.mapping, self.src.side, self.src.bound(lo),
                                              self.src.bound(hi), self.defaults)

    def write(self, sconn: Any, tconn: Any, lo: Key | None, hi: Key | None, payload: Any) -> tuple[int, bool]:
        try:
            return fastpath.pg_write_text_chunk(tconn, self.mapping, self.dst.side, payload,
                                                insert_only=self.insert_only)
        except Exception as exc:
            if not str(getattr(exc, "sqlstate", "") or "").startswith("22"):
                raise
            # A value PostgreSQL cannot read as MariaDB spelled it (zero dates, out-of-range times...):
            # redo this chunk through the driver's conversions. Never log the message: it quotes the row.
            log.warning("chunk fell back to the generic path (sqlstate %s)", getattr(exc, "sqlstate", "?"))
            self.fallbacks += 1
        tconn.rollback()
        rows = self.src.read_range(sconn, lo, hi)
        return self.dst.insert_chunk(tconn, rows, insert_only=self.insert_only)


def copy_routes(source: Store, target: Store, mapping: TableMapping) -> list[CopyRoute]:
    """The fast routes that can carry this mapping between two SQL stores, best first."""
    if target.dialect is not Dialect.POSTGRESQL or mapping.needs_python:
        return []
    if source.dialect is Dialect.POSTGRESQL:
        return [PgBinaryRoute(mapping, source, target)]
    if source.dialect is Dialect.MYSQL and fastpath.mysql_text_supported(mapping):
        return [MysqlTextRoute(mapping, source, target)]
    return []
