"""How one table is laid out in Redis, and the mapping to it compiled without a schema to reflect.

A Redis table has no catalog: its "columns" are whatever the mapping writes. So the target
:class:`~dualwrite.store.TableInfo` is synthesized from the source's and the table spec (every migrated
column, under its target name, with the source column's kind), the ordinary compiler
(:func:`dualwrite.mapping.compile_table`) checks the spec against it, and the key template is then checked
against the mapping's key columns. Every problem is reported at once, each naming the table and field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dualwrite.errors import Problem, SpecError
from dualwrite.keyvalue import KeyTemplate, ValueCodec
from dualwrite.mapping import TableMapping, compile_table
from dualwrite.spec._models import RedisMap, TableSpec
from dualwrite.store import ColumnInfo, Kind, TableInfo

__all__ = ["RedisLayout", "redis_mapping", "redis_table_info"]

_SQL_TYPE = "redis"  # no engine spelling: nothing is ever CAST on a Redis "column"


def _renamed_from(spec: TableSpec) -> dict[str, str]:
    """target column -> the source column it copies, for the spec's plain renames."""
    return {t: m.from_ for t, m in spec.columns.items()
            if m.from_ is not None and m.transform is None and m.expr is None}


def redis_table_info(spec: TableSpec, source: TableInfo) -> TableInfo:
    """The target table a Redis layout stands for: the spec's columns, and every other source column that
    is neither dropped nor already the input of one of them, with the source's kinds.

    A column the spec fills from a transform, expression or default has no source column to take a kind
    from (a transform of ``amount`` may return integer cents) and is kept as text (its canonical text is
    what Redis holds anyway)."""
    renamed = _renamed_from(spec)
    columns: dict[str, ColumnInfo] = {}
    for tcol, cmap in spec.columns.items():
        plain = cmap.transform is None and cmap.expr is None  # a transform's result has no known kind
        src = source.columns.get(renamed.get(tcol) or cmap.from_ or "") if plain else None
        columns[tcol] = replace(src, name=tcol, sql_type=_SQL_TYPE) if src is not None else ColumnInfo(
            tcol, Kind.TEXT, _SQL_TYPE, nullable=True, has_default=cmap.has_default)
    # a source column a target column is made from (renamed, or the input of a transform) is not also copied
    # under its own name: a SQL target would not have it either (the demo's name -> first_name + last_name)
    used = set(renamed.values()) | {m.from_ for m in spec.columns.values() if m.from_ is not None}
    for name, col in source.columns.items():
        if name not in spec.drop and name not in used and name not in columns:
            columns[name] = replace(col, sql_type=_SQL_TYPE)
    key = list(spec.key) if spec.key else list(source.primary_key or next(iter(source.unique_keys), []))
    back = {s: t for t, s in renamed.items()}
    return TableInfo(name=spec.target_table, columns=columns, primary_key=[back.get(k, k) for k in key])


@dataclass(frozen=True)
class RedisLayout:
    """One table in Redis: the key template, the value shape and the encoding of the mapped columns."""

    template: KeyTemplate
    json: bool
    codec: ValueCodec
    key_columns: tuple[str, ...]

    @classmethod
    def of(cls, layout: RedisMap, mapping: TableMapping, where: str) -> RedisLayout:
        """Check ``layout`` against a compiled mapping (raises SpecError naming ``where``.key)."""
        info = mapping.target_info
        names = mapping.target_columns
        template = KeyTemplate.parse(layout.key, mapping.target_key,
                                     [info.columns[k].kind for k in mapping.target_key],
                                     prefix=layout.prefix, where=f"{where}.redis.key")
        codec = ValueCodec(columns=names, kinds=tuple(info.columns[c].kind for c in names),
                           scales=tuple(info.columns[c].scale for c in names))
        return cls(template=template, json=layout.value == "json", codec=codec, key_columns=mapping.target_key)


def redis_mapping(spec: TableSpec, source: TableInfo, where: str = "") -> tuple[TableMapping, RedisLayout]:
    """Compile a table spec whose new store is Redis; every problem of the spec and the key template is
    raised at once in one :class:`~dualwrite.errors.SpecError`."""
    at = where or f"table {spec.source}"
    if spec.redis is None:
        raise SpecError([Problem(f"{at}.redis", "the new store is Redis: say how the table is kept there "
                                                "(redis: {key: \"name:{id}\", value: hash})")])
    mapping, problems = compile_table(spec, source, redis_table_info(spec, source), where=at)
    if mapping is None:
        try:  # the template's problems too, against the key the spec names
            info = redis_table_info(spec, source)
            KeyTemplate.parse(spec.redis.key, info.primary_key,
                              [info.columns[k].kind if k in info.columns else Kind.TEXT for k in info.primary_key],
                              where=f"{at}.redis.key")
        except SpecError as exc:
            problems = [*problems, *exc.problems]
        raise SpecError(problems)
    return mapping, RedisLayout.of(spec.redis, mapping, at)
