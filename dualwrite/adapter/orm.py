"""ORM integration: install dual writes on a ``sessionmaker`` without touching the application's write code.

:func:`install` makes every session of a sessionmaker phase-aware for the migration's tables:

- **routing**: writes (flushes, ORM bulk statements) of migrated tables go to the authoritative store of
  the session's routing; reads go where the phase serves them from (after the transaction has written, its
  reads stay on the authoritative store, so it reads its own writes). Tables outside the migration keep the
  sessionmaker's own bind and are never mirrored. The routing is decided once per transaction, from
  ``session.info["dualwrite_tenant"]`` / ``["dualwrite_entity"]`` or else from the tenant column of the
  objects flushed; one transaction never writes two authoritative stores.
- **capture**: every flushed insert, update and delete of a migrated table records its key. ``outbox``
  appends the keys in the same transaction (so they commit or roll back with the rows); ``sync`` mirrors
  them right after the commit, from the flushed row image when it is exact (a version-guarded upsert,
  one round trip) and else with ``mirror_keys``; ``triggers`` leaves it to the database. Rows of versioned
  tables get their version bumped on every flush unless the application set it (or SQLAlchemy's own
  ``version_id_col`` manages it), because the version guard refuses an image that is not newer.
- **shadow reads**: in SHADOW_READ / CUTOVER_READS a sampled loaded object is compared with the other
  store's row off the request path (:mod:`dualwrite.shadow`).

The ORM addresses one schema, so routing a table to the new store needs the new table to carry the same
table and column names (checked: :attr:`TableRuntime.orm_compatible`). A renamed schema can still be
migrated through the ORM up to CUTOVER_READS (reads stay on the old store, with a warning); writing it
after write cutover raises :class:`RoutingError`. A Redis new store has no SQL engine: the ORM writes the SQL
store while it is authoritative (each strategy mirrors into Redis as the Core API does) and its reads stay on
SQL; from write cutover on, a flush of a Redis-served table raises :class:`RoutingError` (write it with the
Core API, ``DualWriter.insert`` / ``update`` / ``delete``, which writes Redis first).

:func:`install_async` does the same for an ``async_sessionmaker``; the sync mirror then runs on a worker
thread and ``await session.commit()`` returns once it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from dualwrite.adapter import _orm_capture as capture
from dualwrite.adapter import _orm_commit as tx
from dualwrite.adapter import _orm_commit_guard as commit_guard
from dualwrite.adapter._errors import RoutingError
from dualwrite.adapter._orm_binding import ENTITY, TENANT, Info, OrmBinding
from dualwrite.adapter._orm_routing import DualwriteSessionMixin, await_unfenced
from dualwrite.adapter._orm_shadow import install_load_listener
from dualwrite.adapter.phase import Side
from dualwrite.adapter.writer import DualWriter

__all__ = ["ENTITY", "TENANT", "DualwriteSessionMixin", "OrmBinding", "install", "install_async"]


def _session_class(base: type[Session], binding: OrmBinding) -> type[Session]:
    """A subclass of ``base`` routed by ``binding``, with the capture listeners on it."""
    cls: type[Session] = type(f"Dualwrite{base.__name__}", (DualwriteSessionMixin, base), {"_dw_binding": binding})
    listeners: list[tuple[str, Callable[..., Any]]] = [
        ("before_flush", capture.before_flush), ("after_flush", capture.after_flush),
        ("after_flush_postexec", capture.after_flush_postexec), ("before_commit", tx.before_commit),
        ("after_commit", tx.after_commit),
        ("after_rollback", tx.after_rollback), ("after_soft_rollback", tx.after_soft_rollback),
        ("do_orm_execute", capture.do_orm_execute), ("after_transaction_end", tx.after_transaction_end),
    ]
    for name, fn in listeners:
        sa.event.listen(cls, name, fn)
    return cls


def _guard_commits(binding: OrmBinding) -> None:
    """strict: the authoritative COMMIT's outcome is resolved when its reply is lost (either store can be
    the authoritative one)."""
    if binding.writer.strict is not None:
        for engine in binding.engines.values():
            commit_guard.guard(engine)


def install(maker: sessionmaker[Any], writer: DualWriter, *, old_bind: Engine | None = None,
            new_bind: Engine | None = None) -> OrmBinding:
    """Make every session of ``maker`` dual-write the migration's tables (see the module docstring).

    ``old_bind`` defaults to the sessionmaker's own bind (the application's engine on the old store), so
    the migrated tables share the transaction of everything else the session writes there; ``new_bind``
    defaults to the writer's engine on the new store.
    """
    old = old_bind or maker.kw.get("bind") or writer.engine(Side.OLD)
    new = new_bind or writer.engines.get(Side.NEW)  # None: a Redis new store (no SQL engine to route to)
    binding = OrmBinding(writer, old, new)
    _guard_commits(binding)
    maker.class_ = _session_class(maker.class_, binding)
    install_load_listener()
    return binding


def install_async(maker: Any, writer: DualWriter, *, old_bind: Any = None, new_bind: Any = None) -> OrmBinding:
    """:func:`install` for an ``async_sessionmaker``: ``old_bind`` / ``new_bind`` are ``AsyncEngine`` objects
    (default: the maker's bind, and an async engine on the new store's URL)."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: PLC0415 - needs greenlet

    old_async = old_bind or maker.kw.get("bind")
    if old_async is None:
        raise RoutingError("install_async needs the AsyncEngine of the old store (old_bind or the maker's bind)")
    # a Redis new store has no SQL engine: the ORM writes SQL only (see the module docstring)
    new_async = new_bind or (None if writer.kv is not None else create_async_engine(writer.new_store.ref.url))
    binding = OrmBinding(writer, old_async.sync_engine, None if new_async is None else new_async.sync_engine,
                         async_mode=True)
    binding.async_engines = {Side.OLD: old_async} if new_async is None else {Side.OLD: old_async, Side.NEW: new_async}
    _guard_commits(binding)
    base_sync = maker.kw.get("sync_session_class") or Session
    maker.kw["sync_session_class"] = _session_class(base_sync, binding)
    base_async: type[AsyncSession] = maker.class_

    async def flush(self: AsyncSession, objects: Any = None) -> None:
        await await_unfenced(self.sync_session, binding)
        await base_async.flush(self, objects)

    async def commit(self: AsyncSession) -> None:
        await await_unfenced(self.sync_session, binding)
        info = self.sync_session.info
        info[Info.ASYNC_COMMIT] = True
        try:
            await base_async.commit(self)
        finally:
            info.pop(Info.ASYNC_COMMIT, None)
        work = info.pop(Info.DEFERRED, None)
        if work is not None:
            await asyncio.get_running_loop().run_in_executor(writer.executor, work)

    maker.class_ = type(f"Dualwrite{base_async.__name__}", (base_async,), {"commit": commit, "flush": flush})
    install_load_listener()
    return binding
