"""A private ``redis-server`` with persistence on: for ``dualwrite demo --new-store redis`` and the tests.

The machine's shared Redis keeps nothing on disk, and ``check`` rightly refuses to make such a Redis
authoritative; the demo and the tests that reach CUTOVER_WRITES therefore start their own server on a free
port, in a folder of their own, with the append-only file on (``appendfsync everysec``, Redis's default
trade-off), and stop it at the end.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dualwrite.errors import ServerStartError

__all__ = ["RedisServer", "start_redis"]


@dataclass
class RedisServer:
    """A running private Redis; :meth:`stop` shuts it down (it saves its data as it goes)."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes the AOF and exits
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(folder: Path, *, port: int | None = None, timeout: float = 15.0) -> RedisServer:
    """Start ``redis-server`` with its data in ``folder`` (created) and wait until it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerStartError("redis-server is not installed: install the redis-server package "
                               "(apt-get install redis-server), or pass --new-url redis://... to use a Redis "
                               "you run")
    folder.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log = folder / "redis.log"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--appendonly", "yes",
           "--appendfsync", "everysec", "--save", "3600 1", "--maxmemory-policy", "noeviction",
           "--daemonize", "no", "--logfile", str(log), "--protected-mode", "yes"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # noqa: S603 - fixed argv
    server = RedisServer(port=port, folder=folder, process=process)
    deadline = time.monotonic() + timeout
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
            raise ServerStartError(f"redis-server did not start on port {port}: {tail.strip() or 'no log'}")
        time.sleep(0.05)
    return server
