"""``outbox``: the adapter notes each written key in the authoritative store's transaction; the relay
mirrors it (dualwrite/outbox.py, workflows/relay.py)."""

from dualwrite.capture._method import CaptureMethod, Evidence

METHOD = CaptureMethod(
    name="outbox", summary="keys noted in the writing transaction, mirrored by the relay",
    inline=False, through_adapter=True, key_log="dualwrite_outbox", database_capture=False,
    evidence=Evidence.ADAPTER, relay_lag_gated=False, latency_measurable=True,
    notes_keys=True, writes_before_commit=False, mirrors_after_commit=False, queues_keys=False)
