"""[T2-4] The migration's status shows what log capture missed, as its relay reports it, and stops showing it
once the marks are gone (a verification with repair clears them).

Before, only the relay's own status listed a capture loss: an operator reading ``dualwrite status`` (the
migration's status query) saw nothing, although the cutover gate would fail on it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from conftest import MigrationDriver, create_pg, eventually, spec_for
from temporalio.client import WorkflowExecutionStatus

from dualwrite import control as ctl
from dualwrite.cdc import capture
from dualwrite.store import Store
from workflows.models import TASK_QUEUE
from workflows.relay import RelayInput, RelayWorkflow, relay_workflow_id


async def test_the_migration_status_shows_a_capture_loss_until_it_is_cleared(
        dw: MigrationDriver, cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    create_pg(cdc_pg_old, table_name, 20)
    create_pg(cdc_pg_new, table_name, 0)
    name = f"lostst-{table_name[-4:]}"
    spec = spec_for(name, "cdcpgold", "cdcpgnew", table_name, strategy="cdc")
    ctl.ensure_schema(cdc_pg_old)
    control = cdc_pg_old if spec.control in (None, "cdcpgold") else cdc_pg_new
    handle = await dw.start(spec)

    async def relay_running() -> bool:
        try:
            desc = await dw.client.get_workflow_handle(relay_workflow_id(name)).describe()
        except Exception:  # noqa: BLE001 - not started yet
            return False
        return desc.status == WorkflowExecutionStatus.RUNNING

    await eventually(relay_running, timeout=60, what="the migration's relay")
    # the same relay with short drains (its status is reported after every drain; the default is a minute)
    await dw.client.get_workflow_handle(relay_workflow_id(name)).terminate("short drains for the test")
    relay = await dw.client.start_workflow(
        RelayWorkflow.run, RelayInput(spec=spec, max_activity_seconds=1, poll_seconds=0.1,
                                      heartbeat_timeout_seconds=5),
        id=relay_workflow_id(name), task_queue=TASK_QUEUE)
    try:
        what = f"store 'cdcpgold': TRUNCATE of {table_name} captured for migration {name!r}"

        async def shown() -> Any:
            st = await dw.status(handle)
            return st.capture_lost

        assert (await dw.status(handle)).capture_lost == []
        capture.note_loss(control, name, cdc_pg_old, what)
        lost = await eventually(shown, timeout=60, what="the capture loss in the migration's status")
        assert lost == [what]
        capture.clear_losses(control, name, [cdc_pg_old])

        async def cleared() -> bool:
            return (await dw.status(handle)).capture_lost == []

        await eventually(cleared, timeout=60, what="the capture loss gone from the migration's status")
    finally:
        for h in (handle, relay):
            with contextlib.suppress(Exception):  # already ended
                await h.terminate("test over")
        for store in (cdc_pg_old, cdc_pg_new):
            capture.teardown(store, control, name)
