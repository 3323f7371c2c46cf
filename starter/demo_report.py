"""The end of ``dualwrite demo``: the report of what the run proved (rows copied, every verification, the gate
evidence of each cutover, the application's numbers, every acknowledged write read back), as a dict written
to JSON and as a table on the terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from dualwrite.config import redact
from starter.command import out
from starter.demo_app import LiveApp
from starter.demo_config import GATED, DemoConfig
from starter.demo_watch import Watcher, checks_text
from workflows.models import MigrationStatus

__all__ = ["build_report", "print_report"]


def build_report(cfg: DemoConfig, workflow_id: str, status: MigrationStatus, watch: Watcher, app: LiveApp,
                 seeded: tuple[int, int], window: Any, gates: dict[str, dict[str, Any]], checked: int,
                 problems: list[str], elapsed: float, split: dict[str, Any] | None = None) -> dict[str, Any]:
    rows = {t.source: t.rows_copied for t in status.tables}
    c = app.counters
    last_v = watch.verifications[-1] if watch.verifications else None
    shadow = dict(window.counters.get("shadow", {}))
    secondary_rate = window.secondary_success_rate()
    match_rate = window.shadow_match_rate()
    overridden = _overridden(cfg, status, gates)
    gates_ok = all(gates.get(p, {}).get("passed") or p in overridden for p in GATED)
    split_ok = split is None or (split["rows_compared"] > 0 and split["mismatches"] == 0)
    ok = (str(status.phase) == "DONE" and last_v is not None and bool(last_v["ok"]) and not problems
          and gates_ok and sum(c.write_failures.values()) == 0 and split_ok)
    return {
        "ok": ok,
        "migration": cfg.name,
        "workflow_id": workflow_id,
        "ui_url": cfg.ui_url(workflow_id),
        "phase": str(status.phase),
        "elapsed_seconds": round(elapsed, 1),
        "stores": {"old": redact(cfg.old_url), "new": redact(cfg.new_url)},
        "rows_seeded": {"customers": seeded[0], "orders": seeded[1]},
        "rows_copied": rows,
        "rows_copied_total": sum(rows.values()),
        "verifications": watch.verifications,
        "verification_ok": bool(last_v and last_v["ok"]),
        "gates": gates,
        "gates_overridden": overridden,
        "application": {"writes": c.writes, "write_failures": dict(c.write_failures), "reads": c.reads,
                        "read_failures": dict(c.read_failures), "by_kind": dict(c.by_kind)},
        "secondary_writes": {"attempts": window.secondary_attempts, "successes": window.secondary_successes,
                             "failures": window.failures_by_class(), "success_rate": secondary_rate},
        "shadow_reads": {"compared": window.shadow_samples, "by_result": shadow, "match_rate": match_rate},
        "acknowledged_writes": {"keys_checked": checked, "problems": problems[:20],
                                "problem_count": len(problems)},
        "split_column": split,
        "transitions": [{"from": str(r.from_phase), "to": str(r.to_phase), "kind": r.kind, "by": r.by,
                         "reason": r.reason, "at": r.at.isoformat()} for r in status.transitions],
        "log": str(cfg.workdir / "demo.log"),
    }


def _overridden(cfg: DemoConfig, status: MigrationStatus, gates: dict[str, dict[str, Any]]) -> list[str]:
    """Gates the operator forced past with ``--allow-volatile-new-store``: only ``new_store_durable`` failed,
    and the transition history records the forced advance (kind ``force``, with the reason)."""
    if not cfg.allow_volatile:
        return []
    forced = {str(t.to_phase) for t in status.transitions if t.kind == "force"}
    return [p for p in GATED if p in forced and not gates.get(p, {}).get("passed")
            and {k for k, ok in (gates.get(p, {}).get("checks") or {}).items() if not ok} == {"new_store_durable"}]


def _fmt(name: str, x: Any) -> str:
    if not isinstance(x, int | float):
        return "–" if x is None else str(x)
    if "rate" in name or "impact" in name or "completion" in name:
        return f"{100 * x:.2f}%"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


def _metric_text(m: dict[str, Any]) -> str:
    """``shadow_match_rate 100.00% > 99.90% (1,473 samples, min 100): pass``"""
    name = str(m.get("name", "?"))
    samples = f" ({m.get('samples', 0):,} samples, min {m.get('min_samples', 0):,})" if m.get("min_samples") else ""
    return (f"{name} {_fmt(name, m.get('value'))} {m.get('op', '')} {_fmt(name, m.get('threshold'))}{samples}: "
            f"{m.get('verdict', '?')}")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.3f} %"


def print_report(r: dict[str, Any]) -> None:
    """The report on the terminal (the JSON file has the same numbers)."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("migration", f"{r['migration']} → {r['phase']} in {r['elapsed_seconds']} s")
    t.add_row("rows copied", ", ".join(f"{k} {v:,}" for k, v in r["rows_copied"].items())
              + f" (total {r['rows_copied_total']:,})")
    for v in r["verifications"]:
        t.add_row("verification",
                  f"{v['phase']:<15} {v['direction']}: {v['rows_compared']:,} rows, {v['missing']} missing, "
                  f"{v['extra']} extra, {v['field_different']} field-different, {v['repaired']} repaired → "
                  + ("clean" if v["ok"] else "NOT clean"))
    for phase in GATED:
        g = r["gates"].get(phase)
        if g is None:
            t.add_row(f"gate {phase}", "no decision recorded")
            continue
        verdict = ("passed" if g.get("passed") else
                   "FORCED by the operator's override (recorded)" if phase in r.get("gates_overridden", []) else "HELD")
        t.add_row(f"gate {phase}", verdict
                  + f" after {g['evaluations']} evaluation(s), evidence from the workflow history:")
        for m in g.get("metrics") or []:
            t.add_row("", _metric_text(m))
        if not g.get("metrics"):
            t.add_row("", checks_text(g))
    a = r["application"]
    t.add_row("application", f"{a['writes']:,} writes ({sum(a['write_failures'].values())} failed), "
              f"{a['reads']:,} reads ({sum(a['read_failures'].values())} failed)")
    s = r["secondary_writes"]
    t.add_row("secondary writes", f"{s['successes']:,} of {s['attempts']:,} succeeded: {_pct(s['success_rate'])}"
              + (f" (failures: {s['failures']})" if s["failures"] else ""))
    sh = r["shadow_reads"]
    t.add_row("shadow reads", f"{sh['compared']:,} compared, match rate {_pct(sh['match_rate'])}")
    ack = r["acknowledged_writes"]
    t.add_row("acknowledged writes", f"{ack['keys_checked']:,} keys read back from the new store: "
              + ("all present and equal" if not ack["problem_count"] else f"{ack['problem_count']} PROBLEMS"))
    sp = r.get("split_column")
    if sp:
        ex = sp["example"]
        t.add_row("split column", f"{sp['column']}: {sp['rows_compared']:,} customers in both stores, "
                  + ("all agree" if not sp["mismatches"] else f"{sp['mismatches']} DISAGREE")
                  + f" (e.g. {ex['old_name']!r} = {ex['new_first_name']!r} + {ex['new_last_name']!r})")
    t.add_row("log", r["log"])
    out.print()
    out.rule("dualwrite demo report")
    out.print(t)
    out.print(f"\nresult: {'[bold green]OK[/]' if r['ok'] else '[bold red]FAILED[/]'}")
    out.print(f"Web UI (the migration's whole history): {r['ui_url']}", soft_wrap=True)
