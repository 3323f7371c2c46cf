"""The README's strategy guide takes its latency figures from the benchmark report, never from a hand edit.

    python -m bench.guide [--check]

``bench/write_overhead.py`` prints the p50 and p99 ratio of every strategy (adapter call over a direct write
of the same row) on its last line; ``bench.report`` keeps them in ``bench/RESULTS.json``. This module
rewrites the "latency impact p50 / p99" cell of each row of the README's strategy table, and the sentence
that says which run they come from, from that file. ``bench.report`` calls it after every
``write_overhead`` run; ``--check`` exits 1 when the README disagrees with RESULTS.json (a figure edited by
hand, or a report that was not carried over).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RESULTS = REPO / "bench" / "RESULTS.json"

STRATEGIES = ("strict", "sync", "async", "outbox", "triggers", "cdc")
"""The rows of the table: ``write_overhead`` times the first five in the application's write; ``cdc`` adds
nothing there, and ``bench/cdc.py`` times the primary's write with log capture running (``cdc_p99_x``)."""

SOURCE_BEGIN, SOURCE_END = "<!-- latency-source -->", "<!-- /latency-source -->"

__all__ = ["render", "main"]


def _cell(values: dict[str, str], strategy: str) -> str:
    if strategy == "cdc":
        x = values.get("cdc_p99_x")
        if x is None:
            return "(not measured: run `python -m bench.report --only cdc`)"
        return f"none in the application; the primary's write p99 with capture running x{float(x):.2f} (`bench/cdc.py`)"
    p50, p99 = values.get(f"{strategy}_p50_x"), values.get(f"{strategy}_p99_x")
    if p50 is None or p99 is None:
        return "(not measured: run `python -m bench.report --only write_overhead`)"
    cell = f"x{float(p50):.2f} / x{float(p99):.2f}"
    if strategy == "triggers":
        cell += " (the triggers' cost, inside the database's write)"
    return cell


def render(readme: str, values: dict[str, str], written: str) -> str:
    """``readme`` with the strategy table's latency cells and their source sentence from ``values``."""
    out = []
    in_table = False  # only the strategy table: other tables have rows named after strategies too
    for line in readme.splitlines():
        if line.startswith("| strategy | consistency | latency impact"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        m = re.match(r"^\| `(\w+)` \|", line)
        if in_table and m and m.group(1) in STRATEGIES:
            cells = line.split(" | ")
            # | `name` | consistency | latency | ...: the third cell (index 2) is the latency impact
            if len(cells) > 3:
                cells[2] = _cell(values, m.group(1))
                line = " | ".join(cells)
        out.append(line)
    text = "\n".join(out) + ("\n" if readme.endswith("\n") else "")
    n = values.get("n", "?")
    source = (f"{SOURCE_BEGIN}from the run of `bench/write_overhead.py` recorded in `bench/RESULTS.md` "
              f"({written}; n = {n} writes per strategy, each interleaved iteration by iteration with the "
              f"direct write){SOURCE_END}")
    return re.sub(re.escape(SOURCE_BEGIN) + ".*?" + re.escape(SOURCE_END), lambda _: source, text, flags=re.S)


def _recorded() -> tuple[dict[str, str], str]:
    doc = json.loads(RESULTS.read_text())
    entry = doc.get("write_overhead") or {}
    values = {str(k): str(v) for k, v in (entry.get("values") or {}).items()}
    cdc = (doc.get("cdc") or {}).get("values") or {}
    if "cdc_p99_x" in cdc:
        values["cdc_p99_x"] = str(cdc["cdc_p99_x"])
    return values, str(entry.get("written", "date not recorded"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when the README disagrees with RESULTS.json")
    args = ap.parse_args(argv)
    values, written = _recorded()
    before = README.read_text()
    after = render(before, values, written)
    if args.check:
        if after != before:
            print("README.md's strategy latencies differ from bench/RESULTS.json: run `python -m bench.guide`")
            return 1
        return 0
    if after != before:
        README.write_text(after)
        print("README.md: strategy latencies updated from bench/RESULTS.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
