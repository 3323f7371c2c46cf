"""Bypass capture's activity names and their arguments / results (pydantic, no I/O).

With an adapter strategy, the workflow keeps a capture trigger on the authoritative store's migrated tables
that records writes which did not come through the adapter (:mod:`dualwrite.bypass`), and collects the records
before a cutover gate: counts per (table, writer identity) reach history, the keys go to the repair queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from dualwrite.capture import method_for
from dualwrite.gates import GateMetric, Verdict
from dualwrite.spec import MigrationSpec

BYPASS_CAPTURE = "bypass_capture"
BYPASS_COLLECT = "bypass_collect"
BYPASS_REFUSE_OLD = "bypass_refuse_old"
BYPASS_PATCH = "bypass-capture"
"""Histories from before: no bypass capture, no bypass metric in the gate."""
FENCE_COLLECT_PATCH = "bypass-fence-collect"
"""Histories from before: bypassed writes were not collected under the write fence (those written between the
last collection and the fence were collected only after authority had moved)."""
REFUSE_OLD_PATCH = "bypass-refuse-old"
"""Histories from before: after write cutover the old store accepted raw writes (lost under adapter
strategies: nothing carries them to the new store)."""
REFUSING = "refusing"
""":attr:`BypassSummary.old_store` while the old store refuses writes that bypass the adapter."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


MAX_GROUPS = 50
"""At most this many (table, writer) groups are kept in history; the rest are summed into one."""


class BypassGroup(_Model):
    """Bypassed writes of one writer to one table: counts and the writer's identity only, never keys."""

    table: str
    writer: str
    count: int = 0
    last_seen: datetime | None = None


class BypassSummary(_Model):
    """What the workflow keeps: every group seen since capture started, and the total."""

    total: int = 0
    groups: list[BypassGroup] = Field(default_factory=list)
    capture_on: str = Field(default="", description="the store side capturing now: old, new or '' (none)")
    old_store: str = Field(default="", description="after write cutover: 'refusing' while the old store refuses "
                                                   "writes that bypass the adapter, else why it cannot; '' before")
    old_refused: int | None = Field(default=None, description="writes the old store refused so far (None: not "
                                                              "measured on this engine, or never refusing)")


def applies(spec: MigrationSpec) -> bool:
    """As :func:`dualwrite.bypass.applies` (the workflow does not import the data path): only where the
    database does not capture every writer anyway, with one store authoritative for the whole migration."""
    return not method_for(spec.strategy).database_capture and not spec.tenant_tables


def in_window(summary: BypassSummary | None, since: datetime) -> list[BypassGroup]:
    """The groups with a bypassed write seen at or after ``since``."""
    if summary is None:
        return []
    return [g for g in summary.groups if g.last_seen is not None and g.last_seen >= since]


BYPASS_SOURCE = "bypass capture"
METRIC = "bypassed_writes"


def gate_metric(summary: BypassSummary | None, since: datetime, window_seconds: float) -> GateMetric:
    """The gate's verdict: no write may have bypassed the adapter within the window (tables and writer
    identities as evidence, never keys)."""
    recent = in_window(summary, since)
    n = sum(g.count for g in recent)
    if not recent:
        detail = f"no write bypassed the adapter in the last {window_seconds:g} s"
    else:
        who = "; ".join(f"{g.table}: {g.count:,} by {g.writer}" for g in recent[:10])
        more = f" and {len(recent) - 10} more" if len(recent) > 10 else ""
        detail = (f"{n:,} writes bypassed the adapter in the last {window_seconds:g} s ({who}{more}); route "
                  "those write paths through the adapter (see `dualwrite audit`), their keys were queued for repair")
    return GateMetric(name=METRIC, value=float(n), threshold=0, op="==", samples=n, min_samples=0,
                      verdict=Verdict.FAIL if recent else Verdict.PASS, detail=detail, source=BYPASS_SOURCE)


def merge(summary: BypassSummary, groups: Sequence[BypassGroup]) -> BypassSummary:
    """Add freshly collected groups into the summary (pure: the workflow calls it)."""
    by = {(g.table, g.writer): g.model_copy() for g in summary.groups}
    for g in groups:
        cur = by.get((g.table, g.writer))
        if cur is None:
            by[(g.table, g.writer)] = g.model_copy()
        else:
            cur.count += g.count
            if g.last_seen is not None and (cur.last_seen is None or g.last_seen > cur.last_seen):
                cur.last_seen = g.last_seen
    ordered = sorted(by.values(), key=lambda g: g.last_seen.timestamp() if g.last_seen else 0.0, reverse=True)
    if len(ordered) > MAX_GROUPS:
        rest = ordered[MAX_GROUPS - 1:]
        other = BypassGroup(table="*", writer="(other writers)", count=sum(g.count for g in rest),
                            last_seen=max((g.last_seen for g in rest if g.last_seen), default=None))
        ordered = [*ordered[:MAX_GROUPS - 1], other]
    return summary.model_copy(update={"groups": ordered, "total": summary.total + sum(g.count for g in groups)})


class BypassCollectResult(_Model):
    groups: list[BypassGroup] = Field(default_factory=list, description="counts per (table, writer), no keys")
    queued: int = Field(default=0, description="records whose keys went to the repair queue")
    old_refused: int | None = Field(default=None, description="writes the old store refused so far (asked for)")


class BypassRefuseResult(_Model):
    refusing: bool = Field(default=False, description="the old store refuses writes that bypass the adapter")
    note: str = Field(default="", description="why it cannot ('' when it does, or when lifted)")
    refused: int | None = Field(default=None, description="writes refused so far (None: not measured)")


def refusal_line(summary: BypassSummary | None) -> str:
    """The line ``dualwrite status`` prints about the old store after write cutover ('' when nothing to say)."""
    if summary is None:
        return ""
    if not summary.old_store:
        if not summary.old_refused:
            return ""
        return (f"old store accepts raw writes again (write cutover rolled back); it refused "
                f"{summary.old_refused:,} writes that bypassed the adapter")
    if summary.old_store != REFUSING:
        return f"old store does not refuse writes that bypass the adapter: {summary.old_store}"
    n = "not measured on this engine" if summary.old_refused is None else f"{summary.old_refused:,} refused"
    return f"old store refuses writes that bypass the adapter: {n}"
