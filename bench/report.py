"""Run every benchmark in bench/ and write bench/RESULTS.md: each figure, its goal, its anchor, the machine.

    python -m bench.report [--quick] [--only NAME ...] [--out bench/RESULTS.md]

The parsed figures are also kept in bench/RESULTS.json; ``--only`` re-runs the named benchmarks and keeps
the other figures from there.

Each benchmark runs as a subprocess; its figures are parsed from its output: ``key=value`` pairs on the
last line (backfill, verify, write_overhead) or ``key: value`` lines (chaos, zero_downtime). A benchmark
that fails or times out is reported as such, with the tail of its output, and the others still run.
``--quick`` shrinks the data (100k rows, one round, 20 s chaos runs) for a smoke run; figures from a quick
run are labelled so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Figure:
    key: str
    what: str
    goal: str
    anchor: str
    check: Callable[[float], bool]


@dataclass
class Bench:
    name: str
    argv: list[str]
    quick_argv: list[str]
    figures: list[Figure]
    timeout: float = 3600
    style: str = "kv"  # "kv": key=value pairs on the last line; "colon": "key: value" lines


@dataclass
class Outcome:
    bench: Bench
    ok: bool
    seconds: float
    values: dict[str, str] = field(default_factory=dict)
    tail: str = ""
    written: str = ""
    """When the benchmark ran (UTC), carried with its figures into RESULTS.json and the README's guide."""


PY = sys.executable
CHAOS = [*[(p, s) for p in ("pg-pg", "mariadb-pg") for s in ("strict", "sync", "async", "outbox", "triggers", "cdc")],
         ("pg-redis", "sync"), ("pg-redis", "outbox"), ("pg-redis", "strict")]

BENCHES: list[Bench] = [
    Bench("backfill", [PY, "bench/backfill.py"], [PY, "bench/backfill.py", "--rows", "100000", "--rounds", "1"], [
        Figure("backfill_pg_vs_copy_pipe", "PG->PG backfill throughput / raw pipe", ">= 0.5x",
               "psql COPY (binary) | psql COPY pipe", lambda v: v >= 0.5),
        Figure("backfill_mysql_vs_pipe", "MariaDB->PG backfill throughput / raw pipe", ">= 0.35x",
               "mariadb --batch | psql COPY pipe", lambda v: v >= 0.35),
        Figure("redis_backfill_x", "PG->Redis backfill throughput / raw pipe", ">= 0.5x",
               "psycopg COPY TO STDOUT rows -> redis-py pipelined HSET (transaction=False, 1000 rows a round trip)",
               lambda v: v >= 0.5),
        Figure("redis_backfill_rows_per_s", "PG->Redis backfill, rows/s (one range, private redis-server)",
               "(informative)", "-", lambda v: True),
        Figure("redis_anchor_rows_per_s", "PG->Redis raw pipe, rows/s", "(informative)", "-", lambda v: True),
    ]),
    Bench("backfill --via-temporal", [PY, "bench/backfill.py", "--via-temporal"],
          [PY, "bench/backfill.py", "--via-temporal", "--rows", "100000", "--rounds", "1"], [
        Figure("backfill_via_temporal_vs_copy_pipe", "PG->PG backfill through the Temporal workflow / raw pipe",
               ">= 0.45x", "psql COPY (binary) | psql COPY pipe", lambda v: v >= 0.45),
    ]),
    Bench("verify", [PY, "bench/verify.py"], [PY, "bench/verify.py", "--rows", "100000", "--rounds", "1"], [
        Figure("verify_same_engine_rows_per_s", "verification PG->PG, rows/s per side", ">= 1,000,000",
               "checksum pushdown (Vitess VDiff / pt-table-checksum style)", lambda v: v >= 1e6),
        Figure("verify_cross_engine_rows_per_s", "verification MariaDB->PG, rows/s per side", ">= 250,000",
               "canonical row compare (cross-engine VDiff)", lambda v: v >= 2.5e5),
        Figure("verify_vs_naive", "speed-up over a naive keyset compare", "> 1x",
               "SQLAlchemy Core keyset fetch-and-compare loop (~170k rows/s)", lambda v: v > 1),
    ]),
    Bench("write_overhead", [PY, "bench/write_overhead.py"], [PY, "bench/write_overhead.py", "--n", "500"], [
        Figure("outbox_p99_x", "outbox write p99 / direct write p99", "<= 1.5",
               "direct SQLAlchemy Core UPDATE + COMMIT", lambda v: v <= 1.5),
        Figure("sync_p50_x", "sync dual write p50 / direct write p50", "<= 2.2",
               "direct SQLAlchemy Core UPDATE + COMMIT", lambda v: v <= 2.2),
        Figure("orm_overhead", "ORM integration overhead beyond the Core adapter", "<= 0.10",
               "plain SQLAlchemy ORM session", lambda v: v <= 0.10),
        Figure("shadow_read_p50_x", "read with 100 % shadow compare p50 / plain read p50", "<= 1.15",
               "plain SELECT by key", lambda v: v <= 1.15),
        Figure("strict_p50_x", "strict dual write p50 / direct write p50", "<= 2.2",
               "the seed's synchronous row: ~2x write latency", lambda v: v <= 2.2),
        Figure("async_p99_x", "async secondary write p99 / direct write p99", "<= 1.15",
               "direct SQLAlchemy Core UPDATE + COMMIT", lambda v: v <= 1.15),
        *[Figure(f"{s}_{q}_x", f"{s} write {q} / direct write {q} (README's strategy guide)", "(informative)",
                 "direct SQLAlchemy Core UPDATE + COMMIT", lambda v: True)
          for s, q in (("strict", "p99"), ("sync", "p99"), ("async", "p50"), ("outbox", "p50"),
                       ("triggers", "p50"), ("triggers", "p99"))],
    ]),
    Bench("cdc", [PY, "bench/cdc.py"], [PY, "bench/cdc.py", "--changes", "10000", "--seconds", "5"], [
        Figure("cdc_pg_changes_per_s", "PostgreSQL -> PostgreSQL changes applied from the slot, per second",
               ">= 20000", "-", lambda v: v >= 20000),
        Figure("cdc_mariadb_changes_per_s", "MariaDB -> PostgreSQL changes applied from the binlog, per second",
               ">= 5000", "-", lambda v: v >= 5000),
        Figure("cdc_lag_p99_s", "capture lag p99 at a steady 1,000 writes/s, seconds", "<= 1", "-",
               lambda v: v <= 1),
        Figure("cdc_p99_x", "primary write p99 with log capture running / without", "<= 1.05",
               "the same updates with no slot", lambda v: v <= 1.05),
    ], timeout=900),
    Bench("zero_downtime", [PY, "-m", "bench.zero_downtime", "--quiet"],
          [PY, "-m", "bench.zero_downtime", "--quiet", "--hold", "3"], [
        Figure("failed requests", "failed writes (one every 5 ms) through CUTOVER_READS, CUTOVER_WRITES, rollback",
               "0", "Vitess MoveTables cutover test (insert every 2 ms, count errors)", lambda v: v == 0),
    ], timeout=600, style="colon"),
    *[Bench(f"chaos {p} {s}", [PY, "-m", "bench.chaos", "--quiet", "--seconds", "60", "--pair", p, "--strategy", s],
            [PY, "-m", "bench.chaos", "--quiet", "--seconds", "20", "--pair", p, "--strategy", s], [
        Figure("differences after repair", f"chaos convergence {p} {s}: differences after reconciliation", "0",
               "Ghostferry random-writer integration tests; Vitess VDiff at the end", lambda v: v == 0),
        Figure("differences before repair", f"chaos {p} {s}: drift found by the final verify (before repair)",
               "(informative)", "-", lambda v: True),
        Figure("writes acknowledged", f"chaos {p} {s}: acknowledged writes", "(informative)", "-", lambda v: True),
        Figure("rows re-copied", f"chaos {p} {s}: rows re-copied by the final repair", "(informative)", "-",
               lambda v: True),
        Figure("worker kills", f"chaos {p} {s}: worker.py processes SIGKILLed", "(informative)", "-", lambda v: True),
    ], timeout=900, style="colon") for p, s in CHAOS],
]


def parse(out: str, style: str) -> dict[str, str]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    values: dict[str, str] = {}
    if style == "kv":
        if lines:
            values.update(dict(re.findall(r"(\w+)=([-+0-9.eE]+|nan|inf)", lines[-1])))
    else:
        for ln in lines:
            if ": " in ln and not ln.startswith("["):
                k, v = ln.split(": ", 1)
                values[k.strip()] = v.strip()
    # also the p99 per phase line of the zero-downtime check
    for ln in lines:
        if ln.startswith("p99 write latency ms:"):
            values.update({f"p99 phase {k}": v for k, v in re.findall(r"([\w-]+)=([0-9.]+|nan)", ln)})
    return values


def run_bench(b: Bench, quick: bool) -> Outcome:
    argv = b.quick_argv if quick else b.argv
    print(f"running {b.name}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=b.timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Outcome(b, False, time.monotonic() - started, {}, f"timed out after {b.timeout:.0f}s\n{out[-1500:]}")
    secs = time.monotonic() - started
    values = parse(proc.stdout, b.style)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return Outcome(b, proc.returncode == 0, secs, values, tail)


def machine() -> list[str]:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20,
                                  check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    mem = "?"
    try:
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal:"):
                mem = f"{int(ln.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        sdk = version("temporalio")
        sqla = version("sqlalchemy")
    except Exception:  # noqa: BLE001
        sdk = sqla = "?"
    temporal = str(Path(sys.executable).parent / "temporal")
    return [
        f"- CPU: {os.cpu_count()} cores ({cpu}); memory {mem}; load average at start "
        f"{os.getloadavg()[0]:.2f}",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        f"- PostgreSQL: {cmd('psql', '-h', '127.0.0.1', '-tAc', 'SHOW server_version', 'postgres')}; "
        f"MariaDB: {cmd('mariadb', '-h', '127.0.0.1', '-u', 'root', '-N', '-e', 'SELECT VERSION()')}",
        f"- Temporal CLI: {cmd(temporal, '--version')}; temporalio {sdk}; SQLAlchemy {sqla}",
    ]


def run_note(o: Outcome) -> str:
    """When a run was written and, for a chaos run, what reproduces and judges it: seed, schedule, losses."""
    v = o.values
    parts = [o.written] if o.written else []
    seed = re.search(r"seed=(\d+)", v.get("chaos run", ""))
    if seed:
        parts.append(f"seed {seed.group(1)}")
    for key, label in (("schedule", "schedule"), ("lost acknowledged writes", "lost"),
                       ("temporal server restarts", "Temporal restarts")):
        if key in v:
            parts.append(f"{label} {v[key]}")
    return "; ".join(parts).replace("|", "\\|")


def write(outcomes: list[Outcome], path: Path, quick: bool) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    md = ["# dualwrite benchmark results", "",
          f"Written by `python -m bench.report{' --quick' if quick else ''}` on {now}"
          + (" (QUICK run: small data, short runs; not the reference figures)." if quick else "."), "",
          "## Machine", "", *machine(), "",
          "## Figures", "",
          "| benchmark | figure | value | goal | met | anchor |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        for f in o.bench.figures:
            raw = o.values.get(f.key)
            met = "?"
            if raw is not None and f.goal.startswith("("):
                met = "-"
            elif raw is not None:
                try:
                    met = "yes" if f.check(float(raw)) else "**no**"
                except ValueError:
                    met = "?"
            shown = raw if raw is not None else ("(failed)" if not o.ok else "(missing)")
            md.append(f"| {o.bench.name} | {f.what} (`{f.key}`) | {shown} | {f.goal} | {met} | "
                      f"{f.anchor.replace('|', chr(92) + '|')} |")
        for k, v in o.values.items():
            if k.startswith("p99 phase "):
                md.append(f"| {o.bench.name} | p99 write latency in {k[10:]}, ms | {v} | (informative) | - | - |")
    md += ["", "## Runs", "", "| benchmark | exit | seconds | run |", "|---|---|---|---|"]
    md += [f"| {o.bench.name} | {'ok' if o.ok else 'FAILED'} | {o.seconds:.0f} | {run_note(o)} |" for o in outcomes]
    failed = [o for o in outcomes if not o.ok]
    if failed:
        md += ["", "## Failures", ""]
        for o in failed:
            md += [f"### {o.bench.name}", "", "```", o.tail, "```", ""]
    md += kept_by_hand(path)
    path.write_text("\n".join(md) + "\n")


HAND_RUNS = "## Runs by hand"


def kept_by_hand(path: Path) -> list[str]:
    """The file's ``## Runs by hand`` section and everything after it, as it was: investigations (many seeds
    of one chaos run, runs of code before a fix) that no benchmark of this report reproduces, so a re-run with
    ``--only`` must not erase them."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if HAND_RUNS not in lines:
        return []
    return ["", *lines[lines.index(HAND_RUNS):]]


def load_saved(path: Path) -> dict[str, Outcome]:
    """Outcomes of earlier runs (``--only`` re-runs some benchmarks and keeps the others' figures)."""
    by_name = {b.name: b for b in BENCHES}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {n: Outcome(by_name[n], bool(d["ok"]), float(d["seconds"]), dict(d["values"]), str(d.get("tail", "")),
                       str(d.get("written", "")))
            for n, d in doc.items() if n in by_name}


def save(outcomes: dict[str, Outcome], path: Path) -> None:
    path.write_text(json.dumps({n: {"ok": o.ok, "seconds": round(o.seconds, 1), "values": o.values, "tail": o.tail,
                                    "written": o.written} for n, o in outcomes.items()}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", help="benchmark names (prefix match), e.g. chaos zero_downtime")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    benches = [b for b in BENCHES if not args.only or any(b.name.startswith(n) for n in args.only)]
    saved_path = args.out.with_suffix(".json")
    saved = load_saved(saved_path) if args.only else {}
    ran: list[Outcome] = []
    for b in benches:
        o = run_bench(b, args.quick)
        o.written = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") + (" QUICK" if args.quick else "")
        print(f"  {'ok' if o.ok else 'FAILED'} in {o.seconds:.0f}s: {o.values}", flush=True)
        ran.append(o)
        saved[b.name] = o
        save(saved, saved_path)
        # after each, so a long run leaves partial results
        write([saved[x.name] for x in BENCHES if x.name in saved], args.out, args.quick)
    print(f"wrote {args.out} and {saved_path}")
    if any(o.bench.name in ("write_overhead", "cdc") and o.ok for o in ran) and not args.quick:
        from bench import guide  # the README's strategy latencies come from this report, never by hand

        guide.main([])
    return 0 if all(o.ok for o in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
