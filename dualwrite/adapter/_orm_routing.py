"""ORM routing: which engine a session statement runs on, decided once per transaction by its routing
(the phase, the tenant / entity of ``session.info`` or of the objects flushed), and the write fence.

Writes of migrated tables go to the authoritative store; reads where the phase serves them from, except
after the transaction has written (it reads its own writes). Everything else keeps the sessionmaker's bind."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, Session

from dualwrite.adapter._errors import RoutingError
from dualwrite.adapter._orm_binding import ENTITY, TENANT, Info, OrmBinding, binding_of
from dualwrite.adapter._tables import TableRuntime
from dualwrite.adapter.phase import Routing, Side

__all__ = ["DualwriteSessionMixin", "await_unfenced", "begin_write", "is_dml", "read_side", "release", "routed_engine",
           "route_of", "write_side"]


def route_of(session: Session, binding: OrmBinding) -> Routing:
    route: Routing | None = session.info.get(Info.ROUTE)
    if route is None:
        route = binding.writer.route(session.info.get(TENANT), session.info.get(ENTITY))
        session.info[Info.ROUTE] = route
    return route


def begin_write(session: Session, binding: OrmBinding, tenants: list[str | None]) -> list[Routing]:
    """The first write of a transaction: wait while its scope is fenced, route it (again: a read may have
    routed the transaction under an older epoch) and count it in flight until the transaction ends."""
    routes = binding.writer.begin_write_many([(t, session.info.get(ENTITY)) for t in tenants])
    session.info[Info.INFLIGHT] = routes[0].epoch
    return routes


def release(session: Session, binding: OrmBinding) -> None:
    epoch = session.info.pop(Info.INFLIGHT, None)
    if epoch is not None:
        binding.writer.phase.leave(epoch)


def is_dml(clause: Any) -> bool:
    return isinstance(clause, sa.sql.dml.UpdateBase)


NO_ORM_ON_REDIS = ("table {name}: the new store is Redis and authoritative since write cutover; the ORM cannot "
                   "write Redis (it has no SQL engine): write this table with the Core API, DualWriter.insert / "
                   "update / upsert / delete, which writes Redis first and mirrors SQL")


def write_side(rt: TableRuntime, route: Routing, binding: OrmBinding | None = None) -> Side:
    side = route.authoritative
    if side is Side.NEW and binding is not None and Side.NEW not in binding.engines:
        raise RoutingError(NO_ORM_ON_REDIS.format(name=rt.name))
    if side is Side.NEW and not rt.orm_compatible:
        raise RoutingError(f"table {rt.name}: the ORM model cannot write the new store (its table or columns "
                           "are renamed there); move this code to the new schema before write cutover")
    return side


def read_side(session: Session, binding: OrmBinding, rt: TableRuntime, route: Routing) -> Side:
    if session.info.get(Info.WROTE):
        return write_side(rt, route, binding)
    side = binding.writer.read_side(rt, route)
    if side is Side.NEW and Side.NEW not in binding.engines:  # Redis: no SQL to run there
        binding.warn_once(f"table {rt.name}: ORM reads stay on the SQL store (the new store is Redis)")
        return Side.OLD
    if side is Side.NEW and not rt.orm_compatible:
        binding.warn_once(f"table {rt.name}: ORM reads stay on the old store (the new table renames columns)")
        return route.authoritative if route.authoritative is Side.OLD else side
    return side


def routed_engine(session: Session, mapper: Any, clause: Any) -> Engine | None:
    binding = binding_of(session)
    if binding is None:
        return None
    rt = None
    if mapper is not None:
        m = getattr(mapper, "mapper", mapper)
        if not isinstance(m, Mapper):
            with contextlib.suppress(Exception):
                m = sa.inspect(m)
        mi = binding.mapper_info(m) if isinstance(m, Mapper) else None
        rt = mi.rt if mi is not None else None
    elif is_dml(clause):
        rt = binding.table_of_clause(clause)
    if rt is None:
        return None
    route = route_of(session, binding)
    if session.info.get(Info.FLUSHING) or is_dml(clause):
        side = write_side(rt, route, binding)
    else:
        side = read_side(session, binding, rt, route)
    return binding.engines[side]


class DualwriteSessionMixin:
    """Routes migrated tables per phase; everything else goes to the sessionmaker's own bind."""

    _dw_binding: OrmBinding | None = None

    def get_bind(self, mapper: Any = None, *, clause: Any = None, bind: Any = None, **kw: Any) -> Any:
        if bind is None:
            engine = routed_engine(self, mapper, clause)  # type: ignore[arg-type]
            if engine is not None:
                return engine
        return super().get_bind(mapper, clause=clause, bind=bind, **kw)  # type: ignore[misc]


async def await_unfenced(session: Session, binding: OrmBinding) -> None:
    """AsyncSession: wait for a write fence to lift *before* the flush, without blocking the event loop
    (the flush's own check, which runs on the loop's thread, then finds the fence lifted)."""
    info = session.info
    if Info.INFLIGHT in info:
        return
    objs = binding.flushed_objects(session)
    if not objs:
        return
    if TENANT in info:
        tenants: set[str | None] = {info.get(TENANT)}
    else:
        tenants = {str(getattr(o, mi.tenant_attr)) for o, mi, _ in objs
                   if mi.tenant_attr and getattr(o, mi.tenant_attr, None) is not None} or {None}
    w = binding.writer
    cache = w.phase
    since: float | None = None
    while any(cache.fenced(t) for t in tenants):
        now = time.monotonic()
        since = now if since is None else since
        w.router.fence_wait_step([(t, None) for t in tenants], since, now)
        await asyncio.sleep(w.options.fence_poll)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cache.refresh, force=True)

