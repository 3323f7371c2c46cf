"""The Redis kind: ``redis://host:port/db`` and ``rediss://`` (TLS) stores, as the new store of a migration.

A :class:`RedisStore` is a URL (the database number is its path) plus how each of its tables is laid out
(the table spec's ``redis:`` section, :class:`~dualwrite.spec._models.RedisMap`). Redis has no
transactions in the SQL sense, no row locks and no ordered range reads; the capabilities say so, and the
data path plans by the source instead. Each write of a row is atomic (one script per key, see
:mod:`._table`); a connection's ``commit`` has nothing left to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import redis

from dualwrite.config import redact
from dualwrite.errors import Problem, SpecError, StoreError, StoreUnavailableError
from dualwrite.mapping import TableMapping
from dualwrite.spec._models import RedisMap, TableSpec
from dualwrite.stores._kind import Capabilities, CopyRoute, Key, MappedTable, RangeChecksum, Role
from dualwrite.stores.redis._layout import RedisLayout
from dualwrite.stores.redis._source import RedisSourceTable, identity_mapping
from dualwrite.stores.redis._table import RedisTable

__all__ = ["REDIS", "RedisConnection", "RedisKind", "RedisStore"]

_CAPABILITIES = Capabilities(transactions=False, row_locks=False, skip_locked=False, native_upsert=True,
                             range_reads=False, concurrent_writers=True, sampling=False, row_estimate=False)


@dataclass(frozen=True)
class RedisRef:
    """What :func:`dualwrite.stores.kind_for` and messages read from a store: its name and URL."""

    name: str
    url: str

    @property
    def redacted_url(self) -> str:
        return redact(self.url)


@dataclass
class RedisStore:
    """A Redis database as a store: its URL and the layout of each table kept in it (by target table)."""

    name: str
    url: str
    tables: dict[str, RedisMap] = field(default_factory=dict)
    socket_timeout: float = 10.0
    """Seconds a command may wait for its reply (a hung server fails the call instead of hanging it); the
    URL's ``?socket_timeout=`` wins."""
    connect_timeout: float = 5.0
    """Seconds a connection may take; the URL's ``?socket_connect_timeout=`` wins."""

    def __post_init__(self) -> None:
        if not self.url.lower().startswith(("redis://", "rediss://")):
            raise StoreError(f"store {self.name!r}: a Redis URL starts with redis:// or rediss://")

    @classmethod
    def for_tables(cls, name: str, url: str, specs: Iterable[TableSpec]) -> RedisStore:
        """The store for a spec's tables; a table without a ``redis:`` section is refused (all at once)."""
        specs = list(specs)
        missing = [Problem(f"table {s.source}.redis", 'the new store is Redis: give the key template '
                                                      '(redis: {key: "name:{id}"})') for s in specs if s.redis is None]
        if missing:
            raise SpecError(missing)
        return cls(name, url, {s.target_table: s.redis for s in specs if s.redis is not None})

    @property
    def ref(self) -> RedisRef:
        return RedisRef(self.name, self.url)

    def lay_out(self, spec: TableSpec) -> None:
        """Keep ``spec``'s table by its ``redis:`` section (stores opened by URL alone learn their layouts as
        the migration's mappings are compiled); a table without one is a :class:`SpecError`."""
        if spec.redis is None:
            raise SpecError([Problem(f"table {spec.source}.redis", 'the new store is Redis: give the key template '
                                                                   '(redis: {key: "name:{id}"})')])
        self.tables[spec.target_table] = spec.redis

    def timeouts(self) -> tuple[float, float]:
        """(socket, connect) timeouts in seconds: the URL's query options, else the store's."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.url).query)

        def given(name: str, default: float) -> float:
            try:
                return float(query[name][0])
            except (KeyError, IndexError, ValueError):
                return default

        return given("socket_timeout", self.socket_timeout), given("socket_connect_timeout", self.connect_timeout)

    def with_timeouts(self, seconds: float) -> RedisStore:
        """The same store (and table layouts) with both timeouts ``seconds`` unless the URL sets them (the
        adapter's secondary path: :func:`dualwrite.adapter._stores.data_store`)."""
        return dataclasses.replace(self, socket_timeout=seconds, connect_timeout=seconds)

    def client(self, *, timeout: float | None = None) -> redis.Redis:
        """A client of its own (a pool of one connection per thread that uses it), with socket and connect
        timeouts (``timeout`` for both, else :meth:`timeouts`; redis-py lets the URL's options win)."""
        sock, conn = (timeout, timeout) if timeout is not None else self.timeouts()
        return redis.Redis.from_url(self.url, socket_timeout=sock, socket_connect_timeout=conn)

    def ping(self, timeout: float = 5.0) -> None:
        """Raise :class:`StoreUnavailableError` (retried) unless the server answers."""
        client = self.client(timeout=timeout)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"store {self.name!r} is unreachable: {type(exc).__name__}") from None
        finally:
            client.close()

    def dispose(self) -> None:
        """Nothing pooled outlives a connection (each :meth:`RedisKind.connect` has its own client)."""

    def __str__(self) -> str:
        return self.name


class RedisConnection:
    """A client for one thread. Every write is applied when its pipeline runs: commit and rollback are
    no-ops (a rolled-back chunk's rows are already written; they are rewritten on retry, which is safe
    because every write is an idempotent row image)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def _redis_store(store: Any) -> RedisStore:
    if not isinstance(store, RedisStore):
        raise TypeError(f"the Redis store kind serves dualwrite.stores.redis.RedisStore, not {type(store).__name__}")
    return store


class RedisKind:
    """Redis databases, one key per row under each table's key template."""

    name = "redis"

    def capabilities(self, store: Any) -> Capabilities:
        return _CAPABILITIES

    def connect(self, store: Any) -> AbstractContextManager[Any]:
        return self._connect(_redis_store(store))

    @contextlib.contextmanager
    def _connect(self, store: RedisStore) -> Iterator[RedisConnection]:
        client = store.client()
        try:
            yield RedisConnection(client)
        finally:
            client.close()

    def table(self, store: Any, mapping: TableMapping, role: Role) -> MappedTable:
        """The target side: the mapping's target table kept in Redis. The source side (the mirror and the
        verification new -> old after write cutover): its source table, read through :mod:`._source`."""
        rstore = _redis_store(store)
        kept = mapping.target_table if role is Role.TARGET else mapping.source_table
        layout = rstore.tables.get(kept)
        if layout is None:
            raise StoreError(f"store {rstore.name!r}: table {kept} has no Redis layout "
                             "(the table spec's redis: section)")
        if role is Role.TARGET:
            return RedisTable(RedisLayout.of(layout, mapping, f"table {mapping.source_table}"), mapping, role)
        own = identity_mapping(mapping)
        inner = RedisTable(RedisLayout.of(layout, own, f"table {kept}"), own, Role.TARGET)
        return RedisSourceTable(inner, mapping)

    def row_estimate(self, store: Any, table: str) -> int | None:
        return None  # keys of all tables share one keyspace: DBSIZE is not a table's count

    def plan_bounds(self, store: Any, mapping: TableMapping, total: int, ranges: int,
                    on_bound: Callable[[int], None] | None = None) -> list[Key]:
        return []  # no ordered keys to split: one range (Redis is a target; sources plan their own)

    def pair_checksums(self, source: Any, target: Any, mapping: TableMapping
                       ) -> tuple[RangeChecksum, RangeChecksum] | None:
        return None

    def copy_routes(self, source: Any, target: Any, mapping: TableMapping) -> list[CopyRoute]:
        return []

    def is_transient(self, exc: BaseException) -> bool:
        return False  # no transactions to conflict: a row write never needs the unit retried

    def scrub_error(self, exc: BaseException, what: str) -> BaseException:
        if isinstance(exc, redis.RedisError):  # a script error can quote the arguments (row values)
            return StoreError(f"{what}: Redis refused the write ({type(exc).__name__}); row values withheld")
        return exc


REDIS = RedisKind()
