"""Store kinds as plug-ins: one protocol for what the data path needs from a store, and a registry.

``kind_for(store)`` gives the :class:`StoreKind` serving a store (by its URL's scheme); its
:meth:`~StoreKind.table` gives a :class:`MappedTable`, one side of a table mapping on that store, which
copy, mirror and verification work through. The SQL kind (PostgreSQL, MariaDB/MySQL, SQLite) lives in
:mod:`dualwrite.stores.sql`. See ``docs/architecture.md`` ("Store kinds").
"""

from dualwrite.stores._compile import compile_for_stores
from dualwrite.stores._kind import (
    Bounds,
    Capabilities,
    Connection,
    CopyRoute,
    Key,
    MappedTable,
    RangeChecksum,
    Role,
    Row,
    StoreKind,
    normal_key,
)
from dualwrite.stores._open import as_redis, is_redis, is_redis_url, open_store
from dualwrite.stores._registry import kind_for, register_kind, scheme_of

__all__ = [
    "Bounds",
    "Capabilities",
    "Connection",
    "CopyRoute",
    "Key",
    "MappedTable",
    "RangeChecksum",
    "Role",
    "Row",
    "StoreKind",
    "as_redis",
    "compile_for_stores",
    "is_redis",
    "is_redis_url",
    "kind_for",
    "normal_key",
    "open_store",
    "register_kind",
    "scheme_of",
]
