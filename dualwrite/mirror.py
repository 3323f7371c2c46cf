"""The mirror primitive: make rows K in the target equal rows K in the source *now* (or absent).

Dual writes, retries, the outbox relay, backfill fix-ups and repair all end here, so there is exactly one
place that decides how a row image crosses between stores. The source rows are read ``FOR UPDATE`` and the
lock is held until the target has committed: two mirrors of one key cannot cross, and a live writer on
that key waits a few milliseconds rather than being overwritten by an older image.

Because the image is read under the key's lock, commit order on the source decides, not the application's
version column: a key deleted and re-inserted with its version restarting at 1, or updated without a version
bump, still arrives (DESIGN.md rule 1). The version guard ("only if newer") is used only for an unlocked read
(``lock=False``), where no lock orders the images; ``force`` drops it there too.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from dualwrite import hooks
from dualwrite import rows as rowio
from dualwrite.mapping import TableMapping
from dualwrite.sqlgen import Key, source_side, target_side
from dualwrite.store import Store, without_row_values


@dataclass
class MirrorResult:
    keys: int = 0
    upserted: int = 0
    deleted: int = 0

    def __iadd__(self, other: MirrorResult) -> MirrorResult:
        self.keys += other.keys
        self.upserted += other.upserted
        self.deleted += other.deleted
        return self


def _normal(value: object) -> object:
    # keys read back from different drivers: UUID objects vs text, bytes vs memoryview, aware vs naive UTC
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return str(value) if isinstance(value, uuid.UUID) else value


def normal_key(key: Key) -> Key:
    return tuple(_normal(v) for v in key)


def mirror_keys(source: Store, target: Store, mapping: TableMapping, keys: Sequence[Key], *,
                force: bool = False, lock: bool = True, batch_size: int = 1000) -> MirrorResult:
    """Mirror ``keys`` (source key values) from ``source`` to ``target``; one round trip per store per batch."""
    result = MirrorResult()
    unique = list(dict.fromkeys(normal_key(k) for k in keys))
    src, dst = source_side(mapping, source), target_side(mapping, target)
    positions = mapping.key_positions
    with source.connect() as sconn, target.connect() as tconn:
        for start in range(0, len(unique), batch_size):
            batch = unique[start:start + batch_size]
            src_keys = [rowio.adapt_key(k, src.key_kinds, source.dialect) for k in batch]
            found = rowio.read_keys(sconn, mapping, src, src_keys, lock=lock)
            present = {normal_key(rowio.key_of(r, positions)) for r in found}
            absent = [k for k in batch if k not in present]
            # usually only one of the two statements runs: a batch is all writes or all deletes
            try:
                result.deleted += rowio.delete_keys(tconn, dst, absent)
                rowio.write_rows(tconn, mapping, dst, found, insert_only=False,
                                 only_if_newer=not (force or lock) and mapping.version is not None)
            except Exception as exc:
                clean = without_row_values(exc, f"mirroring {mapping.source_table} -> {mapping.target_table}")
                if clean is exc:
                    raise
                raise clean from None
            hooks.point("mirror.before_commit")
            tconn.commit()
            sconn.commit()
            hooks.point("mirror.after_commit")
            result.keys += len(batch)
            result.upserted += len(found)
    return result
