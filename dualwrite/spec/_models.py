"""The spec's pydantic models: what a migration, a table, its column rules, gates and triggers may say.

Each model validates its own fields and the rules across them; reading a YAML file with line numbers is
:mod:`dualwrite.spec._reading`."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from dualwrite.capture import method_for

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_STORE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_TABLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
_DOTTED_RE = re.compile(r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")
TENANT_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
"""What a tenant id may look like (it is published to applications and shown in the Web UI)."""
_SQL_STRING_RE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`")


class _CrossFieldError(ValueError):
    """A rule across fields (old != new, one writer per target table).

    Pydantic only runs model validators once every field is valid, so :func:`read_spec_text` checks these
    rules on the raw document itself and reports them beside the field errors; this marker lets it drop
    the model validator's copy of the same complaint.
    """


class Strategy(StrEnum):
    STRICT = "strict"
    SYNC = "sync"
    ASYNC = "async"
    OUTBOX = "outbox"
    TRIGGERS = "triggers"
    CDC = "cdc"

    @property
    def inline(self) -> bool:
        """The adapter itself writes the other store (no key log, no relay): strict, sync, async.

        Only these can be chosen per table: a key-log strategy (outbox, triggers) needs the relay, the
        in-flight filter of verification and, for triggers, the denied-writes fence, all of which act on
        the whole migration, and triggers also capture the adapter's own writes to every table."""
        return method_for(self).inline


class Mode(StrEnum):
    MANUAL = "manual"
    AUTO = "auto"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ColumnMap(_Strict):
    """How one target column gets its value. Exactly one of from/expr/default/transform, except that a
    transform may name the source column it receives with ``from``."""

    from_: str | None = Field(default=None, alias="from", description="source column (a rename)")
    expr: str | None = Field(default=None, description="SQL expression evaluated on the source")
    default: Any = Field(default=None, description="constant for a new column")
    has_default: bool = Field(default=False, exclude=True)
    transform: str | None = Field(default=None, description="python callable 'pkg.module:function'")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"from": value}
        if isinstance(value, dict) and "default" in value:
            value = {**value, "has_default": True}
        return value

    @model_serializer(mode="wrap")
    def _only_what_was_given(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Dump only the keys that were given, so a dump validates back to the same map.

        Without this a rename dumps as ``{"from": "a", "default": null, ...}``, which reads back as a rename
        *and* a default and is refused: every spec with a column map would fail to cross Temporal (the
        pydantic data converter dumps and re-validates it)."""
        data = handler(self)
        if not isinstance(data, dict):
            return data
        out = {k: v for k, v in data.items() if v is not None and k not in ("default", "has_default")}
        if self.has_default:
            out["default"] = data.get("default")
        return out

    @model_validator(mode="after")
    def _exactly_one(self) -> ColumnMap:
        given = [n for n, v in (("from", self.from_), ("expr", self.expr), ("transform", self.transform)) if v]
        if self.has_default:
            given.append("default")
        if self.transform and self.expr:
            raise ValueError("a column takes either 'expr' or 'transform', not both")
        if self.transform and self.has_default:
            raise ValueError("a column takes either 'default' or 'transform', not both")
        if not self.transform and len(given) != 1:
            raise ValueError(f"give exactly one of from / expr / default / transform (got {given or 'none'})")
        _check_rule_fields(self.from_, self.expr, self.transform)
        return self


def _check_rule_fields(from_: str | None, expr: str | None, transform: str | None) -> None:
    """The shape of a column rule's fields, the same forward (ColumnMap) and back (ReverseMap)."""
    if from_ is not None and not _IDENT_RE.match(from_):
        raise ValueError(f"{from_!r} is not a column name")
    if transform is not None and not _DOTTED_RE.match(transform):
        raise ValueError(f"transform {transform!r} must look like 'package.module:function'")
    if expr is not None and ";" in _SQL_STRING_RE.sub("", expr):
        # the expression is pasted into a SELECT list; a statement separator is a mistake or an attack
        raise ValueError("an expression must not contain ';' (one SQL expression, not statements)")


class ReverseMap(_Strict):
    """How one *old* column is rebuilt from the new table when rows are mirrored back (new -> old).

    After write cutover the new store is authoritative and every write is mirrored back to the old one, so
    rollback stays possible. A plain rename reverses by itself; a column the forward mapping computed
    (``expr``, ``transform``) does not, so the spec says how to rebuild it: an SQL ``expr`` over the *new*
    table's columns (run on the new store), a Python ``transform`` (given one new column with ``from``, or
    the whole new row), or ``from`` a new column. A bare string is an ``expr``.
    """

    from_: str | None = Field(default=None, alias="from", description="new column (a plain copy back)")
    expr: str | None = Field(default=None, description="SQL expression evaluated on the new store")
    transform: str | None = Field(default=None, description="python callable 'pkg.module:function'")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"expr": value} if isinstance(value, str) else value

    @model_serializer(mode="wrap")
    def _only_what_was_given(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Dump only the keys given, so the spec crosses Temporal and validates back the same."""
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _exactly_one(self) -> ReverseMap:
        given = [n for n, v in (("from", self.from_), ("expr", self.expr), ("transform", self.transform)) if v]
        if self.transform and self.expr:
            raise ValueError("a reverse rule takes either 'expr' or 'transform', not both")
        if not self.transform and len(given) != 1:
            raise ValueError(f"give exactly one of from / expr / transform (got {given or 'none'})")
        _check_rule_fields(self.from_, self.expr, self.transform)
        return self


class RedisMap(_Strict):
    """A table kept in Redis ([T2-6], :mod:`dualwrite.stores.redis`): one key per row under a key template
    (``customer:{id}``), the row as a hash (a field per mapped column) or as one JSON document."""

    key: str = Field(description="key template: literal text and {column} for each key column")
    value: str = Field(default="hash", pattern="^(hash|json)$", description="hash (field per column) or json")
    prefix: str = Field(default="", description="put in front of every key, e.g. 'mig1:'")


class TableSpec(_Strict):
    source: str
    target: str | None = None
    key: list[str] | None = Field(default=None, description="key columns in the source; default: primary key")
    columns: dict[str, ColumnMap] = Field(default_factory=dict, description="target column -> mapping")
    drop: list[str] = Field(default_factory=list, description="source columns deliberately not migrated")
    reverse: dict[str, ReverseMap] = Field(
        default_factory=dict, description="old column -> how to rebuild it from the new table (new -> old mirror)")
    version_column: str | None = Field(default=None, description="source column that grows on every write")
    batch_size: int = Field(default=50_000, ge=1, le=1_000_000)
    tenant_column: str | None = None
    allow_empty: bool = Field(default=False, description="the table may hold no rows: a verification that "
                              "compared zero rows of it passes (otherwise it fails: a verifier must prove it looked)")
    strategy: Strategy | None = Field(default=None, description="this table's write strategy (strict, sync or "
                                      "async; default: the migration's)")
    redis: RedisMap | None = Field(default=None, description="how the table is kept when the new store is "
                                   "Redis: key template, value shape (hash or json), key prefix")

    @field_validator("source", "target")
    @classmethod
    def _table_name(cls, v: str | None) -> str | None:
        if v is not None and not _TABLE_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a table name (use schema.table or table)")
        return v

    @field_validator("key", "drop")
    @classmethod
    def _idents(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            if not _IDENT_RE.match(name):
                raise ValueError(f"{name!r} is not a column name")
        if v is not None and len(set(v)) != len(v):
            raise ValueError("columns are listed twice")
        return v

    @field_validator("reverse")
    @classmethod
    def _reverse_names(cls, v: dict[str, ReverseMap]) -> dict[str, ReverseMap]:
        for name in v:
            if not _IDENT_RE.match(name):
                raise ValueError(f"{name!r} is not a column name")
        return v

    @property
    def target_table(self) -> str:
        return self.target or self.source


class Gates(_Strict):
    """The cutover gate (before CUTOVER_READS and CUTOVER_WRITES), over the last ``window_seconds``.

    Each rate needs its minimum number of samples: fewer is "not yet", never a pass. A minimum of 0 says
    the metric needs no traffic at all (then no traffic is "n/a" and does not hold the gate)."""

    shadow_match_rate: float = Field(default=0.999, ge=0, le=1, description="shadow reads that matched: > this")
    min_shadow_samples: int = Field(default=1000, ge=0)
    secondary_write_success_rate: float = Field(default=0.9995, ge=0, le=1,
                                                description="secondary writes that succeeded: > this")
    min_write_samples: int = Field(default=1000, ge=0)
    p99_latency_increase: float = Field(default=0.20, ge=0, description="adapter p99 over the authoritative "
                                        "write's p99, minus one: < this")
    min_latency_samples: int = Field(default=1000, ge=0)
    window_seconds: int = Field(default=300, ge=1, description="statistics window; the reconciliation "
                                "evidence must be a verification younger than this")
    require_approval: bool = False
    max_async_lag_seconds: float = Field(default=5.0, ge=0, description="strategy async: the oldest queued "
                                         "secondary write of any instance must be younger than this")


class RollbackTriggers(_Strict):
    """Automatic rollback during CUTOVER_READS / CUTOVER_WRITES: one step back, recorded, and held."""

    enabled: bool = True
    window_seconds: int = Field(default=60, ge=1, description="statistics window the triggers look at")
    check_seconds: float = Field(default=10.0, ge=0.2, description="how often the statistics are read")
    max_shadow_mismatch_rate: float = Field(default=0.01, ge=0, le=1, description="roll back when shadow "
                                            "mismatches exceed this share of compared reads")
    min_shadow_samples: int = Field(default=100, ge=1)
    max_new_store_error_rate: float = Field(default=0.01, ge=0, le=1, description="roll back when writes to "
                                            "the new store fail more often than this")
    min_write_samples: int = Field(default=100, ge=1)


class Tenancy(_Strict):
    """Per-tenant migration: tenants can move through SHADOW_READ..CUTOVER_WRITES one by one.

    ``column`` is the tenant column of the source tables; it becomes each table's ``tenant_column`` unless
    the table sets its own (``tenant_column: null`` marks a table shared by all tenants)."""

    column: str
    ids: list[str] = Field(default_factory=list, description="tenants shown from the start (others may be "
                                                             "named later)")

    @field_validator("column")
    @classmethod
    def _column(cls, v: str) -> str:
        if not _IDENT_RE.match(v):
            raise ValueError(f"{v!r} is not a column name")
        return v

    @field_validator("ids")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        for t in v:
            if not TENANT_ID_RE.match(t):
                raise ValueError(f"{t!r} is not a tenant id (letters, digits, '_', '-', '.', ':', '@', at most 128)")
        if len(set(v)) != len(v):
            raise ValueError("tenants are listed twice")
        return v


class MigrationSpec(_Strict):
    name: str
    old: str = Field(description="name of the store that is authoritative today")
    new: str = Field(description="name of the store the application moves to")
    control_store: str | None = Field(
        default=None, description="store holding the control tables applications poll; default: old")
    strategy: Strategy = Strategy.SYNC
    mode: Mode = Mode.MANUAL
    tables: list[TableSpec] = Field(min_length=1)
    backfill_concurrency: int = Field(default=4, ge=1, le=256)
    verify_interval_seconds: int = Field(default=0, ge=0, description="continuous verification; 0 = off")
    auto_cleanup: bool = False
    gates: Gates = Field(default_factory=Gates)
    rollback_triggers: RollbackTriggers = Field(default_factory=RollbackTriggers)
    tenants: Tenancy | None = None

    @model_validator(mode="before")
    @classmethod
    def _tenant_columns(cls, value: Any) -> Any:
        """``tenants.column`` is the default ``tenant_column`` of every table that does not name its own."""
        if not isinstance(value, dict):
            return value
        tenancy, tables = value.get("tenants"), value.get("tables")
        column = tenancy.get("column") if isinstance(tenancy, dict) else getattr(tenancy, "column", None)
        if not isinstance(column, str) or not isinstance(tables, list):
            return value
        filled = [{**t, "tenant_column": column} if isinstance(t, dict) and "tenant_column" not in t else t
                  for t in tables]
        return {**value, "tables": filled}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use letters, digits, '_', '-' or '.', starting with a letter (at most 63)")
        return v

    @field_validator("old", "new", "control_store")
    @classmethod
    def _store(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v or "@" in v:
            raise ValueError("name a store, not a URL: URLs live in DUALWRITE_STORE_<NAME> or the config file")
        if not _STORE_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a store name")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> MigrationSpec:
        if self.old == self.new:
            raise _CrossFieldError("old and new name the same store")
        targets = [t.target_table for t in self.tables]
        dupes = sorted({t for t in targets if targets.count(t) > 1})
        if dupes:
            raise _CrossFieldError(f"target tables written by more than one entry: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _table_strategies(self) -> MigrationSpec:
        odd = [t.source for t in self.tables if t.strategy is not None and not t.strategy.inline]
        if odd:
            raise ValueError(f"tables {', '.join(odd)}: a table's own strategy is strict, sync or async (outbox "
                             "and triggers need the relay and act on the whole migration: set them as the "
                             "migration's strategy)")
        mixed = [t.source for t in self.tables if t.strategy is not None and t.strategy is not self.strategy]
        if mixed and not self.strategy.inline:
            raise ValueError(f"tables {', '.join(mixed)} choose their own strategy, but the migration's strategy "
                             f"{self.strategy.value} needs the relay for every table (triggers would also capture "
                             "the adapter's writes): use strict, sync or async as the migration's strategy")
        return self

    def strategy_of(self, table: str) -> Strategy:
        """The write strategy of a source table: its own, else the migration's."""
        for t in self.tables:
            if t.source == table and t.strategy is not None:
                return t.strategy
        return self.strategy

    @model_validator(mode="after")
    def _tenancy(self) -> MigrationSpec:
        if self.tenants is not None and not self.tenant_tables:
            raise ValueError("tenants: every table sets tenant_column: null, so no table can move by tenant")
        if method_for(self.strategy).reads_database_log and self.tenant_tables:
            # log capture sees dualwrite's own writes too: only denied writes tell them from the application's,
            # and per-tenant authority cannot be denied table by table (a key log could be mirrored per side)
            raise ValueError("strategy cdc moves every table's authority as a whole: set tenant_column: null on "
                             f"{', '.join(t.source for t in self.tenant_tables)}, or use strategy triggers")
        return self

    @property
    def control(self) -> str:
        return self.control_store or self.old

    @property
    def tenant_tables(self) -> list[TableSpec]:
        """The tables split by tenant (the others are shared and follow the migration's own phase)."""
        return [t for t in self.tables if t.tenant_column]

    def table(self, source: str) -> TableSpec:
        for t in self.tables:
            if t.source == source:
                return t
        raise KeyError(source)
