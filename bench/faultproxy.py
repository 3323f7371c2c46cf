"""A loopback TCP fault proxy for chaos runs: forwards 127.0.0.1:<port> to a database on 127.0.0.0/8 and
can refuse, delay, cut and black-hole connections.

Modes (``set_mode``):

- ``ok``: forward;
- ``refuse``: the listener is closed and every open connection cut (connection refused);
- ``delay``: forward, sleeping ``delay`` seconds before each chunk;
- ``blackhole``: accept and hold connections, forward nothing (a hung network). Leaving the mode cuts
  every held connection, so no client hangs longer than the outage;
- ``cut()``: close every open connection once (the store stays reachable).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time

import sqlalchemy as sa

MODES = ("ok", "refuse", "delay", "blackhole")


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.05) -> None:
        if not ipaddress.ip_address(socket.gethostbyname(target_host)).is_loopback:
            raise ValueError("the fault proxy only forwards to loopback addresses")
        self.target = (target_host, target_port)
        self.delay = delay
        self.mode = "ok"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def url_for(self, url: str) -> str:
        return sa.make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    # -- control ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._listener is not None:
            return
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self._listener = ls
        self._thread = threading.Thread(target=self._accept, args=(ls,), daemon=True)
        self._thread.start()

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
            if self._thread is not None:
                self._thread.join(timeout=5)

    def cut(self) -> int:
        """Close every open connection; returns how many were cut."""
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        return len(conns)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        previous, self.mode = self.mode, mode
        if mode == "refuse":
            self._close_listener()
            self.cut()
        else:
            if previous in ("blackhole", "refuse"):
                self.cut()
            self.start()

    def stop(self) -> None:
        self._close_listener()
        self.cut()

    # -- forwarding ------------------------------------------------------------------------------------

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            if self.mode == "blackhole":
                with self._lock:
                    self._conns.add(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                mode = self.mode
                if mode == "delay":
                    time.sleep(self.delay)
                elif mode == "blackhole":
                    # hold the data until the outage ends (the connection is then cut)
                    deadline = time.monotonic() + 120
                    while self.mode == "blackhole" and time.monotonic() < deadline:
                        time.sleep(0.05)
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns -= {src, dst}
