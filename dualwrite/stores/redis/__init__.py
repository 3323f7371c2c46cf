"""The Redis store kind ([T2-6]): a table kept as one hash (or JSON document) per row under a key template.

- :mod:`._layout` - the table spec's ``redis:`` section checked, and the target table synthesized from the
  source's (Redis has no schema to reflect): :func:`redis_mapping`;
- :mod:`._table` - one table's keys as the target side of a mapping (pipelined, script-guarded writes);
- :mod:`._kind` - the kind (``redis://`` and ``rediss://`` URLs) and its store object.
"""

from dualwrite.stores.redis._kind import REDIS, RedisConnection, RedisKind, RedisStore
from dualwrite.stores.redis._layout import RedisLayout, redis_mapping, redis_table_info
from dualwrite.stores.redis._table import RedisTable

__all__ = ["REDIS", "RedisConnection", "RedisKind", "RedisLayout", "RedisStore", "RedisTable", "redis_mapping",
           "redis_table_info"]
