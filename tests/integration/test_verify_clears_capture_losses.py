"""[T2-4] A clean verification with repair of a whole ``cdc`` migration clears the capture-loss marks it
levelled, so the relay's status stops listing them (the cutover gate already counted them as levelled).

Only marks noted before the verification started go: a loss noted since is not levelled by it. A
verification without repair levels nothing and clears nothing.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from conftest import MigrationDriver, create_pg, spec_for

from dualwrite import control
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
    # a loss noted while the verification runs (after its start) is not levelled by it
    control.save_checkpoint(cdc_pg_old, spec.name, capture._lost_scope(cdc_pg_new), 0,
                            ["store 'cdcpgnew': slot vanished", time.time() + 3600], 0, 1)
    assert len(capture.losses(cdc_pg_old, spec.name, [cdc_pg_old, cdc_pg_new])) == 2

    summary = await _verify(dw, spec, repair=False)
    assert summary.ok
    assert len(capture.losses(cdc_pg_old, spec.name, [cdc_pg_old, cdc_pg_new])) == 2, "no repair: nothing cleared"

    summary = await _verify(dw, spec, repair=True)
    assert summary.ok and summary.repair
    assert capture.losses(cdc_pg_old, spec.name, [cdc_pg_old]) == []
    assert capture.losses(cdc_pg_old, spec.name, [cdc_pg_new]) == ["store 'cdcpgnew': slot vanished"]
