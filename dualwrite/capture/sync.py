"""``sync``: the adapter writes the other store in the same call; a failed secondary write is queued for
repair, never failing the request (dualwrite/adapter/_inline.py)."""

from dualwrite.capture._method import CaptureMethod, Evidence

METHOD = CaptureMethod(
    name="sync", summary="synchronous secondary write; a failed one goes to the repair queue",
    inline=True, through_adapter=True, key_log=None, database_capture=False, evidence=Evidence.ADAPTER,
    relay_lag_gated=False, latency_measurable=True,
    notes_keys=False, writes_before_commit=False, mirrors_after_commit=True, queues_keys=False)
