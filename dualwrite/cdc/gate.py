"""The cutover gate's view of lost capture: no cutover relies on stores that capture may have left apart.

Capture that missed changes (a slot that vanished, a purged binlog, a TRUNCATE; see
:func:`dualwrite.cdc.capture.note_loss`) leaves the stores different in ways no relay will find. Only a
verification with repair that ran after the newest loss, over every tenant, levels them; until one did, a
gate into CUTOVER_READS or beyond fails with the loss named. Pure: the activity reads the marks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from dualwrite.gates import GateMetric, Verdict

NAME = "capture_lost"


def capture_lost_metric(lost: Sequence[tuple[str, float]], verified_at: datetime | None, verified_ok: bool,
                        repairing: bool) -> GateMetric | None:
    """None when nothing was lost; else pass only after a clean repairing verification since the last loss.

    ``lost``: (what, unix time) per mark; ``verified_at`` / ``verified_ok`` / ``repairing``: the migration's
    last verification (None: none yet)."""
    if not lost:
        return None
    newest = max(at for _, at in lost)
    done = verified_at is not None and verified_ok and repairing and verified_at.timestamp() > newest
    what = "; ".join(dict.fromkeys(m for m, _ in lost))
    return GateMetric(name=NAME, value=float(len(lost)), threshold=0, op="==", samples=len(lost),
                      verdict=Verdict.PASS if done else Verdict.FAIL,
                      detail=(f"capture lost changes, levelled by a verification with repair since: {what}" if done
                              else f"capture lost changes; run a verification with repair first: {what}"))
