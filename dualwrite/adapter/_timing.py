"""What the adapter records about each write: the statistics windows the gates and ``status`` read.

One place for the names and shapes of the counts and latencies a unit of work, a secondary write and a
fence wait leave behind, so the sync, strict and async paths count alike."""

from __future__ import annotations

import time

from dualwrite import stats as st
from dualwrite.adapter._errors import error_class, secondary_only
from dualwrite.adapter.phase import Routing, Side

__all__ = ["LAT_FENCE", "count_primary_failure", "record_secondary", "record_unit", "secondary_latency"]

LAT_FENCE = "latency.fence_wait"
"""How long a write waited for a write fence to lift (observed only for writes that waited)."""


def secondary_latency(side: Side) -> str:
    """The latency series of writes into ``side`` when it is the other store."""
    return st.LAT_NEW if side is Side.NEW else st.LAT_OLD


def record_secondary(stats: st.Stats, side: Side, n: int, started: float, failure: str | None = None) -> None:
    """``n`` keys written into the other store ``side`` (or not: ``failure`` is the error class)."""
    outcome = "success" if failure is None else f"failure:{failure}"
    stats.record(counts=[(st.SECONDARY, "attempt", n), (st.SECONDARY, outcome, n)],
                 latencies=[(secondary_latency(side), (time.perf_counter() - started) * 1000)])


def record_unit(stats: st.Stats, route: Routing, started: float, committed: float) -> None:
    """A unit of work is over: its authoritative write and the whole call (the p99 latency gate compares
    them)."""
    primary_ms = (committed - started) * 1000
    lat_side = st.LAT_OLD if route.authoritative is Side.OLD else st.LAT_NEW
    stats.record(counts=[(st.PRIMARY, "success", 1)],
                 latencies=[(lat_side, primary_ms), (st.LAT_DIRECT, primary_ms),
                            (st.LAT_CALL, (time.perf_counter() - started) * 1000)])


def count_primary_failure(stats: st.Stats, exc: BaseException) -> None:
    """A unit of work failed on the authoritative store (a strict write refused by the other one is not)."""
    if not secondary_only(exc):
        stats.count(st.PRIMARY, f"failure:{error_class(exc)}")
