"""Every custom object (Strimzi, Gateway API, Envoy Gateway) validated against its CRD's
openAPIV3Schema (tests/deploy/crds.py); Envoy Gateway's against the hand-written subset of
its v1.9.0 CRDs here, and against the full upstream ones in CI (SLOTSTREAM_EXTRA_CRDS)."""

import copy

import pytest

from tests.deploy.crds import crds, is_custom, problems
from tests.deploy.support import REPO, Manifest

pytestmark = pytest.mark.deploy

RENDERINGS = ("base", "dev", "prod", "cluster")


def group_kind(doc: Manifest) -> tuple[str, str]:
    return doc["apiVersion"].rpartition("/")[0], doc["kind"]


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_custom_object_matches_its_crd(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    custom = [doc for doc in rendered[name] if is_custom(doc)]
    assert custom
    failures = [problem for doc in custom for problem in problems(doc)]
    assert not failures, "\n".join(failures)


def test_every_vendored_kind_is_used_and_checked(rendered: dict[str, list[Manifest]]) -> None:
    used = {group_kind(doc) for docs in rendered.values() for doc in docs if is_custom(doc)}
    assert used <= set(crds())
    assert {
        ("kafka.strimzi.io", "Kafka"),
        ("kafka.strimzi.io", "KafkaNodePool"),
        ("kafka.strimzi.io", "KafkaTopic"),
        ("kafka.strimzi.io", "KafkaUser"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
        ("gateway.networking.k8s.io", "HTTPRoute"),
        ("gateway.envoyproxy.io", "ClientTrafficPolicy"),
        ("gateway.envoyproxy.io", "BackendTrafficPolicy"),
        ("gateway.envoyproxy.io", "EnvoyProxy"),
    } <= used


def test_the_validator_rejects_an_unknown_field(rendered: dict[str, list[Manifest]]) -> None:
    (kafka,) = [doc for doc in rendered["base"] if doc["kind"] == "Kafka"]
    broken = copy.deepcopy(kafka)
    broken["spec"]["kafka"]["listeners"][0]["authentication"]["mechanism"] = "scram"
    assert any("mechanism" in problem for problem in problems(broken))
    (route,) = [d for d in rendered["base"] if d["metadata"]["name"] == "slotstream-events"]
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["timeouts"]["request"] = "forever"
    assert problems(broken)


def test_the_validator_rejects_an_unserved_version(rendered: dict[str, list[Manifest]]) -> None:
    """kafka.strimzi.io/v1beta2 (what main shipped) is not served by Strimzi 1.x."""
    (kafka,) = [doc for doc in rendered["base"] if doc["kind"] == "Kafka"]
    old = copy.deepcopy(kafka) | {"apiVersion": "kafka.strimzi.io/v1beta2"}
    assert any("is not served" in problem for problem in problems(old))


def envoy_gateway_object(
    rendered: dict[str, list[Manifest]], kind: str, name: str = "slotstream"
) -> Manifest:
    (doc,) = [d for d in rendered["dev"] if (d["kind"], d["metadata"]["name"]) == (kind, name)]
    return copy.deepcopy(doc)


def test_the_validator_rejects_a_wrong_envoy_gateway_policy(
    rendered: dict[str, list[Manifest]],
) -> None:
    """A misspelt field, a duration Envoy Gateway cannot parse, an unknown sink, an
    unknown rate limit selector type and a misspelt rate limit field fail."""
    client = envoy_gateway_object(rendered, "ClientTrafficPolicy")
    assert not problems(client)
    client["spec"]["timeout"]["http"]["idleTimout"] = "1h"
    assert any("idleTimout" in problem for problem in problems(client))
    backend = envoy_gateway_object(rendered, "BackendTrafficPolicy", "slotstream-events")
    backend["spec"]["timeout"]["http"]["connectionIdleTimeout"] = "1 hour"
    assert problems(backend)
    limits = envoy_gateway_object(rendered, "BackendTrafficPolicy", "slotstream-api")
    assert not problems(limits)
    rule = limits["spec"]["rateLimit"]["local"]["rules"][0]
    rule["clientSelectors"][0]["sourceCIDR"]["type"] = "PerAddress"
    assert problems(limits)
    rule["clientSelectors"][0]["sourceCIDR"]["type"] = "Distinct"
    rule["limit"]["burst"] = 200
    assert any("burst" in problem for problem in problems(limits))
    override = envoy_gateway_object(rendered, "BackendTrafficPolicy", "slotstream-api")
    override["spec"]["responseOverride"][0]["response"]["headers"] = {}
    assert any("headers" in problem for problem in problems(override))
    proxy = envoy_gateway_object(rendered, "EnvoyProxy")
    proxy["spec"]["telemetry"]["accessLog"]["settings"][0]["sinks"][0]["type"] = "Stdout"
    assert problems(proxy)


#: What each policy may target: CEL rules (x-kubernetes-validations) of Envoy Gateway
#: v1.9.0's CRDs, which the JSON-schema check does not evaluate.
POLICY_TARGETS = {
    "ClientTrafficPolicy": {"Gateway", "ListenerSet"},
    "BackendTrafficPolicy": {
        "Gateway",
        "ListenerSet",
        "HTTPRoute",
        "GRPCRoute",
        "UDPRoute",
        "TCPRoute",
        "TLSRoute",
    },
}


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_envoy_gateway_policies_target_what_they_attach_to(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    objects = {(d["kind"], d["metadata"]["name"]) for d in rendered[name]}
    for doc in rendered[name]:
        if doc["kind"] not in POLICY_TARGETS:
            continue
        for ref in doc["spec"]["targetRefs"]:
            assert ref["group"] == "gateway.networking.k8s.io"
            assert ref["kind"] in POLICY_TARGETS[doc["kind"]], (doc["kind"], ref)
            assert (ref["kind"], ref["name"]) in objects, f"{doc['kind']} targets nothing: {ref}"


def test_the_envoy_gateway_subset_is_documented() -> None:
    """docs/deploy.md says how each Envoy Gateway kind is checked (the subset here, the full
    release CRDs in CI) and which version that is."""
    docs = (REPO / "docs" / "deploy.md").read_text()
    for kind in ("EnvoyProxy", "ClientTrafficPolicy", "BackendTrafficPolicy"):
        assert kind in docs, kind
    assert "envoy-gateway-v1.9.0-subset" in docs
    assert "SLOTSTREAM_EXTRA_CRDS" in docs
    readme = (REPO / "tests" / "deploy" / "crds" / "README.md").read_text()
    assert "envoy-gateway-v1.9.0-subset" in readme
    assert "39763b1c07ec30a5526fe70434a2cfe4181de642" in readme
