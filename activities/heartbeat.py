"""Heartbeats, cancellation and worker shutdown, for synchronous activities on the worker's thread pool.

Long-running activities (a whole key range, a whole table verification, a repair long-poll, a relay drain)
heartbeat their cursor after every committed batch and watch cancellation and worker shutdown between
batches; activities busy in one long call heartbeat from a background thread (:func:`heartbeating`).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

__all__ = ["heartbeating", "raise_if_stopping", "sleep", "stopping"]

log = logging.getLogger("dualwrite.activities")


@contextmanager
def heartbeating(every: float | None = None, details: Callable[[], Any] | None = None) -> Iterator[None]:
    """Heartbeat from a background thread while the activity's thread is busy in one long call (a
    preflight, a planning query, a rename waiting for a lock), so the server learns within its short
    heartbeat timeout that the worker died, not after the start-to-close timeout.

    Only for activities whose heartbeat details carry nothing to resume from: they send none, or
    ``details()`` (progress to show, read at each beat)."""
    info = activity.info()
    timeout = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 0.0
    period = every if every is not None else max(0.5, min(5.0, timeout / 4)) if timeout else 5.0
    stop = threading.Event()
    ctx = contextvars.copy_context()  # the activity context lives in a context variable

    def beat() -> None:
        while not stop.wait(period):
            try:
                if details is None:
                    activity.heartbeat()
                else:
                    activity.heartbeat(details())
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the work
                log.debug("background heartbeat failed: %s", exc)

    thread = threading.Thread(target=ctx.run, args=(beat,), name=f"heartbeat-{info.activity_type}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def stopping() -> bool:
    """The activity was cancelled or the worker is shutting down: stop after the batch in flight."""
    return activity.is_cancelled() or activity.is_worker_shutdown()


def raise_if_stopping() -> None:
    if activity.is_cancelled():
        raise CancelledError("activity cancelled")
    if activity.is_worker_shutdown():
        # retryable: another worker picks the range up from the last checkpoint
        raise ApplicationError("worker shutting down; the work resumes from its checkpoint elsewhere",
                               type="WorkerShutdown")


def sleep(seconds: float) -> None:
    """Sleep in small steps so cancellation and shutdown are noticed quickly."""
    end = time.monotonic() + seconds
    while not stopping():
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.2, left))
