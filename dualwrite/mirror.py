"""The mirror primitive: make rows K in the target equal rows K in the source *now* (or absent).

Dual writes, retries, the outbox relay, backfill fix-ups and repair all end here, so there is exactly one
place that decides how a row image crosses between stores. The source rows are read ``FOR UPDATE`` and the
lock is held until the target has committed: two mirrors of one key cannot cross, and a live writer on
that key waits a few milliseconds rather than being overwritten by an older image.

Because the image is read under the key's lock, commit order on the source decides, not the application's
version column: a key deleted and re-inserted with its version restarting at 1, or updated without a version
bump, still arrives (rule 1, docs/architecture.md). The version guard ("only if newer") is used only for an unlocked
read (``lock=False``), where no lock orders the images; ``force`` drops it there too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite import hooks
from dualwrite.errors import AuthorityMovedError
from dualwrite.mapping import TableMapping
from dualwrite.store import Store
from dualwrite.stores import Key, Role, kind_for, normal_key

__all__ = ["MirrorResult", "mirror_keys", "normal_key"]


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


def mirror_keys(source: Store, target: Store, mapping: TableMapping, keys: Sequence[Key], *,
                force: bool = False, lock: bool = True, batch_size: int = 1000,
                commit_if: Callable[[Any], bool] | None = None) -> MirrorResult:
    """Mirror ``keys`` (source key values) from ``source`` to ``target``; one round trip per store per batch.

    ``commit_if(target_connection)`` runs in each batch's target transaction before anything is written; False
    rolls the batch back and raises :class:`AuthorityMovedError` (a relay checks that the target still refuses
    the application, under a lock that a lift of the denial must wait for)."""
    result = MirrorResult()
    unique = list(dict.fromkeys(normal_key(k) for k in keys))
    skind, tkind = kind_for(source), kind_for(target)
    src, dst = skind.table(source, mapping, Role.SOURCE), tkind.table(target, mapping, Role.TARGET)
    guarded = not (force or lock) and mapping.version is not None
    with skind.connect(source) as sconn, tkind.connect(target) as tconn:
        for start in range(0, len(unique), batch_size):
            batch = unique[start:start + batch_size]
            found = src.read_keys(sconn, batch, lock=lock)
            present = {src.row_key(r) for r in found}
            absent = [k for k in batch if k not in present]
            if commit_if is not None and not commit_if(tconn):
                tconn.rollback()
                sconn.rollback()
                raise AuthorityMovedError(f"mirroring {mapping.source_table} -> {mapping.target_table}: the target "
                                          f"store {target.name!r} is no longer denied (authority moved); nothing "
                                          "was written")
            # usually only one of the two statements runs: a batch is all writes or all deletes
            try:
                result.deleted += dst.delete(tconn, absent)
                dst.upsert(tconn, found, insert_only=False, only_if_newer=guarded)
            except Exception as exc:
                clean = tkind.scrub_error(exc, f"mirroring {mapping.source_table} -> {mapping.target_table}")
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
