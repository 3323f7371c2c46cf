"""What reaches Temporal history: never a row value, never a secret; and recorded histories replay.

One migration runs with a sentinel value in a row of the old store and a password in the URL of the new
store. Every run of every workflow of that migration is exported, payloads decoded, and searched: the
store's name and the table's name are there (the search works), the sentinel and the password are not.
The worker's logs are searched too. Then the histories recorded under tests/histories/ (from real runs of
this suite, rewritten with DUALWRITE_WRITE_HISTORIES=1) and the fresh ones replay with the current code.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

import pytest
from conftest import (
    SECRET_PASSWORD,
    MigrationDriver,
    create_pg,
    history_text,
    migration_histories,
    recorded_histories,
    replayer,
    retired_table,
    rows_of,
    save_histories,
    spec_for,
)
from temporalio.client import Client, WorkflowHistory

from dualwrite.config import StoreRef
from dualwrite.store import Store


async def test_no_row_data_or_secret_in_history_or_logs(dw: MigrationDriver, temporal_client: Client,
                                                        pg_old: Store, dw_store_urls: dict[str, str],
                                                        table_name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sentinel = f"SENTINEL-{secrets.token_hex(8)}"
    secret_store = Store(StoreRef("pgsecret", dw_store_urls["pgsecret"]))
    try:
        create_pg(pg_old, table_name, 3_000)
        with pg_old.connect() as conn:
            conn.execute(f"UPDATE {table_name} SET name = %s WHERE id = 1234", (sentinel,))
            conn.commit()
        create_pg(secret_store, table_name, 0)
        name = f"secret-{secrets.token_hex(3)}"
        spec = spec_for(name, "pgold", "pgsecret", table_name, mode="auto", auto_cleanup=True)
        handle = await dw.start(spec)
        final = await asyncio.wait_for(handle.result(), timeout=120)
        assert final.phase == "DONE"
        assert rows_of(pg_old, retired_table(final, table_name)) == rows_of(secret_store, table_name)

        histories = await migration_histories(temporal_client, handle.id)
        kinds = {h.events[0].workflow_execution_started_event_attributes.workflow_type.name for h in histories}
        assert kinds == {"MigrationWorkflow", "BackfillWorkflow", "VerificationWorkflow"}
        for h in histories:
            text = history_text(h)
            assert "pgsecret" in text and table_name in text  # the search sees inside payloads
            assert sentinel not in text, f"a row value reached the history of {h.workflow_id}"
            assert SECRET_PASSWORD not in text, f"a password reached the history of {h.workflow_id}"
            # and a replay of each fresh history with the current code is clean
            await replayer().replay_workflow(h)
        assert sentinel not in caplog.text and SECRET_PASSWORD not in caplog.text
        await save_histories(temporal_client, handle.id, "auto-lifecycle")
    finally:
        secret_store.dispose()


async def test_recorded_histories_replay() -> None:
    histories = recorded_histories()
    kinds = {h.events[0].workflow_execution_started_event_attributes.workflow_type.name for h in histories}
    assert {"MigrationWorkflow", "BackfillWorkflow", "VerificationWorkflow"} <= kinds
    assert any(h.events[-1].HasField("workflow_execution_continued_as_new_event_attributes") for h in histories)

    async def each() -> AsyncIterator[WorkflowHistory]:
        for h in histories:
            yield h

    result = await replayer().replay_workflows(each(), raise_on_replay_failure=False)
    failures = {wid: str(err)[:300] for wid, err in result.replay_failures.items()}
    assert not failures, failures
