"""One preflight run: every check of a spec against its live stores, every problem kept, then scrubbed."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

from dualwrite.capture import method_for

#: how long a preflight waits for a server before calling it unreachable
from dualwrite.config import StoreRef, StoreResolver, redact
from dualwrite.errors import Problem
from dualwrite.mapping import SourceKind, TableMapping, _did_you_mean, compile_table, load_callable
from dualwrite.preflight._probe import _error_text, _Probe
from dualwrite.preflight._redis import strategy_problems, table_problems
from dualwrite.preflight._report import _ROLE_LABEL, PreflightReport, StoreSummary, TableSummary
from dualwrite.spec import Loc, MigrationSpec, SpecDocument, TableSpec, read_spec
from dualwrite.store import Dialect, TableInfo


def _same_place(a: StoreRef, b: StoreRef) -> bool:
    """Do two store URLs name the same database (ignoring passwords and options)?"""
    try:
        ua, ub = sa.make_url(a.url), sa.make_url(b.url)
    except Exception:  # noqa: BLE001 - an unparsable URL names no place (reported by its probe)
        return False
    return (ua.get_backend_name(), ua.host, ua.port, ua.database) == (ub.get_backend_name(), ub.host, ub.port,
                                                                      ub.database)


class _Run:
    """The state of one preflight: the spec document, the probes and the problems found so far."""

    def __init__(self, doc: SpecDocument, resolver: StoreResolver) -> None:
        self.doc = doc
        self.resolver = resolver
        self.report = PreflightReport(source=doc.source, problems=list(doc.problems))
        self.probes: dict[str, _Probe] = {}
        self._same_database = False

    def problem(self, where: str, message: str) -> None:
        self.report.problems.append(Problem(where, message))

    def at(self, *loc: int | str) -> str:
        return self.doc.where(tuple(loc))

    def run(self) -> PreflightReport:
        try:
            self._stores()
            old = self.probes.get(self.doc.stores.get("old", ""))
            new = self.probes.get(self.doc.stores.get("new", ""))
            for index, entry in self.doc.tables:
                self._table(index, entry, old, new)
            for index, source, target in self.doc.broken_tables:
                self._exists_only(index, source, target, old, new)
            self._ownership(old, new)
            self._capture(old, new)
            self._redis(new)
        finally:
            for probe in self.probes.values():
                probe.close()
        self._finish()
        return self.report

    def _ownership(self, old: _Probe | None, new: _Probe | None) -> None:
        """PostgreSQL lets only a table's owner (or a member of the owning role) alter, rename or drop it.
        PREPARE brings existing control tables and key logs up to date in place, and CLEANUP renames (or
        drops) the old tables: an account that does not own them fails there with ``must be owner of table
        ...``, a permanent error, after the migration started. Say so here instead."""
        from dualwrite import control, stats  # noqa: PLC0415 - only the table names

        ctl = self.probes.get(self.doc.stores.get("control_store", "") or self.doc.stores.get("old", ""))
        wanted: dict[_Probe, list[tuple[str, str]]] = {}
        # only the key log this capture method uses: another one left by an earlier migration is nobody's business
        key_log = method_for(self.doc.spec.strategy).key_log if self.doc.spec is not None else None
        logs = [key_log] if key_log else []
        for probe, names, why in (
                (ctl, [control.STATE, control.INSTANCES, control.REPAIR_QUEUE, control.CHECKPOINTS, stats.STATS],
                 "PREPARE updates the control tables in place"),
                (old, logs, "the relay updates the key logs in place"),
                (new, logs, "the relay updates the key logs in place"),
                (old, [entry.source for _, entry in self.doc.tables], "CLEANUP renames (or drops) the old tables")):
            if probe is not None and probe.error is None and probe.dialect is Dialect.POSTGRESQL:
                wanted.setdefault(probe, []).extend((t, why) for t in names)
        for probe, tables in wanted.items():
            try:
                with probe.read_only() as cur:
                    cur.execute("SELECT u.t, u.why, pg_get_userbyid(c.relowner) FROM unnest(%s::text[], %s::text[]) "
                                "AS u(t, why) JOIN pg_class c ON c.oid = to_regclass(u.t) "
                                "WHERE NOT pg_has_role(current_user, c.relowner, 'USAGE')",
                                ([t for t, _ in tables], [w for _, w in tables]))
                    found = list(dict.fromkeys((str(t), str(w), str(o)) for t, w, o in cur.fetchall()))
            except Exception as exc:  # noqa: BLE001 - could not find out: say so rather than pass silently
                self.problem(probe.label, f"could not check table ownership: {_error_text(exc)}")
                continue
            for table, why, owner in found:
                self.problem(f"{probe.label} table {table}",
                             f"{probe.user} does not own table {table} (owner: {owner}), and {why}, which PostgreSQL "
                             f"allows only to the owner ('must be owner of table {table}'): ALTER TABLE {table} "
                             f"OWNER TO {probe.user}, GRANT {owner} TO {probe.user}, or run the worker as {owner}")

    def _stores(self) -> None:
        for problem in self.resolver.file_problems:
            self.problem(problem.where, problem.message)
        for role in ("old", "new", "control_store"):
            name = self.doc.stores.get(role)
            if name is None:
                continue
            probe = self.probes.setdefault(name, _Probe(name))
            probe.roles.append(role)
        for name, probe in self.probes.items():
            ref, found = self.resolver.try_resolve(name)
            if ref is None:
                messages = [p.message for p in found if p.where == f"store {name!r}"]
                probe.error = "unknown"
                self.problem(f"{self.at(probe.roles[0])} (store {name!r})",
                             messages[0] if messages else "no URL for this store")
                continue
            probe.open(ref)
            if probe.error:
                self.problem(probe.label, probe.error + "; nothing on it was checked")
        old, new = (self.probes.get(self.doc.stores.get(r, "")) for r in ("old", "new"))
        self._same_database = bool(old and new and old.ref and new.ref and old is not new
                                   and _same_place(old.ref, new.ref))
        for probe in self.probes.values():
            if probe.redis is not None and probe.roles != ["new"]:
                self.problem(f"{self.at(next(r for r in probe.roles if r != 'new'))} (store {probe.name!r})",
                             "this store is Redis: Redis can be the new store only (the old store and the "
                             "control tables are SQL; name a SQL store with 'control:')")
            self.report.stores.append(StoreSummary(
                name=probe.name, roles=tuple(_ROLE_LABEL[r] for r in probe.roles),
                url=probe.ref.redacted_url if probe.ref else None,
                dialect="redis" if probe.redis is not None else probe.dialect.value if probe.dialect else None,
                reachable=probe.error is None, user=probe.user))

    def _table(self, index: int, entry: TableSpec, old: _Probe | None, new: _Probe | None) -> None:
        first = len(self.report.problems)
        try:
            self._check_table(index, entry, old, new)
        finally:
            # one table's problems in file order; store-side ones (privileges) after them
            pattern = re.compile(rf"^{re.escape(self.doc.source)}:(\d+) ") if self.doc.source else None

            def line(p: Problem) -> float:
                m = pattern.match(p.where) if pattern else None
                return int(m.group(1)) if m else float("inf")

            self.report.problems[first:] = sorted(self.report.problems[first:], key=line)

    def _check_table(self, index: int, entry: TableSpec, old: _Probe | None, new: _Probe | None) -> None:
        first = len(self.report.problems)
        source_info, target_info = self._describe(index, entry, old, new)
        mapping: TableMapping | None = None
        if new is not None and new.redis is not None:
            if source_info is not None:
                mapping, problems = table_problems(entry, source_info, f"tables[{index}]")
                for p in problems:
                    self.problem(self._relocate(index, p.where), p.message)
            else:
                self._one_side(index, entry, None, None)
        elif source_info is not None and target_info is not None:
            mapping, problems = compile_table(entry, source_info, target_info, where=f"tables[{index}]")
            for p in problems:
                self.problem(self._relocate(index, p.where), p.message)
        else:
            self._one_side(index, entry, source_info, target_info)
        self._expressions(index, entry, old if source_info is not None else None,
                          new if target_info is not None else None)
        if mapping is not None:
            self._reversible(index, entry, mapping)
        self._privileges(index, entry, mapping, source_info, target_info, old, new)
        if mapping is not None and new is not None and old is not None and len(self.report.problems) == first:
            rows, kind = old.row_estimate(entry.source)
            self.report.tables.append(TableSummary(
                index=index, source=entry.source, target=entry.target_table, source_key=mapping.source_key,
                target_key=mapping.target_key, columns=len(mapping.columns),
                version_column=mapping.version[0] if mapping.version else None, rows=rows, rows_kind=kind,
                mapping=mapping))

    def _describe(self, index: int, entry: TableSpec, old: _Probe | None, new: _Probe | None
                  ) -> tuple[TableInfo | None, TableInfo | None]:
        """Both tables of an entry as the stores describe them (None where missing or unreachable)."""
        target_loc: Loc = ("tables", index, "target" if entry.target else "source")
        source_info = target_info = None
        if old is not None and old.error is None:
            source_info, msg = old.describe(entry.source, "source table")
            if msg:
                self.problem(self.at("tables", index, "source"), msg)
        if new is not None and new.error is None and new.redis is None:  # Redis: no catalog to describe
            target_info, msg = new.describe(entry.target_table, "target table")
            if msg and not entry.target:
                msg += "; with no 'target:' the target table has the source's name"
            if msg:
                self.problem(self.doc.where(target_loc), msg)
        if self._same_database and entry.source == entry.target_table:
            self.problem(self.doc.where(target_loc), "old and new are the same database and this entry copies "
                                                     f"table {entry.source} onto itself")
        return source_info, target_info

    def _expressions(self, index: int, entry: TableSpec, old: _Probe | None, new: _Probe | None) -> None:
        """SQL expressions of the column rules on the old table and of the reverse rules on the new one,
        planned by the store that will run them (``old`` / ``new``: None where that table is unknown)."""
        if old is not None:
            for tcol, cmap in entry.columns.items():
                msg = old.check_expr(entry.source, cmap.expr) if cmap.expr is not None else None
                if msg:
                    self.problem(self.at("tables", index, "columns", tcol), msg)
        if new is not None:
            for ocol, rule in entry.reverse.items():
                msg = new.check_expr(entry.target_table, rule.expr, "new") if rule.expr is not None else None
                if msg:
                    self.problem(self.at("tables", index, "reverse", ocol), f"reverse rule: {msg}")

    def _capture(self, old: _Probe | None, new: _Probe | None) -> None:
        """Capture from the database's log (cdc): both stores' log settings, free slots, privileges, a slot
        left behind."""
        spec = self.doc.spec
        if spec is None or not method_for(spec.strategy).reads_database_log:
            return
        from dualwrite.cdc.checks import capture_problems  # noqa: PLC0415 - log capture only, when asked

        for role, probe in (("old", old), ("new", new)):
            if probe is not None and probe.error is None and probe.store is not None:
                for msg in capture_problems(probe.store, spec.name, role):
                    self.problem(f"{probe.label} (strategy cdc)", msg)

    def _redis(self, new: _Probe | None) -> None:
        """A Redis new store: strategies it can serve, and whether it may become authoritative (kept apart
        from the problems: they refuse CUTOVER_WRITES, not the phases before it)."""
        if new is None or new.redis is None or new.error is not None or self.doc.spec is None:
            return
        for msg in strategy_problems(self.doc.spec):
            self.problem(self.at("strategy"), msg)
        authority, note = new.redis.authority(f"{new.label} (authoritative from CUTOVER_WRITES)",
                                              [(t.mapping, t.rows) for t in self.report.tables])
        self.report.authority += authority
        self.report.notes.append(note)

    def _reversible(self, index: int, entry: TableSpec, mapping: TableMapping) -> None:
        """Every migration goes through CUTOVER_WRITES, where rows are mirrored new -> old so that rollback
        stays possible: an old column that a computed column consumes needs a reverse rule, or the old
        store would silently stop following it (found here, not on the day of the cutover)."""
        missing = mapping.needs_reverse()
        for tcol, olds in missing.items():
            names = ", ".join(repr(o) for o in olds)
            self.problem(self.at("tables", index, "columns", tcol),
                         f"column {tcol!r} is computed from old column{'s' if len(olds) > 1 else ''} {names}, "
                         "which cannot be mirrored back after write cutover: add a rule for "
                         f"{'each' if len(olds) > 1 else 'it'} under 'reverse:' (an SQL expr over the new "
                         "table's columns, or a transform)")

    def _privileges(self, index: int, entry: TableSpec, mapping: TableMapping | None,
                    source_info: TableInfo | None, target_info: TableInfo | None,
                    old: _Probe | None, new: _Probe | None) -> None:
        if source_info is not None and old is not None:
            if mapping is None or mapping.needs_python or any(c.kind is SourceKind.EXPR for c in mapping.columns):
                reads = list(source_info.columns)
            else:
                reads = list(dict.fromkeys([*mapping.source_key,
                                            *(c.source for c in mapping.columns if c.source is not None)]))
            for msg in old.missing_privileges(entry.source, reads, None):
                self.problem(f"{old.label} table {entry.source}", msg)
        if target_info is not None and new is not None:
            writes = list(mapping.target_columns) if mapping is not None else list(target_info.columns)
            for msg in new.missing_privileges(entry.target_table, [], writes):
                self.problem(f"{new.label} table {entry.target_table}", msg)

    def _one_side(self, index: int, entry: TableSpec, source: TableInfo | None, target: TableInfo | None) -> None:
        """The mapping cannot be compiled without both tables; still report what one side can tell."""
        def absent(loc: Loc, name: str, info: TableInfo, side: str) -> None:
            self.problem(self.at("tables", index, *loc), f"column {name!r} does not exist in {side} table "
                                                        f"{info.name}{_did_you_mean(name, list(info.columns))}")

        for tcol, cmap in entry.columns.items():
            if source is not None and cmap.from_ and cmap.from_ not in source.columns:
                absent(("columns", tcol), cmap.from_, source, "source")
            if target is not None and tcol not in target.columns:
                absent(("columns", tcol), tcol, target, "target")
            if cmap.transform:
                try:
                    load_callable(cmap.transform)
                except Exception as exc:  # noqa: BLE001 - any import failure is the problem
                    self.problem(self.at("tables", index, "columns", tcol),
                                 f"cannot import transform {cmap.transform!r}: {exc}")
        if source is None:
            return
        if not source.primary_key and not source.unique_keys:
            self.problem(self.at("tables", index, "key"),
                         f"source table {entry.source} has no primary or unique key: its rows cannot be told "
                         "apart, so writes cannot be mirrored, copied or verified; add a primary key to it first")
        singles = (("version_column", entry.version_column), ("tenant_column", entry.tenant_column))
        for loc, name in [*(("key", k) for k in entry.key or []), *(("drop", d) for d in entry.drop), *singles]:
            if name and name not in source.columns:
                absent((loc,), name, source, "source")

    def _exists_only(self, index: int, source: str | None, target: str | None,
                     old: _Probe | None, new: _Probe | None) -> None:
        """A table entry that did not validate: still say whether the tables it names exist."""
        for name, probe, field_name in ((source, old, "source"), (target, new, "target")):
            if name is None or probe is None or probe.error is not None or probe.redis is not None:
                continue
            _, msg = probe.describe(name, f"{field_name} table")
            if msg:
                raw = self.doc.doc["tables"][index] if isinstance(self.doc.doc, dict) else {}
                key = field_name if isinstance(raw, dict) and raw.get(field_name) else "source"
                self.problem(self.at("tables", index, key), msg)

    def _relocate(self, index: int, where: str) -> str:
        """Turn compile_table's ``tables[1].columns.total`` into ``orders.yaml:14 tables[1].columns.total``."""
        prefix = f"tables[{index}]"
        if not where.startswith(prefix):
            return where
        sub = where[len(prefix):]
        parts: tuple[int | str, ...] = tuple(sub[1:].split(".", 1)) if sub.startswith(".") else ()
        return self.doc.where(("tables", index, *parts))

    def _finish(self) -> None:
        secrets = sorted({s for p in self.probes.values() for s in p.secrets if len(s) >= 4}, key=len,
                         reverse=True)

        def scrub(text: str) -> str:
            text = redact(text)
            for s in secrets:
                text = text.replace(s, "***")
            return text

        seen: set[tuple[str, str]] = set()
        clean: list[Problem] = []
        for p in self.report.problems:
            item = (scrub(p.where), scrub(p.message))
            if item not in seen:
                seen.add(item)
                clean.append(Problem(*item))
        self.report.problems = clean


def preflight(spec: MigrationSpec | SpecDocument, resolver: StoreResolver) -> PreflightReport:
    """Check a spec against its live stores, writing nothing; the report lists every problem found.

    Pass a :class:`SpecDocument` (from :func:`dualwrite.spec.read_spec`) to get file lines in every
    location and to have the live checks run on the parts of an invalid spec that did validate.
    """
    doc = spec if isinstance(spec, SpecDocument) else SpecDocument.from_spec(spec)
    return _Run(doc, resolver).run()


def preflight_file(path: str | Path, resolver: StoreResolver) -> PreflightReport:
    """Read a spec file leniently and preflight it: spec problems and store problems in one report."""
    return preflight(read_spec(path), resolver)
