"""ORM transaction ends: after the commit the keys are handed to the writer (mirrored or queued, the write
counted out of flight); before the commit strict tables write the other store inside the still open
transaction; a rollback forgets the transaction's keys (a savepoint's rollback keeps them, without images)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from sqlalchemy.orm import Session

from dualwrite.adapter import _orm_commit_guard as guard
from dualwrite.adapter._orm_binding import Info, OrmBinding, binding_of
from dualwrite.adapter._orm_routing import release
from dualwrite.adapter._tables import Touched
from dualwrite.adapter.phase import Routing
from dualwrite.adapter.strict import strict_groups

__all__ = ["after_commit", "after_rollback", "after_soft_rollback", "after_transaction_end", "before_commit",
           "end_transaction"]

log = logging.getLogger("dualwrite.adapter")


def end_transaction(session: Session) -> None:
    for k in (Info.ROUTE, Info.WROTE, Info.PENDING, Info.FLUSHING, Info.STARTED):
        session.info.pop(k, None)


def after_commit(session: Session) -> None:
    binding = binding_of(session)
    if binding is None:
        return
    touched: list[Touched] = session.info.get(Info.PENDING) or []
    route: Routing | None = session.info.get(Info.ROUTE)
    started = session.info.get(Info.STARTED)
    inflight: int | None = session.info.pop(Info.INFLIGHT, None)
    strict_end(session, binding, committed=True)
    end_transaction(session)
    if route is None or started is None:
        if inflight is not None:
            binding.writer.phase.leave(inflight)
        return
    committed = time.perf_counter()
    finish = functools.partial(binding.writer.finish, route, touched, started, committed)

    def work() -> None:
        try:
            finish()
        finally:  # the unit of work (its sync mirror included) is over only now
            if inflight is not None:
                binding.writer.phase.leave(inflight)

    if not binding.async_mode:
        work()
        return
    if session.info.get(Info.ASYNC_COMMIT):
        session.info[Info.DEFERRED] = work  # AsyncSession.commit awaits it on a thread
        return
    try:
        loop = asyncio.get_running_loop()
        loop.run_in_executor(binding.writer.executor, work)
    except RuntimeError:
        work()


def before_commit(session: Session) -> None:
    """strict tables: flush now, then write the other store inside the still open authoritative transaction
    (:mod:`dualwrite.adapter.strict`); a :class:`~dualwrite.errors.StrictWriteError` fails the commit."""
    binding = binding_of(session)
    if binding is None or binding.writer.strict is None or session.in_nested_transaction():
        return
    session.flush()
    route: Routing | None = session.info.get(Info.ROUTE)
    if route is None or route.mirror_to is None:
        return
    strict = strict_groups(session.info.get(Info.PENDING) or [])
    if not strict:
        return
    conn = session.connection(bind_arguments={"bind": binding.engines[route.authoritative]})
    ticket = binding.writer.strict.prepare(route, strict, conn.connection.dbapi_connection)
    session.info[Info.STRICT] = ticket
    # the COMMIT itself is watched by the engine's guard: a lost reply of a commit that stood is a success
    session.info[Info.STRICT_CONN] = (conn, guard.expect(conn, binding.writer.strict, ticket))


def strict_end(session: Session, binding: OrmBinding, *, committed: bool) -> None:
    """The authoritative transaction of a prepared strict write ended: forget its note, or (not committed:
    the commit failed after the other store committed) restore the other store from the authoritative rows.
    A COMMIT that raised was already resolved by the engine's guard (:mod:`._orm_commit_guard`)."""
    ticket = session.info.pop(Info.STRICT, None)
    conn, info = session.info.pop(Info.STRICT_CONN, (None, None))
    if ticket is None or binding.writer.strict is None:
        return
    guard.forget(info, ticket)
    if committed:
        binding.writer.strict.committed(ticket)
        guard.discard_if_dead(conn, ticket)
        return
    if ticket.settled:
        return
    failure = RuntimeError("the commit did not happen")  # the transaction ended before or beside its COMMIT
    if not binding.writer.strict.commit_stands(ticket, failure):
        log.warning("%s", binding.writer.strict.commit_failed(ticket, failure))


def after_rollback(session: Session) -> None:
    binding = binding_of(session)
    if binding is not None:
        release(session, binding)
        end_transaction(session)


def after_transaction_end(session: Session, transaction: Any) -> None:
    """The outermost transaction ended however it ended (close() included): nothing of it is in flight."""
    binding = binding_of(session)
    if binding is not None and getattr(transaction, "parent", None) is None:
        strict_end(session, binding, committed=False)
        release(session, binding)


def after_soft_rollback(session: Session, previous_transaction: Any) -> None:
    if binding_of(session) is None:
        return
    if getattr(previous_transaction, "nested", False):
        # a savepoint rolled back: its images may be gone; keep the keys, re-read them after the commit
        for t in session.info.get(Info.PENDING) or []:
            t.image = None
    else:
        release(session, binding_of(session))  # type: ignore[arg-type]
        end_transaction(session)
