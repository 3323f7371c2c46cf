"""The application side of a migration: phase-aware dual writes, shadow reads and live statistics.

Applications import this package (never Temporal). The pieces:

- :class:`DualWriter` (:mod:`.writer`): one per process and migration; the Core API (``insert``,
  ``update``, ``upsert``, ``delete`` by key, ``unit_of_work``) on SQLAlchemy connections, and ``read`` with
  shadow compares. A facade over private modules with one job each: the tables (``_tables``), routing and
  the write fence (``_routing``), the unit of work (``_uow``), outbox notes (``_outbox_notes``), the sync
  secondary write (``_inline``) and its fast path (``_fast_path``), the repair queue (``_repairs``), direct
  reads (``_reads``), the adapter's pools (``_stores``), statistics (``_timing``), options (``_options``);
- the other capture methods the adapter carries out: ``strict`` (:mod:`.strict`), ``async`` (:mod:`.lagged`);
- :class:`AsyncDualWriter` (:mod:`.aio`): the same on ``AsyncConnection``;
- :func:`install` / :func:`install_async` (:mod:`.orm`): the ORM integration on a (async) sessionmaker
  (routing in ``_orm_routing``, flush capture in ``_orm_capture``, commit and rollback in ``_orm_commit``,
  shadow reads of loaded objects in ``_orm_shadow``);
- :class:`PhaseCache`, :data:`RULES`, :class:`Routing` (:mod:`.phase`): the phase table, overrides, ramp.

Typical use::

    writer = DualWriter.from_resolver(load_spec("orders.yaml"))
    install(SessionLocal, writer)          # the application's sessionmaker; no write code changes
    ...
    writer.close()                         # on shutdown: flush stats, leave the phase barrier

While authority moves between the stores the workflow fences writes briefly: a write of the fenced scope
waits (reads never do) and fails with :class:`WriteFencedError` only past ``AdapterOptions.fence_max_wait``.
"""

from dualwrite.adapter._errors import RoutingError, error_class
from dualwrite.adapter._options import AdapterOptions
from dualwrite.adapter._repairs import CloseReport
from dualwrite.adapter._uow import UnitOfWork
from dualwrite.adapter.aio import AsyncDualWriter, AsyncUnitOfWork
from dualwrite.adapter.orm import ENTITY, TENANT, install, install_async
from dualwrite.adapter.phase import RULES, PhaseCache, PhaseRules, PhaseUnknownError, Routing, Side, ramp_bucket
from dualwrite.adapter.writer import DualWriter
from dualwrite.errors import StrictWriteError, WriteFencedError

__all__ = [
    "ENTITY", "RULES", "TENANT", "AdapterOptions", "AsyncDualWriter", "AsyncUnitOfWork", "CloseReport", "DualWriter",
    "PhaseCache", "PhaseRules", "PhaseUnknownError", "Routing", "RoutingError", "Side", "StrictWriteError",
    "UnitOfWork", "WriteFencedError", "error_class", "install", "install_async", "ramp_bucket",
]
