"""The demo's stores and its live application.

The old store holds a legacy schema the way such schemas look after years of use: ``customers`` with a
``name``, a ``phone`` and a long-dead ``fax`` column, ``orders`` with ``amount``, a ``placed`` timestamp and
a ``legacy_flag``. The new store's schema differs: a split column (``name`` "Ada Lovelace" becomes
``first_name`` "Ada" + ``last_name`` "Lovelace", and a ``reverse`` rule joins them again when the new store
is authoritative and mirrors back to the old one), renamed columns (``phone_number``, ``created_at``,
``total`` widened to more digits, ``placed_at``), dropped columns (``fax``, ``legacy_flag``), and new
columns filled with a default (``tier``, ``currency``).

:class:`LiveApp` is a small order-taking application that writes and reads *only* through the adapter
(:class:`dualwrite.adapter.DualWriter`) in its own schema, the whole time, on threads: it signs up
customers, places, updates and cancels orders, edits contact details, and reads customers and orders. It
remembers what it was told was written, so the demo can prove at the end that every acknowledged write
reached the new store.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from dualwrite.store import Dialect, Store
from dualwrite.stores import is_redis

FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Tim", "Frances",
         "John", "Sophie", "Leslie", "Niklaus", "Hedy", "Dennis", "Karen", "Linus", "Guido")
LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Perlman",
        "Berners-Lee", "Allen", "McCarthy", "Wilson", "Lamport", "Wirth", "Lamarr", "Ritchie", "Spärck Jones",
        "Torvalds", "van Rossum")
STATUSES = ("new", "paid", "packed", "shipped", "delivered")


@dataclass(frozen=True)
class Tables:
    """Table names: plain on the demo's own SQLite files, prefixed on a database the user points us at
    (so the demo never touches a table of theirs)."""

    customers: str = "customers"
    orders: str = "orders"

    @classmethod
    def for_external(cls) -> Tables:
        return cls("dwdemo_customers", "dwdemo_orders")


def _types(dialect: Dialect) -> dict[str, str]:
    if dialect is Dialect.POSTGRESQL:
        return {"id": "BIGINT", "ts": "TIMESTAMP", "text": "VARCHAR(200)", "short": "VARCHAR(40)"}
    if dialect is Dialect.MYSQL:
        return {"id": "BIGINT", "ts": "DATETIME(6)", "text": "VARCHAR(200)", "short": "VARCHAR(40)"}
    return {"id": "INTEGER", "ts": "TEXT", "text": "TEXT", "short": "TEXT"}


def legacy_ddl(dialect: Dialect, t: Tables) -> list[str]:
    ty = _types(dialect)
    return [
        f"CREATE TABLE {t.customers} (id {ty['id']} PRIMARY KEY, name {ty['text']} NOT NULL, "
        f"email {ty['text']} NOT NULL, phone {ty['short']}, fax {ty['short']}, created {ty['ts']} NOT NULL, "
        f"version {ty['id']} NOT NULL DEFAULT 1)",
        f"CREATE TABLE {t.orders} (id {ty['id']} PRIMARY KEY, customer_id {ty['id']} NOT NULL, "
        f"amount NUMERIC(10,2) NOT NULL, status {ty['short']} NOT NULL, placed {ty['ts']} NOT NULL, "
        f"legacy_flag CHAR(1), version {ty['id']} NOT NULL DEFAULT 1)",
    ]


def modern_ddl(dialect: Dialect, t: Tables) -> list[str]:
    ty = _types(dialect)
    return [
        f"CREATE TABLE {t.customers} (id {ty['id']} PRIMARY KEY, first_name {ty['text']} NOT NULL, "
        f"last_name {ty['text']} NOT NULL, email {ty['text']} NOT NULL, phone_number {ty['short']}, "
        f"created_at {ty['ts']} NOT NULL, "
        f"tier {ty['short']} NOT NULL DEFAULT 'standard', version {ty['id']} NOT NULL DEFAULT 1)",
        f"CREATE TABLE {t.orders} (id {ty['id']} PRIMARY KEY, customer_id {ty['id']} NOT NULL, "
        f"total NUMERIC(12,2) NOT NULL, status {ty['short']} NOT NULL, placed_at {ty['ts']} NOT NULL, "
        f"currency CHAR(3) NOT NULL DEFAULT 'EUR', version {ty['id']} NOT NULL DEFAULT 1)",
    ]


def first_name(name: str | None) -> str | None:
    """The split's first half: the first word of a legacy ``name`` (the forward transform)."""
    return None if name is None else name.split(" ", 1)[0]


def last_name(name: str | None) -> str | None:
    """The rest after the first space ("Spärck Jones", "van Rossum"): joined back, it gives the name again."""
    return None if name is None else (name.split(" ", 1)[1] if " " in name else "")


def join_sql(dialect: Dialect) -> str:
    """The reverse rule: the legacy ``name`` rebuilt on the new store, in that store's SQL (MariaDB reads
    ``||`` as OR)."""
    if dialect is Dialect.MYSQL:
        return "CONCAT(first_name, ' ', last_name)"
    return "first_name || ' ' || last_name"


def join_name(row: dict[str, Any]) -> str | None:
    """The reverse of the split where the new store runs no SQL (Redis): first and last name joined."""
    parts = [p for p in (row.get("first_name"), row.get("last_name")) if p]
    return " ".join(parts) if parts else None


def _redis_section(name: str, entity: str) -> str:
    return f'\n    redis: {{key: "{entity}:{{id}}", value: hash, prefix: "dwdemo:{name}:"}}'


def spec_yaml(name: str, t: Tables, *, short: bool, new_dialect: Dialect | None = Dialect.SQLITE) -> str:
    """The demo's migration spec. The gate thresholds are the seed's (99.9 % match, 99.95 % secondary
    success, 100 % backfill, no reconciliation gap); only the sample minimums and the window are sized for a
    demo that lasts a minute or two instead of a day. The latency allowance (+200 % instead of the seed's
    +20 %) is honest about the ``sync`` strategy on SQLite: the request writes both stores before it
    returns (the seed's "~2x write latency"), and the demo's backfill and verifications share the same
    database files with it, so its p99 swings; ``outbox`` is the strategy for a +20 % budget.

    The split is a Python transform forward (the same on every engine, and the adapter computes it for
    the application's writes after write cutover) and SQL in reverse, on the new store's engine; with a
    Redis new store (``new_dialect`` None), which runs no SQL, a Python transform in reverse too, and each
    table says how it is kept there (one hash per row under ``customer:{id}`` / ``order:{id}``). Into Redis
    the secondary write re-reads the committed row (no image fast path into Redis yet), one round trip
    more: the latency allowance is +300 % there."""
    samples = 100 if short else 400
    redis = new_dialect is None
    reverse = '{transform: "starter.demo_app:join_name"}' if redis else f'"{join_sql(new_dialect or Dialect.SQLITE)}"'
    kv_customers = _redis_section(name, "customer") if redis else ""
    kv_orders = _redis_section(name, "order") if redis else ""
    return f"""
name: {name}
old: legacy
new: modern
strategy: sync
mode: auto
auto_cleanup: true
backfill_concurrency: 2
tables:
  - source: {t.customers}
    version_column: version
    batch_size: {250 if short else 1000}
    columns:
      first_name: {{from: name, transform: "starter.demo_app:first_name"}}
      last_name: {{from: name, transform: "starter.demo_app:last_name"}}
      phone_number: phone
      created_at: created
      tier: {{default: standard}}
    drop: [fax]
    reverse:
      name: {reverse}{kv_customers}
  - source: {t.orders}
    version_column: version
    batch_size: {250 if short else 1000}
    columns:
      total: amount
      placed_at: placed
      currency: {{default: EUR}}
    drop: [legacy_flag]{kv_orders}
gates:
  shadow_match_rate: 0.999
  min_shadow_samples: {samples}
  secondary_write_success_rate: 0.9995
  min_write_samples: {samples}
  p99_latency_increase: {3.0 if redis else 2.0}
  min_latency_samples: {samples}
  window_seconds: 30
"""


def execute(store: Store, statements: list[str], params: list[tuple[Any, ...]] | None = None) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
        cur.close()
        conn.commit()


def reset_tables(store: Store, t: Tables) -> None:
    """Drop the demo's own tables (only those, and what an earlier run's CLEANUP retired of them) so a
    rerun on the same database starts clean."""
    names = store.table_names()
    for table in (t.orders, t.customers):
        retired = [n for n in names if n.startswith(f"{table}_dw_retired_")]
        for name in (table, *retired):
            with contextlib.suppress(Exception):  # the next CREATE reports a real problem
                execute(store, [f"DROP TABLE IF EXISTS {name}"])


def _ts(dialect: Dialect, at: datetime) -> Any:
    """Timestamps as the legacy application stored them: text in SQLite, native elsewhere."""
    if dialect is Dialect.SQLITE:
        return at.strftime("%Y-%m-%d %H:%M:%S")
    return at.replace(tzinfo=None, microsecond=0)


def _money(dialect: Dialect, cents: int) -> Any:
    """An amount as the driver takes it: Decimal, except SQLite's driver, which only binds floats."""
    value = Decimal(cents) / 100
    return float(value) if dialect is Dialect.SQLITE else value


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def seed(store: Store, t: Tables, customers: int, orders_per_customer: int, *, rng_seed: int = 7) -> tuple[int, int]:
    """Years of legacy rows: ``customers`` customers, about ``orders_per_customer`` orders each."""
    rng = random.Random(rng_seed)  # noqa: S311 - made-up demo rows, the same every run
    ph = store.paramstyle
    start = datetime(2019, 1, 1, tzinfo=UTC)
    crow = []
    for i in range(1, customers + 1):
        name = "Ada Lovelace" if i == 1 else _name(rng)
        crow.append((i, name, f"{name.split()[0].lower()}.{i}@example.com",
                     f"+44 20 7946 {i % 10000:04d}" if rng.random() < 0.8 else None,
                     f"+44 20 7946 {i % 9999:04d}" if rng.random() < 0.1 else None,
                     _ts(store.dialect, start + timedelta(hours=i * 3))))
    orow = []
    oid = 0
    for c in range(1, customers + 1):
        for _ in range(orders_per_customer):
            oid += 1
            orow.append((oid, c, _money(store.dialect, rng.randint(199, 99999)), rng.choice(STATUSES),
                         _ts(store.dialect, start + timedelta(hours=c * 3, minutes=oid % 600)),
                         "Y" if rng.random() < 0.05 else None))
    with store.connect() as conn:
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {t.customers} (id, name, email, phone, fax, created) "
                        f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph})", crow)
        for i in range(0, len(orow), 5000):
            cur.executemany(f"INSERT INTO {t.orders} (id, customer_id, amount, status, placed, legacy_flag) "
                            f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph})", orow[i:i + 5000])
        cur.close()
        conn.commit()
    return len(crow), len(orow)


@dataclass
class AppCounters:
    writes: int = 0
    write_failures: Counter[str] = field(default_factory=Counter)
    reads: int = 0
    read_failures: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)


class LiveApp:
    """A small order-taking application on the adapter: writers and readers on threads until stopped.

    ``expected`` maps (table, id) to the fields the application last wrote (None after a delete), for the
    keys it touched; :meth:`check_acknowledged` compares them with what the serving store returns."""

    def __init__(self, writer: Any, t: Tables, dialect: Dialect, *, customers: int, orders: int,
                 writes_per_second: float = 60.0, reads_per_second: float = 120.0, rng_seed: int = 11) -> None:
        self.writer = writer
        self.t = t
        self.dialect = dialect
        self.rng = random.Random(rng_seed)  # noqa: S311 - the demo application's workload, not secrets
        self.read_rng = random.Random(rng_seed + 1)  # noqa: S311 - one generator per thread, not secrets
        self.next_customer = customers
        self.next_order = orders
        self.customers = customers
        self.orders = orders
        self.write_pause = 1.0 / writes_per_second
        self.read_pause = 1.0 / reads_per_second
        self.expected: dict[tuple[str, int], dict[str, Any] | None] = {}
        self.counters = AppCounters()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._write_loop, name="demo-app-writer", daemon=True),
                         threading.Thread(target=self._read_loop, name="demo-app-reader", daemon=True)]
        for th in self._threads:
            th.start()

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=30)

    # -- the application's requests ---------------------------------------------------------------------

    def _now(self) -> Any:
        return _ts(self.dialect, datetime.now(UTC))

    def _remember(self, table: str, key: int, values: dict[str, Any] | None, merge: bool = True) -> None:
        with self._lock:
            if values is None or not merge:
                self.expected[(table, key)] = values
            else:
                current = self.expected.get((table, key)) or {}
                self.expected[(table, key)] = {**current, **values}

    def _pick_order(self) -> int | None:
        with self._lock:
            live = [k for (tb, k), v in self.expected.items() if tb == self.t.orders and v is not None]
        if live and self.rng.random() < 0.5:
            return self.rng.choice(live)
        key = self.rng.randint(1, self.next_order)
        with self._lock:
            if (self.t.orders, key) in self.expected and self.expected[(self.t.orders, key)] is None:
                return None  # cancelled earlier
        return key

    def request(self) -> str:
        """One write request of a random kind; returns the kind."""
        r = self.rng.random()
        w, t = self.writer, self.t
        if r < 0.30:
            self.next_order += 1
            oid = self.next_order
            values = {"id": oid, "customer_id": self.rng.randint(1, self.next_customer),
                      "amount": _money(self.dialect, self.rng.randint(199, 99999)), "status": "new",
                      "placed": self._now()}
            w.insert(t.orders, values)
            self._remember(t.orders, oid, {k: values[k] for k in ("customer_id", "amount", "status")}, merge=False)
            return "place order"
        if r < 0.60:
            picked = self._pick_order()
            if picked is None:
                return "noop"
            status = self.rng.choice(STATUSES[1:])
            if w.update(t.orders, picked, {"status": status}):
                self._remember(t.orders, picked, {"status": status})
            return "update order"
        if r < 0.80:
            cid = self.rng.randint(1, self.next_customer)
            values = {"email": f"user{cid}.{self.rng.randint(1, 10**6)}@example.org",
                      "phone": f"+1 555 {self.rng.randint(0, 9999):04d}"}
            if w.update(t.customers, cid, values):
                self._remember(t.customers, cid, values)
            return "edit customer"
        if r < 0.93:
            self.next_customer += 1
            cid = self.next_customer
            name = _name(self.rng)
            values = {"id": cid, "name": name, "email": f"new.{cid}@example.com", "phone": None,
                      "created": self._now()}
            w.insert(t.customers, values)
            self._remember(t.customers, cid, {"name": name, "email": values["email"], "phone": None},
                           merge=False)
            return "sign up"
        victim = self._pick_order()
        if victim is None:
            return "noop"
        w.delete(t.orders, victim)
        self._remember(t.orders, victim, None)
        return "cancel order"

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            try:
                kind = self.request()
                with self._lock:
                    self.counters.writes += 1
                    self.counters.by_kind[kind] += 1
            except Exception as exc:  # noqa: BLE001 - the application keeps serving; the demo reports it
                with self._lock:
                    self.counters.write_failures[type(exc).__name__] += 1
            self._stop.wait(self.write_pause)

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                rng = self.read_rng
                if rng.random() < 0.5:
                    self.writer.read(self.t.customers, rng.randint(1, self.next_customer))
                else:
                    self.writer.read(self.t.orders, rng.randint(1, self.next_order))
                with self._lock:
                    self.counters.reads += 1
            except Exception as exc:  # noqa: BLE001
                with self._lock:
                    self.counters.read_failures[type(exc).__name__] += 1
            self._stop.wait(self.read_pause)

    # -- the proof ----------------------------------------------------------------------------------------

    def check_acknowledged(self) -> tuple[int, list[str]]:
        """Read every key the application wrote back through the adapter (served by the new store once
        the migration is done) and compare the fields it wrote; returns (keys checked, problems).

        Problems name the table, key and field only, never the values."""
        problems: list[str] = []
        with self._lock:
            items = list(self.expected.items())
        for (table, key), want in items:
            got = self.writer.read(table, key)
            if want is None:
                if got is not None:
                    problems.append(f"{table} {key}: deleted but still present")
                continue
            if got is None:
                problems.append(f"{table} {key}: acknowledged but missing")
                continue
            for col, value in want.items():
                if not _same(value, got.get(col)):
                    problems.append(f"{table} {key}: field {col} differs")
        return len(items), problems


def _retired(store: Store, table: str) -> str:
    """The old table's name now: itself, or the newest ``<table>_dw_retired_<timestamp>`` after CLEANUP."""
    names = store.table_names()
    if table in names:
        return table
    retired = sorted(n for n in names if n.startswith(f"{table}_dw_retired_"))
    return retired[-1] if retired else table


def split_check(old: Store, new: Store, t: Tables) -> dict[str, Any]:
    """Prove the split column both ways: for every customer in both stores, the old ``name`` equals the
    new ``first_name`` and ``last_name`` joined. Rows created before write cutover were split on the way
    to the new store; rows created after it were joined on the way back to the old one.

    Counts only, plus customer 1 ("Ada Lovelace", seeded) as the example the report shows. CLEANUP has
    retired the old table by then (renamed, never dropped), so that is where the old rows are read."""
    with old.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id, name FROM {old.quote(_retired(old, t.customers))}")
        names = {int(r[0]): r[1] for r in cur.fetchall()}
        conn.rollback()
    parts = _redis_names(new) if is_redis(new) else _sql_names(new, t)
    both = sorted(set(names) & set(parts))
    bad = [k for k in both if names[k] != f"{parts[k][0]} {parts[k][1]}"]
    example = {"id": 1, "old_name": names.get(1), "new_first_name": parts.get(1, (None, None))[0],
               "new_last_name": parts.get(1, (None, None))[1]}
    return {"column": f"{t.customers}.name -> first_name + last_name", "rows_compared": len(both),
            "mismatches": len(bad), "example": example}


def _sql_names(new: Store, t: Tables) -> dict[int, tuple[Any, Any]]:
    with new.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id, first_name, last_name FROM {t.customers}")
        parts = {int(r[0]): (r[1], r[2]) for r in cur.fetchall()}
        conn.rollback()
    return parts


def _redis_names(new: Any) -> dict[int, tuple[Any, Any]]:
    """first_name and last_name of every customer hash the demo keeps in Redis (under its prefix)."""
    client = new.client()
    try:
        parts: dict[int, tuple[Any, Any]] = {}
        pattern = next(f"{m.prefix}customer:*" for m in new.tables.values())
        for key in client.scan_iter(match=pattern, count=1000):
            first, last = client.hmget(key, "first_name", "last_name")
            parts[int(key.rsplit(b":", 1)[1])] = (first and first.decode(), last and last.decode())
    finally:
        client.close()
    return parts


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, Decimal | float | int) and isinstance(b, Decimal | float | int) and not isinstance(a, bool):
        return abs(Decimal(str(a)) - Decimal(str(b))) < Decimal("0.005")
    return str(a) == str(b)
