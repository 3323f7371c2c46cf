"""The adapter's own connections to the two stores: private pools with timeouts, for the secondary writes,
the mirrors and the shadow reads (never the application's connections), and who this process is."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from dualwrite import bypass
from dualwrite.adapter._errors import is_disconnect
from dualwrite.adapter.phase import Side
from dualwrite.config import StoreRef
from dualwrite.store import Dialect, Store
from dualwrite.stores import is_redis

__all__ = ["data_store", "default_instance_id", "retry_stale"]


def default_instance_id() -> str:
    """host:pid:random, unique per writer: the phase barrier and the statistics tell instances apart by it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def data_store(store: Store, timeout: float, pool_size: int) -> Store:
    """A private copy of a store for secondary writes and shadow reads, with connect/statement timeouts.

    Private, so timeouts never touch the application's own connections, and so the secondary path has a
    pool of its own that a slow secondary cannot starve the primary of.
    """
    if is_redis(store):  # pools nothing between calls (each connect has its own client); timeouts as SQL's
        with_timeouts: Callable[[float], Store] = store.with_timeouts  # type: ignore[attr-defined]
        return with_timeouts(timeout)
    # no pre-ping: a round trip per checkout is a third of a secondary write; after a restart of the store the
    # first write on a stale connection fails, is queued for repair, and the pool is refreshed
    clone = Store(StoreRef(store.name, store.ref.url), pool_size=pool_size, pre_ping=False)
    ms = max(1, int(timeout * 1000))

    def add_timeouts(_dialect: Any, _rec: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        if clone.dialect is Dialect.POSTGRESQL:
            cparams.setdefault("connect_timeout", max(2, int(timeout + 0.999)))
            opts = str(cparams.get("options", ""))
            cparams["options"] = f"{opts} -c statement_timeout={ms} -c lock_timeout={ms}".strip()
        elif clone.dialect is Dialect.MYSQL:
            cparams.setdefault("connect_timeout", max(1, int(timeout + 0.999)))
            cparams.setdefault("read_timeout", max(1, int(timeout * 2 + 0.999)))
            cparams.setdefault("write_timeout", max(1, int(timeout * 2 + 0.999)))
        bypass.connect_options(clone.dialect, cparams)  # the adapter's own pools: every write is marked

    sa.event.listen(clone.engine, "do_connect", add_timeouts)
    return clone


def retry_stale(data: Mapping[Side, Store], fn: Callable[[], Any], *sides: Side) -> Any:
    """Run ``fn``; if a pooled connection turns out dead (the store restarted), drop the pools of ``sides``
    and run it once more. Only for idempotent work (mirrors, reads): the secondary pools do not pre-ping."""
    try:
        return fn()
    except Exception as exc:
        if not is_disconnect(exc):
            raise
        for side in sides:
            data[side].engine.dispose()
        return fn()
