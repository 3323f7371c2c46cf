"""``strict``: both stores have the write or the request fails (dualwrite/adapter/strict.py)."""

from dualwrite.capture._method import CaptureMethod, Evidence

METHOD = CaptureMethod(
    name="strict", summary="synchronous; the request fails if either store fails",
    inline=True, through_adapter=True, key_log=None, database_capture=False, evidence=Evidence.ADAPTER,
    relay_lag_gated=False, latency_measurable=True,
    notes_keys=False, writes_before_commit=True, mirrors_after_commit=False, queues_keys=False, all_or_nothing=True)
