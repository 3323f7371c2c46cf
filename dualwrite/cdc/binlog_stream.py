"""The binlog dump connection of :mod:`dualwrite.cdc.binlog`: mysql-replication's reader, with two repairs.

1. **The MariaDB dump request is one byte short.** mysql-replication 1.0.x declares a 14-byte
   ``COM_BINLOG_DUMP`` payload for MariaDB but sends 15 (command, position, flags, server id and a 4-byte
   empty file name). The server never reads the last byte; with ``BINLOG_DUMP_NON_BLOCK`` it then drops the
   dump after a few hundred transactions, and because unread input is waiting the kernel answers with a TCP
   reset ("Lost connection ... Errno 104") rather than an orderly close. Measured on MariaDB 10.11 with
   3,000 one-row transactions: every connection ended after ~570 of them; with the length right, one
   connection reads all 3,000 and ends with the server's end-of-log packet. Not a timeout, not the heartbeat,
   not a server id collision (ids are random per read; the server log shows no "KILLED" dump).

2. **A reconnect restarts from the first position.** The library reconnects by itself on errors 2006/2013
   but from the position it was *created* with (MariaDB: ``auto_position`` is never advanced), so every
   reconnect decoded the same early transactions again. This reader reconnects from :attr:`resume`, the
   position after the last whole transaction its caller took, and counts connections, so the caller drops a
   transaction it had read only in part before the connection broke (the server sends it again whole).
"""

from __future__ import annotations

import struct
from typing import Any

from pymysqlreplication import BinLogStreamReader

__all__ = ["ResumingStream"]


class ResumingStream(BinLogStreamReader):  # type: ignore[misc]  # the library has no type hints
    """A binlog reader that (re)connects at :attr:`resume`: ``(file, offset)`` on MySQL, ``("gtid", state)``
    on MariaDB (the caller advances it after each whole transaction)."""

    def __init__(self, resume: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.resume = resume
        self.connections = 0
        """How many dump connections were opened: more than one means the library reconnected."""

    # The library calls its private ``self.__connect_to_stream()``, which Python names as below: overriding that
    # name is the one seam where a (re)connection's start position can be set.
    def _BinLogStreamReader__connect_to_stream(self) -> None:  # noqa: N802 - the library's mangled name
        if self.is_mariadb:
            self.auto_position = self.resume[1] or None
        else:
            self.log_file, self.log_pos = self.resume[0], int(self.resume[1])
        self.connections += 1
        super()._BinLogStreamReader__connect_to_stream()

    def _BinLogStreamReader__set_mariadb_settings(self) -> bytes:  # noqa: N802 - as above
        """The library's MariaDB dump request with its packet length made to match the bytes sent."""
        prelude = bytes(super()._BinLogStreamReader__set_mariadb_settings())
        return struct.pack("<I", len(prelude) - 4) + prelude[4:]  # 3 bytes length, sequence id 0
