"""Reads by key on one store through the adapter's own pools, in that store's column names: what the shadow
reader compares (one key, or a batch per table per window) and what the ORM's shadow of a loaded object
reads on the other store."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from dualwrite.adapter._keyvalue import KeyValueSide
from dualwrite.adapter._stores import retry_stale
from dualwrite.adapter._tables import Key, TableRuntime
from dualwrite.adapter.phase import Side
from dualwrite.mirror import normal_key
from dualwrite.store import Dialect, Store

__all__ = ["DirectReads"]


class DirectReads:
    """Row reads by key on either store, off the request path."""

    def __init__(self, table: Callable[[str], TableRuntime], data: Mapping[Side, Store],
                 kv: KeyValueSide | None = None) -> None:
        self.table = table
        self.data = data
        self.kv = kv  # the Redis new store, read through its kind

    def read_row(self, table: str, side: str, key: Key) -> dict[str, Any] | None:
        """One row by key on ``side`` (its column names), or None."""
        rt = self.table(table)
        sd = Side(side)
        if sd is Side.NEW and self.kv is not None:
            return self.kv.read_rows(rt, [key])[key]
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

        r = retry_stale(self.data, run, sd)
        return None if r is None else dict(zip(s.columns, r, strict=True))

    def read_rows(self, table: str, side: str, keys: list[Key]) -> dict[Key, dict[str, Any] | None]:
        """Many rows by key in one statement (the shadow reader's batches): {requested key: row}."""
        rt = self.table(table)
        sd = Side(side)
        if sd is Side.NEW and self.kv is not None:
            return self.kv.read_rows(rt, keys)
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
        for r in retry_stale(self.data, run, sd):
            requested = wanted.get(normal_key(tuple(r[p] for p in positions)))
            if requested is not None:
                out[requested] = dict(zip(s.columns, r, strict=True))
        return out
