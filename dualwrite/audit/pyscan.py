"""Walk Python source and find writes to migrated tables that bypass the dual-write adapter.

Two passes over the tree. The first indexes what the writes are made of, across every file: SQLAlchemy
``Table`` objects and ORM models with the table each maps, sessionmakers, and every
``dualwrite.adapter.install(maker, writer)`` (or ``install_async``). The second walks each function (and
each module's top level) and reports:

- **raw SQL**: string literals, f-strings, concatenations and ``%`` / ``.format`` templates whose literal
  parts make a write statement on a migrated table (:mod:`dualwrite.audit.sql` classifies them), with
  where the text goes (``text()``, ``cursor.execute()``, ``exec_driver_sql()``, ...) when that is visible;
- **Core**: ``insert(t)`` / ``update(t)`` / ``delete(t)`` (also the dialects' upsert ``insert``) and
  ``t.insert()`` / ``t.update()`` / ``t.delete()`` on a migrated ``Table``: the ORM hook captures only
  statements on ORM entities, so a Core statement on a Table is never mirrored;
- **ORM**: a migrated model added, merged, deleted, bulk-written, modified after loading, or written by a
  bulk ``query(...).update/delete`` or ``update(Model)`` statement, through a session that has no dualwrite
  hook. Which session that is, is a best-effort guess, and every finding says what it rests on: a
  session made by a sessionmaker of the tree is hooked when an ``install()`` names that sessionmaker; a
  ``Session(...)`` made directly never is (``install`` hooks a sessionmaker's sessions); a session whose
  origin cannot be seen (a parameter, ``self.session``, ``db.session``) is taken as hooked when the tree
  installs dualwrite on any sessionmaker, and as a bypass when it installs it nowhere.

Writes inside ``with writer.unit_of_work() as uow:`` whose keys the block names with ``uow.touch(table,
...)`` go through the adapter and are not findings. Writes through the adapter's own API
(``writer.insert("orders", ...)``, ``uow.update(...)``) never look like any of the above. Reads never do.

The first pass is :mod:`._pyindex`, the scope walk :mod:`._pyscope`, the checks :mod:`._pychecks`; import
them from here.
"""

from __future__ import annotations

from dualwrite.audit._pychecks import Analyzer
from dualwrite.audit._pyindex import (
    SKIP_DIRS,
    SQL_SINKS,
    FileInfo,
    Index,
    MakerDef,
    ModelDef,
    TableDef,
    discover,
    index_file,
)
from dualwrite.audit._pyscope import Obj, Origin, Scope

__all__ = ["SKIP_DIRS", "SQL_SINKS", "Analyzer", "FileInfo", "Index", "MakerDef", "ModelDef", "Obj", "Origin",
           "Scope", "TableDef", "discover", "index_file"]
