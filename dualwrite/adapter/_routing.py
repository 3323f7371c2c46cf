"""Routing a request by the phase in force for it, and the write fence.

:class:`Router` answers where a unit of work writes and where a read is served from (the phase cache of
:mod:`dualwrite.adapter.phase`, read-your-writes for methods whose other store lags), and admits writes:
a write of a fenced scope waits until the fence lifts (never writing in the wrong order) and is counted in
flight until it ends, so the barrier of a later epoch waits for it (docs/architecture.md, "Authority,
fences and denied writes")."""

from __future__ import annotations

import contextlib
import time

from dualwrite import stats as st
from dualwrite.adapter._options import AdapterOptions
from dualwrite.adapter._tables import Key, TableRuntime
from dualwrite.adapter._timing import LAT_FENCE
from dualwrite.adapter.phase import PhaseCache, Routing, Side
from dualwrite.errors import WriteFencedError
from dualwrite.shadow import RecentWrites

__all__ = ["Router", "Subjects"]

Subjects = list[tuple[str | None, str | None]]
"""(tenant, entity) of each scope a unit of work writes."""


class Router:
    """Routes reads and admits writes for one writer (one migration in this process)."""

    def __init__(self, migration: str, phase: PhaseCache, options: AdapterOptions, stats: st.Stats,
                 recent: RecentWrites) -> None:
        self.migration = migration
        self.phase = phase
        self.options = options
        self.stats = stats
        self.recent = recent

    def route(self, tenant: str | None = None, entity: str | None = None) -> Routing:
        """The routing in force for a tenant / entity now (cached phase, ~1 s)."""
        return self.phase.route(tenant, entity)

    def read_side(self, rt: TableRuntime, routing: Routing, key: Key | None = None) -> Side:
        """Where this instance reads ``rt`` from: the phase's store, unless it must read its own writes."""
        side = routing.reads_from
        if side is routing.authoritative or rt.method.in_call:
            return side  # the other store had the write before the request returned
        window = self.options.read_your_writes_seconds
        if window > 0 and (self.recent.recent(rt.name, key, window) if key is not None
                           else self.recent.table_recent(rt.name, window)):
            return routing.authoritative
        return side

    def shadow_enabled(self, routing: Routing) -> bool:
        """Reads under this routing are shadow-compared (sampled)."""
        return routing.rules.shadow or (routing.rules.shadow_optional and self.options.shadow_after_write_cutover)

    # -- the write fence ----------------------------------------------------------------------------------

    def begin_write_many(self, subjects: Subjects, *, routing: Routing | None = None) -> list[Routing]:
        """Route a unit of work writing ``subjects``, waiting while any is fenced; counted in flight until
        :meth:`end_write`. Raises :class:`WriteFencedError` after ``fence_max_wait``."""
        waited_since: float | None = None
        while True:
            self.phase.state()  # refresh a stale cache (outside the in-flight lock)
            routes = self.phase.try_enter(subjects)
            if routes is not None:
                return self.fence_checked(routes, routing, waited_since)
            now = time.monotonic()
            if waited_since is None:
                waited_since = now
            self.fence_wait_step(subjects, waited_since, now)
            time.sleep(self.options.fence_poll)
            with contextlib.suppress(Exception):
                self.phase.refresh(force=True)

    def fence_wait_step(self, subjects: Subjects, since: float, now: float) -> None:
        """One turn of waiting for a fence (the sync and asyncio waits share it): give up past the limit."""
        if now - since >= self.options.fence_max_wait:
            who = ", ".join(sorted({f"tenant {t}" for t, _ in subjects if t is not None})) or "the migration"
            raise WriteFencedError(
                f"migration {self.migration}: writes of {who} are fenced while authority moves between the "
                f"stores, and the fence did not lift within {self.options.fence_max_wait:g} s; nothing was "
                "written, retry the request")

    def fence_checked(self, routes: list[Routing], given: Routing | None, waited_since: float | None
                      ) -> list[Routing]:
        """The routes a write was admitted under, or the routing the caller decided earlier when it still
        holds (authority did not move while the write waited)."""
        if waited_since is not None:
            self.stats.observe(LAT_FENCE, (time.monotonic() - waited_since) * 1000)
        if given is None:
            return routes
        if waited_since is not None and given.authoritative is not routes[0].authoritative:
            self.phase.leave(routes[0].epoch)
            raise WriteFencedError(f"migration {self.migration}: the routing given was decided before authority "
                                   f"moved to the {routes[0].authoritative.value} store; route the write again")
        if given.epoch != routes[0].epoch:
            # in flight under the epoch the given routing was decided in (an older one holds the barrier back)
            self.phase.hold(given.epoch)
            self.phase.leave(routes[0].epoch)
        return [given]

    def end_write(self, routing: Routing) -> None:
        """The unit of work routed by :meth:`begin_write_many` is over."""
        self.phase.leave(routing.epoch)
