"""The init scripts run for real: create-topics.sh against a recording kafka-topics.sh,
init-replica-set.js under Node with a recording stand-in for mongosh's globals."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from slotstream_contracts import topics
from tests.deploy.support import REPO

pytestmark = pytest.mark.deploy

CREATE_TOPICS = REPO / "deploy" / "kafka" / "create-topics.sh"
INIT_REPLICA_SET = REPO / "deploy" / "k8s" / "base" / "init-replica-set.js"

FAKE_KAFKA_TOPICS = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$CALLS"
if [[ " $* " == *" --list "* ]]; then exit "${LIST_EXIT:-0}"; fi
if [[ -n "${FAIL_TOPIC:-}" && " $* " == *" --topic $FAIL_TOPIC "* ]]; then exit 1; fi
"""


def run_create_topics(
    tmp_path: Path, compose_env: dict[str, str], **extra: str
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(FAKE_KAFKA_TOPICS)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {
        "PATH": "/usr/bin:/bin",
        **compose_env,
        "KAFKA_TOPICS_BIN": str(fake),
        "CALLS": str(calls),
        **extra,
    }
    result = subprocess.run(
        ["bash", str(CREATE_TOPICS)], env=env, capture_output=True, text=True, timeout=30
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    return result, [line.split() for line in lines]


def created(calls: list[list[str]]) -> dict[str, dict[str, Any]]:
    """topic → partitions, replication, configs, from the recorded --create calls."""
    topics_created: dict[str, dict[str, Any]] = {}
    for call in calls:
        if "--create" not in call:
            continue
        assert "--if-not-exists" in call, "re-running the init must not fail"
        configs = dict(call[i + 1].split("=", 1) for i, arg in enumerate(call) if arg == "--config")
        topics_created[call[call.index("--topic") + 1]] = {
            "partitions": int(call[call.index("--partitions") + 1]),
            "replication": int(call[call.index("--replication-factor") + 1]),
            "bootstrap": call[call.index("--bootstrap-server") + 1],
            "config": configs,
        }
    return topics_created


@pytest.fixture
def kafka_init_env(compose_services: dict[str, dict[str, Any]]) -> dict[str, str]:
    environment: dict[str, str] = compose_services["kafka-init"]["environment"]
    return environment


def test_creates_every_contract_topic_with_the_compose_settings(
    tmp_path: Path, kafka_init_env: dict[str, str]
) -> None:
    result, calls = run_create_topics(tmp_path, kafka_init_env)
    assert result.returncode == 0, result.stderr
    made = created(calls)
    assert set(made) == {
        topics.SCHEDULE_TOPIC,
        topics.NOTIFICATIONS_TOPIC,
        topics.DEADLETTER_TOPIC,
        topics.PRESENCE_TOPIC,
    }
    for name, topic in made.items():
        assert topic["bootstrap"] == "kafka:9092", name
        assert topic["replication"] == int(kafka_init_env["TOPIC_REPLICATION_FACTOR"]), name
        assert topic["config"]["min.insync.replicas"] == kafka_init_env["TOPIC_MIN_INSYNC_REPLICAS"]
    schedule = made[topics.SCHEDULE_TOPIC]
    assert schedule["partitions"] == int(kafka_init_env["TOPIC_PARTITIONS"])
    assert schedule["config"]["retention.ms"] == kafka_init_env["SCHEDULE_RETENTION_MS"]
    deadletter = made[topics.DEADLETTER_TOPIC]["config"]
    assert deadletter["retention.ms"] == kafka_init_env["DEADLETTER_RETENTION_MS"]
    presence = made[topics.PRESENCE_TOPIC]
    assert presence["config"]["cleanup.policy"] == "compact,delete"
    assert presence["partitions"] == int(kafka_init_env["PRESENCE_PARTITIONS"])


def test_partitions_and_retention_follow_the_environment(
    tmp_path: Path, kafka_init_env: dict[str, str]
) -> None:
    result, calls = run_create_topics(
        tmp_path,
        kafka_init_env,
        TOPIC_PARTITIONS="24",
        TOPIC_REPLICATION_FACTOR="3",
        TOPIC_MIN_INSYNC_REPLICAS="2",
        NOTIFICATIONS_RETENTION_MS="3600000",
    )
    assert result.returncode == 0, result.stderr
    made = created(calls)
    assert made[topics.NOTIFICATIONS_TOPIC]["partitions"] == 24
    assert made[topics.NOTIFICATIONS_TOPIC]["config"]["retention.ms"] == "3600000"
    assert {topic["replication"] for topic in made.values()} == {3}
    assert {topic["config"]["min.insync.replicas"] for topic in made.values()} == {"2"}


def test_fails_when_kafka_never_answers(tmp_path: Path, kafka_init_env: dict[str, str]) -> None:
    result, calls = run_create_topics(
        tmp_path, kafka_init_env, LIST_EXIT="1", KAFKA_WAIT_ATTEMPTS="1"
    )
    assert result.returncode != 0
    assert "did not answer" in result.stderr
    assert not created(calls)


def test_fails_when_a_topic_cannot_be_created(
    tmp_path: Path, kafka_init_env: dict[str, str]
) -> None:
    result, _ = run_create_topics(tmp_path, kafka_init_env, FAIL_TOPIC=topics.DEADLETTER_TOPIC)
    assert result.returncode != 0, "services must not start without their topics"


# ---------------------------------------------------------------- init-replica-set.js

#: Runs the script in a fresh context with mongosh's globals replaced by recorders.
NODE_HARNESS = r"""
const fs = require("fs");
const vm = require("vm");
const [scriptPath, scenarioJson] = process.argv.slice(1);
const scenario = JSON.parse(scenarioJson);
const calls = [];
let clock = 0;
class Quit extends Error {}
const collectionsDb = {
  getCollectionInfos: () => scenario.collections,
  createCollection: (name, options) => calls.push(["createCollection", name, options]),
  runCommand: (command) => calls.push(["runCommand", command]),
};
const context = {
  process: { env: scenario.env },
  Date: { now: () => clock },
  print: (message) => calls.push(["print", message]),
  sleep: (ms) => { clock += ms; },
  quit: (code) => { throw new Quit(String(code)); },
  connect: (uri) => { calls.push(["connect", uri]); return collectionsDb; },
  rs: {
    status: () => {
      if (scenario.statusError) {
        const error = new Error("rs.status failed");
        Object.assign(error, scenario.statusError);
        throw error;
      }
      return { ok: 1 };
    },
    initiate: (config) => calls.push(["initiate", config]),
  },
  db: {
    adminCommand: () => scenario.hello,
    getSiblingDB: (name) => { calls.push(["getSiblingDB", name]); return collectionsDb; },
  },
};
let exit = 0;
try {
  vm.runInNewContext(fs.readFileSync(scriptPath, "utf8"), context);
} catch (error) {
  exit = error instanceof Quit ? Number(error.message) : 2;
}
process.stdout.write(JSON.stringify({ exit, calls }));
"""

NOT_INITIALIZED = {"code": 94, "codeName": "NotYetInitialized"}


def run_init(**scenario: Any) -> tuple[int, list[list[Any]]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot execute init-replica-set.js offline")
    scenario.setdefault("env", {})
    scenario.setdefault("collections", [])
    scenario.setdefault("hello", {"isWritablePrimary": True})
    result = subprocess.run(
        [node, "-e", NODE_HARNESS, str(INIT_REPLICA_SET), json.dumps(scenario)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    outcome = json.loads(result.stdout)
    return outcome["exit"], outcome["calls"]


def calls_named(calls: list[list[Any]], name: str) -> list[list[Any]]:
    return [call for call in calls if call[0] == name]


def test_fresh_member_initiates_the_replica_set_and_reports_unhealthy() -> None:
    exit_code, calls = run_init(
        statusError=NOT_INITIALIZED,
        hello={"isWritablePrimary": False},
        env={"RS_NAME": "rs0", "RS_MEMBERS": "mongo-0.mongo:27017, mongo-1.mongo:27017"},
    )
    (initiate,) = calls_named(calls, "initiate")
    assert initiate[1] == {
        "_id": "rs0",
        "members": [
            {"_id": 0, "host": "mongo-0.mongo:27017", "priority": 2},
            {"_id": 1, "host": "mongo-1.mongo:27017", "priority": 1},
        ],
    }
    assert exit_code == 1, "not healthy until a primary exists"
    assert not calls_named(calls, "createCollection")


def test_primary_enables_pre_images_where_missing() -> None:
    exit_code, calls = run_init(
        collections=[
            {"name": "slots", "options": {}},
            {"name": "bookings", "options": {"changeStreamPreAndPostImages": {"enabled": True}}},
        ],
        env={"SLOTSTREAM_DB": "slotstream"},
    )
    assert exit_code == 0
    assert not calls_named(calls, "initiate"), "an initiated set is left alone"
    assert calls_named(calls, "getSiblingDB") == [["getSiblingDB", "slotstream"]]
    assert calls_named(calls, "runCommand") == [
        ["runCommand", {"collMod": "slots", "changeStreamPreAndPostImages": {"enabled": True}}]
    ]
    assert calls_named(calls, "createCollection") == [
        ["createCollection", "notifications", {"changeStreamPreAndPostImages": {"enabled": True}}]
    ]


def test_on_a_secondary_the_work_goes_to_the_primary() -> None:
    exit_code, calls = run_init(
        hello={"isWritablePrimary": False, "primary": "mongo-1.mongo:27017"},
        env={"PRE_IMAGE_COLLECTIONS": "slots"},
    )
    assert exit_code == 0
    assert calls_named(calls, "connect") == [
        ["connect", "mongodb://mongo-1.mongo:27017/slotstream?directConnection=true"]
    ]
    assert [call[1] for call in calls_named(calls, "createCollection")] == ["slots"]


def test_waits_for_a_primary_then_gives_up() -> None:
    exit_code, calls = run_init(hello={"isWritablePrimary": False}, env={"WAIT_SECONDS": "5"})
    assert exit_code == 1
    assert any("no primary" in str(call[1]) for call in calls_named(calls, "print"))


def test_other_errors_are_not_mistaken_for_a_fresh_member() -> None:
    exit_code, calls = run_init(statusError={"code": 13, "codeName": "Unauthorized"})
    assert exit_code == 2
    assert not calls_named(calls, "initiate")
