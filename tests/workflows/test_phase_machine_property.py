"""Property-based test of the phase machine (tests/support/phase_machine.py Machine: the workflow's own rules, plans and
published overrides, composed without Temporal).

Random sequences of advance / force / rollback / pause / resume / approve / hold / release, per tenant or
for the whole migration, with gates that pass or not, reverse verifications that are clean or not, and
application instances that adopt the published state at their own pace. After every step:

- nothing reaches CUTOVER_* (migration or tenant) without a passing gate or a recorded, reasoned force;
- CLEANUP is only ever entered with its confirmation, and nothing is entered while paused or held;
- a rollback is always possible before CLEANUP (for the migration and for every tenant that moved on its
  own) and never after;
- once the barrier has passed, the phase every application instance acts on, for every tenant, is the
  one the workflow has for it (resolved by the adapter's own code from the published overrides);
- tenants that moved on their own stay strictly ahead of the migration and never past CUTOVER_WRITES.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as hs
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from support.phase_machine import Machine

from workflows import phases
from workflows.models import PHASE_ORDER, Phase, TransitionRequest

CUTOVERS = (Phase.CUTOVER_READS, Phase.CUTOVER_WRITES)
TENANTS = ("acme", "beta")
tenant_or_none = hs.sampled_from((None, *TENANTS, *TENANTS))  # tenants twice as often as the migration


class PhaseMachineRules(RuleBasedStateMachine):
    m: Machine

    @initialize(require_approval=hs.booleans(), tenancy=hs.sampled_from((True, True, False)),
                instances=hs.integers(1, 3),
                start=hs.sampled_from((*PHASE_ORDER[:7], *PHASE_ORDER[3:6])))
    def start(self, require_approval: bool, tenancy: bool, instances: int, start: Phase) -> None:
        """A migration that has reached ``start`` and settled there (so short runs explore every phase)."""
        self.m = Machine(name="orders", require_approval=require_approval, tenancy=tenancy, instances=instances,
                         phase=start, work_done=True, published=(start, 1, {}))

    # -- operator actions -------------------------------------------------------------------------------------

    @rule(tenant=tenant_or_none, force=hs.booleans(), gate_passes=hs.booleans(),
          confirm=hs.sampled_from((False, False, True)),
          dry_run=hs.booleans(), skip=hs.booleans())
    def advance(self, tenant: str | None, force: bool, gate_passes: bool, confirm: bool, dry_run: bool,
                skip: bool) -> None:
        m = self.m
        before = (m.phase, dict(m.tenants), m.epoch)
        paused, held = m.paused, dict(m.holds)
        frm = phases.effective_phase(m.phase, m.tenants, tenant)
        to = None
        if skip and frm.rank + 2 < len(PHASE_ORDER):
            to = PHASE_ORDER[frm.rank + 2]
        req = TransitionRequest(tenant=tenant, force=force, reason="drill" if force else "", to=to,
                                confirm_cleanup=confirm, dry_run=dry_run, by="prop")
        refused = m.advance(req, gate_passes)
        if refused is not None or dry_run:
            assert (m.phase, m.tenants, m.epoch) == before, "a refused or dry-run advance changed the state"
            return
        rec = m.records[-1]
        assert to is None, "a phase was skipped"
        assert not paused, "advanced while paused"
        assert not held.get(phases.GLOBAL) and not (tenant and held.get(tenant)), "advanced while held"
        if rec.to is Phase.CLEANUP:
            assert confirm, "CLEANUP entered without its confirmation"
        if rec.to in CUTOVER_WRITES_OR_READS:
            assert rec.gate_passed is not None
            if not gate_passes:
                assert rec.kind == "force" and rec.reason.strip(), "a failing gate was passed without force"

    @rule(tenant=tenant_or_none, gate_passes=hs.booleans(), confirm=hs.sampled_from((False, False, True)))
    def advance_and_settle(self, tenant: str | None, gate_passes: bool, confirm: bool) -> None:
        """The common path: approve when needed, advance (sometimes confirming CLEANUP), let everyone catch up."""
        m = self.m
        confirm = confirm and tenant is None  # CLEANUP is migration-wide: a tenant request carrying it is refused
        m.approve(TransitionRequest(tenant=tenant, confirm_cleanup=confirm))
        if m.advance(TransitionRequest(tenant=tenant, confirm_cleanup=confirm, by="prop"), gate_passes) is None:
            rec = m.records[-1]
            if rec.to in CUTOVER_WRITES_OR_READS:
                assert gate_passes and rec.gate_passed, "entered a cutover through a failing gate"
        self.everything_settles()

    @rule(tenant=tenant_or_none)
    def operator_clears_the_way(self, tenant: str | None) -> None:
        """Resume and release every hold on the way (so runs get deep into the tenant phases too)."""
        m = self.m
        m.resume(TransitionRequest())
        m.hold(TransitionRequest(release=True))
        if tenant is not None:
            m.hold(TransitionRequest(release=True, tenant=tenant))

    @rule(tenant=hs.sampled_from(TENANTS), moves=hs.integers(1, 2), steps=hs.integers(1, 3), clean=hs.booleans(),
          whole=hs.booleans())
    def canary_then_rollback(self, tenant: str, moves: int, steps: int, clean: bool, whole: bool) -> None:
        """A tenant runs ahead as a canary, then the migration (or the canary) is rolled back."""
        for _ in range(moves):
            self.operator_clears_the_way(tenant)
            self.advance_and_settle(tenant, True, False)
        self.rollback(None if whole else tenant, steps, clean)

    @rule(tenant=tenant_or_none, steps=hs.integers(1, 3), clean=hs.booleans())
    def rollback(self, tenant: str | None, steps: int, clean: bool) -> None:
        m = self.m
        frm = phases.effective_phase(m.phase, m.tenants, tenant)
        to = PHASE_ORDER[max(0, frm.rank - steps)]
        before = (m.phase, dict(m.tenants), m.epoch)
        scopes = (None, *TENANTS)
        authority = {t: phases.authoritative(phases.effective_phase(m.phase, m.tenants, t)) for t in scopes}
        refused = m.rollback(TransitionRequest(tenant=tenant, to=to, reason="drill", by="prop"), clean)
        if refused is not None:
            assert (m.phase, m.tenants, m.epoch) == before
            return
        assert frm.rank < Phase.CLEANUP.rank, "rolled back from CLEANUP or later"
        for t in scopes:  # every scope (not only the one named) whose authority went back to the old store
            now = phases.authoritative(phases.effective_phase(m.phase, m.tenants, t))
            if authority[t] == "new" and now == "old" and not clean:
                raise AssertionError(f"authority of {t or 'the migration'} flipped back to the old store "
                                     "without a clean reverse verification")

    @rule()
    def pause(self) -> None:
        self.m.pause(TransitionRequest(reason="p"))

    @rule()
    def resume(self) -> None:
        self.m.resume(TransitionRequest())

    @rule(tenant=tenant_or_none, confirm=hs.booleans())
    def approve(self, tenant: str | None, confirm: bool) -> None:
        self.m.approve(TransitionRequest(tenant=tenant, confirm_cleanup=confirm))

    @rule(tenant=tenant_or_none, release=hs.booleans())
    def hold(self, tenant: str | None, release: bool) -> None:
        self.m.hold(TransitionRequest(tenant=tenant, release=release, reason="" if release else "incident"))

    # -- the world ------------------------------------------------------------------------------------------

    @rule(data=hs.data())
    def an_instance_catches_up(self, data: hs.DataObject) -> None:
        self.m.instance_catches_up(data.draw(hs.integers(0, self.m.instances - 1)))

    @rule()
    def phase_work_finishes(self) -> None:
        self.m.work_finishes()

    @rule()
    def everything_settles(self) -> None:
        for i in range(self.m.instances):
            self.m.instance_catches_up(i)
        assert self.m.work_finishes()

    # -- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def cutover_only_through_a_passing_gate_or_a_recorded_force(self) -> None:
        for rec in self.m.records:
            if rec.to in CUTOVER_WRITES_OR_READS and rec.kind not in ("rollback", "auto-rollback"):
                assert rec.gate_passed or (rec.kind == "force" and rec.reason.strip()), rec

    @invariant()
    def rollback_possible_before_cleanup_and_never_after(self) -> None:
        m = self.m
        view = m.view()
        req = TransitionRequest(reason="check")
        if m.phase.rank >= Phase.CLEANUP.rank:
            for t in (None, *TENANTS):
                assert m.rollback(TransitionRequest(reason="check", tenant=t, dry_run=True)) is not None
        elif m.phase is not Phase.PREPARE:
            assert phases.resolve_rollback(view, req) is not None  # raises Rejected if not possible
            for t in phases.follow(m.phase, m.tenants):
                assert m.rollback(TransitionRequest(reason="check", tenant=t, dry_run=True)) is None

    @invariant()
    def adapters_act_on_the_workflows_phase_after_the_barrier(self) -> None:
        m = self.m
        assert m.published[1] == m.epoch
        if not m.barrier_passed():
            return
        for t in (None, *TENANTS, "someone-else"):
            want = phases.effective_phase(m.phase, m.tenants, t).value
            for i in range(m.instances):
                assert m.adapter_phase(i, t) == want, (t, i, m.seen[i], m.phase, m.tenants)

    @invariant()
    def tenants_stay_between_the_migration_and_write_cutover(self) -> None:
        m = self.m
        for t, p in phases.follow(m.phase, m.tenants).items():
            assert m.tenancy and t in TENANTS
            assert m.phase.rank < p.rank <= phases.TENANT_LAST.rank


CUTOVER_WRITES_OR_READS = frozenset(CUTOVERS)

PhaseMachineRules.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                               suppress_health_check=[HealthCheck.too_slow])
test_phase_machine = PhaseMachineRules.TestCase
