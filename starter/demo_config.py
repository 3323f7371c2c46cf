"""What one ``dualwrite demo`` run is set up with (:class:`DemoConfig`), and how it fails (:class:`DemoError`).

Shared by the command (:mod:`starter.demo_cmd`) and the run (:mod:`starter.demo_run`, :mod:`starter.demo_watch`,
:mod:`starter.demo_report`); light, like every module ``dualwrite --help`` loads.
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualwrite.errors import DualwriteError
from starter.command import out
from starter.devserver import LOOPBACK, port_in_use

__all__ = ["GATED", "DemoConfig", "DemoError", "pick_ports"]

GATED = ("CUTOVER_READS", "CUTOVER_WRITES", "CLEANUP")
"""The phases a gate decides entering; the report shows the evidence of each."""


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
    redis: bool = False
    """The new store is Redis ([T2-6]): the demo's own private redis-server, or ``new_url`` (redis://)."""
    allow_volatile: bool = False
    """Override the CUTOVER_WRITES refusal of a Redis that keeps nothing on disk (recorded as a forced advance)."""
    name: str = field(default_factory=lambda: f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def ui_base(self) -> str:
        return f"http://localhost:{self.ui_port}"

    def ui_url(self, workflow_id: str | None = None) -> str:
        base = f"{self.ui_base}/namespaces/default/workflows"
        return f"{base}/{workflow_id}" if workflow_id else base


class DemoError(DualwriteError):
    """The demo did not end well; ``report`` is what it found until then, when it got that far."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def pick_ports(port: int | None, ui_port: int | None) -> tuple[int, int]:
    """7233 / 8233 like ``temporal server start-dev``, unless taken: then free ports (and say so)."""
    if port is not None:
        return port, ui_port if ui_port is not None else port + 1000
    if not port_in_use(LOOPBACK, 7233) and not port_in_use(LOOPBACK, ui_port or 8233):
        return 7233, ui_port or 8233
    grpc, ui = _free_port(), ui_port or _free_port()
    out.print(f"[yellow]port 7233 or 8233 is taken (another Temporal server?): the demo's server uses {grpc} "
              f"(Web UI {ui})[/]")
    return grpc, ui
