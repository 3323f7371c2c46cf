"""The asyncio flavour of the Core API: the same routing and strategies on SQLAlchemy ``AsyncConnection``.

The authoritative transaction runs on the application's ``AsyncEngine``; everything after the commit
(the sync strategy's mirror, its repair path) and the shadow read of the other store run on the writer's
threads, because they share the synchronous mirror primitive with every other path. ``await`` returns when
the sync mirror is done, as in the sync flavour; the event loop never blocks on the other store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from dualwrite import bypass
from dualwrite import stats as st
from dualwrite.adapter._errors import RoutingError
from dualwrite.adapter._repairs import CloseReport
from dualwrite.adapter._tables import Key, KeyLike, entity_of
from dualwrite.adapter._timing import count_primary_failure
from dualwrite.adapter._uow import Statement, UnitOfWorkBase
from dualwrite.adapter.phase import Routing, Side
from dualwrite.adapter.strict import strict_groups
from dualwrite.adapter.writer import DualWriter
from dualwrite.store import Dialect

__all__ = ["AsyncDualWriter", "AsyncUnitOfWork"]


class AsyncUnitOfWork(UnitOfWorkBase):
    """:class:`dualwrite.adapter.writer.UnitOfWork` on an ``AsyncConnection``."""

    def __init__(self, writer: DualWriter, routing: Routing, connection: Any) -> None:
        super().__init__(writer, routing)
        self.connection = connection
        self._last_rowcount = 0

    async def _execute(self, st_: Statement) -> Key | None:
        res = await self.connection.exec_driver_sql(st_.sql, tuple(st_.params))
        rows = res.fetchall() if st_.mode == "returning" else None
        n = len(rows) if rows is not None else int(res.rowcount or 0)
        self._last_rowcount = n
        return self.record_result(st_, n, rows)

    async def insert(self, table: str, values: Mapping[str, Any]) -> Key:
        key = await self._execute(self.plan_insert(table, values))
        assert key is not None
        return key

    async def update(self, table: str, key: KeyLike, values: Mapping[str, Any]) -> int:
        await self._execute(self.plan_update(table, key, values))
        return self._last_rowcount

    async def upsert(self, table: str, values: Mapping[str, Any]) -> Key:
        key = await self._execute(self.plan_upsert(table, values))
        assert key is not None
        return key

    async def delete(self, table: str, key: KeyLike) -> int:
        await self._execute(self.plan_delete(table, key))
        return self._last_rowcount

    async def note_keys(self) -> None:
        """Before the commit: append the outbox notes not folded into a statement."""
        pending = self.pending_notes()
        if pending is not None:
            await self.connection.exec_driver_sql(*pending)


def _async_engine_for(writer: DualWriter, side: Side) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415 - needs greenlet

    store = writer.old_store if side is Side.OLD else writer.new_store
    if store.dialect is not Dialect.POSTGRESQL:
        raise RoutingError(f"no async driver is known for the {store.dialect.value} store {store.name!r}: "
                           "pass an AsyncEngine (old_engine= / new_engine=)")
    return create_async_engine(store.ref.url, connect_args={"options": "-c TimeZone=UTC"})


class AsyncDualWriter:
    """The asyncio face of a :class:`DualWriter` (which it shares: phase cache, stats, shadow, repairs)."""

    def __init__(self, writer: DualWriter, *, old_engine: Any = None, new_engine: Any = None) -> None:
        self.writer = writer
        if writer.kv is not None:
            raise RoutingError(f"migration {writer.migration}: the asyncio adapter serves SQL stores only, and the "
                               "new store is Redis: use DualWriter's insert / update / upsert / delete")
        self._own: list[Any] = []
        self.engines: dict[Side, Any] = {}
        for side, given in ((Side.OLD, old_engine), (Side.NEW, new_engine)):
            if given is None:
                given = _async_engine_for(writer, side)
                self._own.append(given)
            self.engines[side] = given

    async def route(self, tenant: str | None = None, entity: str | None = None) -> Routing:
        cache = self.writer.phase
        if cache.is_fresh():
            return cache.route(tenant, entity)
        await asyncio.to_thread(cache.refresh)
        return cache.route(tenant, entity)

    async def begin_write(self, tenant: str | None = None, entity: str | None = None, *,
                          routing: Routing | None = None) -> Routing:
        """:meth:`DualWriter.begin_write` without blocking the event loop while the scope is fenced."""
        w = self.writer
        cache = w.phase
        subjects = [(tenant, entity)]
        waited_since: float | None = None
        while True:
            if not cache.is_fresh():
                await asyncio.to_thread(cache.refresh)
            routes = cache.try_enter(subjects)
            if routes is not None:
                return w.router.fence_checked(routes, routing, waited_since)[0]
            now = time.monotonic()
            if waited_since is None:
                waited_since = now
            w.router.fence_wait_step(subjects, waited_since, now)
            await asyncio.sleep(w.options.fence_poll)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cache.refresh, force=True)

    @contextlib.asynccontextmanager
    async def unit_of_work(self, *, tenant: str | None = None, entity: str | None = None,
                           routing: Routing | None = None) -> AsyncIterator[AsyncUnitOfWork]:
        route = await self.begin_write(tenant, entity, routing=routing)
        w = self.writer
        try:
            started = time.perf_counter()
            try:
                async with self.engines[route.authoritative].connect() as conn:
                    if (w.marks_writes and bypass.marks(route.phase)
                            and w.data[route.authoritative].dialect is Dialect.POSTGRESQL):
                        bypass.mark_transaction(conn.sync_connection, Dialect.POSTGRESQL)  # no SQL on PostgreSQL
                    uow = AsyncUnitOfWork(w, route, conn)
                    yield uow
                    await uow.note_keys()
                    await self._commit(route, uow, conn)
            except BaseException as exc:
                if not isinstance(exc, GeneratorExit | asyncio.CancelledError):
                    count_primary_failure(w.stats, exc)
                raise
            committed = time.perf_counter()
            if route.mirror_to is not None and any(t.table.method.mirrors_after_commit for t in uow.touched):
                await asyncio.get_running_loop().run_in_executor(
                    w.executor, w.finish, route, uow.touched, started, committed)
            else:
                w.finish(route, uow.touched, started, committed)
        finally:
            w.end_write(route)

    async def _commit(self, route: Routing, uow: AsyncUnitOfWork, conn: Any) -> None:
        """Commit; strict tables first write the other store on a thread, inside the open transaction."""
        w = self.writer
        strict = strict_groups(uow.touched) if w.strict is not None and route.mirror_to is not None else []
        if not strict:
            await conn.commit()
            return
        assert w.strict is not None
        taken = w.strict.taken(route, uow.txid) or await w.strict.marker_async(route, conn)
        rows = await w.strict.read_async(route, strict, conn)
        ticket = await asyncio.to_thread(functools.partial(w.strict.prepare, route, strict, None, rows, taken=taken))
        try:
            await conn.commit()
        except Exception as exc:
            # a lost reply of a commit that stood is a success (the note goes); else restore and raise
            if await asyncio.to_thread(w.strict.commit_stands, ticket, exc):
                return
            raise await asyncio.to_thread(w.strict.commit_failed, ticket, exc) from exc
        w.strict.committed(ticket)

    async def insert(self, table: str, values: Mapping[str, Any], *, tenant: str | None = None) -> Key:
        rt = self.writer.table(table)
        async with self.unit_of_work(tenant=rt.tenant_of(values, tenant), entity=rt.entity_from(values)) as uow:
            return await uow.insert(table, values)

    async def update(self, table: str, key: KeyLike, values: Mapping[str, Any], *, tenant: str | None = None
                     ) -> int:
        rt = self.writer.table(table)
        k = rt.key_of(key)
        async with self.unit_of_work(tenant=rt.tenant_of(values, tenant), entity=entity_of(rt, k)) as uow:
            return await uow.update(table, k, values)

    async def upsert(self, table: str, values: Mapping[str, Any], *, tenant: str | None = None) -> Key:
        rt = self.writer.table(table)
        async with self.unit_of_work(tenant=rt.tenant_of(values, tenant), entity=rt.entity_from(values)) as uow:
            return await uow.upsert(table, values)

    async def delete(self, table: str, key: KeyLike, *, tenant: str | None = None) -> int:
        rt = self.writer.table(table)
        k = rt.key_of(key)
        async with self.unit_of_work(tenant=tenant, entity=entity_of(rt, k)) as uow:
            return await uow.delete(table, k)

    async def read(self, table: str, key: KeyLike, *, tenant: str | None = None) -> dict[str, Any] | None:
        """Read by key from the serving store; shadow-compare with the other store off the request path."""
        w = self.writer
        rt = w.table(table)
        k = rt.key_of(key)
        route = await self.route(tenant, entity_of(rt, k))
        side = w.read_side(rt, route, k)
        handoff = w.shadow.start(rt.name, k, side.value) if w.shadow_enabled(route) and w.shadow.sampled() else None
        s = rt.sides[side]
        sql = rt.read_statement(side)
        started = time.perf_counter()
        try:
            async with self.engines[side].connect() as conn:
                r = (await conn.exec_driver_sql(sql, tuple(k))).first()
        except BaseException:
            if handoff is not None:
                handoff.cancel()
            raise
        w.stats.observe(st.LAT_READ, (time.perf_counter() - started) * 1000)
        row, app = s.split_row(tuple(r)) if r is not None else (None, None)
        if handoff is not None:
            handoff.set(row)  # the shadow compares store rows, in each store's own column names
        return app

    async def close(self, *, close_writer: bool = False) -> CloseReport | None:
        """Dispose of the engines this wrapper made; with ``close_writer`` also close the writer and return
        what it did with its pending repair keys (:meth:`DualWriter.close`)."""
        for e in self._own:
            await e.dispose()
        if close_writer:
            return await asyncio.to_thread(self.writer.close)
        return None
