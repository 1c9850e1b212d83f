"""Kubernetes manifests: every overlay renders, every object passes the Kubernetes schema
(strict), and every workload is locked down, probed, sized and wired as documented."""

import copy
import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scripts.devstack import render_template
from slotstream_testkit.net import free_port
from tests.deploy.crds import is_custom, problems
from tests.deploy.support import (
    K8S,
    OVERLAYS,
    RELEASE_IMAGES,
    REPO,
    Manifest,
    kustomize_command,
    nginx_test_config,
    pod_templates,
    prepare_k8s,
    render,
)

pytestmark = pytest.mark.deploy

#: Oldest Kubernetes the manifests target (`preStop.sleep` is on by default from 1.30)
#: and the newest schema bundled with kubernetes-validate.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
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
        ("KafkaUser", "change-publisher"),
        ("KafkaUser", "push-gateway"),
        ("Gateway", "slotstream"),
        ("HTTPRoute", "slotstream-events"),
        ("HTTPRoute", "slotstream"),
        ("HTTPRoute", "slotstream-api"),
        ("NetworkPolicy", "default-deny-ingress"),
        ("NetworkPolicy", "slotstream-default-deny-egress"),
    }
    assert expected <= kinds
    assert not [kind for kind, _ in kinds if kind == "Ingress"], "the Gateway API replaces it"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", RENDERINGS)
def test_every_object_passes_the_strict_schema(
    rendered: dict[str, list[Manifest]], name: str, version: str
) -> None:
    failures = []
    for doc in rendered[name]:
        if is_custom(doc):
            continue  # no bundled schema: test_crds.py checks these against their CRDs
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
    # The `bye` retry hints are spread over a window, not all at 0.5 s.
    config = next(
        doc["data"]
        for doc in rendered[name]
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("push-gateway-config")
    )
    assert int(config["GATEWAY_SHUTDOWN_RETRY_JITTER_MS"]) >= 1000


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


def routes_by_path(manifests: list[Manifest]) -> dict[str, tuple[str, dict[str, Any]]]:
    """path → (backend Service, the rule's timeouts), over every HTTPRoute."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for route in of_kind(manifests, "HTTPRoute").values():
        for rule in route["spec"]["rules"]:
            (backend,) = rule["backendRefs"]
            for match in rule["matches"]:
                found[match["path"]["value"]] = (backend["name"], rule.get("timeouts", {}))
    return found


@pytest.mark.parametrize("name", RENDERINGS)
def test_event_streams_have_no_request_deadline(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    """SSE through the Gateway API: the event paths go to the gateways with the route's
    request timeout disabled (`0s`); everything else keeps a bounded deadline."""
    routes = routes_by_path(rendered[name])
    to_gateways = {path for path, (backend, _) in routes.items() if backend == "push-gateway"}
    assert to_gateways == SSE_PATHS
    for path, (backend, timeouts) in routes.items():
        if backend == "push-gateway":
            assert timeouts["request"] == "0s", path
            assert timeouts.get("backendRequest", "0s") == "0s", path
        else:
            assert timeouts["request"] not in {"0s", None}, path
    assert routes["/api"][0] == "booking-api"
    assert routes["/"][0] == "edge"
    (gateway,) = of_kind(rendered[name], "Gateway").values()
    for route in of_kind(rendered[name], "HTTPRoute").values():
        for parent in route["spec"]["parentRefs"]:
            assert parent["name"] == gateway["metadata"]["name"]
            listener_names = {listener["name"] for listener in gateway["spec"]["listeners"]}
            assert parent["sectionName"] in listener_names


def test_base_is_implementation_neutral(rendered: dict[str, list[Manifest]]) -> None:
    assert not [
        doc for doc in rendered["base"] if doc["apiVersion"].startswith("gateway.envoyproxy")
    ]
    (gateway,) = of_kind(rendered["base"], "Gateway").values()
    (gateway_class,) = of_kind(rendered["cluster"], "GatewayClass").values()
    assert gateway["spec"]["gatewayClassName"] == gateway_class["metadata"]["name"]
    assert "infrastructure" not in gateway["spec"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlays_name_envoy_gateway_and_its_access_log_drops_queries(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    (gateway,) = of_kind(rendered[name], "Gateway").values()
    reference = gateway["spec"]["infrastructure"]["parametersRef"]
    proxy = of_kind(rendered[name], "EnvoyProxy")[reference["name"]]
    (setting,) = proxy["spec"]["telemetry"]["accessLog"]["settings"]
    text = setting["format"]["text"]
    assert "%REQ_WITHOUT_QUERY(" in text
    assert "%REQ(:PATH)%" not in text
    assert "ClientTrafficPolicy" in {doc["kind"] for doc in rendered[name]}


#: The Compose edge's defaults (`${EDGE_…:-N}` in docker-compose.yml), read, not repeated.
EDGE_DEFAULT = re.compile(r"(EDGE_[A-Z_]+): \$\{\1:-(\d+)\}")
#: What the edge's stricter zone counts (its map in slotstream.conf.template): the path
#: with any query string, as Envoy's rate limit sees `:path`.
WRITE_PATHS = {"/api/bookings", "/api/stream-tickets", "/api/bookings?x=1"}
NOT_WRITE_PATHS = {"/api/bookings/b1", "/api/slots", "/api/stream-tickets2", "/x/api/bookings"}


def edge_defaults() -> dict[str, int]:
    text = (REPO / "docker-compose.yml").read_text()
    return {name: int(value) for name, value in EDGE_DEFAULT.findall(text)}


def api_rate_limits(manifests: list[Manifest]) -> tuple[list[Manifest], list[Manifest]]:
    """(the HTTPRoutes that reach the booking-api, the BackendTrafficPolicies on them)."""
    routes = [
        route
        for route in of_kind(manifests, "HTTPRoute").values()
        if any(b["name"] == "booking-api" for r in route["spec"]["rules"] for b in r["backendRefs"])
    ]
    names = {route["metadata"]["name"] for route in routes}
    policies = [
        doc
        for doc in of_kind(manifests, "BackendTrafficPolicy").values()
        for ref in doc["spec"]["targetRefs"]
        if ref["kind"] == "HTTPRoute" and ref["name"] in names
    ]
    return routes, policies


PUSH_GATEWAY = "push-gateway"


def envoy_networks(manifests: list[Manifest]) -> list[str]:
    """GATEWAY_TRUSTED_PROXIES of the push-gateway pods: the networks Envoy runs in."""
    (template,) = [t for w, t in pod_templates(manifests) if w["metadata"]["name"] == PUSH_GATEWAY]
    config_maps = of_kind(manifests, "ConfigMap")
    for container in containers(template):
        for source in container.get("envFrom", []):
            data = config_maps[source["configMapRef"]["name"]]["data"]
            if "GATEWAY_TRUSTED_PROXIES" in data:
                networks: list[str] = json.loads(data["GATEWAY_TRUSTED_PROXIES"])
                return networks
    raise AssertionError("no GATEWAY_TRUSTED_PROXIES")


def edge_real_ip_files(manifests: list[Manifest]) -> dict[str, str]:
    """The files the edge pod's nginx includes as real-ip configuration: the include glob
    of slotstream.conf.template, rendered with the container's env, matched against its
    volume mounts and the ConfigMap mounted there."""
    (template,) = [t for w, t in pod_templates(manifests) if w["metadata"]["name"] == "edge"]
    (container,) = template["spec"]["containers"]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    conf = render_template((REPO / "deploy/edge/slotstream.conf.template").read_text(), env)
    globs = [g for g in re.findall(r"^include (\S+);", conf, re.MULTILINE) if "real-ip" in g]
    assert len(globs) == 1, "slotstream.conf.template includes no real-ip configuration"
    (glob,) = globs
    directory, pattern = glob.rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    data: dict[str, str] = of_kind(manifests, "ConfigMap")[volume["configMap"]["name"]]["data"]
    return {key: text for key, text in data.items() if fnmatch.fnmatch(key, pattern)}


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_edge_takes_the_client_address_from_envoy(
    rendered: dict[str, list[Manifest]], name: str, tmp_path: Path
) -> None:
    """Browsers reach the edge through Envoy: its per-address limits must key on the client
    Envoy appended to X-Forwarded-For, trusted only from the networks the gateways trust
    (else every browser behind one Envoy replica shares one allowance)."""
    files = edge_real_ip_files(rendered[name])
    assert files, "no real-ip configuration mounted where the edge includes it"
    directives = [
        line.split("#", 1)[0].strip()
        for text in files.values()
        for line in text.splitlines()
        if line.split("#", 1)[0].strip()
    ]
    trusted = [
        d.removeprefix("set_real_ip_from ").rstrip(";")
        for d in directives
        if d.startswith("set_real_ip_from ")
    ]
    assert sorted(trusted) == sorted(envoy_networks(rendered[name]))
    assert "real_ip_header X-Forwarded-For;" in directives
    assert "real_ip_recursive on;" in directives
    # The real nginx accepts the files at the edge's http level.
    real_ip = tmp_path / "real-ip"
    real_ip.mkdir()
    for key, text in files.items():
        (real_ip / key).write_text(text)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/pid;\nevents {{}}\nhttp {{\n    access_log off;\n"
        f"    include {real_ip}/*.conf;\n"
        f"    server {{ listen 127.0.0.1:{free_port()}; }}\n}}\n"
    )
    printed = nginx_test_config(tmp_path, tmp_path / "nginx.conf", tmp_path / "error.log")
    assert "real_ip_recursive on;" in printed  # the include found the files


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_api_is_rate_limited_per_client_address_like_the_edge(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    """In Kubernetes `/api` bypasses the edge's `limit_req`: Envoy Gateway's local rate
    limit gives each client address (`sourceCIDR` `Distinct`, IPv4 and IPv6) the edge's
    request rate for the API, a stricter one for POST /api/bookings and /api/stream-tickets
    (one shared bucket, as the edge's zone), and answers 429 as the edge does."""
    edge = edge_defaults()
    routes, policies = api_rate_limits(rendered[name])
    assert routes, "no HTTPRoute reaches the booking-api"
    for route in routes:
        # Only the API: the limit must not fall on the page or the streams.
        backends = {b["name"] for r in route["spec"]["rules"] for b in r["backendRefs"]}
        assert backends == {"booking-api"}, route["metadata"]["name"]
    (policy,) = [p for p in policies if "rateLimit" in p["spec"]]
    assert not problems(policy)
    targets = {ref["name"] for ref in policy["spec"]["targetRefs"]}
    assert targets == {route["metadata"]["name"] for route in routes}
    rules = policy["spec"]["rateLimit"]["local"]["rules"]
    assert {rule["limit"]["unit"] for rule in rules} == {"Second"}, rules
    families = set()
    general: dict[str, int] = {}
    writes: dict[str, int] = {}
    for rule in rules:
        (selector,) = rule["clientSelectors"]
        source = selector["sourceCIDR"]
        assert source["type"] == "Distinct", rule
        families.add(source["value"])
        if set(selector) == {"sourceCIDR"}:
            general[source["value"]] = rule["limit"]["requests"]
            continue
        assert set(selector) == {"sourceCIDR", "methods", "path"}, rule
        assert selector["methods"] == [{"value": "POST"}]
        assert selector["path"]["type"] == "RegularExpression"
        pattern = re.compile(selector["path"]["value"])
        assert all(pattern.fullmatch(path) for path in WRITE_PATHS), pattern
        assert not any(pattern.fullmatch(path) for path in NOT_WRITE_PATHS), pattern
        writes[source["value"]] = rule["limit"]["requests"]
    assert families == {"0.0.0.0/0", "::/0"}
    assert general == dict.fromkeys(families, edge["EDGE_REQUESTS_PER_SECOND"])
    assert writes == dict.fromkeys(families, edge["EDGE_WRITES_PER_SECOND"])

    # The 429 Envoy answers itself: problem+json with Retry-After, like the edge's.
    (override,) = [
        o
        for o in policy["spec"]["responseOverride"]
        if {"type": "Value", "value": 429} in o["match"]["statusCodes"]
    ]
    assert override["source"] == "Local"
    response = override["response"]
    assert response["contentType"] == "application/problem+json"
    body = json.loads(response["body"]["inline"])
    assert body["status"] == 429
    assert body["title"] == "Too Many Requests"
    headers = {h["name"]: h["value"] for h in response["header"]["set"]}
    assert headers["Retry-After"] == str(edge["EDGE_RETRY_AFTER_SECONDS"])
    assert headers["Cache-Control"] == "no-store"


def test_prod_turns_the_api_docs_off(rendered: dict[str, list[Manifest]]) -> None:
    (config,) = [
        doc["data"]
        for doc in rendered["prod"]
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("booking-api-config")
    ]
    assert config["BOOKING_API_DOCS_ENABLED"] == "false"


def test_prod_gateway_terminates_tls(rendered: dict[str, list[Manifest]]) -> None:
    (gateway,) = of_kind(rendered["prod"], "Gateway").values()
    for listener in gateway["spec"]["listeners"]:
        assert listener["protocol"] == "HTTPS"
        assert listener["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "slotstream-tls"}]
    hosts = {listener["hostname"] for listener in gateway["spec"]["listeners"]}
    for route in of_kind(rendered["prod"], "HTTPRoute").values():
        assert set(route["spec"]["hostnames"]) <= hosts


def _allowed_peers(
    policies: list[Manifest], pod: dict[str, str], port: int, direction: str
) -> list[dict[str, Any]]:
    """The peers of every policy that selects the pod and opens the port in `direction`
    ("ingress" → `from`, "egress" → `to`)."""
    side = "from" if direction == "ingress" else "to"
    peers: list[dict[str, Any]] = []
    for policy in policies:
        if not selects(policy["spec"]["podSelector"], pod):
            continue
        for rule in policy["spec"].get(direction, []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if not ports or port in ports:
                peers.extend(rule.get(side, [{}]))
    return peers


def _admits(
    peers: list[dict[str, Any]], labels: dict[str, str], namespace: dict[str, str] | None
) -> bool:
    """Would a pod with these labels, in a namespace with these labels (or ours: None),
    match one of the peers?"""
    for peer in peers:
        if not peer:
            return True
        pod_selector = peer.get("podSelector")
        namespace_selector = peer.get("namespaceSelector")
        if namespace is None and namespace_selector is None and pod_selector is not None:
            if selects(pod_selector, labels):
                return True
        if namespace is not None and namespace_selector is not None:
            if selects(namespace_selector, namespace) and (
                pod_selector is None or selects(pod_selector, labels)
            ):
                return True
    return False


def _namespace(name: str, **labels: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name, **labels}


#: Labels Strimzi puts on its pods (it overwrites app.kubernetes.io/part-of).
STRIMZI_BROKER = {
    "strimzi.io/cluster": "slotstream",
    "strimzi.io/kind": "Kafka",
    "strimzi.io/broker-role": "true",
    "strimzi.io/pool-name": "broker",
    "app.kubernetes.io/part-of": "strimzi-slotstream",
}
STRIMZI_ENTITY_OPERATOR = {
    "strimzi.io/cluster": "slotstream",
    "strimzi.io/kind": "Kafka",
    "strimzi.io/name": "slotstream-entity-operator",
    "app.kubernetes.io/part-of": "strimzi-slotstream",
}


def gateway_namespace(name: str) -> dict[str, str]:
    """Where the Gateway's data plane runs: Envoy Gateway's namespace in the overlays; the
    base admits namespaces labelled slotstream.io/gateway."""
    if name == "base":
        return _namespace("gateway-system", **{"slotstream.io/gateway": "true"})
    return _namespace("envoy-gateway-system")


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
    # The default deny covers every pod, Strimzi's included (whose part-of it overwrites).
    for workload, labels in [*pods.items(), ("broker", STRIMZI_BROKER)]:
        assert any(selects(p["spec"]["podSelector"], labels) for p in default_deny), workload
    assert any(selects(p["spec"]["podSelector"], STRIMZI_ENTITY_OPERATOR) for p in default_deny)

    def admits(
        source: str | None, target: str, port: int, namespace: dict[str, str] | None = None
    ) -> bool:
        peers = _allowed_peers(policies, pods[target], port, "ingress")
        return _admits(peers, pods[source] if source else {}, namespace)

    gateway = gateway_namespace(name)
    # From the Gateway's data plane: the API, the gateways and the page, nothing else.
    assert admits(None, "booking-api", 8000, gateway)
    assert admits(None, "push-gateway", 8002, gateway)
    assert admits(None, "edge", 8080, gateway)
    assert not admits(None, "change-publisher", 8001, gateway)
    assert not admits(None, "mongo", 27017, gateway)
    assert not admits(None, "booking-api", 8000, _namespace("default"))
    # MongoDB: only the services that use it (and its own members).
    mongo_clients = {w for w, labels in pods.items() if admits(w, "mongo", 27017)}
    assert mongo_clients == {"booking-api", "change-publisher", "mongo-init", "mongo"}
    assert not admits(None, "mongo", 27017, _namespace("default"))
    # Inside: gateways fetch snapshots from the API; the publisher serves no one.
    assert admits("push-gateway", "booking-api", 8000)
    assert not admits("edge", "change-publisher", 8001)
    assert admits(None, "change-publisher", 8001, _namespace("monitoring"))


@pytest.mark.parametrize("name", RENDERINGS)
def test_network_policies_limit_egress(rendered: dict[str, list[Manifest]], name: str) -> None:
    policies = list(of_kind(rendered[name], "NetworkPolicy").values())
    pods = pod_labels(rendered[name])
    deny_egress = [
        p for p in policies if "Egress" in p["spec"]["policyTypes"] and not p["spec"].get("egress")
    ]
    for workload, labels in pods.items():
        assert any(selects(p["spec"]["podSelector"], labels) for p in deny_egress), workload

    def reaches(source: str, target: dict[str, str], port: int) -> bool:
        return _admits(_allowed_peers(policies, pods[source], port, "egress"), target, None)

    kafka = STRIMZI_BROKER
    expected = {
        "booking-api": {("mongo", 27017)},
        "change-publisher": {("mongo", 27017), ("kafka", 9092)},
        "push-gateway": {("kafka", 9092), ("booking-api", 8000)},
        "edge": {("booking-api", 8000), ("push-gateway", 8002)},
        "mongo": {("mongo", 27017)},
        "mongo-init": {("mongo", 27017)},
    }
    targets = dict(pods) | {"kafka": kafka}
    ports = {"mongo": 27017, "kafka": 9092, "booking-api": 8000, "push-gateway": 8002}
    for source, allowed in expected.items():
        for target, port in ports.items():
            if target == source and target != "mongo":
                continue
            assert reaches(source, targets[target], port) is ((target, port) in allowed), (
                f"{source} → {target}:{port}"
            )
        # Every pod resolves names through the cluster DNS, and only there.
        dns = _allowed_peers(policies, pods[source], 53, "egress")
        assert _admits(dns, {"k8s-app": "kube-dns"}, _namespace("kube-system")), source
        assert not _admits(dns, {"k8s-app": "kube-dns"}, _namespace("default")), source


@pytest.mark.parametrize("name", RENDERINGS)
def test_only_the_services_reach_kafka(rendered: dict[str, list[Manifest]], name: str) -> None:
    (kafka,) = of_kind(rendered[name], "Kafka").values()
    pods = pod_labels(rendered[name])
    for listener in kafka["spec"]["kafka"]["listeners"]:
        peers = listener["networkPolicyPeers"]
        clients = {w for w, labels in pods.items() if _admits(peers, labels, None)}
        assert clients == {"change-publisher", "push-gateway"}, listener["name"]


#: Secret → keys each overlay generates from files (generate-secrets.sh), never committed.
GENERATED_SECRETS = {
    "booking-api-secrets": {"mongo-url", "internal-token"},
    "change-publisher-secrets": {"mongo-url"},
    "push-gateway-secrets": {"internal-token"},
    "mongo-auth": {
        "keyfile",
        "admin-password",
        "booking-api-password",
        "change-publisher-password",
    },
}
#: Written by Strimzi's User Operator for each KafkaUser.
STRIMZI_USER_SECRETS = {"change-publisher", "push-gateway"}


def base_name(name: str) -> str:
    """The generator's name without kustomize's content-hash suffix."""
    for generated in [*GENERATED_SECRETS, "jwt-public-key"]:
        if name == generated or name.startswith(generated + "-"):
            return generated
    return name


@pytest.mark.parametrize("name", RENDERINGS)
def test_config_and_secret_references_resolve(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    config_maps = set(of_kind(rendered[name], "ConfigMap"))
    secrets = of_kind(rendered[name], "Secret")
    used: dict[str, set[str]] = {}
    for workload, template in pod_templates(rendered[name]):
        for container in containers(template):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, workload["metadata"]
            for variable in container.get("env", []):
                assert "value" in variable or "valueFrom" in variable
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    used.setdefault(ref["name"], set()).add(ref["key"])
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume and name != "base":
                assert volume["configMap"]["name"] in config_maps, volume
            if "secret" in volume:
                keys = {item["key"] for item in volume["secret"].get("items", [])}
                used.setdefault(volume["secret"]["secretName"], set()).update(keys)
    by_base = {base_name(secret): keys for secret, keys in used.items()}
    assert set(by_base) == set(GENERATED_SECRETS) | STRIMZI_USER_SECRETS
    for secret, keys in GENERATED_SECRETS.items():
        assert by_base[secret] <= keys, secret
    for user in STRIMZI_USER_SECRETS:
        assert by_base[user] == {"password"}
    if name == "base":
        assert not secrets, "the base holds no secret"
        return
    generated = {base_name(secret): doc for secret, doc in secrets.items()}
    assert set(generated) == set(GENERATED_SECRETS)
    for secret, keys in GENERATED_SECRETS.items():
        assert set(generated[secret]["data"]) == keys, secret
    # What pods refer to is what the overlay generated (hash suffixes included).
    for secret in used:
        if base_name(secret) in GENERATED_SECRETS:
            assert secret in secrets, secret


def test_no_secret_is_committed() -> None:
    """Everything secret is generated at apply time from git-ignored files."""
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "deploy/k8s"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert not [path for path in tracked if "/secrets/" in path or path.endswith(".env")]
    for path in tracked:
        text = (REPO / path).read_text()
        assert "PRIVATE KEY" not in text, path
        if path.endswith("kustomization.yaml"):
            for generator in yaml.safe_load(text).get("secretGenerator", []):
                assert "literals" not in generator, f"{path}: {generator['name']}"
                for source in generator.get("files", []) + generator.get("envs", []):
                    assert source.split("=")[-1].startswith("secrets/"), source
    ignored = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "check-ignore",
            "deploy/k8s/overlays/dev/secrets/internal-token",
            "deploy/k8s/overlays/prod/release-images.env",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert len(ignored.stdout.split()) == 2, ignored.stdout


def test_prod_pins_every_image_by_digest(rendered: dict[str, list[Manifest]]) -> None:
    """Prod runs exactly the pushed images: every container's image is a digest reference
    from release-images.env (written by the release pipeline; the test writes one)."""
    images = {
        container["image"]
        for _, template in pod_templates(rendered["prod"])
        for container in containers(template)
    }
    assert images == set(RELEASE_IMAGES.values())
    for image in images:
        assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", image), image
    assert not of_kind(rendered["prod"], "ConfigMap").get("release-images"), "build input only"


def test_prod_refuses_to_render_without_digests(tmp_path: Path) -> None:
    k8s = prepare_k8s(tmp_path)
    (k8s / "overlays" / "prod" / "release-images.env").unlink()
    result = subprocess.run(
        [*kustomize_command(), str(k8s / "overlays" / "prod")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "release-images.env" in result.stderr


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
        mongod = statefulset["spec"]["template"]["spec"]["containers"][0]
        # `args`, so the image's entrypoint creates the root user on first start.
        assert "command" not in mongod
        args = mongod["args"]
        assert args[args.index("--replSet") + 1] == env["RS_NAME"]
        assert args[args.index("--keyFile") + 1] == "/keyfile/keyfile"
        mongod_env = {v["name"]: v.get("value") for v in mongod["env"]}
        assert mongod_env["MONGO_INITDB_ROOT_PASSWORD_FILE"] == env["MONGO_ADMIN_PASSWORD_FILE"]
        assert env["SERVICE_PASSWORDS_DIR"]
        # The services' URLs (generated) name the same members.
        hosts = (REPO / "deploy" / "k8s" / "overlays" / name / "mongo-hosts").read_text().strip()
        assert hosts.split(",") == members, name


@pytest.mark.parametrize("name", OVERLAYS)
def test_mongo_init_job_survives_a_reapply(rendered: dict[str, list[Manifest]], name: str) -> None:
    """A Job's pod template is immutable: re-applying must never need to change it. It is
    deleted a while after finishing, and it refers only to fixed names."""
    job = of_kind(rendered[name], "Job")["mongo-init"]
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 3600
    pod = job["spec"]["template"]["spec"]
    names = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    names += [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert names
    for referenced in names:
        assert referenced in {"mongo-init-script", "mongo-auth"}, referenced


def test_a_missing_renderer_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No kubectl and no kustomize is a failure with a way out, never a silent skip."""
    monkeypatch.delenv("KUBECTL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(pytest.fail.Exception, match="no kustomize renderer: install kubectl"):
        kustomize_command()
    monkeypatch.setenv("KUBECTL", "/opt/kubectl")
    assert kustomize_command() == ["/opt/kubectl", "kustomize"]


CHECK_RELEASE_IMAGES = REPO / "deploy" / "k8s" / "check-release-images.sh"


def check_release_images(tmp_path: Path, lines: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "release-images.env").write_text(
        "".join(f"{name}={value}\n" for name, value in lines.items())
    )
    return subprocess.run(
        ["bash", str(CHECK_RELEASE_IMAGES), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_release_images_must_all_be_digests(tmp_path: Path) -> None:
    """kustomize copies whatever release-images.env says: the check the release pipeline
    runs before `kubectl apply -k` refuses a tag, a missing image or another Mongo image."""
    assert check_release_images(tmp_path, RELEASE_IMAGES).returncode == 0
    tagged = check_release_images(tmp_path, RELEASE_IMAGES | {"MONGO": "mongo:8.0"})
    assert tagged.returncode != 0
    assert "MONGO=mongo:8.0" in tagged.stderr
    missing = dict(RELEASE_IMAGES)
    del missing["EDGE"]
    assert "EDGE is missing" in check_release_images(tmp_path, missing).stderr
    other = RELEASE_IMAGES | {"MONGO": "example.com/bitnami/mongodb@sha256:" + "0" * 64}
    assert check_release_images(tmp_path, other).returncode != 0


def test_release_image_names_are_the_ones_prod_replaces() -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / "prod" / "kustomization.yaml").read_text())
    replaced = {
        r["source"]["fieldPath"].removeprefix("data.")
        for r in kustomization["replacements"]
        if r["source"]["name"] == "release-images"
    }
    assert replaced == set(RELEASE_IMAGES)
    assert f"for name in {' '.join(sorted(replaced, key=list(RELEASE_IMAGES).index))};" in (
        CHECK_RELEASE_IMAGES.read_text()
    )


def test_the_alert_rules_ship_as_a_config_map_where_prometheus_scrapes_from(
    rendered: dict[str, list[Manifest]],
) -> None:
    """deploy/k8s/monitoring: the ConfigMap holds deploy/observability/alerts.yml unchanged
    (one file for Compose and Kubernetes), in the namespace the metrics-scraping
    NetworkPolicy admits Prometheus from, under a fixed name a Prometheus can mount."""
    (config_map,) = render(K8S / "monitoring")
    assert config_map["kind"] == "ConfigMap"
    assert config_map["metadata"]["name"] == "slotstream-alerts"
    rules = REPO / "deploy" / "observability" / "alerts.yml"
    assert config_map["data"] == {"alerts.yml": rules.read_text()}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(config_map, version, strict=True)
    scraping = of_kind(rendered["base"], "NetworkPolicy")["metrics-scraping"]
    (source,) = scraping["spec"]["ingress"][0]["from"]
    namespace = source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    assert config_map["metadata"]["namespace"] == namespace
