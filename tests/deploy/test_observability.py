"""The observability profile: Prometheus scrapes every service where Compose runs it, and
the provisioned Grafana dashboard shows the four headline figures from metrics the
services really export."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import REPO

pytestmark = pytest.mark.deploy

OBSERVABILITY = REPO / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "slotstream.json"
METRIC_PREFIXES = ("gateway_", "publisher_", "booking_api_")
#: Series names prometheus-client derives from one metric family.
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
PORT_SETTINGS = {
    "booking-api": "BOOKING_API_PORT",
    "change-publisher": "PUBLISHER_HTTP_PORT",
    "push-gateway": "GATEWAY_PORT",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def exported_metrics() -> set[str]:
    """Metric family names declared in the services' source (Counter("name", …),
    CounterMetricFamily("name", …), _gauge("name", …) and the like)."""
    names: set[str] = set()
    for source in (REPO / "services").glob("*/src/**/*.py"):
        for name in re.findall(r"\(\s*\"([a-z_]+)\"", source.read_text()):
            if name.startswith(METRIC_PREFIXES):
                names.add(name)
    return names


def family_of(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


def test_prometheus_scrapes_every_service_where_it_listens(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    config = load_yaml(OBSERVABILITY / "prometheus.yml")
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            assert dns["type"] == "A"
            targets.update(f"{name}:{dns['port']}" for name in dns["names"])
    for service, setting in PORT_SETTINGS.items():
        port = compose_services[service]["environment"][setting]
        assert f"{service}:{port}" in targets, service
    # The publisher runs as replicas: found by DNS, one A record each, not one name.
    (publisher_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "change-publisher"]
    assert publisher_job["dns_sd_configs"][0]["names"] == ["change-publisher"]
    assert compose_services["change-publisher"]["deploy"]["replicas"] > 1


def test_compose_mounts_the_configuration(compose_services: dict[str, dict[str, Any]]) -> None:
    prometheus = {v["target"]: v["source"] for v in compose_services["prometheus"]["volumes"]}
    assert prometheus["/etc/prometheus/prometheus.yml"] == str(OBSERVABILITY / "prometheus.yml")
    grafana = {v["target"]: v["source"] for v in compose_services["grafana"]["volumes"]}
    provisioning = Path(grafana["/etc/grafana/provisioning"])
    (provider,) = load_yaml(provisioning / "dashboards" / "slotstream.yml")["providers"]
    dashboards_dir = provider["options"]["path"]
    assert Path(grafana[dashboards_dir]) == DASHBOARD.parent


def test_dashboard_shows_the_headline_figures() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for figure in ("connections", "deliveries/s", "lag", "bookings/s"):
        assert figure in titles, figure
    (datasource,) = load_yaml(
        OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    )["datasources"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)


def test_dashboard_queries_only_metrics_the_services_export() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    # prometheus-client accepts a counter's name with or without `_total`.
    exported = {family_of(name) for name in exported_metrics()}
    assert exported, "no metric definitions found in services/*/src"
    queried = {
        series
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for series in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", target["expr"])
        if series.startswith(METRIC_PREFIXES)
    }
    assert queried
    unknown = {series for series in queried if family_of(series) not in exported}
    assert not unknown, f"not exported by any service: {sorted(unknown)}"
