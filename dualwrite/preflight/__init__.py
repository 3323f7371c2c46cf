"""Preflight: everything ``dualwrite check`` can prove before a migration starts, without writing a byte.

Bad input gets a clear error before anything is written (docs/architecture.md, "Preflight"). This package
turns a spec into the complete list of what is wrong with it and with the live stores it names: invalid
fields, stores with no URL or that cannot be reached, missing tables and columns, tables without a key, incompatible
mapped types, transforms that do not import, SQL expressions the source rejects, and credentials that
cannot read the old tables or write the new ones, and computed columns that could never be mirrored
back after write cutover (no ``reverse`` rule, or one the new store rejects). It keeps going after the
first problem, because an operator fixing a spec wants the whole list in one run.

Looking must never change anything, so every check reads a catalog or asks the server to *plan*:
PostgreSQL answers ``has_*_privilege``; MariaDB/MySQL answer ``EXPLAIN INSERT/UPDATE/DELETE``, which
needs exactly the privileges of the statement (roles and wildcard grants included, which
``information_schema`` privilege views miss) and executes nothing; SQLite files are opened read-only,
after checking that they exist so that connecting cannot create one. SQL expressions run as
``SELECT (expr) FROM source WHERE false`` in a read-only transaction.

Secrets: store URLs come from the resolver and leave this module only redacted; every message is
scrubbed of the passwords of the stores it touched, whatever a driver chose to put in an error.

The run is :mod:`dualwrite.preflight._run`, a store opened for looking :mod:`dualwrite.preflight._probe`,
the report :mod:`dualwrite.preflight._report`; import them from here.
"""

from __future__ import annotations

from dualwrite.preflight._probe import CONNECT_TIMEOUT_S, EXACT_COUNT_LIMIT
from dualwrite.preflight._report import PreflightReport, StoreSummary, TableSummary
from dualwrite.preflight._run import preflight, preflight_file

__all__ = ["CONNECT_TIMEOUT_S", "EXACT_COUNT_LIMIT", "PreflightReport", "StoreSummary", "TableSummary",
           "preflight", "preflight_file"]
