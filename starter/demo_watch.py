"""Following the demo's migration: :class:`Watcher` polls its status query and shows the phase track, the
backfill bars, what it waits for and the application's numbers; :func:`gate_decisions` reads each cutover
gate's decision back from the workflow history for the report."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.text import Text
from temporalio.client import WorkflowFailureError, WorkflowHandle

from dualwrite.codec import data_converter
from starter.command import out
from starter.demo_app import LiveApp
from starter.demo_config import GATED, DemoConfig, DemoError
from workflows.models import ActivityNames, GateResult, MigrationStatus, Phase

__all__ = ["Watcher", "checks_text", "gate_decisions"]


class Watcher:
    """Polls the migration's status query and shows it: the phase track, the backfill bars, what it waits
    for, and the application's numbers. Phase changes and verifications are also printed as lines, so a
    log without a terminal (CI) tells the story too."""

    def __init__(self, cfg: DemoConfig, app: LiveApp, seeded: tuple[int, int]) -> None:
        self.cfg = cfg
        self.app = app
        self.seeded = seeded
        self.started = time.monotonic()
        self.transitions_seen = 0
        self.verifications: list[dict[str, Any]] = []
        self.gates_seen: dict[str, dict[str, Any]] = {}
        self._last_verification: Any = None
        self.progress = Progress(TextColumn("{task.description:<22}"), BarColumn(bar_width=32),
                                 TextColumn("{task.percentage:>5.1f}%"), MofNCompleteColumn(),
                                 console=out, auto_refresh=False)
        self.phase_task: TaskID = self.progress.add_task("phases", total=7)
        self.table_tasks: dict[str, TaskID] = {}
        self.status: MigrationStatus | None = None
        self.forced = False  # the override of a volatile Redis was used (once)

    async def _volatile_new_store(self, handle: WorkflowHandle[Any, Any], status: MigrationStatus) -> None:
        """A Redis new store that keeps nothing on disk is refused at CUTOVER_WRITES (``new_store_durable``):
        stop with the reason, or, when the operator passed ``--allow-volatile-new-store`` and that is the only
        check failing, force the advance once (recorded in the transition history with the reason)."""
        gate = status.gate
        if (not self.cfg.redis or status.phase != Phase.CUTOVER_READS or not isinstance(gate, dict)
                or gate.get("to") != "CUTOVER_WRITES" or gate.get("passed")):
            return
        checks = gate.get("checks") or {}
        if checks.get("new_store_durable", True):
            return
        why = next((r for r in gate.get("reasons") or [] if r.startswith("new_store_durable")), "new_store_durable")
        if not self.cfg.allow_volatile:
            raise DemoError(f"refused at CUTOVER_WRITES: {why}. Use a Redis that keeps its data on disk, or pass "
                            "--allow-volatile-new-store to override (recorded in the transition history)")
        if self.forced or not all(ok for name, ok in checks.items() if name != "new_store_durable"):
            return  # the other checks decide first (traffic samples, verification)
        self.forced = True
        await _force_past_durability(handle, f"operator override: {why}")

    def _t(self) -> str:
        return f"{time.monotonic() - self.started:6.1f}s"

    def _note(self, status: MigrationStatus) -> None:
        for rec in status.transitions[self.transitions_seen:]:
            if rec.kind == "start":
                continue
            why = f" ({escape(rec.reason)})" if rec.reason else ""
            out.print(f"{self._t()}  [bold]{rec.from_phase} → {rec.to_phase}[/] by {escape(rec.by or '?')}, "
                      f"{rec.kind}{why}")
        self.transitions_seen = len(status.transitions)
        v = status.last_verification
        if v is not None and (self._last_verification is None or v.at != self._last_verification):
            self._last_verification = v.at
            phase = str(status.phase)
            for rec in status.transitions:  # the phase in force when it finished (polls lag a little)
                if rec.at <= v.at:
                    phase = str(rec.to_phase)
            entry = {"phase": phase, "at": v.at.isoformat(), "direction": v.direction, "ok": v.ok,
                     "verdict": v.verdict,
                     "rows_compared": v.rows_compared, "missing": v.missing, "extra": v.extra,
                     "field_different": v.field_different, "repaired": v.repaired}
            self.verifications.append(entry)
            shown = ("[green]clean[/]" if v.verdict == "ok" else f"[yellow]{v.verdict}[/]") if v.ok else \
                "[red]NOT clean[/]"
            out.print(f"{self._t()}  verification ({v.direction}) in {phase}: "
                      f"{v.rows_compared:,} rows compared, {v.missing} missing, {v.extra} extra, "
                      f"{v.field_different} field-different, {v.repaired} repaired → "
                      f"{shown}")
        gate = status.gate
        if isinstance(gate, dict) and gate.get("to") in GATED and gate.get("passed"):
            to = str(gate["to"])
            if to not in self.gates_seen:
                self.gates_seen[to] = gate
                out.print(f"{self._t()}  gate into {to}: [green]passed[/] ({checks_text(gate)})")

    def _renderable(self, status: MigrationStatus) -> RenderableType:
        self.progress.update(self.phase_task, completed=Phase(status.phase).rank,
                             description=f"phase {status.phase}")
        for t in status.tables:
            if t.source not in self.table_tasks:
                self.table_tasks[t.source] = self.progress.add_task(f"backfill {t.source}", total=1)
            total = max(t.rows_estimate, t.rows_copied, 1)
            self.progress.update(self.table_tasks[t.source], total=total,
                                 completed=total if t.done else min(t.rows_copied, total))
        c = self.app.counters
        stats = self.app.writer.stats.snapshot()
        line = Text(f"application: {c.writes:,} writes ({sum(c.write_failures.values())} failed), "
                    f"{c.reads:,} reads; this window: secondary {stats.secondary_successes}/"
                    f"{stats.secondary_attempts} ok, shadow {stats.shadow_samples} compared")
        waiting = Text(f"waiting for: {status.waiting_for or '–'}", style="grey50")
        return Group(self.progress, line, waiting)

    async def run(self, handle: WorkflowHandle[Any, Any], deadline: float) -> MigrationStatus:
        result = asyncio.ensure_future(handle.result())
        status: MigrationStatus | None = None
        try:
            with Live(console=out, auto_refresh=False, transient=False) as live:
                while True:
                    try:
                        status = await handle.query("status", result_type=MigrationStatus)
                    except Exception as exc:  # noqa: BLE001 - the workflow closed: the result tells
                        if result.done():
                            break
                        raise DemoError(f"cannot query the migration: {exc}") from None
                    self.status = status
                    self._note(status)
                    await self._volatile_new_store(handle, status)
                    live.update(self._renderable(status), refresh=True)
                    if status.phase == Phase.DONE and result.done():
                        break
                    if result.done():
                        break
                    if time.monotonic() > deadline:
                        raise DemoError(f"the migration is not DONE after {self.cfg.timeout:.0f}s (phase "
                                         f"{status.phase}, waiting for: {status.waiting_for or '–'})")
                    await asyncio.wait([result], timeout=0.3)
            try:
                final = await result
            except WorkflowFailureError as exc:
                cause: Any = exc.cause
                while getattr(cause, "cause", None) is not None:
                    cause = cause.cause
                raise DemoError(f"the migration failed: {getattr(cause, 'message', cause)}") from None
        finally:
            if not result.done():
                result.cancel()
        self.status = final
        self._note(final)
        return final  # type: ignore[no-any-return]


async def _force_past_durability(handle: WorkflowHandle[Any, Any], reason: str) -> None:
    """The operator's explicit override: a forced advance into CUTOVER_WRITES, recorded with its reason."""
    from workflows.models import TransitionRequest, TransitionResult  # noqa: PLC0415

    res = await handle.execute_update("advance", TransitionRequest(
        to=Phase.CUTOVER_WRITES, from_phase=Phase.CUTOVER_READS, force=True, reason=reason,
        by="dualwrite demo --allow-volatile-new-store"), result_type=TransitionResult)
    out.print(f"[yellow]override:[/] {escape(res.message)}")


def checks_text(gate: dict[str, Any]) -> str:
    """``name ✓, other ✗``: a gate's checks on one line."""
    checks = gate.get("checks") or {}
    return ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in checks.items()) or "no checks"


async def gate_decisions(handle: WorkflowHandle[Any, Any]) -> dict[str, dict[str, Any]]:
    """The gate decisions as the workflow history recorded them: for each gated phase, the last
    ``evaluate_gate`` result (its checks and evidence), and how many evaluations it took."""
    scheduled: set[int] = set()
    found: dict[str, dict[str, Any]] = {}
    tries: dict[str, int] = {}
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == ActivityNames.EVALUATE_GATE:
                scheduled.add(event.event_id)
        elif event.HasField("activity_task_completed_event_attributes"):
            done = event.activity_task_completed_event_attributes
            if done.scheduled_event_id in scheduled and done.result.payloads:
                res = (await data_converter().decode(list(done.result.payloads), [GateResult]))[0]
                to = str(res.to)
                tries[to] = tries.get(to, 0) + 1
                if to in GATED:
                    found[to] = {**res.model_dump(mode="json"), "evaluations": tries[to]}
    return found
