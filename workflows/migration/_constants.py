"""The migration workflow's constants: the ids of its ``workflow.patched`` markers and its fixed limits.

A patch id is part of recorded histories: never rename or reuse one."""

from __future__ import annotations

__all__ = [
    "ABORTED",
    "CATCH_UP_PATCH",
    "CATCH_UP_SECONDS",
    "DENY_WRITES_PATCH",
    "FENCE_REPAIRS_PATCH",
    "FENCE_REPAIRS_SCOPED_PATCH",
    "MAX_TRANSITIONS_KEPT",
    "NO_PROGRESS_UPSERT_PATCH",
    "PROGRESS_UPSERT_PATCH",
    "RELAY_AUTOSTART_PATCH",
    "ROLLBACK_HOLDS_AUTO_PATCH",
    "ROLLBACK_KINDS",
    "SPEC_REF_CATCH_UP_PATCH",
    "SPEC_REF_DENY_WRITES_PATCH",
    "SPEC_REF_GATES_PATCH",
    "SPEC_REF_PATCH",
    "SPEC_REF_REPAIRS_PATCH",
    "SPEC_REF_BYPASS_PATCH",
    "SPEC_REF_RETIRE_PATCH",
    "SPEC_REF_TRIGGER_WATCH_PATCH",
    "TRIGGER_WATCH_SECONDS",
    "WORKER_SAMPLE_DATABASE_LOG_PATCH",
    "WORKER_SAMPLE_PATCH",
    "WRITE_FENCE_PATCH",
]

ABORTED = "ABORTED"
"""MigrationPhase search attribute of an aborted migration (``dualwrite list`` shows it)."""

MAX_TRANSITIONS_KEPT = 200
ROLLBACK_KINDS = ("rollback", "auto-rollback")
TRIGGER_WATCH_SECONDS = 300.0
"""One trigger watch returns after this long when nothing tripped (a few history events per period)."""
CATCH_UP_SECONDS = 120.0
"""outbox / triggers: how long mirroring the key logs up to their drain point may take before a rollback
gives up (and is refused) or a phase's verification goes ahead anyway."""
RELAY_AUTOSTART_PATCH = "relay-autostart"
"""Histories from before: PREPARE did not start the relay (whoever ran the migration started it)."""
PROGRESS_UPSERT_PATCH = "progress-upsert-in-loop"
"""Histories from before: the backfill progress signal handler upserted BackfillPercent itself."""
CATCH_UP_PATCH = "relay-catch-up"
"""Histories from before: no key-log catch-up before a rollback's or a phase's repairing verification."""
NO_PROGRESS_UPSERT_PATCH = "no-progress-upsert"
"""Histories from before: BackfillPercent followed the children's progress signals in steps of 10. A command
issued because a signal arrived can land in another order on replay when the signal shares a workflow task
with an activity completion (sdk-python #673): after a worker kill the chaos run met "Nondeterminism error: No
command scheduled for event UpsertWorkflowSearchAttributes" and the migration froze. BackfillPercent is now
set only where the workflow's own code decides (0 on entering BACKFILL, 100 when it completes); the status
query and the Web UI's details still show the exact percentage."""
WRITE_FENCE_PATCH = "write-fence"
"""Histories from before: authority moved between the stores without a write fence."""
DENY_WRITES_PATCH = "deny-writes"
"""Histories from before: with ``triggers`` the store that was not authoritative accepted the application's
writes (and a later mirror or repair overwrote them); both key logs were mirrored at every moment."""
WORKER_SAMPLE_PATCH = "worker-shadow-sample"
"""Histories from before: a ``triggers`` gate read only application statistics (which never exist there)."""
WORKER_SAMPLE_DATABASE_LOG_PATCH = "worker-shadow-sample-database-log"
"""Histories from before: the worker sampled only where a key log names the recent changes (``triggers``); a
``cdc`` gate read application statistics that never exist there and waited forever at SHADOW_READ."""
ROLLBACK_HOLDS_AUTO_PATCH = "rollback-holds-auto"
"""Histories from before: auto mode advanced again right after an operator's rollback."""
FENCE_REPAIRS_PATCH = "fence-repairs-drained"
"""Histories from before: the write fence drained only the repair queue's *due* entries, before the key logs'
catch-up, and moved authority whatever the queue still held: an acknowledged write of the losing store that
could not be mirrored (the store unreachable, the entry deferred by backoff) was lost at the flip ([T2-5]).
Now every entry is tried under the fence after the catch-up, and the flip is refused while any is left."""
SPEC_REF_PATCH = "spec-ref"
"""Histories from before: activity inputs (plan_ranges, copy_range, verify_table) carried the whole spec; now
the spec is published once to the control store and they carry a SpecRef (migration, control store, digest)."""
SPEC_REF_REPAIRS_PATCH = "spec-ref-repairs"
"""Histories from before: the repair drains' inputs (the background long-poll, the one-shot drains) carried the
whole spec; now a SpecRef. One id per collaborator, so each moves on its own (``spec-ref`` stays where the
spec is published)."""
SPEC_REF_TRIGGER_WATCH_PATCH = "spec-ref-trigger-watch"
"""Histories from before: the rollback-trigger watch's input carried the whole spec; now a SpecRef."""
SPEC_REF_GATES_PATCH = "spec-ref-gates"
"""Histories from before: the gate's and the worker shadow sample's inputs carried the whole spec; now a
SpecRef."""
SPEC_REF_CATCH_UP_PATCH = "spec-ref-catch-up"
"""Histories from before: the key logs' catch-up input carried the whole spec; now a SpecRef."""
SPEC_REF_DENY_WRITES_PATCH = "spec-ref-deny-writes"
"""Histories from before: the denied-writes triggers' input carried the whole spec; now a SpecRef."""
SPEC_REF_BYPASS_PATCH = "spec-ref-bypass"
"""Histories from before: the bypass capture and collection inputs carried the whole spec; now a SpecRef."""
SPEC_REF_RETIRE_PATCH = "spec-ref-retire"
"""Histories from before: the old store's retirement input carried the whole spec; now a SpecRef."""
FENCE_REPAIRS_SCOPED_PATCH = "fence-repairs-scoped"
"""Histories from before: any key left in the repair queue after the fence's drain refused every flip, of every
tenant, with a count and a few errors. Now only the keys of the scope that flips hold it (a tenant's flip
ignores shared tables and other tenants' keys), the refusal names each table with its count, attempts and last
error and says the way through, and an operator may move anyway with ``override_stuck_repairs`` (recorded)."""
