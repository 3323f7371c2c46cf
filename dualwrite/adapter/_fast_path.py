"""The fast path of a secondary write: the committed row image the authoritative statement returned,
written into the other store with one version-guarded upsert (no re-read of the source).

Only where a refused image can be told from a written one (the upsert's row count), so the caller can fall
back to :func:`dualwrite.mirror.mirror_keys` for exactly those keys (docs/architecture.md, "A write")."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from dualwrite.mapping import SourceKind, TableMapping
from dualwrite.rows import adapt, adapters_for
from dualwrite.sqlgen import target_side, upsert_sql
from dualwrite.store import Dialect, Store

__all__ = ["FastPath", "write_images"]


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


def write_images(fast: FastPath, images: list[dict[str, Any]]) -> int | None:
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
