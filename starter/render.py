"""Rendering a migration's status for a terminal.

Everything here turns :class:`workflows.models.MigrationStatus` (and list rows) into rich renderables.
The output must stay readable where colour is absent (``NO_COLOR``, a pipe, a CI log): state is always
carried by text or glyphs (``✓``, ``▶``, ``PAUSED``, a two-glyph progress bar), and colour only repeats it.
On a console that cannot encode the block glyphs the bars fall back to ASCII.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from dualwrite.capture import method_for
from workflows.models import PHASE_ORDER, MigrationStatus, Phase, TableProgress, TransitionRecord

BAR_WIDTH = 24


def _unicode_ok(console: Console | None) -> bool:
    if console is None:
        return True
    return "utf" in (console.encoding or "").lower()


def progress_bar(percent: float, width: int = BAR_WIDTH, *, unicode: bool = True) -> Text:
    """A fixed-width bar whose filled and empty parts differ by glyph, not only by colour."""
    percent = max(0.0, min(100.0, percent))
    filled = int(round(width * percent / 100.0))
    full, empty = ("█", "░") if unicode else ("#", ".")
    bar = Text()
    bar.append(full * filled, style="green" if percent >= 100 else "cyan")
    bar.append(empty * (width - filled), style="grey39")
    return bar


def human_duration(seconds: float | None) -> str:
    """``3m 20s`` style: an ETA is read at a glance, not parsed."""
    if seconds is None:
        return "–"
    s = int(max(0, round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    return f"{s // 86400}d {(s % 86400) // 3600:02d}h"


def human_time(at: datetime | None, now: datetime | None = None) -> str:
    """Local wall-clock time plus how long ago, because operators compare against their own clock."""
    if at is None:
        return "–"
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    ago = (now - at).total_seconds()
    stamp = at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({human_duration(ago)} ago)" if ago >= 0 else stamp


def table_percent(t: TableProgress) -> float:
    """Progress of one table: exact from the row counts when known, else the workflow's own percent."""
    if t.done:
        return 100.0
    if t.rows_estimate > 0:
        return min(99.9, 100.0 * t.rows_copied / t.rows_estimate)
    return float(t.percent)


def phase_track(current: Phase, *, unicode: bool = True, width: int = 80) -> Text:
    """All phases in order: passed ones ticked, the current one marked, the rest plain. Lines break only
    between phases, so a tick never ends up on another line than its phase."""
    tick, mark, sep = ("✓", "▶", " › ") if unicode else ("+", ">", " > ")
    here = PHASE_ORDER.index(current)
    text = Text()
    used = 0
    for i, phase in enumerate(PHASE_ORDER):
        if i < here:
            label, style = f"{tick} {phase.value}", "green"
        elif i == here:
            label, style = f"{mark} {phase.value}", "bold reverse"
        else:
            label, style = phase.value, "grey50"
        if i:
            if used + len(sep) + len(label) > width:
                text.append("\n")
                used = 0
            else:
                text.append(sep, style="grey50")
                used += len(sep)
        text.append(label, style=style)
        used += len(label)
    return text


def _kv_table(rows: Iterable[tuple[str, RenderableType]], title: str | None = None) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    if title:
        return _titled(title, t)
    return t


def _titled(title: str, body: RenderableType) -> Table:
    outer = Table.grid()
    outer.add_row(Text(title, style="bold underline"))
    outer.add_row(body)
    return outer


def _tables_section(status: MigrationStatus, unicode: bool) -> RenderableType:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    t.add_column("table")
    t.add_column("progress", no_wrap=True)
    t.add_column("%", justify="right")
    t.add_column("rows", justify="right")
    t.add_column("ranges", justify="right")
    t.add_column("eta", justify="right")
    for tp in status.tables:
        pct = table_percent(tp)
        name = tp.source if tp.source == tp.target else f"{tp.source} → {tp.target}" if unicode else \
            f"{tp.source} -> {tp.target}"
        rows = f"{tp.rows_copied:,} / {tp.rows_estimate:,}" if tp.rows_estimate else f"{tp.rows_copied:,}"
        ranges = f"{tp.ranges_done}/{tp.ranges_total}" if tp.ranges_total else "–"
        eta = "done" if tp.done else human_duration(tp.eta_seconds)
        t.add_row(name, progress_bar(pct, unicode=unicode), f"{pct:.1f}", rows, ranges, eta)
    return _titled("tables", t)


def verification_section(status: MigrationStatus) -> RenderableType | None:
    v = status.last_verification
    if v is None:
        return None
    verdict = Text(v.verdict, style=("green bold" if v.verdict == "ok" else "yellow bold") if v.ok else "red bold")
    rows: list[tuple[str, RenderableType]] = [
        ("result", verdict),
        ("at", human_time(v.at)),
        ("direction", v.direction),
        ("rows compared", f"{v.rows_compared:,}"),
        ("missing / extra / different", f"{v.missing:,} / {v.extra:,} / {v.field_different:,}"),
        ("repaired", f"{v.repaired:,}" + (f" (written into the {v.repaired_into} store)" if v.repaired else "")),
    ]
    body: list[RenderableType] = [_kv_table(rows)]
    bad = [tv for tv in v.tables if not tv.ok]
    if bad:
        t = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("table", "missing", "extra", "different", "fields", "error"):
            t.add_column(col)
        for tv in bad:
            t.add_row(tv.source, str(tv.missing), str(tv.extra), str(tv.field_different),
                      ", ".join(tv.fields), tv.error)
        body.append(t)
    return _titled("last verification", Group(*body))


VERDICT_STYLE = {"pass": "green", "fail": "red bold", "not-yet": "yellow", "n/a": "grey50"}


def _metric_value(name: str, value: Any) -> str:
    if value is None:
        return "–"
    if name in ("reconciliation_gap", "repair_queue", "approval"):
        return f"{value:,.0f}"
    if name == "async_lag_seconds":
        return f"{float(value):.3g} s"
    return f"{float(value) * 100:.4g}%"


def gate_section(gate: Mapping[str, Any] | None, *, console: Console | None = None,
                 title: str | None = None) -> RenderableType | None:
    """A gate evaluation (``GateResult`` as JSON): one row per metric with value, threshold, samples and
    verdict, then the evidence. Used by ``status`` and by ``advance --dry-run``."""
    if not gate:
        return None
    if not gate.get("metrics"):
        return _gate_section(gate, _unicode_ok(console))
    passed = bool(gate.get("passed"))
    head = Text()
    head.append("passed" if passed else "NOT passed", style="green bold" if passed else "red bold")
    if gate.get("to"):
        head.append(f" towards {gate['to']}")
    if gate.get("tenant"):
        head.append(f" for tenant {gate['tenant']}")
    evidence = gate.get("evidence") or {}
    if evidence.get("stats_scope"):
        head.append(f"  (statistics: {evidence['stats_scope']}, last {evidence.get('window_seconds', '?')}s, "
                    f"{evidence.get('instances', 0)} instances)", style="grey50")
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("metric", "value", "threshold", "samples", "verdict", "evidence"):
        t.add_column(col, no_wrap=col not in ("evidence",), justify="right" if col in ("value", "samples") else
                     "left")
    for m in gate["metrics"]:
        name = str(m.get("name"))
        verdict = str(m.get("verdict"))
        samples = f"{int(m.get('samples') or 0):,}/{int(m.get('min_samples') or 0):,}"
        threshold = f"{m.get('op', '')} {_metric_value(name, m.get('threshold'))}"
        t.add_row(name, _metric_value(name, m.get("value")), threshold, samples,
                  Text(verdict, style=VERDICT_STYLE.get(verdict, "")), str(m.get("detail") or ""))
    return _titled(title or "gate", Group(head, t))


def _gate_section(gate: Mapping[str, Any] | None, unicode: bool) -> RenderableType | None:
    """The gate evidence dict follows ``GateResult`` (passed/to/checks/evidence/reasons); anything else
    is shown as key/value so a new field is never silently hidden."""
    if not gate:
        return None
    tick, cross = ("✓", "✗") if unicode else ("ok", "NO")
    rows: list[tuple[str, RenderableType]] = []
    if "passed" in gate:
        passed = bool(gate["passed"])
        rows.append(("passed", Text("yes", style="green bold") if passed else Text("no", style="red bold")))
    if gate.get("to"):
        rows.append(("towards", str(gate["to"])))
    for name, ok in (gate.get("checks") or {}).items():
        rows.append((f"  {name}", Text(tick, style="green") if ok else Text(cross, style="red")))
    for name, value in (gate.get("evidence") or {}).items():
        rows.append((f"  {name}", _scalar(value)))
    for reason in gate.get("reasons") or []:
        rows.append(("reason", str(reason)))
    for key, value in gate.items():
        if key not in ("passed", "to", "checks", "evidence", "reasons", "metrics", "tenant", "at", "traffic"):
            rows.append((key, _scalar(value)))
    return _kv_table(rows, "gate")


def _scalar(value: Any) -> str:
    """Evidence values: nested mappings as ``k=v, k=v`` (read, not parsed), floats short."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_scalar(v)}" for k, v in value.items())
    if isinstance(value, list):
        return json.dumps(value, default=str)
    return str(value)


def triggers_section(status: MigrationStatus) -> RenderableType | None:
    """The last automatic-rollback check (during CUTOVER_READS / CUTOVER_WRITES)."""
    ev = status.triggers
    if ev is None or not ev.metrics:
        return None
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("trigger", "value", "limit", "samples", "verdict", "evidence"):
        t.add_column(col, no_wrap=col != "evidence")
    for m in ev.metrics:
        t.add_row(m.name, _metric_value(m.name, m.value), f"{m.op} {_metric_value(m.name, m.threshold)}",
                  f"{m.samples:,}/{m.min_samples:,}", Text("TRIPPED" if m.verdict.value == "fail" else m.verdict.value,
                                                            style=VERDICT_STYLE.get(m.verdict.value, "")), m.detail)
    scope = f" ({ev.scope})" if ev.scope else ""
    return _titled(f"rollback triggers{scope}", t)


def tenants_section(status: MigrationStatus) -> RenderableType | None:
    """Tenants side by side: effective phase, where reads and writes go, gate, hold."""
    if not status.tenants:
        return None
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("tenant", "phase", "own", "writes first", "reads", "gate", "verified", "hold / work"):
        t.add_column(col, no_wrap=col != "hold / work")
    for r in status.tenants:
        gate = "–" if r.gate_passed is None else Text("passed", style="green") if r.gate_passed else \
            Text("not passed", style="red")
        verified = "–" if r.last_verification_ok is None else Text("ok", style="green") if r.last_verification_ok \
            else Text("FAILED", style="red")
        note = f"HELD by {r.hold.by}: {r.hold.reason}" if r.hold else r.work_state
        t.add_row(r.tenant, Text(r.phase.value, style="bold cyan" if r.own else ""), "yes" if r.own else "follows",
                  r.authoritative, r.reads_from, gate, verified, note)
    return _titled("tenants", t)


def retirement_section(status: MigrationStatus) -> RenderableType | None:
    ret = status.retirement
    if ret is None:
        return None
    rows: list[tuple[str, RenderableType]] = [
        (t.source, f"{t.action}" + (f" as {t.retired_as}" if t.retired_as else "")) for t in ret.tables]
    if ret.triggers_removed:
        rows.append(("triggers removed", ", ".join(ret.triggers_removed)))
    if ret.logs_dropped:
        rows.append(("key logs dropped", ", ".join(ret.logs_dropped)))
    rows.append(("repairs discarded", f"{ret.repair_entries_discarded:,}"))
    return _kv_table(rows, "old store retired (CLEANUP)")


def short_time(at: datetime | None, now: datetime | None = None) -> str:
    """``20:41:43`` for today (local time), else the date too: a history column stays one line."""
    if at is None:
        return "–"
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    local = at.astimezone()
    today = (now or datetime.now(UTC)).astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M")


def transitions_table(records: Sequence[TransitionRecord], *, unicode: bool = True) -> Table:
    arrow = "→" if unicode else "->"
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("at", "kind", "change", "by", "reason"):
        t.add_column(col, no_wrap=col != "reason")
    for r in records:
        change = r.from_phase.value if r.from_phase == r.to_phase else \
            f"{r.from_phase.value} {arrow} {r.to_phase.value}"
        style = "red" if r.kind == "rollback" else "yellow" if r.kind == "force" else ""
        t.add_row(short_time(r.at), Text(r.kind, style=style), change, r.by, r.reason)
    return t


def unchanged_application_note(status: MigrationStatus) -> str:
    """Capture in the database (``triggers``, ``cdc``): where an application that writes without the adapter
    must write now ([T2-1]). The store that is not authoritative refuses its writes, so this is the line an
    operator acts on at write cutover."""
    denies = method_for(status.strategy).database_capture
    if not denies or status.tenants or status.phase.value in ("CLEANUP", "DONE"):
        return ""
    if status.phase.rank >= Phase.CUTOVER_WRITES.rank:
        return ("application (no adapter): must write to the NEW store now; the old store refuses its writes "
                "(a rollback turns this around)")
    return "application (no adapter): writes to the OLD store; the new store refuses its writes until write cutover"


def _warning_lines(status: MigrationStatus) -> list[Text]:
    """What capture missed (a verification with repair must level it) and signals dropped for bad input."""
    out = [Text(f"capture lost changes: {lost}", style="bold red") for lost in status.capture_lost]
    if status.signals_dropped:
        out.append(Text("signals dropped for bad input: " + "; ".join(status.signals_dropped[-3:]), style="yellow"))
    return out


def render_status(status: MigrationStatus, *, workflow_status: str | None = None, history: int = 8,
                  console: Console | None = None, compact: bool = False) -> RenderableType:
    """The whole ``dualwrite status`` screen for one migration.

    ``compact`` (``status --watch``): a live view must fit a terminal, so counters and gate evidence
    shrink to one line each and only the last few transitions are shown.
    """
    unicode = _unicode_ok(console)
    head = Text()
    head.append(status.name, style="bold")
    head.append("  phase ")
    head.append(status.phase.value, style="bold cyan")
    head.append(f"  epoch {status.epoch}  mode {status.mode}  strategy {status.strategy}")
    if status.paused:
        head.append("  PAUSED", style="bold yellow reverse")
    if workflow_status and workflow_status != "RUNNING":
        bad = workflow_status in ("FAILED", "TERMINATED", "TIMED_OUT", "CANCELED")
        head.append(f"  workflow {workflow_status}", style="bold red" if bad else "bold green")
    parts: list[RenderableType] = [head, phase_track(status.phase, unicode=unicode,
                                                      width=console.width if console else 80)]
    if status.waiting_for:
        parts.append(Text(f"waiting for: {status.waiting_for}", style="yellow"))
    note = unchanged_application_note(status)
    if note:
        parts.append(Text(note, style="cyan"))
    if status.rolling_back:
        parts.append(Text(f"rolling back: {status.rolling_back}", style="bold red"))
    if status.aborted is not None:
        a = status.aborted
        parts.append(Text(f"ABORTED in {a.from_phase.value} by {a.by or '?'}: {a.reason}", style="bold red"))
        if a.message:
            parts.append(Text(a.message))
    parts += _warning_lines(status)
    if status.hold is not None:
        parts.append(Text(f"HELD by {status.hold.by or '?'}: {status.hold.reason}", style="bold yellow"))
    parts.append(Text(""))
    if status.tables:
        parts += [_tables_section(status, unicode), Text("")]
    if compact:
        parts += [line for line in _compact_lines(status) if line is not None]
        history = min(history, 3)
    else:
        summary: list[tuple[str, RenderableType]] = [("repair queue", f"{status.repair_queue_depth:,}")]
        summary += [(k, f"{v:,}") for k, v in sorted(status.counters.items())]
        parts += [_kv_table(summary, "counters"), Text("")]
        for section in (verification_section(status), gate_section(status.gate, console=console),
                        triggers_section(status), tenants_section(status), retirement_section(status)):
            if section is not None:
                parts += [section, Text("")]
    if status.transitions and history > 0:
        shown = status.transitions[-history:]
        more = len(status.transitions) - len(shown)
        title = "transitions" + (f" (last {len(shown)} of {len(status.transitions)})" if more else "")
        parts.append(_titled(title, transitions_table(shown, unicode=unicode)))
    return Group(*parts)


def _compact_lines(status: MigrationStatus) -> list[Text | None]:
    lines: list[Text | None] = [Text(f"repair queue {status.repair_queue_depth:,}   " + "   ".join(
        f"{k} {v:,}" for k, v in sorted(status.counters.items())), overflow="ellipsis", no_wrap=True)]
    v = status.last_verification
    if v is not None:
        verdict = (v.verdict, "green" if v.verdict == "ok" else "yellow") if v.ok else ("FAILED", "red bold")
        line = Text("last verification ")
        line.append(verdict[0], style=verdict[1])
        line.append(f"  {human_time(v.at)}  compared {v.rows_compared:,}  missing {v.missing:,}  "
                    f"extra {v.extra:,}  different {v.field_different:,}")
        lines.append(line)
    if status.gate:
        gate = Text("gate ")
        gate.append("passed" if status.gate.get("passed") else "not passed",
                    style="green" if status.gate.get("passed") else "red")
        if status.gate.get("to"):
            gate.append(f" towards {status.gate['to']}")
        reasons = status.gate.get("reasons") or []
        if reasons:
            gate.append(": " + "; ".join(str(r) for r in reasons))
        lines.append(gate)
    if status.tenants:
        lines.append(Text("tenants  " + "   ".join(f"{t.tenant} {t.phase.value}{'*' if t.own else ''}"
                                                  + (" HELD" if t.hold else "") for t in status.tenants),
                          overflow="ellipsis", no_wrap=True))
    lines.append(Text(""))
    return lines


def migrations_table(rows: Sequence[Mapping[str, Any]], *, console: Console | None = None) -> Table:
    """``dualwrite list``: one line per migration workflow."""
    unicode = _unicode_ok(console)
    t = Table(box=None, pad_edge=False, header_style="bold")
    show_closed = any(r.get("close_time") for r in rows)
    wide = console is None or console.width >= 110
    fmt = "%Y-%m-%d %H:%M:%S" if wide else "%m-%d %H:%M"
    for col in ("name", "phase", "backfill", "status", "started", *(("closed",) if show_closed else ())):
        t.add_column(col, no_wrap=True)
    for r in rows:
        pct = r.get("backfill_percent")
        backfill = Text("–") if pct is None else progress_bar(float(pct), 10 if wide else 6, unicode=unicode) + \
            Text(f" {pct:>3}%")
        status = str(r.get("status") or "")
        style = "green" if status == "RUNNING" else "red" if status in ("FAILED", "TERMINATED",
                                                                        "TIMED_OUT") else ""
        cells: list[RenderableType] = [str(r["name"]), str(r.get("phase") or "?"), backfill,
                                       Text(status, style=style), _stamp(r.get("start_time"), fmt)]
        if show_closed:
            cells.append(_stamp(r.get("close_time"), fmt))
        t.add_row(*cells)
    return t


def _stamp(at: datetime | None, fmt: str) -> str:
    if at is None:
        return "–"
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone().strftime(fmt)
