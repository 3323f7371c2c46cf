"""[T2-4] A clean verification with repair of a whole ``cdc`` migration clears the capture-loss marks it
levelled, so the relay's status stops listing them (the cutover gate already counted them as levelled).

Only marks noted before the verification started go: a loss noted since is not levelled by it. A
verification without repair levels nothing and clears nothing.
"""

from __future__ import annotations

import secrets
import time
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import MigrationDriver, create_pg, execute, spec_for

from dualwrite import control, hooks
from dualwrite.cdc import capture
from dualwrite.store import Store
from workflows.models import TASK_QUEUE, VerificationSummary, VerifyInput
from workflows.verify import VerificationWorkflow


async def _verify(dw: MigrationDriver, spec: Any, repair: bool) -> VerificationSummary:
    res: VerificationSummary = await dw.client.execute_workflow(
        VerificationWorkflow.run, VerifyInput(spec=spec, repair=repair),
        id=f"verify-{spec.name}-{secrets.token_hex(3)}", task_queue=TASK_QUEUE, result_type=VerificationSummary)
    return res


async def test_a_repairing_verification_clears_the_losses_noted_before_it(
        dw: MigrationDriver, cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    control.ensure_schema(cdc_pg_old)
    create_pg(cdc_pg_old, table_name, 20)
    create_pg(cdc_pg_new, table_name, 20)
    spec = spec_for(f"clr-{table_name[-4:]}", "cdcpgold", "cdcpgnew", table_name, strategy="cdc")
    capture.note_loss(cdc_pg_old, spec.name, cdc_pg_old, "store 'cdcpgold': TRUNCATE of t captured")
    capture.note_loss(cdc_pg_old, spec.name, cdc_pg_new, "store 'cdcpgnew': slot vanished")
    assert len(capture.losses(cdc_pg_old, spec.name, [cdc_pg_old, cdc_pg_new])) == 2

    summary = await _verify(dw, spec, repair=False)
    assert summary.ok
    assert len(capture.losses(cdc_pg_old, spec.name, [cdc_pg_old, cdc_pg_new])) == 2, "no repair: nothing cleared"

    summary = await _verify(dw, spec, repair=True)
    assert summary.ok and summary.repair
    assert capture.losses(cdc_pg_old, spec.name, [cdc_pg_old, cdc_pg_new]) == []


async def test_a_loss_noted_while_the_verification_runs_is_kept_whatever_the_worker_clock_says(
        dw: MigrationDriver, cdc_pg_old: Store, cdc_pg_new: Store, table_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss is noted during the verification's repair, by a worker whose clock is an hour behind the
    workflow's: compared by clock it looked older than the verification's start and was dropped, unlevelled."""
    control.ensure_schema(cdc_pg_old)
    create_pg(cdc_pg_old, table_name, 20)
    create_pg(cdc_pg_new, table_name, 20)
    execute(cdc_pg_new, f"DELETE FROM {table_name} WHERE id = 3")  # something to repair
    spec = spec_for(f"clk-{table_name[-4:]}", "cdcpgold", "cdcpgnew", table_name, strategy="cdc")
    capture.note_loss(cdc_pg_old, spec.name, cdc_pg_old, "store 'cdcpgold': TRUNCATE of t captured")
    real_point, real_time = hooks.point, time.time

    def point(name: str, **context: Any) -> None:
        if name == "verify.before_repair" and not capture.losses(cdc_pg_old, spec.name, [cdc_pg_new]):
            monkeypatch.setattr(capture, "time", SimpleNamespace(time=lambda: real_time() - 3600))
            try:
                capture.note_loss(cdc_pg_old, spec.name, cdc_pg_new, "store 'cdcpgnew': slot vanished")
            finally:
                monkeypatch.setattr(capture, "time", time)
        real_point(name, **context)

    monkeypatch.setattr(hooks, "point", point)
    summary = await _verify(dw, spec, repair=True)
    assert summary.ok and summary.repaired == 1
    assert capture.losses(cdc_pg_old, spec.name, [cdc_pg_old]) == []
    assert capture.losses(cdc_pg_old, spec.name, [cdc_pg_new]) == ["store 'cdcpgnew': slot vanished"]
