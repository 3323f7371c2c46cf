"""Repair keys the control store could not take, kept on the application's own disk until it can.

A failed secondary write's key goes to the durable repair queue in the control store. When the control
store is down too, the adapter can only keep the key in memory and retry; if the process then exits, the
key would be gone, and the row it names stays different on the other store until a full verification finds
it. So at exit (:meth:`DualWriter.close`, or interpreter exit) the keys still held in memory are *spilled*:
appended to a file on the application's host, one JSON line per key (table, key, which side was
authoritative), fsynced, and re-queued to the control store's repair queue by the next writer of the same
migration that finds the file (the same process restarted, or any other one with the same spill directory).

Keys are data (an e-mail address can be a key), so the file is local to the application host, created
mode 0600 in a directory of mode 0700, and neither its lines nor the keys ever reach a log: only counts and
the file's path do.

Files are named ``<dir>/<migration>/<instance>.jsonl``. Re-queuing takes an exclusive ``flock`` on a file
(a second writer skips it), enqueues every line, and only then removes the file; a crash in between leaves
it for the next attempt, and a key queued twice is harmless (a repair mirrors the row as it is now).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualwrite.keys import encode_key

log = logging.getLogger("dualwrite.spill")

SPILL_DIR_ENV = "DUALWRITE_SPILL_DIR"

#: (table, keys, reason, authoritative) -> None; raises when the control store cannot take them
Enqueue = Callable[[str, list[tuple[Any, ...]], str, str], None]


@dataclass(frozen=True)
class SpillEntry:
    table: str
    key: tuple[Any, ...]
    authoritative: str
    reason: str = ""


def default_spill_dir() -> Path:
    """``$DUALWRITE_SPILL_DIR``, else the user's state directory (``$XDG_STATE_HOME/dualwrite/spill``, by
    default ``~/.local/state/dualwrite/spill``)."""
    env = os.environ.get(SPILL_DIR_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "dualwrite" / "spill"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200] or "_"


def migration_dir(spill_dir: Path, migration: str) -> Path:
    return spill_dir / _safe(migration)


def spill_path(spill_dir: Path, migration: str, instance_id: str) -> Path:
    return migration_dir(spill_dir, migration) / f"{_safe(instance_id)}.jsonl"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def spill(spill_dir: Path, migration: str, instance_id: str, entries: Iterable[SpillEntry]) -> tuple[Path, int]:
    """Append the entries to this instance's spill file (created 0600), fsynced; returns (path, lines)."""
    lines = [json.dumps({"table": e.table, "key": encode_key(tuple(e.key)), "authoritative": e.authoritative,
                         "reason": e.reason[:200]}, separators=(",", ":")) + "\n" for e in entries]
    path = spill_path(spill_dir, migration, instance_id)
    if not lines:
        return path, 0
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
        data = "".join(lines).encode()
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return path, len(lines)


def spilled_files(spill_dir: Path, migration: str) -> list[Path]:
    d = migration_dir(spill_dir, migration)
    try:
        return sorted(p for p in d.iterdir() if p.suffix == ".jsonl" and p.is_file())
    except OSError:
        return []


def _read(fd: int) -> list[SpillEntry]:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    out = []
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        try:
            doc = json.loads(line)
            out.append(SpillEntry(str(doc["table"]), tuple(doc["key"]), str(doc.get("authoritative", "old")),
                                  str(doc.get("reason", ""))))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line of a crashed append: the keys before it still count
    return out


def requeue(spill_dir: Path, migration: str, enqueue: Enqueue, files: Sequence[Path] | None = None) -> int:
    """Move every spilled key of ``migration`` into the repair queue; returns the number of keys queued.

    A file is removed only after all its keys were queued; when ``enqueue`` fails (the control store is
    still down) the file stays for the next attempt and the error propagates."""
    done = 0
    for path in files if files is not None else spilled_files(spill_dir, migration):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # another writer re-queued it meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another writer is re-queuing it right now
            if os.fstat(fd).st_nlink == 0:
                continue  # re-queued and removed by another writer before we got the lock
            entries = _read(fd)
            groups: dict[tuple[str, str, str], list[tuple[Any, ...]]] = defaultdict(list)
            for e in entries:
                groups[(e.table, e.authoritative, e.reason)].append(e.key)
            for (table, side, reason), keys in groups.items():
                enqueue(table, keys, f"spilled at exit: {reason}"[:500], side)
            path.unlink()
            done += len(entries)
        finally:
            os.close(fd)
    if done:
        log.info("migration %s: re-queued %d repair key(s) spilled by an earlier run (from %s)", migration, done,
                 migration_dir(spill_dir, migration))
    return done
