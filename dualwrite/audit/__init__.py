"""``dualwrite audit``: find the writes to migrated tables that do not go through the dual-write adapter.

The seed's pitfall: "forgetting to dual-write in all code paths". With ``sync`` and ``outbox`` a write that
bypasses the adapter is silent drift until a verification finds it, and after write cutover a lost write.
This package reads an application's Python source, never runs it and never connects to a database: the
spec gives the migrated tables (their old-side names), :mod:`.sql` classifies SQL text,
:mod:`.pyscan` walks the code, :mod:`.report` prints what was found.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

from dualwrite.audit.report import CORE, ORM, RAW_SQL, AuditReport, Finding
from dualwrite.audit.sql import TableSet

__all__ = ["CORE", "ORM", "RAW_SQL", "AuditReport", "Finding", "audit_paths", "spec_tables"]


def spec_tables(spec_path: str | Path) -> list[str]:
    """The migrated tables of a spec (each table's ``source``), read without resolving any store.

    Raises :class:`dualwrite.errors.SpecError` for a spec that does not validate.
    """
    from dualwrite.spec import load_spec  # noqa: PLC0415 - pydantic only when a spec is read

    return [t.source for t in load_spec(spec_path).tables]


def audit_paths(tables: Iterable[str], paths: Sequence[Path], exclude: Sequence[str] = ()) -> AuditReport:
    """Audit the Python files under ``paths`` for writes to ``tables`` that bypass the adapter
    (``exclude``: patterns of files and directories not to search, see :func:`.pyscan.discover`).

    A file that cannot be read or parsed is skipped with a warning; nothing here raises for bad source.
    """
    from dualwrite.audit.pyscan import Analyzer, Index, discover, index_file  # noqa: PLC0415 - the scanner only when an audit runs

    report = AuditReport()
    index = Index(TableSet(tables))
    infos = []
    for path in discover(paths, exclude):
        shown = str(path)
        try:
            source = importlib.util.decode_source(path.read_bytes())
            info = index_file(path, shown, source)
        except SyntaxError as exc:
            report.warnings.append(f"{shown}:{exc.lineno or 0}: warning: not valid Python ({exc.msg}), skipped")
            continue
        except RecursionError:
            report.warnings.append(f"{shown}:0: warning: nested too deeply to analyse, skipped")
            continue
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            report.warnings.append(f"{shown}:0: warning: cannot read ({exc}), skipped")
            continue
        index.add(info)
        infos.append(info)
    index.finish()
    analysed = 0
    for info in infos:
        try:
            report.findings += Analyzer(index, info).run()
            analysed += 1
        except RecursionError:
            report.warnings.append(f"{info.shown}:0: warning: nested too deeply to analyse, skipped")
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop the audit of the others
            report.warnings.append(f"{info.shown}:0: warning: the audit failed on this file "
                                   f"({type(exc).__name__}: {exc}), skipped; please report it")
    report.files = analysed
    report.findings.sort(key=lambda f: (f.path, f.line, f.table))
    return report
