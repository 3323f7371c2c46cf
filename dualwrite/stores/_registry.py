"""Which kind serves a store: a registry keyed by the scheme of the store's URL.

Kinds are registered by the dotted path of their instance and imported on first use, so naming a kind
costs nothing until a store of it is opened, and a kind's modules may import the data path freely.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from dualwrite.errors import StoreError
from dualwrite.stores._kind import StoreKind

#: URL scheme (before any ``+driver``) -> "module:attribute" of the kind's instance, or the instance
_KINDS: dict[str, str | StoreKind] = {
    "postgresql": "dualwrite.stores.sql:SQL",
    "postgres": "dualwrite.stores.sql:SQL",
    "mysql": "dualwrite.stores.sql:SQL",
    "mariadb": "dualwrite.stores.sql:SQL",
    "sqlite": "dualwrite.stores.sql:SQL",
    "redis": "dualwrite.stores.redis:REDIS",
    "rediss": "dualwrite.stores.redis:REDIS",
}
_loaded: dict[str, StoreKind] = {}
_lock = threading.Lock()


def register_kind(scheme: str, target: str | StoreKind) -> None:
    """Serve stores whose URL starts with ``scheme://`` (or ``scheme+driver://``) by a kind: an instance,
    or the ``"module:attribute"`` path of one (imported on first use). Replaces an earlier registration."""
    with _lock:
        _KINDS[scheme.lower()] = target
        _loaded.pop(scheme.lower(), None)


def scheme_of(store: Any) -> str:
    """The scheme of a store's URL, without the driver: ``postgresql+psycopg://...`` -> ``postgresql``."""
    url = str(store.ref.url)
    return url.partition(":")[0].partition("+")[0].lower()


def kind_for(store: Any) -> StoreKind:
    """The kind serving ``store`` (anything with ``ref.url``: a :class:`dualwrite.store.Store`)."""
    scheme = scheme_of(store)
    kind = _loaded.get(scheme)
    if kind is not None:
        return kind
    with _lock:
        target = _KINDS.get(scheme)
        if target is None:
            raise StoreError(f"store {store.name!r}: no store kind serves {scheme!r} URLs "
                             f"(known: {', '.join(sorted(_KINDS))})")
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            loaded: StoreKind = getattr(importlib.import_module(module), attr)
        else:
            loaded = target
        _loaded[scheme] = loaded
    return loaded
