"""Strimzi resources have no bundled schema, so their required fields and the rules the
operator enforces at admission are checked here, together with the agreement between the
KafkaTopics and the topic names in libs/contracts."""

import re
from typing import Any

import pytest

from slotstream_contracts import topics
from tests.deploy.support import OVERLAYS, Manifest

pytestmark = pytest.mark.deploy

API_VERSION = "kafka.strimzi.io/v1beta2"
CONTRACT_TOPICS = {
    topics.SCHEDULE_TOPIC,
    topics.NOTIFICATIONS_TOPIC,
    topics.DEADLETTER_TOPIC,
    topics.PRESENCE_TOPIC,
}
LISTENER_TYPES = {"internal", "route", "loadbalancer", "nodeport", "ingress", "cluster-ip"}
#: Ports Strimzi keeps for itself (control plane, replication, agent, metrics).
RESERVED_PORTS = {9090, 9091, 8443, 9404, 9999}
RENDERINGS = ("base", *OVERLAYS)


def strimzi(manifests: list[Manifest], kind: str) -> list[Manifest]:
    found = [doc for doc in manifests if doc["kind"] == kind]
    for doc in found:
        assert doc["apiVersion"] == API_VERSION, f"{kind}/{doc['metadata']['name']}"
    return found


def config_int(config: dict[str, Any], key: str) -> int:
    value = config[key]
    assert isinstance(value, int), f"{key}: {value!r}"
    assert not isinstance(value, bool), f"{key}: {value!r}"
    return value


@pytest.mark.parametrize("name", RENDERINGS)
def test_kafka_runs_kraft_with_node_pools(rendered: dict[str, list[Manifest]], name: str) -> None:
    (kafka,) = strimzi(rendered[name], "Kafka")
    annotations = kafka["metadata"]["annotations"]
    assert annotations["strimzi.io/node-pools"] == "enabled"
    assert annotations["strimzi.io/kraft"] == "enabled"
    spec = kafka["spec"]
    assert "zookeeper" not in spec, "KRaft: no ZooKeeper section"
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec["kafka"]["version"])
    if "metadataVersion" in spec["kafka"]:  # default: the version's own
        major_minor = ".".join(spec["kafka"]["version"].split(".")[:2])
        assert spec["kafka"]["metadataVersion"].startswith(major_minor + "-IV")
    # Node pools own replicas and storage; the Kafka resource must not set them.
    assert "replicas" not in spec["kafka"]
    assert "storage" not in spec["kafka"]
    assert "topicOperator" in spec["entityOperator"]
    listeners = spec["kafka"]["listeners"]
    assert listeners
    names = [listener["name"] for listener in listeners]
    ports = [listener["port"] for listener in listeners]
    assert len(set(names)) == len(names)
    assert len(set(ports)) == len(ports)
    for listener in listeners:
        assert re.fullmatch(r"[a-z0-9]{1,11}", listener["name"]), listener["name"]
        assert listener["type"] in LISTENER_TYPES
        assert isinstance(listener["tls"], bool)
        assert listener["port"] >= 9092
        assert listener["port"] not in RESERVED_PORTS
    assert spec["kafka"]["config"]["auto.create.topics.enable"] is False


@pytest.mark.parametrize("name", RENDERINGS)
def test_node_pools_form_a_quorum_and_carry_storage(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    (kafka,) = strimzi(rendered[name], "Kafka")
    cluster = kafka["metadata"]["name"]
    pools = strimzi(rendered[name], "KafkaNodePool")
    controllers = brokers = 0
    for pool in pools:
        where = pool["metadata"]["name"]
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == cluster, where
        spec = pool["spec"]
        roles = set(spec["roles"])
        assert roles, where
        assert roles <= {"broker", "controller"}, where
        assert isinstance(spec["replicas"], int), where
        assert spec["replicas"] >= 1, where
        storage = spec["storage"]
        assert storage["type"] in {"jbod", "persistent-claim", "ephemeral"}, where
        volumes = storage["volumes"] if storage["type"] == "jbod" else [storage]
        ids = [volume.get("id", 0) for volume in volumes]
        assert len(set(ids)) == len(ids), where
        for volume in volumes:
            assert volume["type"] in {"persistent-claim", "ephemeral"}, where
            if volume["type"] == "persistent-claim":
                assert re.fullmatch(r"\d+(Mi|Gi|Ti)", volume["size"]), where
        # KRaft metadata lives on exactly one volume of every pool.
        assert sum(v.get("kraftMetadata") == "shared" for v in volumes) == 1, where
        if "controller" in roles:
            controllers += spec["replicas"]
        if "broker" in roles:
            brokers += spec["replicas"]
    assert controllers % 2 == 1, "an odd number of controllers keeps a majority"
    assert brokers >= 1
    config = kafka["spec"]["kafka"]["config"]
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
    ):
        assert config_int(config, key) <= brokers, key
    assert config_int(config, "min.insync.replicas") <= config_int(
        config, "default.replication.factor"
    )


@pytest.mark.parametrize("name", RENDERINGS)
def test_topics_match_the_contracts(rendered: dict[str, list[Manifest]], name: str) -> None:
    (kafka,) = strimzi(rendered[name], "Kafka")
    brokers = sum(
        pool["spec"]["replicas"]
        for pool in strimzi(rendered[name], "KafkaNodePool")
        if "broker" in pool["spec"]["roles"]
    )
    by_topic: dict[str, dict[str, Any]] = {}
    for topic in strimzi(rendered[name], "KafkaTopic"):
        where = topic["metadata"]["name"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        spec = topic["spec"]
        topic_name = spec.get("topicName", where)
        assert re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", topic_name), where
        assert isinstance(spec["partitions"], int), where
        assert spec["partitions"] >= 1, where
        assert 1 <= spec["replicas"] <= brokers, where
        assert config_int(spec["config"], "min.insync.replicas") <= spec["replicas"], where
        by_topic[topic_name] = spec
    assert set(by_topic) == CONTRACT_TOPICS
    presence = by_topic[topics.PRESENCE_TOPIC]["config"]
    assert "compact" in presence["cleanup.policy"].split(",")
    for topic_name in CONTRACT_TOPICS - {topics.PRESENCE_TOPIC}:
        assert by_topic[topic_name]["config"]["cleanup.policy"] == "delete", topic_name
        assert config_int(by_topic[topic_name]["config"], "retention.ms") > 0
    dead_letters = by_topic[topics.DEADLETTER_TOPIC]["config"]
    schedule = by_topic[topics.SCHEDULE_TOPIC]["config"]
    assert config_int(dead_letters, "retention.ms") >= config_int(schedule, "retention.ms")


@pytest.mark.parametrize("name", RENDERINGS)
def test_services_use_the_strimzi_bootstrap_service(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    (kafka,) = strimzi(rendered[name], "Kafka")
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    bootstrap = f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    settings = {}
    for doc in rendered[name]:
        if doc["kind"] == "ConfigMap":
            settings.update(doc.get("data", {}))
    assert settings["PUBLISHER_KAFKA__BOOTSTRAP_SERVERS"] == bootstrap
    assert settings["GATEWAY_KAFKA__BOOTSTRAP_SERVERS"] == bootstrap
