"""Key-value stores (Redis) as a migration target: how a SQL row becomes a Redis key and value.

The pieces, one job each (docs/architecture.md, "Store kinds"):

- :mod:`.templates` - a table's key template (``customer:{id}``) turned into Redis keys and back;
- :mod:`.encoding` - one canonical text per SQL value kind, so verification compares values, not spellings;
- :mod:`.redis_checks` - whether a Redis may become authoritative (persistence, eviction, memory);
- :mod:`.redis_server` - a private ``redis-server`` with persistence on, for the demo and the tests.
"""

from dualwrite.keyvalue.encoding import ValueCodec, decode_value, encode_value
from dualwrite.keyvalue.redis_checks import RedisFacts, authority_problems, read_facts
from dualwrite.keyvalue.redis_server import RedisServer, start_redis
from dualwrite.keyvalue.templates import KeyTemplate

__all__ = ["KeyTemplate", "RedisFacts", "RedisServer", "ValueCodec", "authority_problems", "decode_value",
           "encode_value", "read_facts", "start_redis"]
