"""Strimzi resources: their CRD schemas are checked in test_crds.py; here the rules the
operator enforces beyond the schema, the supported Kafka versions, the agreement between
the KafkaTopics and the topic names in libs/contracts, and the services' KafkaUsers."""

import re
from typing import Any

import pytest
import yaml

from slotstream_contracts import topics
from tests.deploy.crds import CRD_DIR
from tests.deploy.support import OVERLAYS, Manifest

pytestmark = pytest.mark.deploy

#: Strimzi 1.x serves only v1 (v1beta2 is gone).
API_VERSION = "kafka.strimzi.io/v1"
#: Annotations Strimzi 1.x ignores (KRaft and node pools are its only mode).
IGNORED_ANNOTATIONS = {"strimzi.io/kraft", "strimzi.io/node-pools"}
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


def supported_kafka_versions() -> set[str]:
    entries = yaml.safe_load((CRD_DIR / "strimzi-1.2.0" / "kafka-versions.yaml").read_text())
    return {entry["version"] for entry in entries if entry.get("supported")}


def test_the_supported_versions_are_read_from_strimzi() -> None:
    supported = supported_kafka_versions()
    assert "4.2.0" in supported
    assert "4.1.0" not in supported, "Strimzi 1.2 dropped Kafka 4.1"


@pytest.mark.parametrize("name", RENDERINGS)
def test_kafka_runs_kraft_with_node_pools(rendered: dict[str, list[Manifest]], name: str) -> None:
    for doc in rendered[name]:
        if doc["apiVersion"].startswith("kafka.strimzi.io/"):
            annotations = set(doc["metadata"].get("annotations", {}))
            assert not annotations & IGNORED_ANNOTATIONS, doc["metadata"]["name"]
    (kafka,) = strimzi(rendered[name], "Kafka")
    spec = kafka["spec"]
    assert "zookeeper" not in spec, "KRaft: no ZooKeeper section"
    assert spec["kafka"]["version"] in supported_kafka_versions()
    if "metadataVersion" in spec["kafka"]:  # default: the version's own
        major_minor = ".".join(spec["kafka"]["version"].split(".")[:2])
        assert spec["kafka"]["metadataVersion"].startswith(major_minor + "-IV")
    # Node pools own replicas and storage; the Kafka resource must not set them.
    assert "replicas" not in spec["kafka"]
    assert "storage" not in spec["kafka"]
    assert "topicOperator" in spec["entityOperator"]
    assert "userOperator" in spec["entityOperator"], "the KafkaUsers need it"
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
        assert listener["authentication"]["type"] == "scram-sha-512", listener["name"]
    assert spec["kafka"]["authorization"]["type"] == "simple"
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


@pytest.mark.parametrize("name", RENDERINGS)
def test_each_service_has_a_kafka_user_with_only_its_acls(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    (kafka,) = strimzi(rendered[name], "Kafka")
    users = {user["metadata"]["name"]: user for user in strimzi(rendered[name], "KafkaUser")}
    assert set(users) == {"change-publisher", "push-gateway"}
    grants: dict[str, set[tuple[str, str]]] = {}
    for user_name, user in users.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        authorization = user["spec"]["authorization"]
        assert authorization["type"] == "simple"
        grants[user_name] = set()
        for acl in authorization["acls"]:
            assert acl.get("type", "allow") == "allow"
            resource = acl["resource"]
            assert resource["type"] == "topic", "no group, cluster or transactional grants"
            assert resource["patternType"] == "literal"
            for operation in acl["operations"]:
                grants[user_name].add((operation, resource["name"]))
    data = {topics.SCHEDULE_TOPIC, topics.NOTIFICATIONS_TOPIC}
    assert grants["change-publisher"] == {
        (op, topic) for op in ("Write", "Describe") for topic in (*data, topics.DEADLETTER_TOPIC)
    }
    gateway = grants["push-gateway"]
    assert {topic for op, topic in gateway if op == "Write"} == {topics.PRESENCE_TOPIC}
    assert {topic for op, topic in gateway if op == "Read"} == {*data, topics.PRESENCE_TOPIC}


@pytest.mark.parametrize("name", RENDERINGS)
def test_services_authenticate_as_their_kafka_user(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    settings: dict[str, str] = {}
    for doc in rendered[name]:
        if doc["kind"] == "ConfigMap":
            settings.update(doc.get("data", {}))
    workloads = {d["metadata"]["name"]: d for d in rendered[name] if d["kind"] == "Deployment"}
    for service, prefix in (("change-publisher", "PUBLISHER_"), ("push-gateway", "GATEWAY_")):
        assert settings[f"{prefix}KAFKA__SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
        assert settings[f"{prefix}KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert settings[f"{prefix}KAFKA__SASL_USERNAME"] == service
        password_file = settings[f"{prefix}KAFKA__SASL_PASSWORD_FILE"]
        pod = workloads[service]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        # The file is the `password` key of the Secret the User Operator writes for the user.
        (volume_name,) = [n for n, path in mounts.items() if password_file.startswith(path + "/")]
        secret = volumes[volume_name]["secret"]
        assert secret["secretName"] == service
        (item,) = secret["items"]
        assert item["key"] == "password"
        assert password_file == f"{mounts[volume_name]}/{item['path']}"
    # Apache Kafka answers fetches on data: the Tansu-only 5 ms fetch wait is the demo's.
    assert int(settings["GATEWAY_KAFKA__FETCH_MAX_WAIT_MS"]) >= 100
