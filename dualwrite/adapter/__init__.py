"""The application side of a migration: phase-aware dual writes, shadow reads and live statistics.

Applications import this package (never Temporal). The pieces:

- :class:`DualWriter` (:mod:`.writer`): one per process and migration; the Core API (``insert``,
  ``update``, ``upsert``, ``delete`` by key, ``unit_of_work``) on SQLAlchemy connections, and ``read`` with
  shadow compares;
- :class:`AsyncDualWriter` (:mod:`.aio`): the same on ``AsyncConnection``;
- :func:`install` / :func:`install_async` (:mod:`.orm`): the ORM integration on a (async) sessionmaker;
- :class:`PhaseCache`, :data:`RULES`, :class:`Routing` (:mod:`.phase`): the phase table, overrides, ramp.

Typical use::

    writer = DualWriter.from_resolver(load_spec("orders.yaml"))
    install(SessionLocal, writer)          # the application's sessionmaker; no write code changes
    ...
    writer.close()                         # on shutdown: flush stats, leave the phase barrier

While authority moves between the stores the workflow fences writes briefly: a write of the fenced scope
waits (reads never do) and fails with :class:`WriteFencedError` only past ``AdapterOptions.fence_max_wait``.
"""

from dualwrite.adapter.aio import AsyncDualWriter, AsyncUnitOfWork
from dualwrite.adapter.orm import ENTITY, TENANT, install, install_async
from dualwrite.adapter.phase import RULES, PhaseCache, PhaseRules, PhaseUnknownError, Routing, Side, ramp_bucket
from dualwrite.adapter.writer import AdapterOptions, CloseReport, DualWriter, RoutingError, UnitOfWork, error_class
from dualwrite.errors import StrictWriteError, WriteFencedError

__all__ = [
    "ENTITY", "RULES", "TENANT", "AdapterOptions", "AsyncDualWriter", "AsyncUnitOfWork", "CloseReport", "DualWriter",
    "PhaseCache", "PhaseRules", "PhaseUnknownError", "Routing", "RoutingError", "Side", "StrictWriteError",
    "UnitOfWork", "WriteFencedError", "error_class", "install", "install_async", "ramp_bucket",
]
