"""``triggers``: database triggers note every writer's keys in a change log; the relay mirrors them; the
application is not changed (dualwrite/triggers.py)."""

from dualwrite.capture._method import CaptureMethod, Evidence

METHOD = CaptureMethod(
    name="triggers", summary="database triggers log every writer's keys, the relay mirrors them",
    inline=False, through_adapter=False, key_log="dualwrite_changelog", database_capture=True,
    evidence=Evidence.WORKER, relay_lag_gated=True, latency_measurable=False,
    notes_keys=False, writes_before_commit=False, mirrors_after_commit=False, queues_keys=False)
