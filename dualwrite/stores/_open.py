"""A resolved store name opened as the kind its URL names: a SQL :class:`~dualwrite.store.Store`, or a
:class:`~dualwrite.stores.redis.RedisStore` for ``redis://`` and ``rediss://`` URLs.

The worker's store cache, the demo and the adapter open stores here, so a spec whose new store is Redis
needs nothing but its URL (``DUALWRITE_STORE_NEW=redis://host:6379/0``). The rest of the code is typed
against :class:`~dualwrite.store.Store` (the data path works through :func:`dualwrite.stores.kind_for`
and accepts either); code that needs SQL asks :func:`is_redis` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from dualwrite.store import Store

if TYPE_CHECKING:
    from dualwrite.config import StoreRef
    from dualwrite.stores.redis import RedisStore

__all__ = ["REDIS_SCHEMES", "as_redis", "is_redis", "is_redis_url", "open_store"]

REDIS_SCHEMES = ("redis", "rediss")


def is_redis_url(url: str) -> bool:
    """Does ``url`` name a Redis database (``redis://`` or ``rediss://``)?"""
    return url.partition(":")[0].partition("+")[0].lower() in REDIS_SCHEMES


def is_redis(store: Any) -> bool:
    """Is ``store`` a Redis store (no SQL, no catalog, no triggers)?"""
    return is_redis_url(str(getattr(getattr(store, "ref", None), "url", "")))


def as_redis(store: Any) -> RedisStore:
    """``store`` as the :class:`RedisStore` it is (callers checked :func:`is_redis`)."""
    from dualwrite.stores.redis import RedisStore  # noqa: PLC0415 - the redis client only when used

    if not isinstance(store, RedisStore):
        raise TypeError(f"store {getattr(store, 'name', store)!r} is not a Redis store")
    return store


def open_store(ref: StoreRef, *, pool_size: int = 5, pre_ping: bool = True) -> Store:
    """The store ``ref`` names, of the kind its URL's scheme says. A Redis store is returned typed as a
    :class:`Store` (it serves the data path through its kind); it starts with no table layouts, which
    :meth:`RedisStore.lay_out` adds as mappings are compiled."""
    if is_redis_url(ref.url):
        from dualwrite.stores.redis import RedisStore  # noqa: PLC0415

        return cast(Store, RedisStore(ref.name, ref.url))
    return Store(ref, pool_size=pool_size, pre_ping=pre_ping)
