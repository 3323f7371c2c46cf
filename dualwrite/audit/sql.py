"""Which tables an SQL text writes: statement classification on ``sqlparse``'s tokenizer.

The audit meets SQL as Python sees it: whole statements, scripts of several, f-strings and concatenations
whose unknown parts are replaced by a marker. A validating parser refuses most of those fragments (and
each dialect quotes names its own way), so this module classifies the *token stream* of a non-validating
tokenizer instead: it finds each INSERT / UPDATE / DELETE / REPLACE / MERGE / UPSERT / TRUNCATE / COPY FROM /
LOAD DATA in a position where it starts a statement (also inside a CTE), reads the table it names, and
ignores the same keywords where they are not statements (``ON CONFLICT DO UPDATE``, ``ON DUPLICATE KEY
UPDATE``, ``FOR UPDATE``, ``WHEN MATCHED THEN DELETE``, the ``REPLACE()`` function, words in a string).
Reads are never writes, whatever they read (``INSERT INTO orders_archive SELECT * FROM orders`` writes
``orders_archive`` only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlparse import lexer
from sqlparse import tokens as T

MARKER_PREFIX = "__dw_expr_"
"""Stands in for a Python expression inside an f-string or a concatenation (an unknown name or value)."""

_HINT = re.compile(r"\b(insert|update|delete|replace|merge|upsert|truncate|copy|load)\b", re.IGNORECASE)

# Words that end a table reference: never a table name or an alias where the classifier looks for one.
_RESERVED_WORDS = """
    SET WHERE FROM JOIN INNER LEFT RIGHT FULL CROSS OUTER NATURAL STRAIGHT_JOIN ON USING AS VALUES VALUE SELECT
    RETURNING OUTPUT ORDER GROUP LIMIT WHEN THEN INTO DEFAULT TABLE ONLY AND OR NOT IN IS NULL WITH UNION
    HAVING PARTITION OF NOWAIT SKIP FOR DO KEY CONFLICT DUPLICATE IGNORE LOW_PRIORITY QUICK DELAYED
    HIGH_PRIORITY LOCAL INFILE TO CASCADE RESTRICT RESTART CONTINUE IDENTITY UPDATE INSERT DELETE MERGE
    REPLACE UPSERT TRUNCATE COPY LOAD DATA EXCEPT INTERSECT WINDOW OFFSET FETCH MATCHED BY SOURCE TARGET
"""
_RESERVED = frozenset(_RESERVED_WORDS.split())


@dataclass(frozen=True)
class SqlWrite:
    """One write statement found in an SQL text."""

    verb: str
    """INSERT, UPDATE, DELETE, REPLACE, MERGE, UPSERT, TRUNCATE, COPY or LOAD DATA."""
    table: tuple[str, ...]
    """The table as written, unquoted: ``("orders",)`` or ``("public", "orders")``; a part that came from
    a Python expression is :data:`MARKER_PREFIX`-named."""
    offset: int
    """Where the statement's keyword starts in the text (for the line number)."""
    upsert: bool = False
    """An INSERT with ``ON CONFLICT`` / ``ON DUPLICATE KEY UPDATE`` or ``INSERT OR REPLACE``."""

    @property
    def what(self) -> str:
        if self.upsert and self.verb == "INSERT":
            return "INSERT ... ON CONFLICT/DUPLICATE KEY (upsert)"
        return self.verb


@dataclass(frozen=True)
class _Tok:
    ttype: object
    value: str
    offset: int

    @property
    def upper(self) -> str:
        return self.value.upper()

    def is_kw(self, *words: str) -> bool:
        return self.ttype in T.Keyword and self.upper in words

    def is_punct(self, ch: str) -> bool:
        return self.ttype in T.Punctuation and self.value == ch


def might_write(text: str) -> bool:
    """A cheap pre-filter: could this text hold a write statement at all?"""
    return _HINT.search(text) is not None


def _tokens(sql: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    for ttype, value in lexer.tokenize(sql):  # type: ignore[no-untyped-call]
        if not (ttype in T.Whitespace or ttype in T.Comment or ttype in T.Newline):
            out.append(_Tok(ttype, value, pos))
        pos += len(value)
    return out


def _ident(tok: _Tok) -> bool:
    """A token that can be (part of) a name: a plain or quoted identifier or a non-reserved keyword."""
    if tok.ttype in T.Name.Placeholder:
        return False
    if tok.ttype in T.Name or tok.ttype in T.Literal.String.Symbol:
        return True
    if tok.ttype in T.Keyword and not (tok.ttype in T.Keyword.DML or tok.ttype in T.Keyword.DDL):
        return tok.upper not in _RESERVED and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", tok.value) is not None
    return False


def unquote(part: str) -> str:
    """``"orders"``, `` `orders` ``, ``[orders]`` -> ``orders`` (doubled quotes undone)."""
    if len(part) >= 2:
        first, last = part[0], part[-1]
        if first == '"' and last == '"':
            return part[1:-1].replace('""', '"')
        if first == "`" and last == "`":
            return part[1:-1].replace("``", "`")
        if first == "[" and last == "]":
            return part[1:-1]
    return part


def _name(toks: Sequence[_Tok], i: int) -> tuple[tuple[str, ...], int] | None:
    """A possibly qualified name at ``i``: its unquoted parts and the index after it."""
    if i >= len(toks) or not _ident(toks[i]):
        return None
    parts = [unquote(toks[i].value)]
    j = i + 1
    while j + 1 < len(toks) and toks[j].is_punct(".") and _ident(toks[j + 1]):
        parts.append(unquote(toks[j + 1].value))
        j += 2
    return tuple(parts), j


def _alias(toks: Sequence[_Tok], i: int) -> tuple[str | None, int]:
    """An optional ``[AS] alias`` at ``i``."""
    j = i
    if j < len(toks) and toks[j].is_kw("AS"):
        j += 1
    if j < len(toks) and _ident(toks[j]):
        return unquote(toks[j].value).lower(), j + 1
    return None, i


def _aliases(toks: Sequence[_Tok]) -> dict[str, tuple[str, ...]]:
    """alias -> table for every ``FROM / JOIN / USING / UPDATE / INTO name [AS] alias`` in a statement."""
    out: dict[str, tuple[str, ...]] = {}
    i = 0
    while i < len(toks):
        tok = toks[i]
        is_ref = tok.is_kw("FROM", "JOIN", "USING", "INTO", "UPDATE", "STRAIGHT_JOIN") or tok.upper.endswith(" JOIN")
        if is_ref or (tok.is_punct(",") and i > 0 and _ident(toks[i - 1])):
            named = _name(toks, i + 1)
            if named is not None:
                parts, j = named
                alias, _ = _alias(toks, j)
                if alias is not None:
                    out.setdefault(alias, parts)
        i += 1
    return out


def _resolve(parts: tuple[str, ...], aliases: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    if len(parts) == 1 and parts[0].lower() in aliases:
        return aliases[parts[0].lower()]
    return parts


def _prev(toks: Sequence[_Tok], i: int) -> _Tok | None:
    return toks[i - 1] if i > 0 else None


def _statements(toks: list[_Tok]) -> Iterable[list[_Tok]]:
    cur: list[_Tok] = []
    for tok in toks:
        if tok.is_punct(";"):
            if cur:
                yield cur
            cur = []
        else:
            cur.append(tok)
    if cur:
        yield cur


def _until(toks: Sequence[_Tok], i: int, *words: str) -> int | None:
    """Index of the first keyword in ``words`` at or after ``i`` on the same parenthesis level."""
    depth = 0
    for j in range(i, len(toks)):
        t = toks[j]
        if t.is_punct("("):
            depth += 1
        elif t.is_punct(")"):
            if depth == 0:
                return None
            depth -= 1
        elif depth == 0 and t.is_kw(*words):
            return j
    return None


def _insert(toks: Sequence[_Tok], i: int) -> list[SqlWrite]:
    prev = _prev(toks, i)
    if prev is not None and prev.is_kw("THEN"):  # MERGE ... WHEN NOT MATCHED THEN INSERT (...)
        return []
    j, upsert = i + 1, False
    while j < len(toks) and toks[j].is_kw("IGNORE", "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "OR", "REPLACE",
                                         "ABORT", "FAIL", "ROLLBACK", "OVERWRITE", "TABLE"):
        upsert = upsert or toks[j].upper == "REPLACE"
        j += 1
    into = j < len(toks) and toks[j].is_kw("INTO")
    named = _name(toks, j + 1 if into else j)
    if named is None:
        return []
    parts, k = named
    if not into and not (k >= len(toks) or toks[k].is_punct("(")
                         or toks[k].is_kw("VALUES", "VALUE", "SET", "DEFAULT") or toks[k].ttype in T.Keyword.DML):
        return []
    tail = " ".join(t.upper for t in toks[k:])
    upsert = upsert or "ON CONFLICT" in tail or "ON DUPLICATE KEY" in tail
    return [SqlWrite("INSERT", parts, toks[i].offset, upsert=upsert)]


def _replace_or_upsert(toks: Sequence[_Tok], i: int, verb: str) -> list[SqlWrite]:
    prev = _prev(toks, i)
    if prev is not None and prev.is_kw("OR", "INSERT"):  # INSERT OR REPLACE: counted as the INSERT
        return []
    j = i + 1
    while j < len(toks) and toks[j].is_kw("LOW_PRIORITY", "DELAYED"):
        j += 1
    into = j < len(toks) and toks[j].is_kw("INTO")
    named = _name(toks, j + 1 if into else j)
    if named is None:
        return []
    parts, k = named
    if not into and not (k >= len(toks) or toks[k].is_punct("(") or toks[k].is_kw("VALUES", "VALUE", "SET")
                         or toks[k].ttype in T.Keyword.DML):
        return []
    return [SqlWrite(verb, parts, toks[i].offset, upsert=True)]


def _merge(toks: Sequence[_Tok], i: int) -> list[SqlWrite]:
    j = i + 1
    into = j < len(toks) and toks[j].is_kw("INTO")
    named = _name(toks, j + 1 if into else j)
    if named is None:
        return []
    parts, k = named
    _, k = _alias(toks, k)
    if not (into or (k < len(toks) and toks[k].is_kw("USING"))):
        return []
    return [SqlWrite("MERGE", parts, toks[i].offset)]


_Ref = tuple[tuple[str, ...], str | None]
"""A table reference of an UPDATE: its name parts and its alias."""


def _update(toks: Sequence[_Tok], i: int, aliases: dict[str, tuple[str, ...]]) -> list[SqlWrite]:
    prev = _prev(toks, i)
    # ON CONFLICT DO UPDATE, ON DUPLICATE KEY UPDATE, FOR UPDATE, MERGE's THEN UPDATE, MySQL's ON UPDATE
    if prev is not None and prev.is_kw("DO", "KEY", "FOR", "THEN", "ON"):
        return []
    j = i + 1
    while j < len(toks) and toks[j].is_kw("LOW_PRIORITY", "IGNORE", "ONLY"):
        j += 1
    found = _update_refs(toks, j)
    if found is None:
        return []
    refs, j = found
    if j >= len(toks) or not toks[j].is_kw("SET"):
        return []
    if len(refs) == 1:
        return [SqlWrite("UPDATE", _resolve(refs[0][0], aliases), toks[i].offset)]
    return _assigned_tables(toks, j, refs, toks[i].offset)


def _is_join(tok: _Tok) -> bool:
    return tok.is_kw("JOIN", "STRAIGHT_JOIN") or tok.upper.endswith(" JOIN")


def _update_refs(toks: Sequence[_Tok], j: int) -> tuple[list[_Ref], int] | None:
    """The tables an UPDATE names before SET (MySQL's multi-table ``a, b`` and ``a JOIN b ON ...``
    included), and where SET should be; None when they cannot be read."""
    refs: list[_Ref] = []
    while True:
        named = _name(toks, j)
        if named is None:
            return None
        parts, j = named
        alias, j = _alias(toks, j)
        refs.append((parts, alias))
        if j < len(toks) and toks[j].is_punct(","):
            j += 1
            continue
        if j < len(toks) and (toks[j].is_kw("JOIN", "STRAIGHT_JOIN", "INNER", "LEFT", "RIGHT", "CROSS")
                              or toks[j].upper.endswith(" JOIN")):
            k = j
            while k < len(toks) and not _is_join(toks[k]):
                k += 1
            set_at = _until(toks, k, "SET")
            if set_at is None:
                return None
            # every table reference up to SET: names after JOIN
            for m in range(k, set_at):
                nn = _name(toks, m + 1) if _is_join(toks[m]) else None
                if nn is not None:
                    a, _ = _alias(toks, nn[1])
                    refs.append((nn[0], a))
            j = set_at
        return refs, j


def _assigned_tables(toks: Sequence[_Tok], j: int, refs: list[_Ref], offset: int) -> list[SqlWrite]:
    """Several tables in one UPDATE: those whose alias or name qualifies an assigned column are written
    (an unqualified column: the first table, when nothing is qualified)."""
    qualifiers: set[str] = set()
    unqualified = False
    k = j + 1
    while k < len(toks) and not toks[k].is_kw("WHERE", "ORDER", "LIMIT"):
        named = _name(toks, k)
        if named is not None and named[1] < len(toks) and toks[named[1]].value == "=":
            if len(named[0]) >= 2:
                qualifiers.add(named[0][-2].lower())
            else:
                unqualified = True
            k = named[1] + 1
            continue
        k += 1
    out = []
    for n, (parts, alias) in enumerate(refs):
        hit = (alias is not None and alias in qualifiers) or parts[-1].lower() in qualifiers
        if hit or (unqualified and not qualifiers and n == 0):
            out.append(SqlWrite("UPDATE", parts, offset))
    return out


def _delete(toks: Sequence[_Tok], i: int, aliases: dict[str, tuple[str, ...]]) -> list[SqlWrite]:
    prev = _prev(toks, i)
    if prev is not None and prev.is_kw("THEN", "ON"):  # MERGE ... THEN DELETE; ON DELETE CASCADE
        return []
    j = i + 1
    while j < len(toks) and toks[j].is_kw("LOW_PRIORITY", "QUICK", "IGNORE"):
        j += 1
    if j < len(toks) and toks[j].is_kw("FROM"):
        j += 1
        if j < len(toks) and toks[j].is_kw("ONLY"):
            j += 1
        named = _name(toks, j)
        if named is None:
            return []
        return [SqlWrite("DELETE", _resolve(named[0], aliases), toks[i].offset)]
    # DELETE t WHERE ... (T-SQL)  /  DELETE a[, b] FROM t a JOIN ... (MySQL multi-table)
    targets: list[tuple[str, ...]] = []
    while True:
        named = _name(toks, j)
        if named is None:
            return []
        parts, j = named
        if j < len(toks) and toks[j].is_punct(".") and j + 1 < len(toks) and toks[j + 1].value == "*":
            j += 2
        targets.append(parts)
        if j < len(toks) and toks[j].is_punct(","):
            j += 1
            continue
        break
    if j < len(toks) and toks[j].is_kw("FROM"):
        return [SqlWrite("DELETE", _resolve(p, aliases), toks[i].offset) for p in targets]
    if j >= len(toks) or toks[j].is_kw("WHERE", "RETURNING", "OUTPUT"):
        return [SqlWrite("DELETE", p, toks[i].offset) for p in targets]
    return []


def _truncate(toks: Sequence[_Tok], i: int) -> list[SqlWrite]:
    j = i + 1
    while j < len(toks) and toks[j].is_kw("TABLE", "ONLY"):
        j += 1
    out = []
    while True:
        named = _name(toks, j)
        if named is None:
            break
        out.append(SqlWrite("TRUNCATE", named[0], toks[i].offset))
        j = named[1]
        if j < len(toks) and toks[j].value == "*":
            j += 1
        if j < len(toks) and toks[j].is_punct(","):
            j += 1
            continue
        break
    return out


def _copy(toks: Sequence[_Tok], i: int) -> list[SqlWrite]:
    named = _name(toks, i + 1)
    if named is None:
        return []
    parts, j = named
    if j < len(toks) and toks[j].is_punct("("):
        close = next((k for k in range(j, len(toks)) if toks[k].is_punct(")")), None)
        if close is None:
            return []
        j = close + 1
    if j < len(toks) and toks[j].is_kw("FROM"):  # COPY t FROM ... loads rows; COPY t TO only reads
        return [SqlWrite("COPY", parts, toks[i].offset)]
    return []


def _load_data(toks: Sequence[_Tok], i: int) -> list[SqlWrite]:
    if not (i + 1 < len(toks) and toks[i + 1].is_kw("DATA")):
        return []
    into = _until(toks, i + 2, "INTO")
    if into is None or not (into + 1 < len(toks) and toks[into + 1].is_kw("TABLE")):
        return []
    named = _name(toks, into + 2)
    return [SqlWrite("LOAD DATA", named[0], toks[i].offset)] if named else []


def writes(sql: str) -> list[SqlWrite]:
    """Every write statement in ``sql`` with the table it writes (see the module docstring)."""
    if not might_write(sql):
        return []
    out: list[SqlWrite] = []
    for stmt in _statements(_tokens(sql)):
        aliases = _aliases(stmt)
        for i, tok in enumerate(stmt):
            if not (tok.ttype in T.Keyword or tok.ttype in T.Name):
                continue
            word = tok.upper
            if word == "INSERT":
                out += _insert(stmt, i)
            elif word in ("REPLACE", "UPSERT"):
                out += _replace_or_upsert(stmt, i, word)
            elif word == "MERGE":
                out += _merge(stmt, i)
            elif word == "UPDATE":
                out += _update(stmt, i, aliases)
            elif word == "DELETE":
                out += _delete(stmt, i, aliases)
            elif word == "TRUNCATE":
                out += _truncate(stmt, i)
            elif word == "COPY":
                out += _copy(stmt, i)
            elif word == "LOAD":
                out += _load_data(stmt, i)
    return out


class TableSet:
    """The migrated tables, matched the way a database would find them from a name as written.

    Names compare case-insensitively (unquoted names fold, and a quoted name that differs from the spec
    only in case is far more likely the same table than another). A qualified name matches a migrated
    table of the same schema, and an unqualified migrated table in any schema (``public.orders`` is
    ``orders`` on the default search path, ``app.orders`` in MySQL is ``orders`` of database ``app``); an
    unqualified name matches a migrated ``schema.table`` too, since the search path decides.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = list(dict.fromkeys(names))
        self._exact: dict[tuple[str, ...], str] = {}
        self._bare: dict[str, str] = {}
        for n in self.names:
            parts = tuple(p.lower() for p in n.split("."))
            self._exact[parts] = n
            self._bare.setdefault(parts[-1], n)

    def match(self, parts: Sequence[str]) -> str | None:
        """The spec's name of the migrated table ``parts`` names, or None (also for an unknown part)."""
        if not parts or parts[-1].startswith(MARKER_PREFIX):
            return None
        low = tuple(p.lower() for p in parts)
        if low in self._exact:
            return self._exact[low]
        hit = self._bare.get(low[-1])
        if hit is None:
            return None
        spec_parts = hit.lower().split(".")
        if len(low) == 1 or len(spec_parts) == 1 or low[-2].startswith(MARKER_PREFIX):
            return hit
        return None
