"""The mirror primitive: make rows K in the target equal rows K in the source *now* (or absent).

Dual writes, retries, the outbox relay, backfill fix-ups and repair all end here, so there is exactly one
place that decides how a row image crosses between stores. The source rows are read ``FOR UPDATE`` and the
lock is held until the target has committed: two mirrors of one key cannot cross, and a live writer on
that key waits a few milliseconds rather than being overwritten by an older image.

Because the image is read under the key's lock, commit order on the source decides, not the application's
version column: a key deleted and re-inserted with its version restarting at 1, or updated without a version
bump, still arrives (rule 1, docs/architecture.md). A key the source does not hold has no row to lock,
though: the mirror of a delete that read "absent" could commit its delete on the target *after* the mirror
of the re-insert that followed it, which read the new row and committed first (two queue workers, or a
repair beside the queue): the target lost an acknowledged row ([T2-5], found by the async chaos run). So keys
read absent are read again (locked) after the target's write, which holds the target's row locks, and
written again if they appeared; the last mirror to commit re-read last, as below.

The version guard ("only if newer") is used only for an unlocked
read (``lock=False``), where no lock orders the images; ``force`` drops it there too.

A source without row locks (Redis, the source of the reverse mirror after write cutover) has no lock to read
under, so two mirrors of a key could cross: one reads ``v1``, a concurrent write and its mirror commit ``v2``,
then the first writes ``v1`` over it. So such a mirror writes the target first (the upsert or delete takes
the target's row lock, as ``SELECT ... FOR UPDATE`` would, and also for a key the target does not have yet),
then re-reads the source under that lock and writes again while the image changed (at most
:data:`REREAD_ROUNDS`). Whichever mirror commits last re-read last, so the newest image wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite import hooks
from dualwrite.errors import AuthorityMovedError
from dualwrite.mapping import TableMapping
from dualwrite.store import Store
from dualwrite.stores import Key, MappedTable, Role, Row, StoreKind, kind_for, normal_key

__all__ = ["REREAD_ROUNDS", "MirrorResult", "mirror_keys", "normal_key"]

REREAD_ROUNDS = 5
"""How often a mirror from a store without row locks re-reads its source after writing (see above); the
image of the last read is what commits."""


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


def _by_key(src: MappedTable, rows: list[Row]) -> dict[Key, Row]:
    return {src.row_key(r): r for r in rows}


def _write(tkind: StoreKind, dst: MappedTable, tconn: Any, mapping: TableMapping, batch: list[Key],
           found: list[Row], present: set[Key], guarded: bool) -> int:
    """Make the target's ``batch`` keys equal ``found`` (the source rows; keys not in ``present`` deleted);
    the number of rows deleted. Row values never reach the error (the kind scrubs it)."""
    absent = [k for k in batch if k not in present]
    # usually only one of the two statements runs: a batch is all writes or all deletes
    try:
        deleted = dst.delete(tconn, absent)
        dst.upsert(tconn, found, insert_only=False, only_if_newer=guarded)
    except Exception as exc:
        clean = tkind.scrub_error(exc, f"mirroring {mapping.source_table} -> {mapping.target_table}")
        if clean is exc:
            raise
        raise clean from None
    return deleted


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
    # a source without row locks (Redis after write cutover) cannot hold its image still: re-read it once the
    # target's write holds the row locks, and write again while it changed (module docstring); on a source
    # with row locks the same holds for the keys it found absent (no row, no lock)
    row_locks = skind.capabilities(source).row_locks
    with skind.connect(source) as sconn, tkind.connect(target) as tconn:
        for start in range(0, len(unique), batch_size):
            batch = unique[start:start + batch_size]
            found = src.read_keys(sconn, batch, lock=lock)
            hooks.point("mirror.after_read")
            if commit_if is not None and not commit_if(tconn):
                tconn.rollback()
                sconn.rollback()
                raise AuthorityMovedError(f"mirroring {mapping.source_table} -> {mapping.target_table}: the target "
                                          f"store {target.name!r} is no longer denied (authority moved); nothing "
                                          "was written")
            deleted = _write(tkind, dst, tconn, mapping, batch, found, {src.row_key(r) for r in found}, guarded)
            for _round in range(REREAD_ROUNDS if lock else 0):
                if row_locks:  # the rows found are locked and cannot change: only the absent keys can
                    present = {src.row_key(r) for r in found}
                    absent = [k for k in batch if k not in present]
                    if not absent:
                        break
                    appeared = src.read_keys(sconn, absent, lock=lock)  # under the target's locks
                    if not appeared:
                        break
                    found = [*found, *appeared]
                else:
                    again = src.read_keys(sconn, batch, lock=lock)  # under the target's row locks
                    if _by_key(src, again) == _by_key(src, found):
                        break
                    found = again
                # a concurrent write overtook this image: write the newer one, still locked
                deleted = _write(tkind, dst, tconn, mapping, batch, found, {src.row_key(r) for r in found}, guarded)
            hooks.point("mirror.before_commit")
            tconn.commit()
            sconn.commit()
            hooks.point("mirror.after_commit")
            result.keys += len(batch)
            result.upserted += len(found)
            result.deleted += deleted
    return result
