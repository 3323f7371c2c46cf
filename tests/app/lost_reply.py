"""A TCP proxy that loses the reply to one COMMIT: the fault behind "the commit raised, yet it committed".

A dropped connection or a proxy reset between a database and its client can take a COMMIT's answer with
it after the server has committed: the driver raises, the write stands. The adapter must not report such a
write as failed (the application would retry it into a duplicate). Monkeypatching the driver shows the
logic; this proxy shows it on a real connection, through the real driver and SQLAlchemy's own handling of
a dead connection.

:meth:`LostReplyProxy.arm` names a tag (bytes the test writes, e.g. a row's name). The first connection
that sends a chunk containing the tag is marked; its next ``COMMIT`` is then either

- delivered (``deliver=True``, the default): the proxy forwards it, waits for the server's answer (so the
  transaction has ended on the server), throws the answer away and cuts the connection - committed, reply
  lost;
- or dropped (``deliver=False``): the proxy cuts the connection without forwarding it - the server rolls
  the transaction back when it sees the connection go.

Either way the client sees its connection die while waiting for the COMMIT's reply. ``fired`` is set once
the fault has happened, so a test can assert that it exercised what it meant to.
"""

from __future__ import annotations

import re
import socket
import threading

from app.harness import TcpProxy

__all__ = ["LostReplyProxy"]

_COMMIT = re.compile(rb"(?i)(?<![A-Za-z_])COMMIT(?![A-Za-z_])")
"""A COMMIT statement in a client message (PostgreSQL Query/Parse, MySQL COM_QUERY)."""


class LostReplyProxy(TcpProxy):
    """:class:`TcpProxy` that loses one COMMIT's reply (or the COMMIT itself) on a tagged connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self._tag: bytes | None = None
        self._deliver = True
        self._tagged: set[socket.socket] = set()  # upstream sockets of marked connections
        self._committing: set[socket.socket] = set()  # upstream sockets whose COMMIT was forwarded
        self.fired = threading.Event()

    def arm(self, tag: bytes, *, deliver: bool = True) -> None:
        with self._lock:
            self._tag, self._deliver = tag, deliver
            self._tagged.clear()
            self._committing.clear()
        self.fired.clear()

    def _passes(self, src: socket.socket, dst: socket.socket, data: bytes) -> bool:
        if self._is_upstream(dst):
            return self._client_chunk(dst, data)  # False: the COMMIT is dropped, the connection cut
        return not self._reply_lost(src)  # the server answered the COMMIT: the answer is lost with the cut

    def _is_upstream(self, s: socket.socket) -> bool:
        try:
            return bool(s.getpeername()[1] == self.target[1])
        except OSError:
            return False

    def _client_chunk(self, upstream: socket.socket, data: bytes) -> bool:
        """Note what a client chunk means for the fault; False: do not forward it (and cut)."""
        with self._lock:
            if self._tag is None:
                return True
            if upstream not in self._tagged and self._tag in data:
                self._tagged.add(upstream)
                return True
            if upstream in self._tagged and _COMMIT.search(data):
                self._tag = None  # one fault per arm()
                if not self._deliver:
                    self.fired.set()
                    return False
                self._committing.add(upstream)
        return True

    def _reply_lost(self, upstream: socket.socket) -> bool:
        with self._lock:
            if upstream not in self._committing:
                return False
            self._committing.discard(upstream)
        self.fired.set()
        return True
