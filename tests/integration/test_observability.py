"""Logs and metrics: JSON in production with the migration / workflow / activity ids bound and credentials
redacted, readable console lines on a terminal; every item of the seed's monitoring checklist exported
under the names the README lists, by a real worker on one /metrics endpoint next to the Temporal runtime's."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import pytest
import structlog
from prometheus_client import CollectorRegistry
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from dualwrite import logs
from dualwrite import stats as st
from dualwrite.metrics import CATALOGUE, MetricsServer, MigrationView, WorkerMetrics, metric_names

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def json_logs() -> Any:
    stream = io.StringIO()
    handler = logs.configure(json_logs=True, level="INFO", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_logs_redact_credentials_everywhere(json_logs: io.StringIO) -> None:
    url = f"postgresql://app:{SECRET}@db:5432/app"
    logging.getLogger("dualwrite.test").warning("cannot connect to %s", url)
    logs.get_logger("dualwrite.test").info("store", url=url, nested={"dsn": f"host=db password={SECRET}"})
    try:
        raise RuntimeError(f"connection to {url} refused")
    except RuntimeError:
        logging.getLogger("dualwrite.test").exception("failed")
    out = json_logs.getvalue()
    assert SECRET not in out
    assert "app:***@db" in out and "password=***" in out
    parsed = lines(json_logs)
    assert parsed[0]["level"] == "warning" and parsed[0]["logger"] == "dualwrite.test" and "timestamp" in parsed[0]
    assert "exception" in parsed[2]  # the traceback, redacted too


def test_bound_context_and_workflow_extra(json_logs: io.StringIO) -> None:
    logs.bind(migration="orders", phase="BACKFILL")
    try:
        logging.getLogger("dualwrite.test").info("copying")
    finally:
        logs.unbind("migration", "phase")
    # what temporalio's workflow.logger adds, plus an explicit extra
    logging.getLogger("temporalio.workflow").info(
        "entered ({'attempt': 1, 'workflow_id': 'dualwrite-orders'})",
        extra={"temporal_workflow": {"workflow_id": "dualwrite-orders", "run_id": "r1",
                                     "workflow_type": "MigrationWorkflow"}, "phase": "SHADOW_READ"})
    first, second = lines(json_logs)
    assert (first["migration"], first["phase"]) == ("orders", "BACKFILL")
    assert second["event"] == "entered"  # Temporal's appended info lives in fields instead
    assert (second["workflow_id"], second["run_id"], second["migration"], second["phase"]) == (
        "dualwrite-orders", "r1", "orders", "SHADOW_READ")


async def test_activity_context_is_bound(json_logs: io.StringIO) -> None:
    from activities.observe import activity_context

    class Inp:
        migration = "orders"
        phase = "CUTOVER_READS"

    @activity.defn(name="probe")
    def probe() -> None:
        logging.getLogger("dualwrite.activities").info("inside")

    env = ActivityEnvironment()
    env.info = env.info.__class__(**{**env.info.__dict__, "workflow_id": "dualwrite-orders",
                                     "activity_type": "probe"})
    env.run(probe)
    (line,) = lines(json_logs)
    assert line["workflow_id"] == "dualwrite-orders" and line["activity_type"] == "probe"
    assert "activity_id" in line
    assert activity_context([Inp()]) == {"migration": "orders", "phase": "CUTOVER_READS"}


def test_console_logs_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    assert logs.use_json(stream) is False
    handler = logs.configure(stream=stream, level="INFO")
    try:
        logging.getLogger("dualwrite.test").info("hello %s", f"mysql://u:{SECRET}@h/db")
    finally:
        logging.getLogger().removeHandler(handler)
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "hello" in text and SECRET not in text and not text.lstrip().startswith("{")


def test_every_checklist_item_has_a_metric_and_the_readme_names_them(repo_root: Path) -> None:
    names = set(metric_names())
    checklist = {
        "write success rate per store": {"dualwrite_write_success_ratio", "dualwrite_secondary_writes"},
        "write latency per store": {"dualwrite_latency_seconds", "dualwrite_write_latency_seconds"},
        "read comparison match rate": {"dualwrite_shadow_match_ratio", "dualwrite_shadow_compares"},
        "backfill progress": {"dualwrite_backfill_progress_ratio"},
        "reconciliation queue depth": {"dualwrite_repair_queue_depth"},
        "error rate by failure type": {"dualwrite_activity_failures", "dualwrite_secondary_writes"},
        "feature flag state per tenant/entity": {"dualwrite_migration_phase", "dualwrite_phase_override"},
    }
    for item, wanted in checklist.items():
        assert wanted <= names, item
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    missing = [n for n in names if n not in readme]
    assert not missing, f"README does not name {missing}"


def test_adapter_metric_names_match_stats(repo_root: Path) -> None:
    """The adapter's metrics are defined in dualwrite.stats; the catalogue must say the same names."""
    registry = CollectorRegistry()
    stats = st.Stats("m", "i")
    stats.enable_prometheus(registry)
    stats.record(counts=[(st.SECONDARY, "attempt", 1), (st.SECONDARY, "success", 1), (st.PRIMARY, "success", 1),
                         (st.SHADOW, "match", 1), (st.REPAIR, "enqueued", 1)],
                 latencies=[(st.LAT_OLD, 1.0), (st.LAT_CALL, 2.0)])
    stats.gauge(st.RELAY_LAG, 0.5)
    exported = {m.name for m in registry.collect()}
    assert set(metric_names("adapter")) <= exported


def _window() -> st.StatsWindow:
    w = st.StatsWindow()
    for _ in range(999):
        w.add(st.SECONDARY, "success")
        w.add(st.PRIMARY, "success")
        w.add(st.SHADOW, "match")
        w.observe(st.LAT_OLD, 1.0)
        w.observe(st.LAT_NEW, 2.0)
    w.add(st.SECONDARY, "failure:timeout")
    w.add(st.SHADOW, "field_different")
    w.gauge(st.ASYNC_DEPTH, 12)
    w.gauge(st.ASYNC_AGE, 0.75)
    return w


def test_migration_gauges_follow_the_view() -> None:
    m = WorkerMetrics()

    class T:
        source, rows_copied, rows_estimate, done, percent = "orders", 500, 1000, False, 50

    class V:
        rows_compared, missing, extra, field_different, repaired, ok = 1000, 1, 0, 2, 3, False

    class S:
        phase, epoch, paused, tables, repair_queue_depth = "SHADOW_READ", 4, False, [T()], 7
        last_verification = V()
        gate: ClassVar[dict[str, object]] = {"to": "CUTOVER_READS", "passed": False}

    view = MigrationView.from_status(S(), {"tenants": {"acme": "CUTOVER_READS"},
                                           "ramp": {"phase": "CUTOVER_READS", "percent": 25}}, _window())
    m.set_migration("orders", view)
    text = m.exposition().decode()
    assert 'dualwrite_migration_phase{migration="orders",phase="SHADOW_READ"} 1.0' in text
    assert 'dualwrite_migration_phase{migration="orders",phase="BACKFILL"} 0.0' in text
    assert ('dualwrite_phase_override{migration="orders",phase="CUTOVER_READS",scope="tenant",subject="acme"} 1.0'
            in text)
    assert 'dualwrite_phase_ramp_percent{migration="orders",phase="CUTOVER_READS"} 25.0' in text
    assert 'dualwrite_backfill_progress_ratio{migration="orders",table="orders"} 0.5' in text
    assert 'dualwrite_repair_queue_depth{migration="orders"} 7.0' in text
    assert 'dualwrite_verification_differences{class="field_different",migration="orders"} 2.0' in text
    assert 'dualwrite_write_success_ratio{migration="orders",role="secondary",store="new"} 0.999' in text
    assert 'dualwrite_write_success_ratio{migration="orders",role="primary",store="old"} 1.0' in text
    assert re.search(r'dualwrite_write_latency_seconds\{migration="orders",quantile="0.99",store="new"\} 0\.00', text)
    assert 'dualwrite_shadow_match_ratio{migration="orders"} 0.999' in text
    assert 'dualwrite_secondary_write_failures{error_class="timeout",migration="orders"} 1.0' in text
    assert 'dualwrite_async_queue_depth{migration="orders"} 12.0' in text
    assert 'dualwrite_async_lag_seconds{migration="orders"} 0.75' in text
    assert 'dualwrite_gate_passed{migration="orders",to="CUTOVER_READS"} 0.0' in text
    # a lifted override disappears, a finished migration too
    S.phase = "CUTOVER_READS"
    m.set_migration("orders", MigrationView.from_status(S(), {}, None))
    text = m.exposition().decode()
    assert "dualwrite_phase_override{" not in text and "dualwrite_shadow_match_ratio{" not in text
    m.forget_migration("orders")
    assert 'migration="orders"' not in m.exposition().decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_worker_serves_dualwrite_and_temporal_metrics_on_one_port(temporal_client: Client,
                                                                          tmp_path: Path) -> None:
    """A real worker with a metrics port: activity outcomes by failure type, the migration gauges of a
    running migration (from its status and the control tables), and temporal_* from the SDK runtime."""
    import sqlite3

    from dualwrite.config import StoreResolver, env_var_for
    from dualwrite.spec import parse_spec
    from starter.client import start_migration
    from worker import WorkerConfig, run_worker
    from workflows.models import MigrationInput, Tuning

    old, new = tmp_path / "o.db", tmp_path / "n.db"
    for path, col in ((old, "label"), (new, "title")):
        with sqlite3.connect(path) as c:
            c.execute(f"CREATE TABLE things (id INTEGER PRIMARY KEY, {col} TEXT NOT NULL)")
    with sqlite3.connect(old) as c:
        c.executemany("INSERT INTO things VALUES (?, ?)", [(i, f"t{i}") for i in range(1, 51)])
    config = tmp_path / "stores.yaml"
    config.write_text(f"stores:\n  mold: sqlite:///{old}\n  mnew: sqlite:///{new}\n", encoding="utf-8")
    env = temporal_client.service_client.config.target_host
    port, queue = _free_port(), f"metrics-{_free_port()}"
    cfg = WorkerConfig(address=env, task_queue=queue, metrics_port=port, metrics_host="127.0.0.1",
                       config_file=str(config), shutdown_seconds=5)
    stop = asyncio.Event()
    import os

    os.environ["DUALWRITE_METRICS_INTERVAL"] = "0.5"
    task = asyncio.create_task(run_worker(cfg, resolver=StoreResolver(config_file=config, environ={}), stop=stop,
                                          install_signal_handlers=False))
    spec = parse_spec("name: metrics-probe\nold: mold\nnew: mnew\nmode: manual\ntables:\n  - source: things\n"
                      "    columns: {title: label}\n", "m.yaml")
    handle = await start_migration(temporal_client, MigrationInput(
        spec=spec, tuning=Tuning(heartbeat_timeout_seconds=5, barrier_poll_seconds=5)), task_queue=queue)
    text = ""
    try:
        for _ in range(100):
            await asyncio.sleep(0.3)
            try:
                text = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
            except OSError:
                continue
            if 'dualwrite_migration_phase{migration="metrics-probe",phase="PREPARE"} 1.0' in text and \
                    'dualwrite_activities_total{activity="prepare",outcome="completed"}' in text:
                break
        assert 'dualwrite_migration_phase{migration="metrics-probe",phase="PREPARE"} 1.0' in text, text[:3000]
        assert 'dualwrite_activities_total{activity="prepare",outcome="completed"} 1.0' in text
        assert 'dualwrite_repair_queue_depth{migration="metrics-probe"} 0.0' in text
        assert "temporal_" in text  # the SDK runtime's metrics, appended
        assert env_var_for("mold") not in text and str(old) not in text  # no store URL in metrics
    finally:
        await handle.terminate("test done")
        stop.set()
        await task
        os.environ.pop("DUALWRITE_METRICS_INTERVAL", None)


def test_metrics_server_serves_several_registries() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.activity_done("copy_range", 0.1, outcome="failed", error_type="StoreUnavailable")
    b.rows_copied("m", "t", 5)
    server = MetricsServer(0, "127.0.0.1", [a.registry, b.registry])
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.close()
    assert 'dualwrite_activity_failures_total{activity="copy_range",error_type="StoreUnavailable"} 1.0' in text
    assert 'dualwrite_backfill_rows_copied_total{migration="m",table="t"} 5.0' in text
    assert {m.name for m in CATALOGUE} >= {"dualwrite_activity_failures", "dualwrite_backfill_rows_copied"}
