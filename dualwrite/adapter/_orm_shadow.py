"""ORM shadow reads: in SHADOW_READ / CUTOVER_READS a sampled loaded object is compared with the other
store's row off the request path (:mod:`dualwrite.shadow`); one ``load`` listener for every mapper."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper

from dualwrite.adapter._orm_binding import Info, binding_of
from dualwrite.adapter._orm_routing import read_side, route_of

__all__ = ["install_load_listener"]

_load_listener_installed = False
_load_lock = threading.Lock()


def on_load(target: Any, context: Any) -> None:
    session = getattr(context, "session", None)
    if session is None:
        return
    binding = binding_of(session)
    if binding is None or session.info.get(Info.WROTE):
        return  # the transaction reads its own writes: the other store cannot have them yet
    state = sa.inspect(target)
    mi = binding.mapper_info(state.mapper)
    if mi is None:
        return
    route = route_of(session, binding)
    writer = binding.writer
    if not writer.shadow_enabled(route) or not writer.shadow.sampled():
        return
    side = read_side(session, binding, mi.rt, route)
    d = state.dict
    row = {col: d[attr] for col, attr in mi.columns if attr in d}
    if not all(k in row for k in mi.rt.key):
        return
    key = tuple(row[k] for k in mi.rt.key)
    writer.shadow.submit_loaded(mi.rt.name, key, side.value, row)


def install_load_listener() -> None:
    global _load_listener_installed
    with _load_lock:
        if not _load_listener_installed:
            sa.event.listen(Mapper, "load", on_load)
            _load_listener_installed = True
