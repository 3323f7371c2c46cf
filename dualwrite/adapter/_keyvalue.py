"""The adapter's reads and writes on a Redis new store ([T2-6]): rows by key, in the store's column names.

Before write cutover the old SQL store is authoritative and Redis only follows: the inline mirror writes it
through its store kind (:func:`dualwrite.mirror.mirror_keys`), and shadow reads read it here. From write
cutover on, Redis is authoritative: :meth:`DualWriter.insert` / ``update`` / ``upsert`` / ``delete`` write
it here (a SQL unit of work cannot run on Redis) and the inline mirror copies each key back into the old
store with the reversed mapping (Redis as the mirror's source, :mod:`dualwrite.stores.redis._source`).
Under ``outbox`` nothing is mirrored in the call: the key is appended to the migration's Redis stream by
the same script that writes the row (:mod:`dualwrite.keyvalue.stream_outbox`), and the relay mirrors it.
Under ``strict`` the row is handed to :meth:`dualwrite.adapter._strict_kv.RedisStrict.put` (``via``), which
writes SQL and Redis both or neither.

What Redis cannot do and SQL does, stated rather than pretended (README, "Redis as the new store"):

- no transaction spans the two stores, nor several keys: each row is written atomically by one script;
- an update or upsert reads the row, merges the new values in Python and writes the whole row: two
  concurrent updates of one key may lose one of the merged columns (last writer wins per row);
- no unique constraint but the key, no database defaults, no generated keys (an insert gives its key);
- reads served from Redis return each value as a SQL driver would (``Decimal``, ``datetime``), rebuilt from
  its canonical text (:func:`dualwrite.keyvalue.encoding.native_value`); JSON stays text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dualwrite import outbox
from dualwrite.adapter._errors import RoutingError
from dualwrite.adapter._tables import Key, TableRuntime, Touched
from dualwrite.adapter.phase import Side
from dualwrite.errors import RowRejectedError
from dualwrite.keyvalue.encoding import native_value
from dualwrite.keyvalue.stream_outbox import stream_key
from dualwrite.mapping import SourceKind, TableMapping
from dualwrite.store import Kind
from dualwrite.stores import Role, kind_for, normal_key

__all__ = ["KeyValueSide"]


def _apply(mapping: TableMapping, image: Mapping[str, Any]) -> dict[str, Any]:
    """A row of ``mapping``'s source (by column name) as its target row (by column name)."""
    out: dict[str, Any] = {}
    for plan in mapping.columns:
        if plan.kind is SourceKind.COLUMN:
            out[plan.target] = image.get(plan.source or "")
        elif plan.kind is SourceKind.DEFAULT:
            out[plan.target] = plan.value
        elif plan.kind is SourceKind.TRANSFORM:
            assert plan.transform is not None
            out[plan.target] = plan.transform(image.get(plan.source) if plan.source else dict(image))
        else:
            raise RoutingError(f"table {mapping.source_table}: column {plan.target!r} is an SQL expression, "
                               "which Redis cannot compute: use a transform")
    return out


def row_as_source(rt: TableRuntime, row: Sequence[Any]) -> tuple[Any, ...]:
    """A Redis row (the forward mapping's target order) as the old SQL table's row (the reversed mapping's
    target order): what the mirror back would write for it (strict writes it before Redis commits)."""
    back = rt.mapping_from(Side.NEW)
    sql = _apply(back, dict(zip(rt.forward.target_columns, row, strict=True)))
    return tuple(sql.get(c) for c in back.target_columns)


Via = Callable[[TableRuntime, Key, tuple[Any, ...] | None, bool], int]
"""How a row is written instead of directly (strict: :meth:`dualwrite.adapter._strict_kv.RedisStrict.put`):
(table, key, row in the Redis column order or None to delete, insert only) -> 1 written / deleted, 0 not."""


class KeyValueSide:
    """The Redis new store of a :class:`DualWriter`: reads by key, and writes while it is authoritative."""

    def __init__(self, store: Any, migration: str) -> None:
        self.store = store
        self.kind = kind_for(store)
        self.stream = stream_key(migration)
        """The outbox while Redis is authoritative (``outbox`` tables: :mod:`dualwrite.keyvalue.stream_outbox`)."""

    def _table(self, rt: TableRuntime) -> Any:
        return self.kind.table(self.store, rt.forward, Role.TARGET)

    # -- reads ---------------------------------------------------------------------------------------------

    def read_rows(self, rt: TableRuntime, keys: list[Key]) -> dict[Key, dict[str, Any] | None]:
        """{requested key: the row as Redis keeps it (new column names), or None}."""
        wanted = {normal_key(k): k for k in keys}
        with self.kind.connect(self.store) as conn:
            found = self._table(rt).stored_rows(conn, list(wanted))
        return {k: found.get(n) for n, k in wanted.items()}

    def read(self, rt: TableRuntime, key: Key) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(the Redis row, the application's row) of one key, or None."""
        stored = self.read_rows(rt, [key])[key]
        if stored is None:
            return None
        info = rt.forward.target_info
        row = {c: native_value(v, info.columns[c].kind) if c in info.columns else v for c, v in stored.items()}
        if rt.backward is None:
            raise RoutingError(f"table {rt.name}: {rt.new.why_not_writable}")
        return row, _apply(rt.backward, row)

    # -- writes while Redis is authoritative ----------------------------------------------------------------

    def _current(self, rt: TableRuntime, key: Key) -> dict[str, Any] | None:
        found = self.read(rt, key)
        return None if found is None else found[1]

    def _put(self, rt: TableRuntime, key: Key, app: Mapping[str, Any], *, insert_only: bool, note: bool,
             via: Via | None = None) -> bool:
        """Write one row given in application names; False when ``insert_only`` found the key taken. ``note``
        (the old store follows): an ``outbox`` table's entry is appended to the stream by the same script;
        ``via``: the row is written by it (strict) instead."""
        target = _apply(rt.forward, app)
        row = tuple(target.get(c) for c in rt.forward.target_columns)
        if via is not None:
            return bool(via(rt, key, row, insert_only))
        table = self._table(rt)
        with self.kind.connect(self.store) as conn:
            if note and rt.method.notes_keys:
                return bool(table.put_noted(conn, row, insert_only=insert_only, stream=self.stream, table=rt.name,
                                            key_json=outbox.key_json(normal_key(key))))
            return bool(table.put(conn, [row], insert_only=insert_only)[0])

    def _versioned(self, rt: TableRuntime, app: dict[str, Any], before: Mapping[str, Any] | None,
                   given: Mapping[str, Any]) -> dict[str, Any]:
        """The version column set as the SQL path sets it: 1 on insert, +1 on update (unless given)."""
        v = rt.version
        if v is None or v in given:
            return app
        kind = rt.forward.source_info.columns[v].kind
        if kind is not Kind.INT:
            raise RoutingError(f"table {rt.name}: version column {v} is not an integer; give its value when "
                               "Redis is authoritative (no database clock to bump it)")
        app[v] = 1 if before is None or before.get(v) is None else int(before[v]) + 1
        return app

    def insert(self, rt: TableRuntime, values: Mapping[str, Any], *, note: bool = False, via: Via | None = None
               ) -> tuple[Key, list[Touched]]:
        key = rt.key_from_values(values)
        if key is None:
            raise RoutingError(f"table {rt.name}: Redis generates no keys: give every key column "
                               f"({', '.join(rt.key)}) to insert while Redis is authoritative")
        app = self._versioned(rt, {c: values.get(c) for c in rt.forward.source_info.columns}, None, values)
        if not self._put(rt, key, app, insert_only=True, note=note, via=via):
            raise RowRejectedError(f"table {rt.name}: a row with this key exists already (insert)")
        return key, [Touched(rt, key)]

    def update(self, rt: TableRuntime, key: Key, values: Mapping[str, Any], *, note: bool = False,
               via: Via | None = None) -> tuple[int, list[Touched]]:
        before = self._current(rt, key)
        if before is None:
            return 0, []
        app = self._versioned(rt, {**before, **values}, before, values)
        new_key = rt.key_from_values(app)
        if new_key is not None and normal_key(new_key) != normal_key(key):
            raise RoutingError(f"table {rt.name}: an update cannot change the key while Redis is authoritative "
                               "(delete and insert instead)")
        self._put(rt, key, app, insert_only=False, note=note, via=via)
        return 1, [Touched(rt, key)]

    def upsert(self, rt: TableRuntime, values: Mapping[str, Any], *, note: bool = False, via: Via | None = None
               ) -> tuple[Key, list[Touched]]:
        key = rt.key_from_values(values)
        if key is None:
            raise RoutingError(f"table {rt.name}: an upsert needs every key column ({', '.join(rt.key)})")
        before = self._current(rt, key)
        base = before if before is not None else {c: None for c in rt.forward.source_info.columns}
        self._put(rt, key, self._versioned(rt, {**base, **values}, before, values), insert_only=False, note=note,
                  via=via)
        return key, [Touched(rt, key)]

    def delete(self, rt: TableRuntime, key: Key, *, note: bool = False, via: Via | None = None
               ) -> tuple[int, list[Touched]]:
        if via is not None:
            return via(rt, key, None, False), [Touched(rt, key, None, deleted=True)]
        table = self._table(rt)
        with self.kind.connect(self.store) as conn:
            if note and rt.method.notes_keys:
                n = table.delete_noted(conn, key, stream=self.stream, table=rt.name,
                                       key_json=outbox.key_json(normal_key(key)))
            else:
                n = table.delete(conn, [normal_key(key)])
        return n, [Touched(rt, key, None, deleted=True)]
