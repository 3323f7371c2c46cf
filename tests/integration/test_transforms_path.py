"""Where Python transforms are imported from: the README's own example works as written.

The README's spec names ``examples.transforms:to_cents``. The installed ``dualwrite`` command runs with
its own bin folder first on ``sys.path``, not the folder it was started in, so a worker started from the
repository root could not import it and PREPARE failed. Transforms are imported from the usual
``sys.path``, then ``$DUALWRITE_TRANSFORMS_PATH``, then the current directory.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from conftest import PG_HOST, PG_PORT, PG_USER, Databases, MigrationDriver, eventually, fast_tuning, pg_url
from temporalio.client import Client

from dualwrite.mapping import load_callable
from dualwrite.spec import load_spec


def _load_sql(db: str, path: Path) -> None:
    with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=db, user=PG_USER or None, autocommit=True) as c:
        c.execute(path.read_text())


async def test_readme_example_transform_imports_in_a_worker_started_from_the_repo_root(
        temporal_client: Client, databases: Databases, repo_root: Path, tmp_path: Path) -> None:
    legacy, modern = databases.pg_db("txlegacy"), databases.pg_db("txmodern")
    _load_sql(legacy, repo_root / "examples" / "legacy.sql")
    _load_sql(modern, repo_root / "examples" / "modern.sql")
    (tmp_path / "none.yaml").write_text("stores: {}\n")
    queue = f"dualwrite-tx-{secrets.token_hex(3)}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "DUALWRITE_TRANSFORMS_PATH", "DUALWRITE_PAYLOAD_KEY")}
    env.update({"DUALWRITE_STORE_LEGACY": pg_url(legacy), "DUALWRITE_STORE_MODERN": pg_url(modern),
                "DUALWRITE_TEMPORAL_ADDRESS": temporal_client.service_client.config.target_host,
                "DUALWRITE_NAMESPACE": temporal_client.namespace, "DUALWRITE_TASK_QUEUE": queue,
                "DUALWRITE_CONFIG": str(tmp_path / "none.yaml"), "DUALWRITE_SHUTDOWN_SECONDS": "3"})
    log = (tmp_path / "worker.log").open("ab")
    # the installed console script, exactly as the README starts it, from the repository root
    worker = subprocess.Popen([str(Path(sys.executable).parent / "dualwrite"), "worker"], cwd=repo_root, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        spec = load_spec(repo_root / "examples" / "orders.yaml")
        spec = spec.model_copy(update={"name": f"tx-{secrets.token_hex(3)}"})
        dw = MigrationDriver(temporal_client)
        handle = await dw.start(spec, task_queue=queue, tuning=fast_tuning())
        await dw.advance_to(handle, "BACKFILL", timeout=120)
        await dw.wait(handle, lambda s: bool(s.tables) and all(t.done for t in s.tables), "backfill verified",
                      timeout=120)

        def copied() -> list[tuple[object, ...]]:
            with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=modern, user=PG_USER or None) as c:
                return c.execute("SELECT count(*), sum(amount_cents) FROM orders_v2").fetchall()

        rows = await eventually(copied, 30, "orders_v2 filled")
        # legacy.sql: amount = i * 1.25 for i in 1..1000, so the cents sum to 125 * 500500
        assert rows == [(1000, 125 * 500_500)]
        await handle.terminate("test over")
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
    # no DUALWRITE_PAYLOAD_KEY here: the worker says that range bounds travel in clear
    assert "DUALWRITE_PAYLOAD_KEY is not set" in (tmp_path / "worker.log").read_text()


def test_transforms_path_env_and_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = f"dw_tx_{secrets.token_hex(3)}"
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / f"{mod}.py").write_text("def double(v):\n    return v * 2\n")
    with pytest.raises(ModuleNotFoundError):
        load_callable(f"{mod}:double")
    monkeypatch.setenv("DUALWRITE_TRANSFORMS_PATH", f"/nonexistent{os.pathsep}{lib}")
    assert load_callable(f"{mod}:double")(21) == 42
    monkeypatch.delenv("DUALWRITE_TRANSFORMS_PATH")
    other = f"dw_tx_{secrets.token_hex(3)}"
    (tmp_path / f"{other}.py").write_text("def triple(v):\n    return v * 3\n")
    monkeypatch.chdir(tmp_path)
    assert load_callable(f"{other}:triple")(2) == 6
