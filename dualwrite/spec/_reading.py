"""Reading a spec file: YAML with the line of every key, every problem reported at once with its line.

Why lenient: ``dualwrite check`` wants the complete list of problems in one run, and the parts of a spec
that validated on their own (a typo in one table must not hide the schema problems of the others)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dualwrite.errors import Problem, SpecError
from dualwrite.spec._models import (
    _STORE_NAME_RE,
    _TABLE_NAME_RE,
    ColumnMap,
    Gates,
    MigrationSpec,
    ReverseMap,
    RollbackTriggers,
    TableSpec,
    Tenancy,
    _CrossFieldError,
)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key and sequence item."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    lines = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    mapping_with_lines = _LinedDict(mapping)
    mapping_with_lines.lines = lines
    mapping_with_lines.line = node.start_mark.line + 1
    return mapping_with_lines


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> list[Any]:
    seq = _LinedList(loader.construct_sequence(node, deep=True))
    seq.lines = [item.start_mark.line + 1 for item in node.value]
    seq.line = node.start_mark.line + 1
    return seq


class _LinedDict(dict[Any, Any]):
    lines: dict[Any, int]
    line: int


class _LinedList(list[Any]):
    lines: list[int]
    line: int


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _duplicate_keys(node: yaml.Node, loc: tuple[int | str, ...] = (),
                    seen: set[int] | None = None) -> list[tuple[tuple[int | str, ...], int, str]]:
    """Every mapping key given twice, as (path of the later one, its line, message naming both lines).

    YAML keeps the last of two equal keys without a word, so a spec edited by hand (``tables:`` pasted
    twice, a column mapped twice) would lose the first silently. The walk is over the composed node tree,
    not the constructed document, because the document no longer holds what the later key replaced.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: the anchored node was checked where it was defined
        return []
    seen.add(id(node))
    out: list[tuple[tuple[int | str, ...], int, str]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key: Any = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in first:
                out.append(((*loc, key), line,
                            f"{key!r} is given twice (lines {first[key]} and {line}); remove one"))
            elif key is not None:
                first[key] = line
            out += _duplicate_keys(value_node, (*loc, key) if key is not None else loc, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, (*loc, i), seen)
    return out


def _line_of(doc: Any, loc: tuple[int | str, ...]) -> int | None:
    node, line = doc, getattr(doc, "line", None)
    for part in loc:
        if isinstance(node, _LinedDict) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        elif isinstance(node, _LinedList) and isinstance(part, int) and part < len(node):
            line = node.lines[part]
            node = node[part]
        else:
            break
    return line


def _loc_text(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _plain(value: Any) -> Any:
    """Strip line bookkeeping so pydantic sees ordinary dicts and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


Loc = tuple[int | str, ...]


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """Which model an unknown field at ``loc`` was written into, to suggest the field meant."""
    if len(loc) == 1:
        return MigrationSpec
    if loc[0] == "gates" and len(loc) == 2:
        return Gates
    if loc[0] == "rollback_triggers" and len(loc) == 2:
        return RollbackTriggers
    if loc[0] == "tenants" and len(loc) == 2:
        return Tenancy
    if loc[0] == "tables" and len(loc) == 3:
        return TableSpec
    if loc[0] == "tables" and len(loc) == 5 and loc[2] == "columns":
        return ColumnMap
    if loc[0] == "tables" and len(loc) == 5 and loc[2] == "reverse":
        return ReverseMap
    return None


def _unknown_field(loc: Loc) -> str:
    model = _model_at(loc)
    if model is None:
        return "unknown field"
    names = _field_names(model)
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    if close:
        return f"unknown field (did you mean '{close[0]}'?)"
    return f"unknown field; expected one of: {', '.join(names)}"


def _cross_field_problems(doc: dict[Any, Any]) -> list[tuple[Loc, str]]:
    """Rules across fields, checked on the raw document so they are reported even beside field errors."""
    out: list[tuple[Loc, str]] = []
    old, new = doc.get("old"), doc.get("new")
    if isinstance(old, str) and old and old == new:
        out.append((("new",), f"old and new name the same store {old!r}"))
    tables = doc.get("tables")
    if isinstance(tables, list):
        first: dict[str, int] = {}
        for i, t in enumerate(tables):
            if not isinstance(t, dict):
                continue
            which = "target" if t.get("target") else "source"
            name = t.get(which)
            if not isinstance(name, str):
                continue
            if name in first:
                out.append((("tables", i, which),
                            f"target table {name} is already written by tables[{first[name]}]"))
            else:
                first[name] = i
    return out


@dataclass
class SpecDocument:
    """A spec file read leniently, for ``dualwrite check``.

    Holds every problem found (each with its line) and, besides the whole spec when it is valid, every
    part that validated on its own: a typo in one table must not hide the schema problems of the others,
    because the operator wants the complete list in one run.
    """

    source: str
    problems: list[Problem] = field(default_factory=list)
    spec: MigrationSpec | None = None
    #: role ('old', 'new', 'control_store') -> store name, for each role whose value is a valid name
    stores: dict[str, str] = field(default_factory=dict)
    #: (position in the file, entry) for every table entry that validated on its own
    tables: list[tuple[int, TableSpec]] = field(default_factory=list)
    #: (position, source, target) for entries that did not validate; the names are None when unusable
    broken_tables: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    doc: Any = field(default=None, repr=False)

    @classmethod
    def from_spec(cls, spec: MigrationSpec, source: str = "") -> SpecDocument:
        """Wrap an already validated spec (no file, so locations are paths without line numbers)."""
        stores = {"old": spec.old, "new": spec.new}
        if spec.control_store:
            stores["control_store"] = spec.control_store
        return cls(source=source, spec=spec, stores=stores, tables=list(enumerate(spec.tables)))

    def line(self, loc: Loc) -> int | None:
        return _line_of(self.doc, loc) if self.doc is not None else None

    def where(self, loc: Loc) -> str:
        """``orders.yaml:14 tables[1].columns.total``: the file line (when known) and the path."""
        line = self.line(loc)
        head = f"{self.source}:{line}" if line and self.source else self.source
        return f"{head} {_loc_text(loc)}".strip()


def read_spec_text(text: str, source: str = "<spec>") -> SpecDocument:
    """Parse spec text without raising: every problem with its line, plus the parts that validated."""
    out = SpecDocument(source=source)
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        out.problems.append(Problem(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}"))
        return out
    if not isinstance(doc, dict):
        out.problems.append(Problem(source, "the spec must be a YAML mapping"))
        return out
    out.doc = doc
    found: list[tuple[int, Problem]] = []
    root = yaml.compose(text, Loader=_LineLoader)
    for loc, line, msg in _duplicate_keys(root) if root is not None else []:
        found.append((line, Problem(f"{source}:{line} {_loc_text(loc)}", msg)))
    try:
        out.spec = MigrationSpec.model_validate(_plain(doc))
    except ValidationError as exc:
        for err in exc.errors():
            if isinstance((err.get("ctx") or {}).get("error"), _CrossFieldError):
                continue  # reported below from the raw document, with its exact line
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            # pydantic adds the model name of unions/validators to loc; keep the path the user wrote
            loc = tuple(p for p in loc if p not in ("str", "dict[str,any]"))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = _unknown_field(loc)
            found.append((out.line(loc) or 0, Problem(out.where(loc), msg)))
    for loc, msg in _cross_field_problems(doc):
        found.append((out.line(loc) or 0, Problem(out.where(loc), msg)))
    found.sort(key=lambda item: item[0])  # stable: file order, then the order pydantic reported
    out.problems = [p for _, p in found]
    if out.spec is not None:
        full = SpecDocument.from_spec(out.spec, source)
        out.stores, out.tables = full.stores, full.tables
        return out
    # salvage what validated on its own, so the live checks can still run on it
    for role in ("old", "new", "control_store"):
        value = doc.get(role)
        if isinstance(value, str) and _STORE_NAME_RE.match(value):
            out.stores[role] = value
    raw_tables = doc.get("tables")
    for i, raw in enumerate(raw_tables if isinstance(raw_tables, list) else []):
        try:
            out.tables.append((i, TableSpec.model_validate(_plain(raw))))
        except ValidationError:
            names: list[str | None] = []
            for key in ("source", "target"):
                value = raw.get(key) if isinstance(raw, dict) else None
                names.append(value if isinstance(value, str) and _TABLE_NAME_RE.match(value) else None)
            out.broken_tables.append((i, names[0], names[1] or names[0]))
    return out


def read_spec(path: str | Path) -> SpecDocument:
    """Read a spec file leniently (see :func:`read_spec_text`); locations name the file, not its path."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        return SpecDocument(source=str(p), problems=[Problem(str(p), f"cannot read the spec: {exc.strerror}")])
    except UnicodeDecodeError:
        return SpecDocument(source=str(p), problems=[Problem(str(p), "cannot read the spec: not UTF-8 text")])
    return read_spec_text(text, source=p.name)


def _strict(doc: SpecDocument) -> MigrationSpec:
    if doc.problems or doc.spec is None:
        raise SpecError(doc.problems or [Problem(doc.source, "invalid spec")], "invalid spec")
    return doc.spec


def parse_spec(text: str, source: str = "<spec>") -> MigrationSpec:
    """Parse and validate spec text; raise :class:`SpecError` naming every problem with its line."""
    return _strict(read_spec_text(text, source))


def load_spec(path: str | Path) -> MigrationSpec:
    """Load and validate a spec file; raise :class:`SpecError` naming every problem with its line."""
    return _strict(read_spec(path))
