"""docker-compose.yml, checked without Docker (no engine runs on these machines): the services the README
promises are there, with pinned images, published ports, the dependency order that keeps a worker from
upserting unregistered search attributes, and store URLs handed to the worker by environment only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from workflows.models import SEARCH_ATTRIBUTE_CLI_ARGS


@pytest.fixture(scope="module")
def compose(repo_root: Path) -> dict[str, Any]:
    doc = yaml.safe_load((repo_root / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose["services"]
    assert name in services, f"service {name} missing; have {sorted(services)}"
    return dict(services[name])


def env(svc: dict[str, Any]) -> dict[str, str]:
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def depends(svc: dict[str, Any]) -> dict[str, str]:
    raw = svc.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (cond or {}).get("condition", "service_started") for name, cond in raw.items()}


def published(svc: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[0].split(":")[-1]) for p in svc.get("ports", []) if ":" in str(p)}


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"old-postgres", "old-mysql", "new-postgres", "temporal-db", "temporal",
                                        "temporal-setup", "temporal-ui", "worker", "prometheus"}


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if "build" in svc:
            continue
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
    assert service(compose, "old-postgres")["image"].startswith("postgres:")
    assert service(compose, "new-postgres")["image"].startswith("postgres:")
    assert service(compose, "old-mysql")["image"].startswith(("mysql:", "mariadb:"))
    assert service(compose, "temporal-db")["image"].startswith("postgres:")
    assert service(compose, "temporal")["image"].startswith("temporalio/")
    assert service(compose, "temporal-ui")["image"].startswith("temporalio/ui:")
    assert service(compose, "prometheus")["image"].startswith("prom/prometheus:")


def test_temporal_is_postgresql_backed_with_schema_setup(compose: dict[str, Any]) -> None:
    t = service(compose, "temporal")
    e = env(t)
    assert "auto-setup" in t["image"]  # the image that creates and migrates the schema at start
    assert e["DB"].startswith("postgres")
    assert e["POSTGRES_SEEDS"] == "temporal-db"
    assert depends(t) == {"temporal-db": "service_healthy"}
    assert 7233 in published(t)
    assert "healthcheck" in t


def test_search_attributes_are_registered_before_the_worker_starts(compose: dict[str, Any]) -> None:
    setup = service(compose, "temporal-setup")
    script = " ".join(setup["command"]) if isinstance(setup["command"], list) else setup["command"]
    for arg in SEARCH_ATTRIBUTE_CLI_ARGS:  # MigrationPhase=Keyword, BackfillPercent=Int
        name, kind = arg.split("=")
        assert f"{name}:{kind}" in script
    assert "search-attribute create" in script
    assert depends(setup) == {"temporal": "service_healthy"}
    assert env(setup)["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert depends(service(compose, "worker"))["temporal-setup"] == "service_completed_successfully"


def test_web_ui(compose: dict[str, Any]) -> None:
    ui = service(compose, "temporal-ui")
    assert env(ui)["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert 8080 in published(ui)
    assert "temporal" in depends(ui)


def test_worker_is_built_here_and_gets_store_urls_by_environment(compose: dict[str, Any], repo_root: Path) -> None:
    w = service(compose, "worker")
    assert w["build"] in (".", {"context": "."})
    assert (repo_root / "Dockerfile").is_file()
    assert w["command"] == ["dualwrite", "worker"]
    e = env(w)
    assert e["DUALWRITE_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert e["DUALWRITE_METRICS_PORT"] == "9464"
    assert e["DUALWRITE_LOG_FORMAT"] == "json"
    stores = {k: v for k, v in e.items() if k.startswith("DUALWRITE_STORE_")}
    assert set(stores) == {"DUALWRITE_STORE_LEGACY", "DUALWRITE_STORE_LEGACY_MYSQL", "DUALWRITE_STORE_MODERN"}
    assert "@old-postgres:5432/" in stores["DUALWRITE_STORE_LEGACY"]
    assert stores["DUALWRITE_STORE_LEGACY_MYSQL"].startswith("mysql://") and "@old-mysql:3306/" in \
        stores["DUALWRITE_STORE_LEGACY_MYSQL"]
    assert "@new-postgres:5432/" in stores["DUALWRITE_STORE_MODERN"]
    for store in ("old-postgres", "old-mysql", "new-postgres"):
        assert depends(w)[store] == "service_healthy"
        assert "healthcheck" in service(compose, store)


def test_database_ports_do_not_clash_with_local_ones(compose: dict[str, Any]) -> None:
    ports = [p for svc in compose["services"].values() for p in published(svc)]
    assert len(ports) == len(set(ports)), "two services publish the same host port"
    assert 5432 not in ports and 3306 not in ports  # the test suite's own PostgreSQL / MariaDB


def test_prometheus_scrapes_worker_and_adapter(compose: dict[str, Any], repo_root: Path) -> None:
    p = service(compose, "prometheus")
    assert 9090 in published(p)
    mount = next(v for v in p["volumes"] if "prometheus.yml" in v)
    host_path = mount.split(":")[0]
    config = yaml.safe_load((repo_root / host_path).read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert {"dualwrite-worker", "dualwrite-adapter"} <= set(jobs)
    worker_job = jobs["dualwrite-worker"]
    targets = [f"{n}:{sd['port']}" for sd in worker_job.get("dns_sd_configs", []) for n in sd["names"]]
    targets += [t for sc in worker_job.get("static_configs", []) for t in sc["targets"]]
    assert "worker:9464" in targets
    assert jobs["dualwrite-adapter"]["static_configs"][0]["targets"]
