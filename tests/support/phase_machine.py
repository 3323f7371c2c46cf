"""A synchronous reference model of MigrationWorkflow's phase machine, for the property tests.

It composes the very functions of :mod:`workflows.phases` the workflow composes (rules, plans, overrides),
without Temporal: the gate's outcome is given by the caller and application instances adopt the published
state when told. Test-only: the workflow never runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dualwrite.adapter.phase import resolve  # the adapter's own resolution, not a copy
from workflows.models import GateResult, Phase, TransitionRequest
from workflows.phases import (
    GATED,
    GLOBAL,
    MachineView,
    Plan,
    Rejected,
    TenantView,
    check_hold,
    check_pause,
    check_resume,
    effective_phase,
    follow,
    overrides_for,
    plan_advance,
    plan_rollback,
    resolve_advance,
    resolve_approve,
)

__all__ = ["Machine", "Record"]


@dataclass
class Record:
    tenant: str | None
    frm: Phase
    to: Phase
    kind: str
    reason: str
    gate_passed: bool | None


@dataclass
class Machine:
    """MigrationWorkflow's phase machine without Temporal: the same rules, plans and overrides, with the
    gate's outcome given by the caller and application instances that adopt the published state when told.

    The workflow (workflows/migration/) composes the same functions in the same order: validate
    (``resolve_*``), evaluate the gate if the target is gated, :func:`plan_advance` / :func:`plan_rollback`,
    reverse-verify ``plan.verify_first``, then bump the epoch, publish ``overrides_for(...)`` and wait for
    the barrier before the phase's work is done.
    """

    name: str = "m"
    auto: bool = False
    require_approval: bool = False
    tenancy: bool = False
    instances: int = 2
    phase: Phase = Phase.PREPARE
    epoch: int = 1
    paused: bool = False
    work_done: bool = False
    tenants: dict[str, Phase] = field(default_factory=dict)
    tenant_work: dict[str, bool] = field(default_factory=dict)
    holds: dict[str, str] = field(default_factory=dict)
    approved: dict[str, Phase] = field(default_factory=dict)
    published: tuple[Phase, int, dict[str, Any]] = (Phase.PREPARE, 1, {})
    seen: list[tuple[Phase, int, dict[str, Any]]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seen = [self.published] * self.instances

    # -- views ----------------------------------------------------------------------------------------------

    def view(self, tenant: str | None = None) -> MachineView:
        tv = None
        if tenant is not None:
            tv = TenantView(tenant=tenant, phase=effective_phase(self.phase, self.tenants, tenant),
                            own=tenant in follow(self.phase, self.tenants),
                            work_done=self.tenant_work.get(tenant, True), held=self.holds.get(tenant, ""),
                            approved_for=self.approved.get(tenant))
        return MachineView(phase=self.phase, paused=self.paused, auto=self.auto,
                           require_approval=self.require_approval, work_done=self.work_done,
                           approved_for=self.approved.get(GLOBAL), held=self.holds.get(GLOBAL, ""),
                           name=self.name, tenancy=self.tenancy, tenants=follow(self.phase, self.tenants),
                           tenant=tv)

    def barrier_passed(self) -> bool:
        return all(s[1] >= self.epoch for s in self.seen)

    def adapter_phase(self, instance: int, tenant: str | None) -> str:
        """The phase an application instance acts on for ``tenant`` (the adapter's own resolution)."""
        phase, epoch, overrides = self.seen[instance]
        return resolve(self.name, phase.value, overrides, tenant=tenant)[0]

    # -- operations (each returns None when accepted, else the rejection) ------------------------------------

    def _try(self, fn: Any, *args: Any) -> str | None:
        try:
            fn(*args)
        except Rejected as exc:
            return str(exc)
        return None

    def advance(self, req: TransitionRequest, gate_passes: bool) -> str | None:
        return self._try(self._advance, req, gate_passes)

    def _advance(self, req: TransitionRequest, gate_passes: bool) -> None:
        view = self.view(req.tenant)
        to = resolve_advance(view, req)
        scope = req.tenant if req.tenant is not None else GLOBAL
        gate = None
        if to in GATED:
            approved = self.approved.get(scope) is to
            passes = gate_passes and (approved or not self.require_approval)
            gate = GateResult(passed=passes, to=to, reasons=[] if passes else ["gate held (model)"])
        plan = plan_advance(view, req, gate)
        if req.dry_run:
            return
        self._apply(plan, req.reason)

    def rollback(self, req: TransitionRequest, reverse_clean: bool = True) -> str | None:
        return self._try(self._rollback, req, reverse_clean)

    def _rollback(self, req: TransitionRequest, reverse_clean: bool) -> None:
        plan = plan_rollback(self.view(req.tenant), req)
        if req.dry_run:
            return
        if plan.verify_first and not reverse_clean:
            raise Rejected("rollback refused: the old store could not be brought level with the new one")
        self._apply(plan, req.reason)

    def pause(self, req: TransitionRequest) -> str | None:
        return self._try(self._pause, req, True)

    def resume(self, req: TransitionRequest) -> str | None:
        return self._try(self._pause, req, False)

    def _pause(self, req: TransitionRequest, paused: bool) -> None:
        (check_pause if paused else check_resume)(self.view(), req)
        self.paused = paused

    def approve(self, req: TransitionRequest) -> str | None:
        return self._try(self._approve, req)

    def _approve(self, req: TransitionRequest) -> None:
        to = resolve_approve(self.view(req.tenant), req)
        self.approved[req.tenant if req.tenant is not None else GLOBAL] = to

    def hold(self, req: TransitionRequest) -> str | None:
        return self._try(self._hold, req)

    def _hold(self, req: TransitionRequest) -> None:
        check_hold(self.view(req.tenant), req)
        scope = req.tenant if req.tenant is not None else GLOBAL
        if req.release:
            self.holds.pop(scope, None)
        else:
            self.holds[scope] = f"{req.by}: {req.reason}"

    def _apply(self, plan: Plan, reason: str) -> None:
        self.records.append(Record(plan.tenant, plan.frm, plan.to, plan.kind, reason, plan.gate_passed))
        self.phase = plan.phase_after
        self.tenants = dict(plan.tenants_after)
        scope = plan.tenant if plan.tenant is not None else GLOBAL
        self.approved.pop(scope, None)
        if plan.tenant is None:
            self.approved.clear()
            self.tenant_work = {}
            self.work_done = False
        else:
            self.tenant_work[plan.tenant] = False
        self.epoch += 1
        self.published = (self.phase, self.epoch, overrides_for(self.phase, self.tenants))

    # -- the world moving on ----------------------------------------------------------------------------------

    def instance_catches_up(self, instance: int) -> None:
        self.seen[instance] = self.published

    def work_finishes(self) -> bool:
        """The entry work finishes once the barrier has passed (it waits for it first)."""
        if not self.barrier_passed():
            return False
        self.work_done = True
        self.tenant_work = {t: True for t in self.tenant_work}
        return True
