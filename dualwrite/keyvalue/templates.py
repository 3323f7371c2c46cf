"""A table's key template: the Redis key of a row from its key columns, and the key columns from a key.

``customer:{id}`` or ``order:{tenant}:{id}``: literal text and ``{column}`` fields naming the table's key
columns, each exactly once. Values are written with the canonical encoding of :mod:`.encoding` and then
escaped so that a key can always be parsed back (verification scans Redis for keys the source lacks, and
must turn each one into key values to look them up): ``%`` and every character of the template's
separators are percent-encoded. ``customer:{email}`` with ``a:b@x`` gives ``customer:a%3Ab@x``.

A per-migration prefix (``mig1:``) goes in front of every key; keys under it are the migration's.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite.errors import Problem, RowRejectedError, SpecError
from dualwrite.keyvalue.encoding import column_encoder, decode_value
from dualwrite.store import Kind

__all__ = ["KeyTemplate"]

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class KeyTemplate:
    """A parsed key template for one table (see the module docstring)."""

    prefix: str
    literals: tuple[str, ...]  # literal text before each field, then after the last one
    fields: tuple[str, ...]
    kinds: tuple[Kind, ...]

    @classmethod
    def parse(cls, template: str, key_columns: Sequence[str], kinds: Sequence[Kind], *, prefix: str = "",
              where: str = "key") -> KeyTemplate:
        """Check ``template`` against the table's key columns; every problem is reported at once."""
        literals: list[str] = []
        fields: list[str] = []
        problems: list[str] = []
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise SpecError([Problem(where, f"key template {template!r} is malformed: {exc}")]) from None
        for literal, field, spec, conv in parts:
            literals.append(literal)
            if field is None:
                continue
            if spec or conv:
                problems.append(f"field {{{field}}} has a format or conversion: write only the column name")
            fields.append(field)
        if len(literals) == len(fields):
            literals.append("")
        unknown = list(dict.fromkeys(f for f in fields if f not in key_columns))
        if unknown:
            verb = "is not a key column" if len(unknown) == 1 else "are not key columns"
            problems.append(f"{', '.join(unknown)} {verb} (the key is {', '.join(key_columns)})")
        missing = [c for c in key_columns if c not in fields]
        if missing:
            problems.append(f"key column(s) {', '.join(missing)} missing: two rows would share one Redis key")
        twice = sorted({f for f in fields if fields.count(f) > 1})
        if twice:
            problems.append(f"{', '.join(twice)} used more than once")
        empty_sep = [i for i in range(1, len(fields)) if not literals[i]]
        if empty_sep:
            problems.append("two fields with no separator between them cannot be told apart")
        if problems:
            raise SpecError([Problem(where, f"key template {template!r}: {p}") for p in problems])
        by_name = dict(zip(key_columns, kinds, strict=True))
        return cls(prefix=prefix, literals=tuple(literals), fields=tuple(fields),
                   kinds=tuple(by_name[f] for f in fields))

    @property
    def escaped_chars(self) -> str:
        return "%" + "".join(sorted({c for lit in self.literals[1:] for c in lit}))

    @staticmethod
    def _unescape(text: str) -> str:
        return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)

    def key(self, values: Sequence[Any], columns: Sequence[str]) -> str:
        """The Redis key of a row whose key columns ``columns`` hold ``values``."""
        if len(values) != len(columns):
            raise ValueError(f"{len(values)} key values for {len(columns)} key columns")
        return self.keyer(tuple(columns))(values)

    def keyer(self, columns: tuple[str, ...]) -> Callable[[Sequence[Any]], str]:
        """:meth:`key` for values always given in the order of ``columns``, compiled once (a backfill
        builds one key per row)."""
        return _keyer(self, columns)

    def values(self, key: str | bytes, columns: Sequence[str]) -> tuple[Any, ...] | None:
        """The canonical key values (in the order of ``columns``) of a Redis key, or None when the key is not
        one of this template's (another table's key, or a key nobody wrote through dualwrite)."""
        if isinstance(key, bytes):
            key = key.decode(errors="replace")
        m = self._pattern.fullmatch(key)
        if m is None:
            return None
        decoded = {f: decode_value(self._unescape(m.group(i + 1)), kind)
                   for i, (f, kind) in enumerate(zip(self.fields, self.kinds, strict=True))}
        return tuple(decoded[c] for c in columns)

    @property
    def _pattern(self) -> re.Pattern[str]:
        body = re.escape(self.prefix + self.literals[0])
        for lit in self.literals[1:]:
            body += "(.*?)" + re.escape(lit) if lit else "(.*)"
        return re.compile(body, re.DOTALL)

    def scan_pattern(self) -> str:
        """A ``SCAN MATCH`` glob for every key of this template (the literal head, escaped, then ``*``)."""
        return _GLOB_SPECIAL.sub(r"\\\1", self.prefix + self.literals[0]) + "*"


@functools.lru_cache(maxsize=256)
def _keyer(template: KeyTemplate, columns: tuple[str, ...]) -> Callable[[Sequence[Any]], str]:
    index = [columns.index(f) for f in template.fields]
    encoders = [column_encoder(kind) for kind in template.kinds]
    escapes = [(c, f"%{ord(c):02X}") for c in template.escaped_chars]  # "%" first: escapes contain it
    head = template.prefix + template.literals[0]
    parts = list(zip(template.fields, index, encoders, template.literals[1:], strict=True))

    def key(values: Sequence[Any]) -> str:
        out = head
        for field, i, encode, tail in parts:
            value = values[i]
            text = None if value is None else encode(value)
            if text is None:
                raise RowRejectedError(f"key column {field} is NULL: a row without a key cannot have a Redis key")
            for c, escaped in escapes:
                if c in text:
                    text = text.replace(c, escaped)
            out += text + tail
        return out

    return key
