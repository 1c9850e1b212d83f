"""Every gateway process is scraped, once: with ``GATEWAY_WORKERS=N`` (N > 1) each worker
is its own target on ``GATEWAY_WORKER_METRICS_PORT`` + n, and the shared ``GATEWAY_PORT``
is not scraped (it answers from whichever worker accepts the connection: one worker's
figures, a different one's each scrape). Compose and every Kubernetes rendering are
checked: the ports Prometheus scrapes for a gateway container are exactly its workers'
metrics ports, declared by the pod and admitted from `monitoring`. The check is shown to
fail when a worker count is set without the scrape to match."""

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from push_gateway.config import Settings as GatewaySettings
from tests.deploy.support import REPO, Manifest
from tests.deploy.test_k8s import (
    RENDERINGS,
    _admits,
    _allowed_peers,
    _namespace,
    of_kind,
    pod_labels,
)
from tests.deploy.test_observability import promtool

pytestmark = pytest.mark.deploy

PROMETHEUS = REPO / "deploy" / "observability" / "prometheus.yml"
GATEWAY = "push-gateway"


def worker_metrics_ports(settings: Mapping[str, str]) -> set[int]:
    """Where each gateway process of one container answers ``/metrics`` alone (defaults:
    the gateway's own Settings). Empty when workers have no port of their own."""
    fields = GatewaySettings.model_fields
    workers = int(settings.get("GATEWAY_WORKERS", fields["workers"].default))
    if workers == 1:
        return {int(settings.get("GATEWAY_PORT", fields["port"].default))}
    base = settings.get("GATEWAY_WORKER_METRICS_PORT")
    return set() if base is None else {int(base) + n for n in range(workers)}


def scrape_gaps(settings: Mapping[str, str], scraped: set[int]) -> list[str]:
    """What is wrong between a gateway container's settings and the ports scraped."""
    expected = worker_metrics_ports(settings)
    workers = settings.get("GATEWAY_WORKERS", "1")
    if not expected:
        return [
            f"GATEWAY_WORKERS={workers} without GATEWAY_WORKER_METRICS_PORT: no worker "
            "can be scraped on its own"
        ]
    gaps = [f"worker metrics port {port} is not scraped" for port in sorted(expected - scraped)]
    gaps += [
        f"port {port} is scraped but is no worker's own metrics port (GATEWAY_WORKERS="
        f"{workers}: the shared port answers from any one worker)"
        for port in sorted(scraped - expected)
    ]
    return gaps


def compose_gaps(services: dict[str, dict[str, Any]], prometheus: dict[str, Any]) -> list[str]:
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == GATEWAY]
    scraped = {int(dns["port"]) for dns in job.get("dns_sd_configs", []) if GATEWAY in dns["names"]}
    for static in job.get("static_configs", []):
        scraped |= {int(t.rsplit(":", 1)[1]) for t in static["targets"] if t.startswith(GATEWAY)}
    return scrape_gaps(services[GATEWAY]["environment"], scraped)


def k8s_gaps(manifests: list[Manifest]) -> list[str]:
    """The gateway pod's scrape (its prometheus.io annotations: one port; and the ports
    named metrics-w<n> that docs/deploy.md's job for workers keeps)
    against its settings (ConfigMaps it reads and literal env), the ports its container
    declares and the ports the NetworkPolicies open to `monitoring`."""
    template = of_kind(manifests, "Deployment")[GATEWAY]["spec"]["template"]
    (container,) = template["spec"]["containers"]
    config_maps = of_kind(manifests, "ConfigMap")
    settings: dict[str, str] = {}
    for source in container.get("envFrom", []):
        settings |= config_maps[source["configMapRef"]["name"]]["data"]
    settings |= {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}
    annotations = template["metadata"].get("annotations", {})
    # the worker job of docs/deploy.md keeps the ports named metrics-w<n>
    scraped = {
        port["containerPort"]
        for port in container["ports"]
        if re.fullmatch(r"metrics-w\d+", port.get("name", ""))
    }
    if annotations.get("prometheus.io/scrape") == "true":
        scraped.add(int(annotations["prometheus.io/port"]))
    gaps = scrape_gaps(settings, scraped)
    declared = {port["containerPort"] for port in container["ports"]}
    policies = list(of_kind(manifests, "NetworkPolicy").values())
    pod = pod_labels(manifests)[GATEWAY]
    for port in sorted(worker_metrics_ports(settings)):
        if port not in declared:
            gaps.append(f"worker metrics port {port} is not a containerPort")
        if not _admits(
            _allowed_peers(policies, pod, port, "ingress"), {}, _namespace("monitoring")
        ):
            gaps.append(f"worker metrics port {port} is closed to monitoring")
    return gaps


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS.read_text())
    return config


def test_compose_scrapes_every_gateway_worker_once(
    compose_services: dict[str, dict[str, Any]], prometheus: dict[str, Any]
) -> None:
    assert compose_gaps(compose_services, prometheus) == []


@pytest.mark.parametrize("name", RENDERINGS)
def test_kubernetes_scrapes_every_gateway_worker_once(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    assert k8s_gaps(rendered[name]) == []


def test_the_compose_check_fails_for_workers_scraped_through_the_shared_port(
    compose_services: dict[str, dict[str, Any]], prometheus: dict[str, Any]
) -> None:
    services = copy.deepcopy(compose_services)
    services[GATEWAY]["environment"] |= {"GATEWAY_WORKERS": "2"}
    assert compose_gaps(services, prometheus) == [
        "GATEWAY_WORKERS=2 without GATEWAY_WORKER_METRICS_PORT: no worker can be scraped on its own"
    ]
    services[GATEWAY]["environment"] |= {"GATEWAY_WORKER_METRICS_PORT": "9100"}
    assert compose_gaps(services, prometheus) == [
        "worker metrics port 9100 is not scraped",
        "worker metrics port 9101 is not scraped",
        "port 8002 is scraped but is no worker's own metrics port (GATEWAY_WORKERS=2: the "
        "shared port answers from any one worker)",
    ]


def test_the_kubernetes_check_fails_for_workers_the_pod_does_not_expose(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = copy.deepcopy(rendered["prod"])
    template = of_kind(manifests, "Deployment")[GATEWAY]["spec"]["template"]
    (config_map,) = [m for n, m in of_kind(manifests, "ConfigMap").items() if n.startswith(GATEWAY)]
    config_map["data"] |= {"GATEWAY_WORKERS": "2", "GATEWAY_WORKER_METRICS_PORT": "9100"}
    assert k8s_gaps(manifests) == [
        "worker metrics port 9100 is not scraped",
        "worker metrics port 9101 is not scraped",
        "port 8002 is scraped but is no worker's own metrics port (GATEWAY_WORKERS=2: the "
        "shared port answers from any one worker)",
        "worker metrics port 9100 is not a containerPort",
        "worker metrics port 9100 is closed to monitoring",
        "worker metrics port 9101 is not a containerPort",
        "worker metrics port 9101 is closed to monitoring",
    ]
    # as docs/deploy.md says: the ports named and opened, the one-port annotation off
    template["metadata"]["annotations"]["prometheus.io/scrape"] = "false"
    template["spec"]["containers"][0]["ports"] += [
        {"name": f"metrics-w{n}", "containerPort": 9100 + n, "protocol": "TCP"} for n in (0, 1)
    ]
    scraping = of_kind(manifests, "NetworkPolicy")["metrics-scraping"]
    scraping["spec"]["ingress"][0]["ports"] += [
        {"protocol": "TCP", "port": p} for p in (9100, 9101)
    ]
    assert k8s_gaps(manifests) == []


ADAPTER = REPO / "deploy" / "k8s" / "components" / "streams-autoscaling" / "prometheus-adapter.yaml"


def test_the_autoscaler_counts_every_worker_of_a_pod_once(tmp_path: Path) -> None:
    """The HPA's streams per pod (the Prometheus adapter's query, as the adapter fills it
    in for pods): the sum of the pod's workers, each counted once however many jobs scrape
    it; a pod of one gateway process is its one series."""
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", "gateway_connections")
        .replace("<<.LabelMatchers>>", 'namespace="slotstream",pod=~"gw-a|gw-b"')
        .replace("<<.GroupBy>>", "pod")
    )

    def connections(pod: str, job: str, instance: str, value: int) -> dict[str, str]:
        labels = f'namespace="slotstream", pod="{pod}", job="{job}", instance="{instance}"'
        return {"series": f"gateway_connections{{{labels}}}", "values": str(value)}

    case = {
        "rule_files": [],
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    # two workers of gw-a, the first also scraped by a second job
                    connections("gw-a", "pods", "10.0.0.1:9100", 100),
                    connections("gw-a", "monitor", "10.0.0.1:9100", 100),
                    connections("gw-a", "pods", "10.0.0.1:9101", 150),
                    connections("gw-b", "pods", "10.0.0.2:8002", 70),
                ],
                "promql_expr_test": [
                    {
                        "expr": query,
                        "eval_time": "0s",
                        "exp_samples": [
                            {"labels": '{pod="gw-a"}', "value": 250},
                            {"labels": '{pod="gw-b"}', "value": 70},
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "adapter_test.yml").write_text(yaml.safe_dump(case))
    tested = promtool("test", "rules", tmp_path / "adapter_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
