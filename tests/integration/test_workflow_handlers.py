"""Operator input the workflows must survive, and operator moves that must be safe, against a real server.

- Every signal, update and query handler of the migration's workflows takes missing, null, wrong-typed,
  malformed and oversized input without ever failing a workflow task (a failing task retries forever: the
  migration freezes): signals drop it with a log line and a note in status, updates reject it in their
  validator (nothing written to history). The migration is then driven on as if nothing happened.
- An advance names the phase it leaves: a repeated or concurrent advance moves one phase, not two.
- A manual rollback in auto mode holds the migration until the operator releases it.
- ``abort`` gives authority back to the old store and removes the migration's capture and control state.
- ``dualwrite status`` exits non-zero for a failed, terminated or frozen migration and says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
from datetime import timedelta
from typing import Any

from conftest import (
    MigrationDriver,
    create_pg,
    eventually,
    fast_tuning,
    rows_of,
    save_histories,
    spec_for,
    temporal_cli,
)
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import RawValue
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from dualwrite.store import Store
from workflows.models import MigrationStatus, TransitionResult

MIGRATION_SIGNALS = ["advance_signal", "rollback_signal", "pause_signal", "resume_signal", "approve_signal",
                     "hold_signal", "verify_signal", "backfill_progress"]
MIGRATION_UPDATES = ["advance", "rollback", "pause", "resume", "approve", "hold", "verify", "abort"]
ONE_MB = "x" * 1_000_000


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def _json_raw(data: bytes) -> RawValue:
    """A payload exactly as the ``temporal`` CLI and the Web UI send one JSON value (``null`` included)."""
    return RawValue(Payload(metadata={"encoding": b"json/plain"}, data=data))


BAD_INPUTS: list[tuple[str, list[Any]]] = [
    ("no input", []),
    ("python None", [None]),
    ("JSON null", [_json_raw(b"null")]),
    ("a string", ["abc"]),
    ("a number", [42]),
    ("a list", [[]]),
    ("a boolean", [True]),
    ("two values", [{}, {}]),
    ("an unknown phase", [{"to": "SIDEWAYS"}]),
    ("a wrong-typed flag", [{"force": "maybe"}]),
    ("a wrong-typed tenant", [{"tenant": 5}]),
    ("an object as reason", [{"reason": {"a": 1}}]),
    ("an unknown field", [{"bogus": 1}]),
    ("not JSON at all", [_json_raw(b"{not json")]),
    ("a 1 MB reason", [{"reason": ONE_MB, "to": "DUAL_WRITE"}]),
]


async def _task_failures(client: Client, handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Workflow-task failures in every run of a workflow (it may have continued as new): each one means the
    workflow code crashed on its input."""
    out: list[str] = []
    async for w in client.list_workflows(f'WorkflowId = "{handle.id}"'):
        run = client.get_workflow_handle(w.id, run_id=w.run_id)
        async for e in run.fetch_history_events():
            a = e.workflow_task_failed_event_attributes
            # UnhandledCommand is the server's, not a crash: signals arrived while the task completed
            if (e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
                    and a.cause != WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND):
                out.append(a.failure.message)
    return out


async def _update_rejected(handle: WorkflowHandle[Any, Any], name: str, args: list[Any]) -> str:
    try:
        res = await handle.execute_update(name, args=args, result_type=TransitionResult,
                                          rpc_timeout=timedelta(seconds=30))
    except WorkflowUpdateFailedError as exc:
        return str(getattr(exc.cause, "message", exc.cause))
    raise AssertionError(f"update {name} with {str(args)[:80]} was accepted: {res}")


async def test_every_handler_survives_bad_input_and_the_migration_goes_on(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 3000)
    create_pg(pg_new, table_name, 0)
    name = _name("badinput")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, strategy="outbox",
                                     backfill_concurrency=1), tuning=fast_tuning(backfill_ranges=30))
    await dw.settled(handle, "PREPARE")

    # the report: `temporal workflow signal --name advance_signal` with no input froze the migration
    address = dw.client.service_client.config.target_host
    for extra in ([], ["--input", "null"]):
        sent = subprocess.run([temporal_cli(), "workflow", "signal", "--address", address, "--workflow-id",
                               handle.id, "--name", "advance_signal", *extra], capture_output=True, text=True,
                              timeout=60)
        assert sent.returncode == 0, sent.stderr
    st = await dw.wait(handle, lambda s: s.counters.get("signals_dropped", 0) == 2, "the signals dropped", 30)
    assert st.phase == "PREPARE"
    # the CLI sends no payload at all for "no input", and a JSON null for `--input null`
    assert st.signals_dropped[0].startswith("advance_signal: expected one JSON object"), st.signals_dropped
    assert st.signals_dropped[0].endswith("got no input") and st.signals_dropped[1].endswith("got null")
    await asyncio.sleep(0.5)  # the workflow task that dropped it completes
    events = await dw.history_events(handle)
    for update in MIGRATION_UPDATES:
        for what, args in BAD_INPUTS:
            reason = await _update_rejected(handle, update, args)
            assert reason, (update, what)
            if what == "a 1 MB reason":
                assert "reason is 1000000 characters long" in reason and "at most" in reason, reason
                assert len(reason) < 1000
            elif what == "no input":
                assert "expected one JSON object" in reason, reason
            elif what == "an unknown phase":
                assert "to" in reason and "SIDEWAYS" in reason, reason
    # a rejected update writes nothing to history
    assert await dw.history_events(handle) == events
    for signal in MIGRATION_SIGNALS:
        for _what, args in BAD_INPUTS:
            await handle.signal(signal, args=args)

    st = await dw.wait(handle, lambda s: s.counters.get("signals_dropped", 0) >= len(MIGRATION_SIGNALS),
                       "bad signals dropped and counted", 30)
    assert st.phase == "PREPARE" and not st.paused and st.hold is None, st
    assert [t.kind for t in st.transitions] == ["start"]
    assert await _task_failures(dw.client, handle) == []
    desc = await handle.describe()
    assert desc.raw_description.pending_workflow_task.attempt <= 1

    # and the migration goes on: advance, pause, backfill, rollback
    res = await dw.update(handle, "advance", by="pytest", reason="on")
    assert res.ok and res.phase == "DUAL_WRITE", res.message
    await dw.settled(handle, "DUAL_WRITE")
    res = await dw.update(handle, "advance", by="pytest", reason="on")
    assert res.ok and res.phase == "BACKFILL", res.message
    assert (await dw.update(handle, "pause", by="pytest", reason="to poke the backfill")).ok
    child = dw.client.get_workflow_handle(f"{handle.id}-backfill-{table_name}-1")
    await dw.wait(handle, lambda s: s.tables[0].ranges_total > 0 or "copying" in s.waiting_for, "backfill started")
    for args in ([], [None], [_json_raw(b"null")], ["abc"], [[]], [{"paused": "maybe"}],
                 [{"paused": ONE_MB}], [{}, {}]):
        await child.signal("set_paused", args=args)
        await handle.signal("backfill_progress", args=args)
    await child.query("progress", args=["unexpected", "arguments"])
    assert (await dw.update(handle, "resume", by="pytest")).ok
    st = await dw.settled(handle, "BACKFILL")
    assert st.tables[0].done and st.tables[0].rows_copied == 3000
    assert rows_of(pg_old, table_name) == rows_of(pg_new, table_name)
    assert await _task_failures(dw.client, child) == []

    res = await dw.update(handle, "rollback", by="pytest", reason="still steerable")
    assert res.ok and res.phase == "DUAL_WRITE", res.message
    st = await dw.settled(handle, "DUAL_WRITE")
    assert await _task_failures(dw.client, handle) == []
    again = await handle.query("status", args=["unexpected"], result_type=MigrationStatus)
    assert again.phase == "DUAL_WRITE" and again.counters["signals_dropped"] >= len(MIGRATION_SIGNALS)

    # the relay's finish signal takes no input: extra input neither freezes nor confuses it
    relay = dw.client.get_workflow_handle(f"dualwrite-{name}-relay")
    await relay.query("status", args=[[1, 2]])
    await handle.terminate("test over")
    await relay.signal("finish", args=[{"now": True}, 42])
    await asyncio.wait_for(relay.result(), timeout=90)
    assert await _task_failures(dw.client, relay) == []


# ---------------------------------------------------------------------------------------------------------
# the CLI as an operator runs it (a subprocess against the test server)


async def acli(dw: MigrationDriver, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    address = dw.client.service_client.config.target_host
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from starter.cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "DUALWRITE_TEMPORAL_ADDRESS": address, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


def _moves(st: Any) -> list[tuple[str, str]]:
    return [(t.from_phase, t.to_phase) for t in st.transitions if t.kind in ("advance", "auto", "force")]


async def test_an_advance_names_the_phase_it_leaves_and_never_moves_twice(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 20000)
    create_pg(pg_new, table_name, 0)
    name = _name("idem")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, batch_size=200, backfill_concurrency=1),
                            tuning=fast_tuning(backfill_ranges=8))
    await dw.settled(handle, "PREPARE")

    # two advances leaving PREPARE, sent at once: one moves, the other moves nothing
    both = await asyncio.gather(dw.update(handle, "advance", by="ann", from_phase="PREPARE"),
                                dw.update(handle, "advance", by="bob", from_phase="PREPARE"), return_exceptions=True)
    moved = [r for r in both if isinstance(r, TransitionResult) and r.ok and "nothing done" not in r.message]
    assert len(moved) == 1, both
    await dw.settled(handle, "DUAL_WRITE")
    # the same advance again (a retry, a double click that arrives late): a no-op that says why
    again = await dw.update(handle, "advance", by="bob", from_phase="PREPARE")
    assert again.ok and again.phase == "DUAL_WRITE", again
    assert "nothing done: this advance was to leave PREPARE" in again.message and "DUAL_WRITE" in again.message
    st = await dw.settled(handle, "DUAL_WRITE")
    assert _moves(st) == [("PREPARE", "DUAL_WRITE")]

    # the CLI fills the phase in from status: two operators at once move one phase
    runs = await asyncio.gather(acli(dw, "advance", name), acli(dw, "advance", name))
    assert sorted(rc for rc, _, _ in runs)[0] == 0, runs
    assert sum("DUAL_WRITE -> BACKFILL" in out for _, out, _ in runs) == 1, runs
    st = await dw.settled(handle, "BACKFILL")
    assert _moves(st) == [("PREPARE", "DUAL_WRITE"), ("DUAL_WRITE", "BACKFILL")]
    # and a scripted retry naming the phase it meant to leave moves nothing either
    rc, out, err = await acli(dw, "advance", name, "--from", "dual-write")
    assert rc == 0, err
    assert "nothing done" in out and "BACKFILL" in out
    st = await dw.status(handle)
    assert st.phase == "BACKFILL" and _moves(st) == [("PREPARE", "DUAL_WRITE"), ("DUAL_WRITE", "BACKFILL")]
    await handle.terminate("test over")


async def test_a_manual_rollback_in_auto_mode_holds_until_released(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 400)
    create_pg(pg_new, table_name, 0)
    name = _name("autohold")
    # auto mode that stops at SHADOW_READ (an approval is needed to enter CUTOVER_READS)
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, mode="auto",
                                     gates={"require_approval": True}))
    st = await dw.wait(handle, lambda s: s.phase == "SHADOW_READ" and "approval" in s.waiting_for,
                       "auto mode waiting for an approval in SHADOW_READ")
    copied = st.counters["rows_copied"]
    assert copied == 400

    res = await dw.update(handle, "rollback", to="DUAL_WRITE", by="ops", reason="schema fix needed")
    assert res.ok and res.phase == "DUAL_WRITE", res.message
    await dw.settled(handle, "DUAL_WRITE")
    await asyncio.sleep(8)  # auto mode would have re-entered BACKFILL within a second; gates recheck every 5 s
    st = await dw.status(handle)
    assert st.phase == "DUAL_WRITE", _moves(st)
    assert st.counters["rows_copied"] == copied, "the backfill ran again"
    assert st.hold is not None and "manual rollback SHADOW_READ -> DUAL_WRITE" in st.hold.reason
    assert "schema fix needed" in st.hold.reason and f"hold {name} --release" in st.hold.reason
    assert st.waiting_for.startswith("operator: held"), st.waiting_for
    assert "auto mode holds here" in res.message

    assert "but held (by ops: auto mode held after a manual rollback" in await dw.rejected(handle, "resume", by="ops")
    assert (await dw.update(handle, "hold", release=True, by="ops", reason="fixed")).ok
    st = await dw.wait(handle, lambda s: s.phase == "SHADOW_READ" and "approval" in s.waiting_for,
                       "auto mode advancing again after the release")
    assert st.counters["rows_copied"] == 2 * copied
    await handle.terminate("test over")
    await save_histories(dw.client, handle.id, "auto-rollback-hold")


async def test_abort_returns_authority_to_the_old_store_and_removes_the_migration(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    from dualwrite import control, triggers

    create_pg(pg_old, table_name, 300)
    create_pg(pg_new, table_name, 0)
    name = _name("abort")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, strategy="triggers"))
    before = rows_of(pg_old, table_name)
    await dw.advance_to(handle, "CUTOVER_WRITES")
    assert triggers.installed(pg_old, name, table_name) and triggers.installed(pg_new, name, table_name)
    fences = (await dw.status(handle)).counters.get("write_fences", 0)

    rc, out, err = await acli(dw, "abort", name)
    assert rc == 2 and "--reason" in err
    rc, out, err = await acli(dw, "abort", name, "--reason", "vendor contract cancelled")
    assert rc == 0, out + err
    assert "aborted in CUTOVER_WRITES" in out and "old store is authoritative, brought level" in out
    assert "left as they are" in out and table_name in out

    final = await asyncio.wait_for(handle.result(), timeout=60)
    assert final.aborted is not None and final.aborted.from_phase == "CUTOVER_WRITES"
    assert final.aborted.reason == "vendor contract cancelled"
    assert final.phase == "PREPARE"  # the old store authoritative, nothing mirrored
    assert final.counters.get("write_fences", 0) == fences + 1  # the flip back went through the write fence
    last = final.transitions[-1]
    assert (last.kind, last.from_phase, last.to_phase, last.reason) == (
        "abort", "CUTOVER_WRITES", "PREPARE", "vendor contract cancelled")
    assert (await handle.describe()).status.name == "COMPLETED"

    assert rows_of(pg_old, table_name) == before  # old store untouched
    assert rows_of(pg_new, table_name) == before  # the new store's data left for the operator
    assert not triggers.installed(pg_old, name, table_name)
    assert not triggers.installed(pg_new, name, table_name)
    assert control.read_state(pg_old, name) is None
    assert control.repair_queue_depth(pg_old, name) == 0

    async def nothing_running() -> bool:
        running = [w.id async for w in dw.client.list_workflows(
            f'WorkflowId STARTS_WITH "{handle.id}" AND ExecutionStatus="Running"')]
        return not running

    await eventually(nothing_running, timeout=60, what="the relay and every child workflow closed")
    relay = await dw.client.get_workflow_handle(f"dualwrite-{name}-relay").describe()
    assert relay.status is not None and relay.status.name == "COMPLETED"

    rc, out, err = await acli(dw, "status", name)
    assert rc == 0, err
    assert "ABORTED in CUTOVER_WRITES" in out and "vendor contract cancelled" in out
    rc, out, err = await acli(dw, "abort", name, "--reason", "again")
    assert rc == 1 and "not running" in err
    await save_histories(dw.client, handle.id, "abort-triggers")


async def test_abort_during_a_backfill_ends_its_child_workflows(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    from dualwrite import control

    create_pg(pg_old, table_name, 3000)
    create_pg(pg_new, table_name, 0)
    name = _name("abortbf")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, backfill_concurrency=1),
                            tuning=fast_tuning(backfill_ranges=30))
    before = rows_of(pg_old, table_name)
    await dw.advance_to(handle, "DUAL_WRITE")
    assert (await dw.update(handle, "advance", by="pytest", reason="go")).ok
    assert (await dw.update(handle, "pause", by="pytest", reason="keep the backfill child alive")).ok
    child = dw.client.get_workflow_handle(f"{handle.id}-backfill-{table_name}-1")

    async def child_running() -> bool:
        try:
            return (await child.describe()).status.name == "RUNNING"
        except Exception:  # noqa: BLE001 - not started yet
            return False

    await eventually(child_running, timeout=60, what="the backfill child running")
    res = await dw.update(handle, "abort", by="pytest", reason="wrong target cluster")
    assert res.ok and "aborted in BACKFILL" in res.message, res.message
    final = await asyncio.wait_for(handle.result(), timeout=60)
    assert final.aborted is not None and final.aborted.from_phase == "BACKFILL"
    assert (await child.describe()).status.name in ("CANCELED", "TERMINATED")
    assert rows_of(pg_old, table_name) == before
    assert control.read_state(pg_old, name) is None


def test_abort_is_refused_in_cleanup_and_done_and_needs_a_reason() -> None:
    from workflows import phases
    from workflows.models import Phase, TransitionRequest

    for phase in (Phase.CLEANUP, Phase.DONE):
        try:
            phases.check_abort(phases.MachineView(phase=phase), TransitionRequest(reason="too late"))
        except phases.Rejected as exc:
            assert f"cannot abort in {phase}" in str(exc) and "point of no return" in str(exc)
        else:
            raise AssertionError(f"abort accepted in {phase}")
    for phase in (Phase.PREPARE, Phase.BACKFILL, Phase.CUTOVER_WRITES):
        phases.check_abort(phases.MachineView(phase=phase), TransitionRequest(reason="why"))
    try:
        phases.check_abort(phases.MachineView(phase=Phase.BACKFILL), TransitionRequest(reason=" "))
    except phases.Rejected as exc:
        assert "needs a reason" in str(exc)
    else:
        raise AssertionError("abort without a reason accepted")


# ---------------------------------------------------------------------------------------------------------
# `dualwrite status` on an unhealthy migration


async def _closed(handle: WorkflowHandle[Any, Any]) -> bool:
    return (await handle.describe()).status.name != "RUNNING"


@workflow.defn(name="MigrationWorkflow", sandboxed=False)
class _BrokenMigration:
    """Worker code that crashes on every workflow task: the migration is frozen (no query can answer)."""

    @workflow.run
    async def run(self, *_args: Any) -> None:
        raise RuntimeError("worker code is broken: cannot import the phase rules")


async def test_status_exits_non_zero_for_failed_terminated_and_frozen_migrations(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 10)
    create_pg(pg_new, table_name, 0)

    # FAILED: PREPARE refuses a spec naming a table that does not exist
    failed = _name("failed")
    h_failed = await dw.start(spec_for(failed, "pgold", "pgnew", f"{table_name}_missing"))
    with contextlib.suppress(Exception):
        await asyncio.wait_for(h_failed.result(), timeout=60)
    rc, out, err = await acli(dw, "status", failed)
    assert rc == 1, out + err
    assert f"migration '{failed}' is FAILED: PREPARE failed" in err

    # TERMINATED by someone
    gone = _name("gone")
    h_gone = await dw.start(spec_for(gone, "pgold", "pgnew", table_name))
    await dw.settled(h_gone, "PREPARE")
    await h_gone.terminate(reason="ops gave up")
    rc, out, err = await acli(dw, "status", gone, "--json")
    assert rc == 1, out + err
    assert "is TERMINATED: ops gave up" in err
    assert json.loads(out)["workflow_status"] == "TERMINATED"

    # FROZEN: the workflow task fails on every attempt
    frozen = _name("frozen")
    queue = f"broken-{secrets.token_hex(3)}"
    async with Worker(dw.client, task_queue=queue, workflows=[_BrokenMigration],
                      workflow_runner=UnsandboxedWorkflowRunner(), graceful_shutdown_timeout=timedelta(seconds=1)):
        h_frozen = await dw.client.start_workflow("MigrationWorkflow", id=f"dualwrite-{frozen}", task_queue=queue)

        async def failing() -> bool:
            d = await h_frozen.describe()
            return d.raw_description.pending_workflow_task.attempt >= 2

        await eventually(failing, timeout=60, what="the workflow task failing repeatedly")
        rc, out, err = await acli(dw, "status", frozen, "--timeout", "10")
        assert rc == 1, out + err
        assert f"migration '{frozen}' is FROZEN: its workflow task keeps failing" in err
        assert "worker code is broken" in err
        await h_frozen.terminate("test over")

    # TIMED_OUT: its execution timeout passed (here: nobody ever ran it)
    late = _name("late")
    h_late = await dw.client.start_workflow("MigrationWorkflow", id=f"dualwrite-{late}", task_queue=f"none-{late}",
                                           execution_timeout=timedelta(seconds=1))
    await eventually(lambda: _closed(h_late), timeout=30, what="the execution timeout")
    rc, out, err = await acli(dw, "status", late, "--timeout", "5")
    assert rc == 1 and f"migration '{late}' is TIMED_OUT" in err, out + err

    # a healthy one exits 0
    ok = _name("healthy")
    h_ok = await dw.start(spec_for(ok, "pgold", "pgnew", table_name))
    await dw.settled(h_ok, "PREPARE")
    rc, out, err = await acli(dw, "status", ok)
    assert rc == 0, err
    await h_ok.terminate("test over")
