"""How changes reach the other store, as the migration drives it: the relay it starts and catches up,
the denied-writes triggers of a database-capture method, and the bypass capture of an adapter method."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError, is_cancelled_exception
from temporalio.workflow import ParentClosePolicy

from workflows.migration._constants import (
    CATCH_UP_PATCH,
    CATCH_UP_SECONDS,
    DENY_WRITES_PATCH,
    RELAY_AUTOSTART_PATCH,
    SPEC_REF_BYPASS_PATCH,
    SPEC_REF_CATCH_UP_PATCH,
    SPEC_REF_DENY_WRITES_PATCH,
)
from workflows.migration._specref import spec_or_ref
from workflows.migration._state import MigrationState

with workflow.unsafe.imports_passed_through():
    from workflows import bypass as bp
    from workflows import phases
    from workflows.models import BypassCaptureInput, BypassCollectInput, BypassRefuseInput, Phase
    from workflows.relay import (
        FINISH_SIGNAL,
        RELAY_CATCH_UP,
        RELAY_DENY,
        RELAY_SPEC_REF_PATCH,
        CatchUpInput,
        CatchUpResult,
        DenyWritesInput,
        RelayInput,
        RelayWorkflow,
        poller_task_queue,
        relay_workflow_id,
    )
    from workflows.retry import ACTIVITY_RETRY, BYPASS_COLLECT_RETRY
    from workflows.verify import failure_message


class Capture:
    """The capture side of the migration: relay, key-log catch-up, denied writes, bypass capture."""

    def __init__(self, st: MigrationState) -> None:
        self._st = st

    async def ensure_relay(self) -> None:
        """outbox / triggers: make sure the migration's RelayWorkflow runs, whoever started the migration (the
        CLI, the Web UI, a script), before applications write key logs (from DUAL_WRITE on).

        It is a child with a fixed id (one relay per migration, whatever the number of starts) that outlives
        this run (ABANDON: continue-as-new and the end of the migration leave it alone; CLEANUP tells it to
        finish). A relay already running under that id, e.g. one a bench started with its own tuning, is the
        relay: "already started" is success. Starting it after the preflight means a bad spec writes nothing
        (for ``triggers`` its setup installs the capture triggers)."""
        if self._st.method.inline or not workflow.patched(RELAY_AUTOSTART_PATCH):
            return
        spec = self._st.spec
        ref = self._st.spec_ref
        if ref is None or self._st.s.spec_published != ref.digest or not workflow.patched(RELAY_SPEC_REF_PATCH):
            ref = None  # not published (histories from before): the relay's drains carry the spec
        self._st.s.work_state = "starting the relay"
        self._st.wake += 1
        try:
            handle = await workflow.start_child_workflow(
                RelayWorkflow.run,
                RelayInput(spec=spec, spec_ref=ref, heartbeat_timeout_seconds=self._st.tuning.heartbeat_timeout_seconds,
                           drain_task_queue=poller_task_queue(workflow.info().task_queue)),
                id=relay_workflow_id(spec.name), parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=f"relay {spec.name}: {spec.strategy.value} key logs, {spec.old} ⇄ {spec.new}")
        except WorkflowAlreadyStartedError:
            self._st.count("relay_already_running")
            workflow.logger.info("migration %s: relay %s already running", spec.name, relay_workflow_id(spec.name))
            return
        handle.add_done_callback(relay_ended)
        self._st.count("relay_started")

    async def finish_relay(self, step: str) -> None:
        """Tell the migration's relay to drain what is left and complete (abort, CLEANUP); none running is
        fine: there is nothing to finish."""
        self._st.s.work_state = f"{step}: telling the relay to finish"
        self._st.wake += 1
        try:
            await workflow.get_external_workflow_handle(relay_workflow_id(self._st.spec.name)).signal(FINISH_SIGNAL)
        except Exception as exc:  # noqa: BLE001 - no relay running: nothing to finish
            workflow.logger.info("no relay to finish: %s", exc)

    async def catch_up_logs(self, why: str, note: Callable[[str], None],
                            max_seconds: float = CATCH_UP_SECONDS,
                            authoritative: str | None = None) -> CatchUpResult | None:
        """outbox / triggers: mirror every key-log entry logged so far (its drain point), whether the relay
        or this activity gets to it first. None for ``sync`` (no key logs) and in histories from before."""
        if self._st.method.inline or not workflow.patched(CATCH_UP_PATCH):
            return None
        note(f"mirroring the key logs up to now ({why})")
        self._st.wake += 1
        spec = await spec_or_ref(self._st, SPEC_REF_CATCH_UP_PATCH)
        res: CatchUpResult = await workflow.execute_activity(
            RELAY_CATCH_UP, CatchUpInput(**spec, max_seconds=max_seconds,
                                         authoritative=self.denied_log_side(authoritative)),
            start_to_close_timeout=timedelta(seconds=max_seconds + 300),
            heartbeat_timeout=timedelta(seconds=max(10.0, self._st.tuning.heartbeat_timeout_seconds)),
            retry_policy=ACTIVITY_RETRY, result_type=CatchUpResult, summary=f"catch up the key logs ({why})")
        self._st.count("key_log_caught_up", res.counters.mirrored)
        if not res.reached:
            workflow.logger.warning("migration %s: %d key-log entries still behind after catching up (%s)",
                                    self._st.spec.name, res.behind, why)
        return res

    def denies_writes(self) -> bool:
        """``triggers`` / ``cdc`` without tenants: the store that is not authoritative refuses writes that bypass
        dualwrite (Vitess's denied tables), so no write it acknowledged can be overwritten by a mirror."""
        return (self._st.method.database_capture and not self._st.spec.tenant_tables
                and workflow.patched(DENY_WRITES_PATCH))

    def denied_log_side(self, authoritative: str | None) -> str:
        """The key log a catch-up mirrors: only the authoritative store's when writes are denied on the other."""
        if not self.denies_writes():
            return ""
        return authoritative or phases.authoritative(self._st.s.phase)

    async def deny_writes(self, *, deny: list[str], allow: list[str], authoritative: str = "new") -> bool:
        """Install (``deny``) or lift (``allow``) the denied-writes triggers; False when they do not apply."""
        if not self.denies_writes():
            return False
        spec = await spec_or_ref(self._st, SPEC_REF_DENY_WRITES_PATCH)
        await workflow.execute_activity(
            RELAY_DENY, DenyWritesInput(**spec, deny=deny, allow=allow, authoritative=authoritative),
            start_to_close_timeout=timedelta(minutes=1), retry_policy=ACTIVITY_RETRY,
            summary=f"deny writes on {', '.join(deny) or '-'}; allow on {', '.join(allow) or '-'}")
        return True

    async def lift_denial(self, plan: phases.Plan) -> None:
        """After a flip is published: the store that gained authority accepts the application's writes."""
        if plan.tenant is None and phases.authoritative(plan.frm) != phases.authoritative(plan.to):
            gaining = phases.authoritative(plan.to)
            if await self.deny_writes(deny=[], allow=[gaining]):
                self._st.count("denied_writes_lifted")
            if gaining == "old":
                await self.refuse_old(False)

    async def refuse_old(self, on: bool, *, final: bool = False, force: bool = False) -> bool:
        """Adapter strategies after write cutover: the old store refuses writes that bypass the adapter (a raw
        write there is lost: nothing carries it to the new store), or accepts them again (``on`` False:
        rollback, a refused flip, CLEANUP with ``final``). True when the old store refuses now. Nothing is
        called when the state already is as wanted (unless ``force``: lifting after an install that may have
        failed half way); SQLite / Redis say why they cannot (status shows it)."""
        if not bp.applies(self._st.spec) or not workflow.patched(bp.REFUSE_OLD_PATCH):
            return False
        s = self._st.s
        current = s.bypass.old_store if s.bypass is not None else ""
        if on and current:
            return current == bp.REFUSING
        if not on and not force and current != bp.REFUSING and not (final and s.bypass is not None
                                                                    and s.bypass.old_refused is not None):
            if current and s.bypass is not None:
                s.bypass = s.bypass.model_copy(update={"old_store": ""})
            return False
        spec = await spec_or_ref(self._st, SPEC_REF_BYPASS_PATCH)
        res: bp.BypassRefuseResult = await workflow.execute_activity(
            bp.BYPASS_REFUSE_OLD, BypassRefuseInput(**spec, refuse=on, final=final),
            start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=self._st.short_heartbeat(),
            retry_policy=ACTIVITY_RETRY, result_type=bp.BypassRefuseResult,
            summary=("the old store refuses writes that bypass the adapter" if on
                     else "the old store accepts raw writes again"))
        state = (bp.REFUSING if res.refusing else res.note) if on else ""
        s.bypass = (s.bypass or bp.BypassSummary()).model_copy(
            update={"old_store": state, "old_refused": None if final else res.refused})
        self._st.count("old_store_refusing" if res.refusing else "old_store_accepting")
        self._st.wake += 1
        return res.refusing

    async def refuse_old_for(self, phase: Phase) -> None:
        """The old store refuses raw writes in CUTOVER_WRITES only (installed under the write fence before the
        flip, see :meth:`WriteFence.fence_for`); lifted in every other phase, for good at CLEANUP."""
        if phase is Phase.CUTOVER_WRITES:
            await self.refuse_old(True)
        else:
            await self.refuse_old(False, final=phase in (Phase.CLEANUP, Phase.DONE))

    async def bypass_capture(self, *, install: list[str] | None = None, remove: list[str] | None = None,
                             discard: bool = False) -> bool:
        """Install / remove bypass capture on store sides; False when it does not apply to this migration."""
        if not bp.applies(self._st.spec) or not workflow.patched(bp.BYPASS_PATCH):
            return False
        s = self._st.s
        on = {x for x in (s.bypass.capture_on if s.bypass is not None else "").split("+") if x}
        on = (on | set(install or [])) - set(remove or [])
        spec = await spec_or_ref(self._st, SPEC_REF_BYPASS_PATCH)
        await workflow.execute_activity(
            bp.BYPASS_CAPTURE, BypassCaptureInput(**spec, install=install or [], remove=remove or [], discard=discard),
            start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=self._st.short_heartbeat(),
            retry_policy=ACTIVITY_RETRY, summary=f"bypass capture on {'+'.join(install or []) or '-'}; off on "
                                         f"{'+'.join(remove or []) or '-'}")
        # re-read: a collection may have merged counts while the activity ran
        s.bypass = (s.bypass or bp.BypassSummary()).model_copy(update={"capture_on": "+".join(sorted(on))})
        return True

    async def bypass_capture_for(self, phase: Phase) -> None:
        """Capture on the authoritative store from DUAL_WRITE to CUTOVER_WRITES; nowhere before or after (a
        rollback to PREPARE, CLEANUP). Idempotent; nothing is called when capture is already as wanted."""
        s = self._st.s
        current = s.bypass.capture_on if s.bypass is not None else ""
        if phases.secondary_is_mirrored(phase):
            side = phases.authoritative(phase)
            if current != side:
                await self.bypass_capture(install=[side], remove=["new" if side == "old" else "old"])
        elif current:
            await self.bypass_capture(remove=["old", "new"], discard=True)

    async def collect_bypass(self, why: str = "") -> str:
        """Collect the bypass records: counts per (table, writer) into the state, keys into the repair queue.
        A failed collection leaves the counts as they were (the records wait for the next one) and returns
        why it failed ('' otherwise): under the write fence that refuses the flip."""
        s = self._st.s
        if s.bypass is None or not s.bypass.capture_on or not workflow.patched(bp.BYPASS_PATCH):
            return ""
        spec = await spec_or_ref(self._st, SPEC_REF_BYPASS_PATCH)
        try:
            res: bp.BypassCollectResult = await workflow.execute_activity(
                bp.BYPASS_COLLECT, BypassCollectInput(**spec, refusing_old=s.bypass.old_store == bp.REFUSING),
                start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=self._st.short_heartbeat(),
                retry_policy=BYPASS_COLLECT_RETRY,
                result_type=bp.BypassCollectResult, summary=f"collect bypassed writes{why}")
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("bypass collection failed: %s", failure_message(exc))
            return failure_message(exc)
        if res.old_refused is not None and s.bypass is not None and res.old_refused != s.bypass.old_refused:
            s.bypass = s.bypass.model_copy(update={"old_refused": res.old_refused})
            self._st.wake += 1
        if res.groups:
            s.bypass = bp.merge(s.bypass or bp.BypassSummary(), res.groups)
            self._st.count("bypassed_writes", res.queued)
            s.repair_queue_depth += res.queued
            self._st.gate_dirty = True
            self._st.wake += 1
        return ""


def relay_ended(handle: asyncio.Future[Any]) -> None:
    """The relay this run started has ended (finished at CLEANUP, or terminated): note how, no more."""
    if handle.cancelled():
        return
    exc = handle.exception()
    if exc is not None:
        workflow.logger.warning("relay ended: %s", failure_message(exc))
