"""The activity retry policies of every dualwrite workflow, by name, and the failure types no retry fixes.

One home so that the migration, its children and the relay agree on what "transient" means. The values are
part of the commands recorded in history (``ScheduleActivityTask``): change one only behind
``workflow.patched``."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from dualwrite.errors import permanent_error_types

__all__ = [
    "ACTIVITY_RETRY",
    "BYPASS_COLLECT_RETRY",
    "CLEAR_LOSSES_RETRY",
    "PERMANENT_ERRORS",
    "RELAY_PERMANENT_ERRORS",
    "RELAY_RETRY",
    "SHADOW_SAMPLE_RETRY",
    "VERIFY_TABLE_RETRY",
]

PERMANENT_ERRORS: list[str] = permanent_error_types()
"""Failure types no retry fixes, from the hierarchy in dualwrite.errors (activities mark them non-retryable
too): the step fails at once with the reason instead of looping while status shows no progress."""

RELAY_PERMANENT_ERRORS: list[str] = PERMANENT_ERRORS
"""What the relay's activities fail at once on: the same permanent classes (capture set-up errors,
``TriggerError`` and ``CaptureError``, are among them: dualwrite.errors classes them permanent)."""

ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                             maximum_interval=timedelta(seconds=60), non_retryable_error_types=PERMANENT_ERRORS)
"""The migration's and the backfill's activities: transient failures forever, with backoff up to a minute."""

RELAY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                          maximum_interval=timedelta(seconds=30), non_retryable_error_types=RELAY_PERMANENT_ERRORS)
"""The relay's activities: as :data:`ACTIVITY_RETRY`, backing off to 30 s at most (it drains continuously)."""

VERIFY_TABLE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5,
                                 maximum_interval=timedelta(seconds=30), non_retryable_error_types=PERMANENT_ERRORS)
"""One table's verification: five attempts, then the table is reported with its error (the verification
fails, it does not hang)."""

BYPASS_COLLECT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
"""Collecting bypassed writes: a failed collection leaves the records for the next one."""

SHADOW_SAMPLE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2)
"""The worker's shadow sample before a gate: a failed one only leaves the gate with fewer samples."""

CLEAR_LOSSES_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3,
                                 non_retryable_error_types=PERMANENT_ERRORS)
"""Clearing levelled capture-loss marks after a verification: a failed clearing only leaves the marks."""
