"""Per-worker caches of stores, published specs and compiled table mappings.

Workflows carry store *names* and spec *references*; this is the only place in the worker where a name
becomes a connection and a :class:`~workflows.models.SpecRef` becomes a spec. Stores (and their connection
pools) live as long as the worker, so an activity does not pay for a new engine, a reflection and a mapping
compile on every call; specs are cached by digest, so resolving a reference costs a dict lookup after the
first load from the control store.
"""

from __future__ import annotations

import threading

from dualwrite import control
from dualwrite.capture.store_side import RelayStores
from dualwrite.config import StoreResolver
from dualwrite.errors import Problem, SchemaError, SpecError
from dualwrite.mapping import TableMapping
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from dualwrite.stores import compile_for_stores, is_redis, open_store
from dualwrite.triggers import mark_replica
from workflows.models import SpecCarrier, SpecRef, TableRef, spec_digest

DIGEST_MEMO = 32
"""Inline specs whose digest a worker remembers (one per activity call in flight is plenty)."""


class StoreCache:
    """Thread-safe: sync activities run on a thread pool and share these stores."""

    def __init__(self, resolver: StoreResolver, *, pool_size: int = 8) -> None:
        self.resolver = resolver
        self._pool_size = pool_size
        self._stores: dict[str, Store] = {}
        self._mappings: dict[tuple[str, str, bool], TableMapping] = {}
        self._specs: dict[str, MigrationSpec] = {}
        self._digests: dict[int, tuple[MigrationSpec, str]] = {}
        self._lock = threading.Lock()
        self._control_ready: set[str] = set()

    def store(self, name: str) -> Store:
        with self._lock:
            s = self._stores.get(name)
            if s is None:
                s = open_store(self.resolver.resolve(name), pool_size=self._pool_size)  # SQL or Redis
                if not is_redis(s):
                    # the worker's own writes (backfill, repair, relay) must never be captured by triggers
                    mark_replica(s)
                self._stores[name] = s
            return s

    def control_store(self, name: str) -> Store:
        """The store ``name`` with the control tables in it (created on first use by this worker)."""
        store = self.store(name)
        if is_redis(store):
            raise SchemaError([Problem(f"store {name!r}", "the control store is Redis: the control tables need "
                                                          "a SQL store (name one with 'control:')")],
                              "control store is not SQL")
        with self._lock:
            ready = name in self._control_ready
        if not ready:
            control.ensure_schema(store)
            with self._lock:
                self._control_ready.add(name)
        return store

    def spec(self, ref: SpecRef) -> MigrationSpec:
        """The spec a reference names: from this process's cache, else from the control store (published
        by the workflow before it handed out the reference)."""
        with self._lock:
            spec = self._specs.get(ref.digest)
        if spec is not None:
            return spec
        raw = control.load_spec(self.control_store(ref.control_store), ref.migration, ref.digest)
        if raw is None:
            raise SpecError([Problem(f"migration {ref.migration}", f"spec {ref.digest[:12]} is not published in "
                                                                    f"control store {ref.control_store!r}")],
                            "spec not published")
        spec = MigrationSpec.model_validate_json(raw)
        with self._lock:
            self._specs[ref.digest] = spec
        return spec

    def spec_of(self, inp: SpecCarrier) -> tuple[MigrationSpec, str]:
        """(spec, digest) of an input that names a whole migration: resolved by reference, or (recorded
        histories, inputs started before their call site sent references) carried inline."""
        if inp.spec_ref is not None:
            return self.spec(inp.spec_ref), inp.spec_ref.digest
        spec = inp.inline_spec()
        return spec, self.digest(spec)

    def digest(self, spec: MigrationSpec) -> str:
        """The digest of a spec passed inline (recorded histories, and the inputs that still carry the spec):
        hashed once per spec object, so an activity asking for several tables' mappings hashes once. The
        memo holds the spec itself (its id cannot be reused while it is in there) and keeps the last few."""
        with self._lock:
            hit = self._digests.get(id(spec))
        if hit is not None and hit[0] is spec:
            return hit[1]
        digest = spec_digest(spec)
        with self._lock:
            if len(self._digests) >= DIGEST_MEMO:
                self._digests.pop(next(iter(self._digests)))
            self._digests[id(spec)] = (spec, digest)
        return digest

    def forget_specs(self) -> None:
        """Drop the cached specs (they load again from the control store on the next use)."""
        with self._lock:
            self._specs.clear()
            self._digests.clear()

    def table(self, ref: TableRef, *, refresh: bool = False) -> tuple[MigrationSpec, Store, Store, TableMapping]:
        """(spec, from store, to store, mapping) for the table an activity input names, by reference or
        (recorded histories) with the spec inline."""
        if ref.spec_ref is not None:
            spec, digest = self.spec(ref.spec_ref), ref.spec_ref.digest
        else:
            if ref.spec is None:  # pragma: no cover - TableRef's validator forbids it
                raise SpecError([Problem(f"table {ref.source}", "no spec and no spec_ref")], "bad table reference")
            spec, digest = ref.spec, self.digest(ref.spec)
        src, dst, mapping = self.mapping(spec, ref.source, reverse=ref.reverse, refresh=refresh, digest=digest)
        return spec, src, dst, mapping

    def relay_stores(self, spec: MigrationSpec, digest: str | None = None) -> RelayStores:
        """A migration's stores and cached mappings, as the capture methods' store side takes them
        (``digest``: the spec's, when known; else the spec is hashed)."""
        digest = digest or self.digest(spec)

        def mapping_for(table: str, reverse: bool) -> TableMapping:
            return self.mapping(spec, table, reverse=reverse, digest=digest)[2]

        return RelayStores(spec, self.store(spec.old), self.store(spec.new), self.store(spec.control), mapping_for)

    def mapping(self, spec: MigrationSpec, source: str, *, reverse: bool = False, refresh: bool = False,
                digest: str | None = None) -> tuple[Store, Store, TableMapping]:
        """(from store, to store, mapping) for one table; ``reverse`` mirrors new -> old. Mappings are cached
        by the spec's digest: pass it when known (a :class:`SpecRef` carries it), else the spec is hashed."""
        old, new = self.store(spec.old), self.store(spec.new)
        key = (digest or self.digest(spec), source, False)
        with self._lock:
            forward = None if refresh else self._mappings.get(key)
        if forward is None:
            forward = compile_mapping(spec, source, old, new, refresh=refresh)
            with self._lock:
                self._mappings[key] = forward
        if not reverse:
            return old, new, forward
        try:
            back = forward.reversed()
        except ValueError as exc:
            raise SchemaError([Problem(f"table {source}", f"cannot mirror new -> old: {exc}")],
                              "irreversible mapping") from None
        return new, old, back

    def close(self) -> None:
        with self._lock:
            for s in self._stores.values():
                s.dispose()
            self._stores.clear()
            self._mappings.clear()
            self._specs.clear()
            self._digests.clear()


def compile_mapping(spec: MigrationSpec, source: str, old: Store, new: Store, *,
                    refresh: bool = False) -> TableMapping:
    """Compile the spec's mapping against both live stores (a Redis new store by its ``redis:`` section,
    :func:`dualwrite.stores.compile_for_stores`), raising SchemaError with every problem."""
    try:
        table = spec.table(source)
    except KeyError:
        raise SchemaError([Problem(f"table {source}", "not in the spec")], "schema mismatch") from None
    mapping, problems = compile_for_stores(table, old, new, refresh=refresh)
    if mapping is None:
        raise SchemaError(problems, "schema mismatch")
    return mapping
