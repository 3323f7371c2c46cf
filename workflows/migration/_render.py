"""What people see: the status query's answer and the Markdown details the Web UI shows."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from workflows.migration._state import MigrationState

with workflow.unsafe.imports_passed_through():
    from workflows import phases
    from workflows.models import MigrationStatus, Phase, TenantStatus


class Rendering:
    """Builds the status and the Web UI details from the state (no commands)."""

    def __init__(self, st: MigrationState) -> None:
        self._st = st

    @workflow.query(description="The full status: phase, per-table progress, counters, last verification, "
                                "gate evidence, holds, tenants side by side, transitions, repair queue depth.")
    def status(self, *_args: Any) -> MigrationStatus:
        s = self._st.s
        return MigrationStatus(
            name=self._st.spec.name, phase=s.phase, paused=s.paused, mode=self._st.spec.mode.value,
            strategy=self._st.spec.strategy.value, epoch=s.epoch, tables=[t.model_copy() for t in s.tables],
            counters=dict(s.counters), last_verification=s.last_verification, gate=s.gate,
            transitions=list(s.transitions), repair_queue_depth=s.repair_queue_depth,
            waiting_for=self._waiting_for(), hold=s.holds.get(phases.GLOBAL), tenants=self.tenant_rows(),
            rolling_back=s.rolling_back, triggers=s.triggers, retirement=s.retirement, aborted=s.aborted,
            signals_dropped=list(self._st.dropped), bypass=s.bypass,
            capture_lost=list(s.capture_lost))

    def tenant_rows(self) -> list[TenantStatus]:
        if self._st.spec.tenants is None:
            return []
        s = self._st.s
        names = list(self._st.spec.tenants.ids) + [t.tenant for t in s.tenants
                                                   if t.tenant not in self._st.spec.tenants.ids]
        names += [k for k in s.holds if k and k not in names]
        rows: list[TenantStatus] = []
        for name in names:
            ts = self._st.tenant(name)
            phase = self._st.phase_of(name)
            gate = ts.gate if ts is not None else None
            rows.append(TenantStatus(
                tenant=name, phase=phase, own=self._st.own(ts), authoritative=phases.authoritative(phase),
                reads_from=phases.reads_from(phase), work_state=ts.work_state if ts else "",
                hold=s.holds.get(name), gate_passed=None if gate is None else bool(gate.get("passed")),
                last_verification_ok=None if ts is None or ts.last_verification is None
                else ts.last_verification.ok))
        return rows

    def _waiting_for(self) -> str:
        s = self._st.s
        if self._st.fatal is not None:
            return f"nothing: failed ({self._st.fatal})"
        if (s.phase is Phase.DONE and s.phase_work_done) or s.aborted is not None:
            return ""
        if s.rolling_back:
            return f"transition: {s.rolling_back}" + (f" — {s.work_state}" if s.work_state else "")
        if self._st.transitioning:
            return f"transition: {self._st.transitioning}"
        if not s.phase_work_done:
            return s.work_state or f"{s.phase} work"
        note = " (a verification is running)" if self._st.verify is not None and not self._st.verify.done() else ""
        to, why = phases.auto_target(self._st.view())
        if to is not None and s.gate and not s.gate.get("passed") and s.gate.get("to") == to.value:
            return "gate: " + "; ".join(s.gate.get("reasons") or []) + note
        if to is not None:
            return f"auto: advancing to {to}{note}"
        if not why.startswith("operator: held") and s.holds.get(phases.GLOBAL) is not None:
            return f"operator: held ({self._st.hold_text(None)}); release the hold to advance{note}"
        return why + note

    def render(self) -> None:
        s = self._st.s
        if s.aborted is not None:
            a = s.aborted
            workflow.set_current_details(f"**{self._st.spec.name}**: **ABORTED** in {a.from_phase} by {a.by or '?'}: "
                                         f"{a.reason}\n\n{a.message}")
            return
        lines = [f"**{self._st.spec.name}**: {self._st.spec.old} → {self._st.spec.new} · phase **{s.phase}** "
                 f"(epoch {s.epoch}){' · **PAUSED**' if s.paused else ''}"
                 f"{' · **HELD**' if s.holds.get(phases.GLOBAL) else ''} · {self._st.spec.mode.value} mode",
                 "", f"waiting for: {self._waiting_for() or '–'}", ""]
        if s.rolling_back:
            lines += [f"⏪ rolling back: {s.rolling_back}", ""]
        hold = s.holds.get(phases.GLOBAL)
        if hold is not None:
            lines += [f"✋ held by {hold.by or '?'}: {hold.reason}", ""]
        lines += ["| table | rows copied | estimate | % | ranges | ETA |", "|---|---:|---:|---:|---:|---:|"]
        for t in s.tables:
            eta = "–" if t.eta_seconds is None else f"{t.eta_seconds:.0f} s"
            lines.append(f"| {t.source} → {t.target} | {t.rows_copied:,} | {t.rows_estimate:,} | {t.percent} | "
                         f"{t.ranges_done}/{t.ranges_total} | {eta} |")
        v = s.last_verification
        if v is not None:
            lines += ["", f"last verification {v.direction} at {v.at:%Y-%m-%d %H:%M:%S}Z: "
                          f"{v.verdict}, {v.rows_compared:,} rows, "
                          f"missing {v.missing}, extra {v.extra}, field-different {v.field_different}, "
                          f"repaired {v.repaired}"]
        lines += ["", f"repair queue: {s.repair_queue_depth}"]
        lines += [f"\n**capture lost changes:** {m}" for m in s.capture_lost]
        if s.gate and s.gate.get("metrics"):
            lines += ["", f"**gate → {s.gate.get('to')}: {'PASSED' if s.gate.get('passed') else 'not passed'}**",
                      "", "| metric | value | threshold | samples | verdict |", "|---|---:|---:|---:|:-:|"]
            for m in s.gate["metrics"]:
                lines.append(f"| {m['name']} | {fmt(m.get('value'))} | {m.get('op', '')} {fmt(m.get('threshold'))} "
                             f"| {m.get('samples', 0):,} / {m.get('min_samples', 0):,} | {m.get('verdict')} |")
        if s.triggers is not None and s.triggers.metrics:
            lines += ["", "rollback triggers: " + ", ".join(
                f"{m.name} {fmt(m.value)} ({m.verdict.value})" for m in s.triggers.metrics)]
        rows = self.tenant_rows()
        if rows:
            lines += ["", "| tenant | phase | own | authoritative | reads | gate | hold |",
                      "|---|---|:-:|---|---|:-:|---|"]
            for r in rows:
                gate = "–" if r.gate_passed is None else "✅" if r.gate_passed else "❌"
                held = f"{r.hold.by}: {r.hold.reason}" if r.hold else ""
                lines.append(f"| {r.tenant} | {r.phase} | {'✓' if r.own else ''} | {r.authoritative} | "
                             f"{r.reads_from} | {gate} | {held} |")
        if s.retirement is not None:
            lines += ["", "retired: " + ", ".join(
                f"{t.source} ({t.action}{' as ' + t.retired_as if t.retired_as else ''})" for t in s.retirement.tables)]
        if self._st.last_signal_rejection:
            lines += ["", f"⚠ {self._st.last_signal_rejection}"]
        workflow.set_current_details("\n".join(lines))


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and 0 < abs(value) < 1:
        return f"{value * 100:.3g}%"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
