"""``async``: the request returns after the authoritative commit; a bounded background queue writes the
other store (dualwrite/adapter/lagged.py)."""

from dualwrite.capture._method import CaptureMethod, Evidence

METHOD = CaptureMethod(
    name="async", summary="asynchronous secondary write from a bounded in-process queue",
    inline=True, through_adapter=True, key_log=None, database_capture=False, evidence=Evidence.ADAPTER,
    relay_lag_gated=False, latency_measurable=True,
    notes_keys=False, writes_before_commit=False, mirrors_after_commit=False, queues_keys=True)
