"""MigrationWorkflow: one per migration (id ``dualwrite-<name>``), the phase machine of docs/architecture.md.

PREPARE -> DUAL_WRITE -> BACKFILL -> SHADOW_READ -> CUTOVER_READS -> CUTOVER_WRITES -> CLEANUP -> DONE.

How a phase change happens (always under one lock, so transitions never interleave):

1. the update *validator* applies the pure rules of :mod:`workflows.phases`; an illegal request is
   rejected with its reason and writes nothing to history;
2. a gated transition (into CUTOVER_READS, CUTOVER_WRITES, CLEANUP) evaluates its gate through an
   activity: each metric's value, threshold, sample count and verdict land in history as the activity's
   result. When the last verification is older than the gate's window (or in the wrong direction), a
   compare-only verification runs first, so the evidence names rows that do not match. A forced advance
   past a failing gate records its reason; entering CLEANUP needs its own confirmation;
3. :func:`phases.plan_advance` / :func:`phases.plan_rollback` decide what changes. A rollback that gives
   authority back to the old store (out of CUTOVER_WRITES, for the migration or for one tenant) first
   drains the repair queue and (``outbox`` / ``triggers``) mirrors every key-log entry logged so far, then
   verifies new -> old with repair: only a clean result lets it flip. Keys logged after that drain point are
   in flight (the relay mirrors them), not differences, so live writes do not keep the rollback refused;
4. when authority moves between the stores (into CUTOVER_WRITES, out of it, or a tenant's flip), a *write
   fence* comes first: a state with ``overrides["fence"]`` (the whole migration, or the one tenant) is
   published under a new epoch and the workflow waits for its barrier, which an instance acknowledges only
   once no unit of work routed under an older epoch is still open there; the adapters hold new writes of
   the fenced scope meanwhile. With writes fenced it drains the repair queue and (``outbox`` / ``triggers``)
   the key logs, so no write acknowledged under the old authority is still on its way when the new one
   starts. Any failure in between lifts the fence under the old authority and the change is refused;
5. the epoch grows, (phase, epoch, per-tenant overrides) is published to the control tables, and the
   phase's *entry work* starts: wait for the phase barrier (every live application instance has seen the
   epoch), then the phase's own work (preflight, backfill children then a verification, a verification,
   or, in CLEANUP, retiring the old store).

A rollback is carried out by an update handler, and an accepted update is part of the workflow's history:
if the worker dies or the Temporal server restarts in the middle, the next worker replays the handler to
where it was and finishes it. Applications are never left with two authorities: authority only moves by
publishing a new epoch, and nothing relies on the new order until the barrier has passed.

During CUTOVER_READS / CUTOVER_WRITES a monitor long-polls the live statistics (activity
``watch_rollback_triggers``); when the shadow mismatch rate or the new store's error rate crosses its
threshold the workflow rolls back one step by itself, records why, and holds there for an operator.

Tenants (spec ``tenants``): each tenant may move through SHADOW_READ..CUTOVER_WRITES on its own with its
own gate, approval, hold, rollback and verification (``tenant=`` on the requests); the applications see
per-tenant overrides. Operators drive it with updates (CLI) or the same-named ``*_signal`` signals (Web
UI). In auto mode the workflow advances the migration by itself once a phase's work is done and its gate
passes, and always holds before CLEANUP unless the spec sets ``auto_cleanup``. Alongside, a repair drain
mirrors keys of failed secondary writes, and a continuous verification runs with jitter from DUAL_WRITE
until CLEANUP when ``verify_interval_seconds`` is set.

With ``outbox`` / ``triggers`` the workflow starts the migration's RelayWorkflow itself at PREPARE (after the
preflight), as a child with the relay's fixed id that outlives it; one already running is adopted, so
however the migration was started (CLI, Web UI, a script) exactly one relay drains the key logs until
CLEANUP tells it to finish.

Operator input is never trusted to be well formed: every handler takes whatever arrives, updates reject bad
input in their validators and signals drop it (counted, shown in status), so no input can fail a workflow
task. An advance may name the phase it leaves (``from_phase``): a stale one is a no-op. ``abort`` (before
CLEANUP) returns authority to the old store the way a rollback to PREPARE would, removes the migration's
capture and control state, and completes the workflow with ``aborted`` set.

Only names, counts, key bounds and checkpoints enter history; activities resolve store names to URLs in
the worker. The workflow continues as new when Temporal suggests it and nothing long is running.


The package splits the workflow along its seams, all deterministic workflow code sharing one
:class:`~workflows.migration._state.MigrationState`:

- ``_workflow``: the workflow class, its run loop and its update / signal / query handlers;
- ``_transitions``: advance and rollback (gate, fence, enter), auto mode's advance;
- ``_requests``: pause / resume, approve, hold, verify now; ``_abort``: abort;
- ``_fence``: publishing the state and the write fence around a flip of authority;
- ``_gates``: gate evaluation and its evidence; ``_monitor``: the automatic rollback triggers;
- ``_work``: each phase's entry work (barrier, preflight, backfill children, retirement);
- ``_verification``: verification children; ``_repairs``: the repair drain;
- ``_capture``: relay start and catch-up, denied writes, bypass capture;
- ``_render``: the status query's answer and the Web UI's Markdown; ``_constants``: patch ids and limits.
"""

from workflows.migration import _constants
from workflows.migration._constants import *  # noqa: F403 - the patch ids and limits, re-exported as they are
from workflows.migration._workflow import MigrationWorkflow

__all__ = [*_constants.__all__, "MigrationWorkflow"]
