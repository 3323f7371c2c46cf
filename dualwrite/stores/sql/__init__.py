"""The SQL store kind: PostgreSQL, MariaDB/MySQL and SQLite (the registry's ``SQL`` instance).

:class:`SqlTable` is a mapping side on one SQL store; the fast backfill routes, pushed-down checksums,
range planning and canonical readers are private modules behind it.
"""

from dualwrite.stores.sql._canon_read import ColumnRead, column_read, fetch, table_reader
from dualwrite.stores.sql._kind import SQL, SqlKind
from dualwrite.stores.sql._plan import PLAN_SAMPLE_KEYS
from dualwrite.stores.sql._table import SqlTable

__all__ = ["PLAN_SAMPLE_KEYS", "SQL", "ColumnRead", "SqlKind", "SqlTable", "column_read", "fetch", "table_reader"]
