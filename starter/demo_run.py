"""What ``dualwrite demo`` runs: its own Temporal dev server, a worker in this process, the old and the new
store, the application writing through the adapter, and the migration from PREPARE to DONE; then the report.

Loaded when the demo runs (SQLAlchemy, Temporal's SDK, the worker), never for ``--help``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import typer
from rich.markup import escape
from temporalio.client import Client

from activities.core import DualwriteActivities
from dualwrite import stats as st
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.codec import data_converter
from dualwrite.config import StoreRef, StoreResolver, env_var_for, normalise_url, redact
from dualwrite.errors import ServerStartError
from dualwrite.keyvalue import RedisServer, start_redis
from dualwrite.logs import configure
from dualwrite.spec import parse_spec
from dualwrite.store import Store
from dualwrite.stores import open_store
from starter import demo_app, devserver
from starter.client import start_migration
from starter.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, err, out
from starter.demo_app import LiveApp, Tables
from starter.demo_config import DemoConfig, DemoError
from starter.demo_report import build_report, print_report
from starter.demo_watch import Watcher, gate_decisions
from starter.devserver import LOOPBACK
from worker import build_worker, make_runtime
from workflows.models import MigrationInput, Tuning

__all__ = ["demo_databases", "run", "start_private_redis"]


def run(cfg: DemoConfig, binary: str, report_json: Path | None) -> int:
    """The whole demo with ``binary`` as the dev server; the exit code. The report goes to ``report_json``
    (default ``report.json`` in the work directory) whenever the run got far enough to make one."""
    configure(filename=cfg.workdir / "demo.log")  # JSON lines; the terminal shows the progress instead
    report: dict[str, Any] | None = None
    code = 0
    server = _start_server(binary, cfg)
    try:
        report = asyncio.run(_drive(cfg))
    except KeyboardInterrupt:
        err.print("interrupted")
        code = EXIT_INTERRUPTED
    except DemoError as exc:
        err.print(f"[bold red]demo failed:[/] {escape(str(exc))}")
        report = exc.report
        code = EXIT_FAILED
    except Exception as exc:
        logging.getLogger("dualwrite.demo").exception("demo failed")
        first = (str(exc).strip().splitlines() or [""])[0]
        err.print(f"[bold red]demo failed:[/] {escape(redact(f'{type(exc).__name__}: {first}'))} "
                  f"(details in {escape(str(cfg.workdir / 'demo.log'))})")
        code = EXIT_FAILED
    finally:
        gc.collect()  # drop the Temporal client while the interpreter is whole (temporalio/sdk-python#300)
        _stop_server(server)
    if report is not None:
        path = report_json or (cfg.workdir / "report.json")
        path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        if code == 0 and not report.get("ok"):
            code = EXIT_FAILED
    return code


def demo_databases(server_url: str) -> tuple[str, str]:
    """The URLs of ``dwdemo_old`` and ``dwdemo_new`` on the server of ``server_url``, created if missing:
    the demo's own databases, so one server URL is enough and nothing of the user's is touched."""
    url = sa.make_url(normalise_url(server_url))
    backend = url.get_backend_name()
    if backend not in ("postgresql", "mysql", "mariadb"):
        err.print(f"[bold red]error:[/] --store-url must be a postgresql:// or mysql:// URL, not {backend}://")
        raise typer.Exit(EXIT_BAD_INPUT)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for name in ("dwdemo_old", "dwdemo_new"):
                if backend != "postgresql":
                    conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {name}")
                elif conn.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").first() is None:
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.SQLAlchemyError as exc:
        err.print(f"[bold red]error:[/] cannot create the demo databases on {escape(redact(server_url))}: "
                  f"{escape(str(getattr(exc, 'orig', None) or exc).splitlines()[0])}")
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        engine.dispose()
    return (url.set(database="dwdemo_old").render_as_string(hide_password=False),
            url.set(database="dwdemo_new").render_as_string(hide_password=False))


def start_private_redis(folder: Path) -> RedisServer:
    """The demo's own redis-server (persistence on, a free port, ``folder``); exit 1 with the package to
    install when the binary is missing or it does not start."""
    try:
        with out.status("starting a private redis-server…"):
            server = start_redis(folder)
    except ServerStartError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_FAILED) from None
    out.print(f"private Redis on 127.0.0.1:{server.port} (append-only file in {escape(str(folder))})")
    return server


def _start_server(binary: str, cfg: DemoConfig) -> subprocess.Popen[bytes]:
    """The demo's own dev server (:mod:`starter.devserver`), ready; exit 1 when it does not start."""
    args = devserver.server_args(binary, ip=LOOPBACK, port=cfg.port, ui_port=cfg.ui_port, log_level="error")
    with out.status("starting the Temporal dev server…"):
        proc = devserver.launch(args, quiet=True)
        try:
            devserver.wait_ready(proc, LOOPBACK, cfg.port, "default")
        except RuntimeError as exc:
            _stop_server(proc)
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_FAILED) from None
    out.print(f"Temporal dev server on {cfg.address}, Web UI {cfg.ui_base}")
    return proc


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    try:
        devserver.stop(proc)
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()


def _stores(cfg: DemoConfig) -> tuple[Store, Store, Tables]:
    """Create both schemas and the legacy rows. A Redis new store has no schema: its keys go under a
    prefix of this run's own (``dwdemo:<name>:``), so a Redis of the user's keeps every other key."""
    tables = demo_app.Tables.for_external() if cfg.external else demo_app.Tables()
    if not cfg.external:
        for f in ("legacy.db", "modern.db"):
            for suffix in ("", "-wal", "-shm"):
                (cfg.workdir / f"{f}{suffix}").unlink(missing_ok=True)
    old = Store(StoreRef("legacy", normalise_url(cfg.old_url)))
    new = open_store(StoreRef("modern", normalise_url(cfg.new_url)))
    if cfg.external:
        demo_app.reset_tables(old, tables)
    if cfg.external and not cfg.redis:
        demo_app.reset_tables(new, tables)
    demo_app.execute(old, demo_app.legacy_ddl(old.dialect, tables))
    if not cfg.redis:
        demo_app.execute(new, demo_app.modern_ddl(new.dialect, tables))
    return old, new, tables


async def _drive(cfg: DemoConfig) -> dict[str, Any]:
    """Stores, worker, application and migration, from start to the report."""
    started = time.monotonic()
    with out.status("creating the old and the new store…"):
        old, new, tables = await asyncio.to_thread(_stores, cfg)
        seeded = await asyncio.to_thread(demo_app.seed, old, tables, cfg.customers, cfg.orders_per_customer)
    out.print(f"old store [bold]legacy[/] ({escape(old.ref.redacted_url)}): {seeded[0]:,} customers, "
              f"{seeded[1]:,} orders in the legacy schema")
    kept = "one Redis hash per row, " if cfg.redis else ""
    out.print(f"new store [bold]modern[/] ({escape(new.ref.redacted_url)}): {kept}name split into first_name + "
              "last_name (joined back by a reverse rule), renamed columns, dropped fax / legacy_flag, new tier / "
              "currency with defaults")
    spec_text = demo_app.spec_yaml(cfg.name, tables, short=cfg.short,
                                   new_dialect=None if cfg.redis else new.dialect)
    (cfg.workdir / "demo-spec.yaml").write_text(spec_text, encoding="utf-8")
    spec = parse_spec(spec_text, "demo-spec.yaml")
    no_config = cfg.workdir / "stores.yaml"  # stores come from the environment below; keep ./dualwrite.yaml out
    no_config.write_text("stores: {}\n", encoding="utf-8")
    resolver = StoreResolver(config_file=no_config,
                             environ={env_var_for("legacy"): old.ref.url, env_var_for("modern"): new.ref.url})

    client = await Client.connect(cfg.address, data_converter=data_converter(),
                                  runtime=make_runtime(None, forward_logs=True))  # SDK warnings -> the log file
    acts = DualwriteActivities(resolver)
    worker = build_worker(client, acts, max_activities=8, shutdown_seconds=5)
    app: LiveApp | None = None
    writer: DualWriter | None = None
    try:
        async with worker:
            options = AdapterOptions(phase_ttl=0.25, heartbeat_seconds=1.0, stats_window_seconds=1.0,
                                     sample_ratio=1.0)
            writer = await asyncio.to_thread(DualWriter, spec, old, new, options=options,
                                             instance_id=f"demo-app@{socket.gethostname()}:{os.getpid()}")
            app = demo_app.LiveApp(writer, tables, old.dialect, customers=seeded[0], orders=seeded[1],
                                   writes_per_second=40 if cfg.short else 60,
                                   reads_per_second=80 if cfg.short else 120)
            app.start()
            out.print("application started: writing and reading through the adapter")
            tuning = Tuning(heartbeat_timeout_seconds=5, barrier_poll_seconds=5, gate_recheck_seconds=2,
                            repair_idle_seconds=5, backfill_ranges=4)
            handle = await start_migration(client, MigrationInput(spec=spec, started_by="dualwrite demo",
                                                                  tuning=tuning))
            out.print(f"migration [bold]{cfg.name}[/] started: {cfg.ui_url(handle.id)}", soft_wrap=True)
            watch = Watcher(cfg, app, seeded)
            status = await watch.run(handle, deadline=started + cfg.timeout)
            # the application keeps going a moment in DONE (new store only), then stops cleanly
            await asyncio.sleep(1.0)
            await asyncio.to_thread(app.stop)
            checked, problems = await asyncio.to_thread(app.check_acknowledged)
            split = await asyncio.to_thread(demo_app.split_check, old, new, tables)
            await asyncio.to_thread(writer.close)
            window = await asyncio.to_thread(st.read_stats, old, spec.name, 24 * 3600.0)
            gates = await gate_decisions(handle)
            report = build_report(cfg, handle.id, status, watch, app, seeded, window, gates, checked, problems,
                                  time.monotonic() - started, split)
            print_report(report)
            if cfg.keep_running:
                await _wait_for_ctrl_c(cfg, handle.id)
            return report
    finally:
        if app is not None:
            await asyncio.to_thread(app.stop)
        if writer is not None:
            await asyncio.to_thread(writer.close)
        acts.close()
        old.dispose()
        new.dispose()


async def _wait_for_ctrl_c(cfg: DemoConfig, workflow_id: str) -> None:
    out.print(f"\nThe server and the worker keep running: browse {cfg.ui_url(workflow_id)}", soft_wrap=True)
    out.print(f"(CLI: DUALWRITE_TEMPORAL_ADDRESS={cfg.address} dualwrite status {cfg.name}) — Ctrl-C to stop",
              soft_wrap=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
