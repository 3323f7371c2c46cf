"""Per-worker caches of stores and compiled table mappings.

Workflows carry store *names*; this is the only place in the worker where a name becomes a connection.
Stores (and their connection pools) live as long as the worker, so an activity does not pay for a new
engine, a reflection and a mapping compile on every call.
"""

from __future__ import annotations

import hashlib
import threading

from sqlalchemy.exc import NoSuchTableError

from dualwrite import control
from dualwrite.capture.store_side import RelayStores
from dualwrite.config import StoreResolver
from dualwrite.errors import Problem, SchemaError
from dualwrite.mapping import TableMapping, compile_table
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from dualwrite.triggers import mark_replica


class StoreCache:
    """Thread-safe: sync activities run on a thread pool and share these stores."""

    def __init__(self, resolver: StoreResolver, *, pool_size: int = 8) -> None:
        self.resolver = resolver
        self._pool_size = pool_size
        self._stores: dict[str, Store] = {}
        self._mappings: dict[tuple[str, str, bool], TableMapping] = {}
        self._lock = threading.Lock()
        self._control_ready: set[str] = set()

    def store(self, name: str) -> Store:
        with self._lock:
            s = self._stores.get(name)
            if s is None:
                s = Store(self.resolver.resolve(name), pool_size=self._pool_size)
                # the worker's own writes (backfill, repair, relay) must never be captured by triggers
                mark_replica(s)
                self._stores[name] = s
            return s

    def control_store(self, name: str) -> Store:
        """The store ``name`` with the control tables in it (created on first use by this worker)."""
        store = self.store(name)
        with self._lock:
            ready = name in self._control_ready
        if not ready:
            control.ensure_schema(store)
            with self._lock:
                self._control_ready.add(name)
        return store

    def relay_stores(self, spec: MigrationSpec) -> RelayStores:
        """A migration's stores and cached mappings, as the capture methods' store side takes them."""

        def mapping_for(table: str, reverse: bool) -> TableMapping:
            return self.mapping(spec, table, reverse=reverse)[2]

        return RelayStores(spec, self.store(spec.old), self.store(spec.new), self.store(spec.control), mapping_for)

    def mapping(self, spec: MigrationSpec, source: str, *, reverse: bool = False,
                refresh: bool = False) -> tuple[Store, Store, TableMapping]:
        """(from store, to store, mapping) for one table; ``reverse`` mirrors new -> old."""
        old, new = self.store(spec.old), self.store(spec.new)
        digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
        key = (digest, source, False)
        with self._lock:
            forward = None if refresh else self._mappings.get(key)
        if forward is None:
            forward = compile_mapping(spec, source, old, new, refresh=refresh)
            with self._lock:
                self._mappings[key] = forward
        if not reverse:
            return old, new, forward
        try:
            back = forward.reversed()
        except ValueError as exc:
            raise SchemaError([Problem(f"table {source}", f"cannot mirror new -> old: {exc}")],
                              "irreversible mapping") from None
        return new, old, back

    def close(self) -> None:
        with self._lock:
            for s in self._stores.values():
                s.dispose()
            self._stores.clear()
            self._mappings.clear()


def compile_mapping(spec: MigrationSpec, source: str, old: Store, new: Store, *,
                    refresh: bool = False) -> TableMapping:
    """Reflect both tables and compile the spec's mapping, raising SchemaError with every problem."""
    try:
        table = spec.table(source)
    except KeyError:
        raise SchemaError([Problem(f"table {source}", "not in the spec")], "schema mismatch") from None
    problems: list[Problem] = []
    try:
        src_info = old.describe(table.source, refresh=refresh)
    except NoSuchTableError:
        problems.append(Problem(f"table {source}", f"source table {table.source} does not exist in store "
                                                   f"{old.name!r}"))
    try:
        dst_info = new.describe(table.target_table, refresh=refresh)
    except NoSuchTableError:
        problems.append(Problem(f"table {source}", f"target table {table.target_table} does not exist in "
                                                   f"store {new.name!r}"))
    if problems:
        raise SchemaError(problems, "schema mismatch")
    mapping, problems = compile_table(table, src_info, dst_info)
    if mapping is None:
        raise SchemaError(problems, "schema mismatch")
    return mapping
