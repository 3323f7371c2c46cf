"""Settling async writers before a verification compares: wait until every live ``async`` writer's queue has
reached the other store up to a given instant, so what the comparison sees differ is lost, not late.

Without it a verification under live ``async`` traffic counts keys still queued in writer processes: the
cutover gate (a compare-only verification) is refused for them, and a repair copies rows the queue was about
to copy anyway. :func:`wait_for_writers` polls the writers' watermarks (:mod:`dualwrite.watermark`) until each
live one has passed the instant, for at most ``timeout`` seconds; a writer whose heartbeat is older than
``live_seconds`` is dead (killed): its queue is gone, and its lost tail is exactly what the comparison must
find and repair, so it is never waited for. :func:`settle_async` is the same wait as a
:data:`~dualwrite.inflight.Settle` for the differences a comparison found: wait until the writers have passed
*now*, then compare the differing keys again; what is equal then was in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dualwrite import watermark
from dualwrite.inflight import Settle
from dualwrite.mapping import TableMapping
from dualwrite.store import Store
from dualwrite.verify import VerifyReport, verify_keys

__all__ = ["DEAD_AFTER_SECONDS", "SETTLE_TIMEOUT_SECONDS", "Settled", "settle_async", "wait_for_writers"]

log = logging.getLogger("dualwrite.verify")

SETTLE_TIMEOUT_SECONDS = 20.0
"""The longest a verification waits for live writers (a queue stuck behind a down store stays stuck: the
comparison then counts its keys, and the gate is refused, as it should be)."""
DEAD_AFTER_SECONDS = 5.0
"""A writer whose last heartbeat is older is treated as dead (it records one about every second)."""


@dataclass
class Settled:
    """What a wait found: counts and writer ids only (never keys)."""

    seconds: float = 0.0
    live: int = 0
    dead: int = 0
    behind: list[str] = field(default_factory=list)
    """Live writers still behind when the wait gave up (empty: settled)."""

    @property
    def settled(self) -> bool:
        return not self.behind


def wait_for_writers(control: Store, migration: str, since: Any = None, *,
                     timeout: float = SETTLE_TIMEOUT_SECONDS, live_seconds: float = DEAD_AFTER_SECONDS,
                     poll: float = 0.1, sleep: Callable[[float], None] = time.sleep) -> Settled:
    """Wait until every live async writer of ``migration`` has flushed its queue up to ``since`` (the control
    store's clock; None: now). Returns at once when there is no async writer."""
    started = time.monotonic()
    since = watermark.db_now(control) if since is None else since
    while True:
        marks = watermark.marks(control, migration, since, live_seconds=live_seconds)
        live = [m for m in marks if m.live]
        behind = [m.writer_id for m in live if not m.passed]
        out = Settled(seconds=round(time.monotonic() - started, 3), live=len(live), dead=len(marks) - len(live),
                      behind=behind)
        if not behind:
            return out
        if time.monotonic() - started >= timeout:
            log.warning("migration %s: %d live async writer(s) still behind after %.0f s; comparing anyway",
                        migration, len(behind), timeout)
            return out
        sleep(poll)


def settle_async(control: Store, migration: str, src: Store, dst: Store, mapping: TableMapping, then: Settle, *,
                 timeout: float = SETTLE_TIMEOUT_SECONDS, sleep: Callable[[float], None] = time.sleep) -> Settle:
    """A :data:`Settle` for a table written by ``async`` writers: wait until the live writers' queues have
    passed now, compare the listed differences again, then apply ``then``. The count returned includes the
    differences that were only queued (in flight)."""

    def settle(report: VerifyReport) -> tuple[VerifyReport, int]:
        if report.ok or not report.differences:
            return then(report)
        wait_for_writers(control, migration, timeout=timeout, sleep=sleep)
        if report.truncated:  # differences beyond the cap were never listed: they stay counted
            return then(report)
        again = verify_keys(src, dst, mapping, report.keys(), allow_empty=True)
        kept, flying = then(again)
        return kept, flying + max(0, report.total_differences - again.total_differences)

    return settle
