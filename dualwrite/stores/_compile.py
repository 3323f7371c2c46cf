"""A table spec compiled against its two live stores, whatever their kinds.

A SQL target is reflected (its catalog says what the columns are); a Redis target has no catalog, so the
target table is synthesized from the source's and the spec's ``redis:`` section is checked against the
compiled key (:func:`dualwrite.stores.redis.redis_mapping`), and the store learns the table's layout.
The worker's mapping cache and the adapter both compile here, so neither assumes ``target.describe()``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import NoSuchTableError

from dualwrite.errors import Problem, SpecError
from dualwrite.mapping import TableMapping, compile_table
from dualwrite.spec import TableSpec
from dualwrite.stores._open import as_redis, is_redis

__all__ = ["compile_for_stores"]


def compile_for_stores(table: TableSpec, old: Any, new: Any, *, refresh: bool = False, where: str = ""
                       ) -> tuple[TableMapping | None, list[Problem]]:
    """(mapping, []) or (None, every problem): missing tables, the spec against both tables, and for a
    Redis target its ``redis:`` section. ``where`` prefixes the spec's locations (default ``table X``)."""
    at = where or f"table {table.source}"
    problems: list[Problem] = []
    if is_redis(old):
        return None, [Problem(at, f"store {old.name!r} is Redis: Redis is supported as the new store only "
                                  "(the old store, the control tables and the key logs are SQL)")]
    try:
        src_info = old.describe(table.source, refresh=refresh)
    except NoSuchTableError:
        problems.append(Problem(at, f"source table {table.source} does not exist in store {old.name!r}"))
        src_info = None
    if is_redis(new):
        if src_info is None:
            return None, problems
        from dualwrite.stores.redis import redis_mapping  # noqa: PLC0415 - the redis client only when used

        try:
            mapping, _layout = redis_mapping(table, src_info, at)
        except SpecError as exc:
            return None, [*problems, *exc.problems]
        as_redis(new).lay_out(table)
        return mapping, problems
    try:
        dst_info = new.describe(table.target_table, refresh=refresh)
    except NoSuchTableError:
        problems.append(Problem(at, f"target table {table.target_table} does not exist in store {new.name!r}"))
        dst_info = None
    if src_info is None or dst_info is None:
        return None, problems
    return compile_table(table, src_info, dst_info, where=where)
