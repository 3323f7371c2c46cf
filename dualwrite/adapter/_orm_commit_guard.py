"""The ORM's authoritative COMMIT of a strict write, with its outcome resolved when the reply is lost.

The Core adapter commits a strict unit of work itself (:meth:`StrictStrategy.commit`), so when the COMMIT
raises it can ask the authoritative store whether it committed all the same (:mod:`._commit_outcome`) and
report success. The ORM commits inside ``Session.commit()``: no session event can turn an exception raised
there into a return. So :func:`guard` wraps the ``do_commit`` of each engine the ORM binding uses, and
:func:`expect` tells it which checkout of which connection carries a prepared strict write:

- the COMMIT succeeds: nothing differs;
- it raises, but the transaction committed (its reply was lost): ``do_commit`` returns; the session
  commits normally (both stores have the write), and the dead connection is discarded after the commit
  (:func:`discard_if_dead`) instead of failing the pool's reset;
- it raises and did not commit (or nobody can tell): the other store is restored from the authoritative
  row (or queued for repair) and the driver's error is raised as before, so SQLAlchemy still recognises a
  dead connection; a ``handle_error`` listener then replaces it with the :class:`StrictWriteError` that
  names the authoritative store, like the Core adapter raises.

Any other commit on these engines costs one dictionary lookup.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from dualwrite.adapter.strict import StrictStrategy, Ticket

__all__ = ["discard_if_dead", "expect", "forget", "guard"]

log = logging.getLogger("dualwrite.adapter")

PENDING = "_dw_strict_commit"
"""Key in the pool connection's ``info``: (the checkout, the strategy, the ticket) of a prepared strict write."""
FAILED = "_dw_strict_failed"
"""Key in the pool connection's ``info``: the :class:`StrictWriteError` that replaces the driver's error."""
GUARDED = "_dw_commit_guarded"


def guard(engine: Engine) -> None:
    """Wrap ``engine``'s COMMIT once (engines of other sessionmakers and writers may share it)."""
    dialect = engine.dialect
    if getattr(dialect, GUARDED, False):
        return
    plain = dialect.do_commit

    def do_commit(dbapi_connection: Any) -> None:
        pending = _take(dbapi_connection)
        if pending is None:
            plain(dbapi_connection)
            return
        strict, ticket = pending
        try:
            plain(dbapi_connection)
        except Exception as exc:
            if strict.reply_lost(ticket, exc):
                return  # committed: Session.commit() goes on as a success
            _info(dbapi_connection)[FAILED] = strict.commit_failed(ticket, exc)
            raise  # the driver's error: SQLAlchemy handles the dead connection, handle_error replaces it

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    setattr(dialect, GUARDED, True)
    sa.event.listen(engine, "handle_error", _replace_error)


def expect(conn: Connection, strict: StrictStrategy, ticket: Ticket) -> dict[Any, Any]:
    """The next COMMIT of this checkout of ``conn`` ends the strict write of ``ticket``; returns the pool
    connection's ``info`` for :func:`forget`."""
    fairy = conn.connection
    fairy.info[PENDING] = (fairy, strict, ticket)
    return fairy.info


def forget(info: dict[Any, Any] | None, ticket: Ticket) -> None:
    """The transaction of ``ticket`` is over (its connection may be back in the pool): its entry goes,
    never another checkout's."""
    if info is None:
        return
    pending = info.get(PENDING)
    if pending is not None and pending[2] is ticket:
        info.pop(PENDING, None)


def discard_if_dead(conn: Connection | None, ticket: Ticket) -> None:
    """After a commit that stood although its reply was lost: the connection is dead; close it for good
    rather than hand it back to the pool (whose reset would fail on it)."""
    if ticket.reply_lost and conn is not None and not conn.closed and not conn.invalidated:
        conn.invalidate()


def _info(dbapi_connection: Any) -> dict[Any, Any]:
    info = getattr(dbapi_connection, "info", None)
    return info if isinstance(info, dict) else {}


def _take(dbapi_connection: Any) -> tuple[StrictStrategy, Ticket] | None:
    pending = _info(dbapi_connection).pop(PENDING, None)
    if pending is None:
        return None
    checkout, strict, ticket = pending
    if checkout is not dbapi_connection:  # left behind by an earlier checkout of the same connection
        return None
    return strict, ticket


def _replace_error(ctx: Any) -> BaseException | None:
    conn = ctx.connection
    if conn is None or conn.invalidated or conn.closed:
        return None
    failed: BaseException | None = conn.connection.info.pop(FAILED, None)
    return failed
