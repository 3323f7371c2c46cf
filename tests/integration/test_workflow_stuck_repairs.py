"""One repair-queue key that can never be mirrored does not freeze every flip of authority ([T2-5]).

The write fence refuses to move authority while the repair queue holds a write acknowledged only on the losing
store (tests/integration/test_workflow_fence_repairs.py). Before this, *any* key left refused *every* flip: one
row the gaining store rejects for good stopped the cutover of every tenant, with a count and no way through.

Here a tenant table moves tenant by tenant; one key of tenant acme is queued for repair and the new store
rejects its row (a CHECK constraint). Then:

- tenant beta's flip into CUTOVER_WRITES goes ahead, its gate passed without --force: acme's key is not beta's
  write, and the gate's repair-queue criterion counts what the fence counts (the evidence names the rest);
- acme's dry run names its queued key, which the fence would try again and refuse the flip for, and the way
  through;
- acme's flip is refused, and the refusal says which table, how many keys, why (the constraint), and the way
  through;
- acme's flip with the operator's override goes ahead, and the transition records what was given up.

Real Temporal dev server, the session's in-process worker, real PostgreSQL.
"""

from __future__ import annotations

import secrets
from typing import Any

from conftest import MigrationDriver, execute, spec_for
from temporalio.client import Client
from test_cli_gates import cli

from dualwrite import control
from dualwrite.store import Store

DDL = "CREATE TABLE {t} (id bigint PRIMARY KEY, tenant text NOT NULL, name text NOT NULL, version bigint)"


async def _tenant_to(dw: MigrationDriver, handle: Any, tenant: str, phase: str, **req: Any) -> Any:
    res = await dw.update(handle, "advance", tenant=tenant, by="pytest", **req)
    if res.ok:
        await dw.wait(handle, lambda s: all(not t.work_state for t in s.tenants)
                      and {t.tenant: t.phase for t in s.tenants}[tenant] == phase, f"{tenant} in {phase}", 120)
    return res


async def test_a_stuck_key_holds_only_its_own_tenants_flip_and_the_override_is_recorded(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str) -> None:
    t = table_name
    execute(pg_old, DDL.format(t=t), f"INSERT INTO {t} SELECT g, CASE WHEN g % 2 = 0 THEN 'acme' ELSE 'beta' END, "
                                     "'n' || g, 1 FROM generate_series(1, 40) g")
    execute(pg_new, DDL.format(t=t))
    name = f"stuck-{secrets.token_hex(3)}"
    spec = spec_for(name, "pgold", "pgnew", t, tenants={"column": "tenant", "ids": ["acme", "beta"]})
    handle = await dw.start(spec)
    try:
        await dw.advance_to(handle, "SHADOW_READ")
        for tenant in ("acme", "beta"):
            res = await _tenant_to(dw, handle, tenant, "CUTOVER_READS", reason="canary")
            assert res.ok, res.message

        # acme's key 2: acknowledged on the old store, queued for repair, and the new store rejects its row
        execute(pg_new, f"ALTER TABLE {t} ADD CONSTRAINT {t}_nopoison CHECK (name <> 'poison')")
        execute(pg_old, f"UPDATE {t} SET name = 'poison', version = 2 WHERE id = 2")
        control.enqueue_repair(pg_old, name, t, [(2,)], reason="test: a secondary write failed")

        # the background drain has tried the key and left it queued (the workflow's count is migration-wide)
        await dw.wait(handle, lambda s: s.repair_queue_depth == 1 and s.counters.get("repair_failed", 0) >= 1,
                      "the stuck key seen by the repair drain", 60)

        # the gate's repair-queue criterion, like the fence, counts only the keys of the scope that moves: beta
        # passes its gate, no --force, and the evidence says what it left aside
        beta = await _tenant_to(dw, handle, "beta", "CUTOVER_WRITES", reason="acme's key is not ours")
        assert beta.ok, beta.message
        assert beta.gate is not None and beta.gate.passed and beta.gate.checks["repair_queue"], beta.gate
        rq = next(m for m in beta.gate.metrics if m.name == "repair_queue")
        assert rq.value == 0 and "tenant beta" in rq.detail and "1 key(s) of other tenants" in rq.detail, rq.detail
        assert beta.gate.evidence["repair_queue"]["queued"] == 1, beta.gate.evidence

        # acme's dry run says the queued key would hold the flip, and the way through (the CLI prints it)
        rc, out, err = await cli(temporal_client, "advance", name, "--tenant", "acme", "--dry-run")
        assert rc == 1, out + err  # acme's own gate: its key waits in the repair queue
        text = " ".join((out + err).split())
        assert f"table {t}: 1 key(s)" in text and "tenant acme" in text, text
        assert "the write fence" in text and "--override-stuck-repairs" in text, text
        assert {x.tenant: x.phase for x in (await dw.status(handle)).tenants}["acme"] == "CUTOVER_READS"

        refused = await dw.update(handle, "advance", tenant="acme", by="pytest", force=True, reason="try")
        assert not refused.ok
        msg = refused.message
        assert "1 key(s) of tenant acme" in msg and f"table {t}: 1 key(s)" in msg, msg
        assert "CheckViolation on constraint" in msg, msg  # why: the constraint that rejects the row (not its values)
        assert "poison'" not in msg and "--override-stuck-repairs" in msg, msg
        assert control.repair_queue_depth(pg_old, name) == 1

        acme = await dw.update(handle, "advance", tenant="acme", by="pytest", force=True,
                               override_stuck_repairs=True, reason="row rejected by design; accepted")
        assert acme.ok, acme.message
        st = await dw.wait(handle, lambda s: {x.tenant: x.phase for x in s.tenants}["acme"] == "CUTOVER_WRITES",
                           "acme in CUTOVER_WRITES", 120)
        last = [r for r in st.transitions if r.tenant == "acme"][-1]
        assert last.to_phase == "CUTOVER_WRITES"
        assert "row rejected by design" in last.reason and "override of stuck repairs" in last.reason, last.reason
        assert st.counters.get("stuck_repairs_overridden") == 1, st.counters
    finally:
        await handle.terminate("test over")
