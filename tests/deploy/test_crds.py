"""Every custom object (Strimzi, Gateway API) validated against its CRD's openAPIV3Schema
(tests/deploy/crds.py). The kinds of Envoy Gateway, whose CRDs are not vendored, are named
here and in docs/deploy.md: a new unvalidated kind cannot slip in unnoticed."""

import copy

import pytest

from tests.deploy.crds import crds, is_custom, problems
from tests.deploy.support import REPO, Manifest

pytestmark = pytest.mark.deploy

RENDERINGS = ("base", "dev", "prod", "cluster")
#: Envoy Gateway's policy kinds (gateway.envoyproxy.io/v1alpha1): no CRD here to check
#: them against; documented as unvalidated in docs/deploy.md.
UNVALIDATED = {
    ("gateway.envoyproxy.io", "EnvoyProxy"),
    ("gateway.envoyproxy.io", "ClientTrafficPolicy"),
    ("gateway.envoyproxy.io", "BackendTrafficPolicy"),
}


def group_kind(doc: Manifest) -> tuple[str, str]:
    return doc["apiVersion"].rpartition("/")[0], doc["kind"]


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_custom_object_matches_its_crd(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    custom = [doc for doc in rendered[name] if is_custom(doc)]
    assert custom
    failures = [
        problem for doc in custom if group_kind(doc) not in UNVALIDATED for problem in problems(doc)
    ]
    assert not failures, "\n".join(failures)


def test_every_vendored_kind_is_used_and_checked(rendered: dict[str, list[Manifest]]) -> None:
    used = {group_kind(doc) for docs in rendered.values() for doc in docs if is_custom(doc)}
    assert used - UNVALIDATED <= set(crds())
    assert {
        ("kafka.strimzi.io", "Kafka"),
        ("kafka.strimzi.io", "KafkaNodePool"),
        ("kafka.strimzi.io", "KafkaTopic"),
        ("kafka.strimzi.io", "KafkaUser"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
        ("gateway.networking.k8s.io", "HTTPRoute"),
    } <= used


def test_unvalidated_kinds_are_documented() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    for _, kind in UNVALIDATED:
        assert kind in docs, kind


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
