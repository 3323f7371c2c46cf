"""Work that waits for a worker: what ``dualwrite status`` adds when a migration's progress stands still.

A migration's own status (a workflow query) cannot see that its activities sit in a task queue with no
free worker slot, or that one is retried after failure after failure: its progress just stops, and an
ETA grows stale. Temporal can: every workflow's description lists its pending activities, with when each
was scheduled, its attempt and its last failure. This module walks the migration and its running child
workflows (backfill, verification, relay) and names each activity that has waited past a threshold
without starting, or that is being retried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client

STALL_SECONDS_ENV = "DUALWRITE_STALL_SECONDS"
STALL_SECONDS = 60.0
"""An activity scheduled this long ago and still not started has no worker slot (or no worker)."""
MAX_WORKFLOWS = 50


@dataclass(frozen=True)
class Stall:
    workflow_id: str
    activity: str
    task_queue: str
    waiting_seconds: float
    attempt: int
    last_failure: str

    def text(self) -> str:
        where = f"{self.activity} (workflow {self.workflow_id})"
        if self.waiting_seconds >= 0:
            return (f"{where} scheduled {_ago(self.waiting_seconds)} ago and not started: no worker has a free "
                    f"activity slot on task queue {self.task_queue!r} (or none polls it); add workers or raise "
                    "--max-activities")
        return f"{where} is retrying (attempt {self.attempt}): {self.last_failure}"


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _seconds(ts: object) -> datetime | None:
    if ts is None or not getattr(ts, "seconds", 0):
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC)  # type: ignore[attr-defined]


def _stall(workflow_id: str, default_queue: str, a: PendingActivityInfo, now: datetime,
           threshold: float) -> Stall | None:
    queue = a.activity_options.task_queue.name if a.HasField("activity_options") else ""
    queue = queue or default_queue
    failure = a.last_failure.message.splitlines()[0][:300] if a.HasField("last_failure") else ""
    if a.attempt > 1 and failure:
        return Stall(workflow_id, a.activity_type.name, queue, -1.0, a.attempt, failure)
    if a.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED:
        scheduled = _seconds(a.scheduled_time)
        if scheduled is not None and (now - scheduled).total_seconds() >= threshold:
            return Stall(workflow_id, a.activity_type.name, queue, (now - scheduled).total_seconds(), a.attempt,
                         failure)
    return None


async def find_stalls(client: Client, workflow_id: str, *, threshold: float | None = None) -> list[Stall]:
    """Pending activities of the workflow and its running children that wait for a slot or keep failing."""
    if threshold is None:
        threshold = float(os.environ.get(STALL_SECONDS_ENV, STALL_SECONDS))
    now = datetime.now(UTC)
    out: list[Stall] = []
    todo, seen = [workflow_id], set[str]()
    while todo and len(seen) < MAX_WORKFLOWS:
        wid = todo.pop(0)
        if wid in seen:
            continue
        seen.add(wid)
        try:
            desc = await client.get_workflow_handle(wid).describe(rpc_timeout=timedelta(seconds=10))
        except Exception:  # noqa: BLE001, S112 - a child that just ended: nothing of it waits
            continue
        raw = desc.raw_description
        for a in raw.pending_activities:
            stall = _stall(wid, desc.task_queue, a, now, threshold)
            if stall is not None:
                out.append(stall)
        todo += [c.workflow_id for c in raw.pending_children]
    return out
