"""Kubernetes manifests: every overlay renders, every object passes the Kubernetes schema
(strict), and every workload is locked down, probed, sized and wired as documented."""

import copy
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.support import (
    OVERLAYS,
    Manifest,
    kustomize_command,
    pod_templates,
)

pytestmark = pytest.mark.deploy

#: Oldest Kubernetes the manifests target (`preStop.sleep` is on by default from 1.30)
#: and the newest schema bundled with kubernetes-validate.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
STRIMZI_GROUP = "kafka.strimzi.io"
SERVICES = {"booking-api": 8000, "change-publisher": 8001, "push-gateway": 8002}
SSE_PATHS = {"/api/book-now/schedule-updates", "/v1"}
RENDERINGS = ("base", *OVERLAYS)


def of_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == kind}


def containers(template: Manifest) -> list[Manifest]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def pod_labels(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    return {
        workload["metadata"]["name"]: template["metadata"]["labels"]
        for workload, template in pod_templates(manifests)
    }


@pytest.mark.parametrize("name", RENDERINGS)
def test_renders_the_whole_system(rendered: dict[str, list[Manifest]], name: str) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered[name]}
    expected = {
        ("Deployment", "booking-api"),
        ("Deployment", "change-publisher"),
        ("Deployment", "push-gateway"),
        ("Deployment", "edge"),
        ("StatefulSet", "mongo"),
        ("Job", "mongo-init"),
        ("HorizontalPodAutoscaler", "push-gateway"),
        ("PodDisruptionBudget", "push-gateway"),
        ("Kafka", "slotstream"),
        ("Ingress", "slotstream-events"),
    }
    assert expected <= kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", RENDERINGS)
def test_every_object_passes_the_strict_schema(
    rendered: dict[str, list[Manifest]], name: str, version: str
) -> None:
    failures = []
    for doc in rendered[name]:
        if doc["apiVersion"].startswith(STRIMZI_GROUP + "/"):
            continue  # no bundled schema: test_strimzi.py checks these
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_the_schema_check_rejects_unknown_fields(rendered: dict[str, list[Manifest]]) -> None:
    """Guards the test above: a misspelt field must fail, or the check proves nothing."""
    deployment = copy.deepcopy(of_kind(rendered["prod"], "Deployment")["push-gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {
        "httpGet": {"path": "/readyz", "port": "http"}
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_pod_is_locked_down(rendered: dict[str, list[Manifest]], name: str) -> None:
    for workload, template in pod_templates(rendered[name]):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = template["spec"]
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, where
        assert pod_security.get("runAsUser", 0) != 0, where
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert not spec.get("hostNetwork"), where
        assert not spec.get("hostPID"), where
        for container in containers(template):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security["capabilities"].get("add"), where
            assert not security.get("privileged"), where


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_container_has_requests_and_limits(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    for workload, template in pod_templates(rendered[name]):
        for container in containers(template):
            resources = container["resources"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= resources["requests"].keys(), where
            assert {"cpu", "memory"} <= resources["limits"].keys(), where


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_image_is_pinned(rendered: dict[str, list[Manifest]], name: str) -> None:
    for workload, template in pod_templates(rendered[name]):
        for container in containers(template):
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert repository, image
            assert "/" not in tag, f"{workload['metadata']['name']}: {image} has no tag"
            assert tag != "latest", image
            assert any(ch.isdigit() for ch in tag), image


@pytest.mark.parametrize("name", RENDERINGS)
def test_long_running_pods_have_all_three_probes(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    for workload, template in pod_templates(rendered[name]):
        if workload["kind"] == "Job":
            continue
        for container in template["spec"]["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            port_names = {port["name"] for port in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{where} has no {probe}"
                handler = container[probe].get("httpGet") or container[probe].get("tcpSocket")
                if handler is not None and isinstance(handler["port"], str):
                    assert handler["port"] in port_names, f"{where} {probe} port"


@pytest.mark.parametrize("name", RENDERINGS)
def test_services_probe_health_and_readiness(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    deployments = of_kind(rendered[name], "Deployment")
    for service, port in SERVICES.items():
        (container,) = deployments[service]["spec"]["template"]["spec"]["containers"]
        assert container["ports"][0]["containerPort"] == port
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("name", RENDERINGS)
def test_gateway_drains_streams_before_it_is_killed(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    gateway = of_kind(rendered[name], "Deployment")["push-gateway"]
    spec = gateway["spec"]["template"]["spec"]
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    # Out of the endpoints first, then SIGTERM, then time for `bye` frames and closes.
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + 20
    assert "replicas" not in gateway["spec"], "the HPA owns the gateway's replica count"


@pytest.mark.parametrize("name", RENDERINGS)
def test_gateway_scales_and_keeps_a_disruption_budget(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    hpa = of_kind(rendered[name], "HorizontalPodAutoscaler")["push-gateway"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "push-gateway",
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = of_kind(rendered[name], "PodDisruptionBudget")["push-gateway"]
    labels = pod_labels(rendered[name])["push-gateway"]
    assert selects(pdb["spec"]["selector"], labels)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")


def test_overlays_differ_where_it_matters(rendered: dict[str, list[Manifest]]) -> None:
    dev, prod = rendered["dev"], rendered["prod"]
    dev_deployments = of_kind(dev, "Deployment")
    assert {d["spec"].get("replicas", 1) for d in dev_deployments.values()} == {1}
    assert of_kind(dev, "StatefulSet")["mongo"]["spec"]["replicas"] == 1
    assert of_kind(dev, "HorizontalPodAutoscaler")["push-gateway"]["spec"]["minReplicas"] == 1

    prod_deployments = of_kind(prod, "Deployment")
    assert prod_deployments["change-publisher"]["spec"]["replicas"] == 2, "leader + standby"
    assert prod_deployments["booking-api"]["spec"]["replicas"] >= 3
    assert of_kind(prod, "StatefulSet")["mongo"]["spec"]["replicas"] == 3
    hpa = of_kind(prod, "HorizontalPodAutoscaler")["push-gateway"]["spec"]
    assert hpa["minReplicas"] >= 3
    assert hpa["maxReplicas"] >= 10
    for name in ("booking-api", "change-publisher", "push-gateway", "edge"):
        affinity = prod_deployments[name]["spec"]["template"]["spec"]["affinity"]
        assert "podAntiAffinity" in affinity, name
    mongo_affinity = of_kind(prod, "StatefulSet")["mongo"]["spec"]["template"]["spec"]["affinity"]
    assert mongo_affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]


def test_base_runs_two_publishers_for_the_lease(rendered: dict[str, list[Manifest]]) -> None:
    assert of_kind(rendered["base"], "Deployment")["change-publisher"]["spec"]["replicas"] == 2


@pytest.mark.parametrize("name", RENDERINGS)
def test_event_streams_are_not_buffered(rendered: dict[str, list[Manifest]], name: str) -> None:
    routed_to_gateway: set[str] = set()
    for ingress in of_kind(rendered[name], "Ingress").values():
        annotations = ingress["metadata"].get("annotations", {})
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                if path["backend"]["service"]["name"] != "push-gateway":
                    continue
                routed_to_gateway.add(path["path"])
                where = f"{ingress['metadata']['name']} {path['path']}"
                prefix = "nginx.ingress.kubernetes.io/"
                assert annotations[prefix + "proxy-buffering"] == "off", where
                assert annotations[prefix + "proxy-request-buffering"] == "off", where
                assert int(annotations[prefix + "proxy-read-timeout"]) >= 3600, where
                assert int(annotations[prefix + "proxy-send-timeout"]) >= 3600, where
                assert annotations[prefix + "proxy-http-version"] == "1.1", where
    assert routed_to_gateway == SSE_PATHS


def test_prod_ingress_has_tls(rendered: dict[str, list[Manifest]]) -> None:
    for ingress in of_kind(rendered["prod"], "Ingress").values():
        hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
        tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
        assert hosts <= tls_hosts


def _allowed_sources(
    policies: list[Manifest], target_labels: dict[str, str], port: int
) -> list[dict[str, Any]]:
    """The `from` peers of every policy that selects the pod and opens the port."""
    peers: list[dict[str, Any]] = []
    for policy in policies:
        if not selects(policy["spec"]["podSelector"], target_labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if not ports or port in ports:
                peers.extend(rule.get("from", [{}]))
    return peers


def _admits(peers: list[dict[str, Any]], labels: dict[str, str], namespace: str | None) -> bool:
    """Would a pod with these labels, in another namespace (or ours: None), get in?"""
    for peer in peers:
        if not peer:
            return True
        pod_selector = peer.get("podSelector")
        namespace_selector = peer.get("namespaceSelector")
        if namespace is None and namespace_selector is None and pod_selector is not None:
            if selects(pod_selector, labels):
                return True
        if namespace is not None and namespace_selector is not None:
            namespace_labels = {"kubernetes.io/metadata.name": namespace}
            if selects(namespace_selector, namespace_labels) and (
                pod_selector is None or selects(pod_selector, labels)
            ):
                return True
    return False


@pytest.mark.parametrize("name", RENDERINGS)
def test_network_policies_admit_only_the_documented_paths(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    policies = list(of_kind(rendered[name], "NetworkPolicy").values())
    pods = pod_labels(rendered[name])
    default_deny = [
        p
        for p in policies
        if not p["spec"].get("ingress") and "Ingress" in p["spec"]["policyTypes"]
    ]
    for workload, labels in pods.items():
        assert any(selects(p["spec"]["podSelector"], labels) for p in default_deny), workload

    def admits(source: str | None, target: str, port: int, namespace: str | None = None) -> bool:
        peers = _allowed_sources(policies, pods[target], port)
        return _admits(peers, pods[source] if source else {}, namespace)

    # From the ingress controller: the API, the gateways and the page, nothing else.
    assert admits(None, "booking-api", 8000, namespace="ingress-nginx")
    assert admits(None, "push-gateway", 8002, namespace="ingress-nginx")
    assert admits(None, "edge", 8080, namespace="ingress-nginx")
    assert not admits(None, "change-publisher", 8001, namespace="ingress-nginx")
    assert not admits(None, "mongo", 27017, namespace="ingress-nginx")
    # MongoDB: only the services that use it (and its own members).
    mongo_clients = {w for w, labels in pods.items() if admits(w, "mongo", 27017)}
    assert mongo_clients == {"booking-api", "change-publisher", "mongo-init", "mongo"}
    assert not admits(None, "mongo", 27017, namespace="default")
    # Inside: gateways fetch snapshots from the API; the publisher serves no one.
    assert admits("push-gateway", "booking-api", 8000)
    assert not admits("edge", "change-publisher", 8001)
    assert admits(None, "change-publisher", 8001, namespace="monitoring")


@pytest.mark.parametrize("name", RENDERINGS)
def test_only_the_services_reach_kafka(rendered: dict[str, list[Manifest]], name: str) -> None:
    (kafka,) = of_kind(rendered[name], "Kafka").values()
    pods = pod_labels(rendered[name])
    for listener in kafka["spec"]["kafka"]["listeners"]:
        peers = listener["networkPolicyPeers"]
        clients = {w for w, labels in pods.items() if _admits(peers, labels, None)}
        assert clients == {"change-publisher", "push-gateway"}, listener["name"]


@pytest.mark.parametrize("name", RENDERINGS)
def test_config_and_secret_references_resolve(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    config_maps = set(of_kind(rendered[name], "ConfigMap"))
    secrets = of_kind(rendered[name], "Secret")
    secret_keys: set[tuple[str, str]] = set()
    for workload, template in pod_templates(rendered[name]):
        for container in containers(template):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, workload["metadata"]
            for variable in container.get("env", []):
                assert "value" in variable or "valueFrom" in variable
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    secret_keys.add((ref["name"], ref["key"]))
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
    # One Secret, two keys: documented in docs/deploy.md for prod (created out of band);
    # generated (with a content-hash suffix) only by the dev overlay.
    assert {key for _, key in secret_keys} == {"jwt-secret", "mongo-url"}
    (secret_name,) = {secret for secret, _ in secret_keys}
    if name == "dev":
        assert secret_name.startswith("slotstream-secrets-")
        assert set(secrets[secret_name]["data"]) == {"jwt-secret", "mongo-url"}
    else:
        assert secret_name == "slotstream-secrets"
        assert not secrets, "secrets never live in the base or the prod overlay"


@pytest.mark.parametrize("name", RENDERINGS)
def test_secrets_are_never_literal_env(rendered: dict[str, list[Manifest]], name: str) -> None:
    for _, template in pod_templates(rendered[name]):
        for container in containers(template):
            for variable in container.get("env", []):
                if any(word in variable["name"] for word in ("SECRET", "TOKEN", "MONGO_URL")):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), variable["name"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_puts_everything_in_a_restricted_namespace(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    (namespace,) = of_kind(rendered[name], "Namespace").values()
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in rendered[name]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"], doc["kind"]


def test_mongo_init_job_matches_the_replica_set(rendered: dict[str, list[Manifest]]) -> None:
    for name in OVERLAYS:
        statefulset = of_kind(rendered[name], "StatefulSet")["mongo"]
        job = of_kind(rendered[name], "Job")["mongo-init"]
        env = {
            v["name"]: v.get("value")
            for v in job["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        members = env["RS_MEMBERS"].split(",")
        expected = [f"mongo-{i}.mongo:27017" for i in range(statefulset["spec"]["replicas"])]
        assert members == expected, name
        command = statefulset["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--replSet") + 1] == env["RS_NAME"]


def test_a_missing_renderer_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No kubectl and no kustomize is a failure with a way out, never a silent skip."""
    monkeypatch.delenv("KUBECTL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(pytest.fail.Exception, match="no kustomize renderer: install kubectl"):
        kustomize_command()
    monkeypatch.setenv("KUBECTL", "/opt/kubectl")
    assert kustomize_command() == ["/opt/kubectl", "kustomize"]
