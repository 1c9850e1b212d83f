"""The init scripts run for real: create-topics.sh against a recording kafka-topics.sh,
init-replica-set.js under Node with a recording stand-in for mongosh's globals."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from slotstream_contracts import documents, topics
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
const adminDb = {
  auth: (user, password) => calls.push(["auth", user, password]),
  getRole: (name) => ((scenario.roles || []).includes(name) ? { role: name } : null),
  createRole: (role) => calls.push(["createRole", role]),
  updateRole: (name, role) => calls.push(["updateRole", name, role]),
  getUser: (name) => ((scenario.users || []).includes(name) ? { user: name } : null),
  createUser: (user) => calls.push(["createUser", user]),
  updateUser: (name, user) => calls.push(["updateUser", name, user]),
};
const collectionsDb = {
  getCollectionInfos: () => scenario.collections,
  createCollection: (name, options) => calls.push(["createCollection", name, options]),
  runCommand: (command) => calls.push(["runCommand", command]),
  getSiblingDB: (name) => adminDb,
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
    getSiblingDB: (name) => {
      calls.push(["getSiblingDB", name]);
      return name === "admin" ? adminDb : collectionsDb;
    },
  },
  require,
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


def write_passwords(folder: Path) -> dict[str, str]:
    passwords = {
        "admin": "admin-pw",
        "booking-api": "api-pw",
        "change-publisher": "publisher-pw",
    }
    for user, password in passwords.items():
        (folder / f"{user}-password").write_text(password + "\n")
    return passwords


def test_authenticates_and_creates_one_least_privilege_user_per_service(
    tmp_path: Path,
) -> None:
    write_passwords(tmp_path)
    exit_code, calls = run_init(
        env={
            "SLOTSTREAM_DB": "slotstream",
            "MONGO_ADMIN_PASSWORD_FILE": str(tmp_path / "admin-password"),
            "SERVICE_PASSWORDS_DIR": str(tmp_path),
        }
    )
    assert exit_code == 0
    assert calls_named(calls, "auth")[0] == ["auth", "admin", "admin-pw"]
    users = {call[1]["user"]: call[1] for call in calls_named(calls, "createUser")}
    assert set(users) == {"booking-api", "change-publisher"}
    assert users["booking-api"]["pwd"] == "api-pw"
    roles = {call[1]["role"]: call[1] for call in calls_named(calls, "createRole")}
    (publisher_grant,) = users["change-publisher"]["roles"]
    assert publisher_grant["db"] == "admin"
    role = roles[publisher_grant["role"]]
    by_collection = {p["resource"]["collection"]: p["actions"] for p in role["privileges"]}
    # The publisher reads the whole database (change streams, snapshots) …
    assert sorted(by_collection[""]) == ["changeStream", "find"]
    # … and writes only its own checkpoint and lease documents.
    writable = {c for c, actions in by_collection.items() if "insert" in actions}
    assert writable == {"publisher_checkpoints", "publisher_leases"}
    for privilege in role["privileges"]:
        assert privilege["resource"]["db"] == "slotstream"


def test_existing_users_get_the_current_password(tmp_path: Path) -> None:
    write_passwords(tmp_path)
    exit_code, calls = run_init(
        users=["booking-api", "change-publisher"],
        roles=["slotstreamChangePublisher"],
        env={
            "MONGO_ADMIN_PASSWORD_FILE": str(tmp_path / "admin-password"),
            "SERVICE_PASSWORDS_DIR": str(tmp_path),
        },
    )
    assert exit_code == 0
    assert not calls_named(calls, "createUser")
    assert {call[1]: call[2]["pwd"] for call in calls_named(calls, "updateUser")} == {
        "booking-api": "api-pw",
        "change-publisher": "publisher-pw",
    }


def defined(calls: list[list[Any]], create: str, update: str, key: str, name: str) -> list[Any]:
    """[position, definition] of each call that creates (`create`, named by its `key`) or
    updates (`update`, named by its first argument) `name`: both set the whole definition."""
    return [
        [position, call[1] if call[0] == create else call[2]]
        for position, call in enumerate(calls)
        if (call[0] == create and call[1][key] == name) or (call[0] == update and call[1] == name)
    ]


@pytest.mark.parametrize(
    ("users", "roles"),
    [
        pytest.param([], [], id="fresh"),
        pytest.param(
            ["booking-api", "change-publisher"], ["slotstreamChangePublisher"], id="upgrade"
        ),
        pytest.param(
            ["booking-api", "change-publisher"],
            ["slotstreamChangePublisher", "slotstreamBookingApi"],
            id="rerun",
        ),
    ],
)
def test_booking_api_may_change_only_the_notifications_ttl(
    tmp_path: Path, users: list[str], roles: list[str]
) -> None:
    """booking-api changes the TTL index's expireAfterSeconds in place with `collMod`
    (readWrite may not); nothing more: no dbAdmin, no collMod on another collection. An
    upgrade (users from before this role) and a re-run get it too, without createRole on
    an existing role (MongoDB refuses that)."""
    write_passwords(tmp_path)
    exit_code, calls = run_init(
        users=users,
        roles=roles,
        env={
            "SLOTSTREAM_DB": "slotstream",
            "MONGO_ADMIN_PASSWORD_FILE": str(tmp_path / "admin-password"),
            "SERVICE_PASSWORDS_DIR": str(tmp_path),
        },
    )
    assert exit_code == 0
    created_roles = [call[1]["role"] for call in calls_named(calls, "createRole")]
    assert not set(created_roles) & set(roles), "createRole fails for an existing role"
    ((user_at, user),) = defined(calls, "createUser", "updateUser", "user", "booking-api")
    grants = user["roles"]
    read_write = {"role": "readWrite", "db": "slotstream"}
    others = [grant for grant in grants if grant != read_write]
    assert read_write in grants, f"booking-api gets {grants}"
    assert len(others) == 1, f"booking-api gets {grants}: readWrite and one role for collMod"
    (custom,) = others
    assert custom["db"] == "admin", grants
    definitions = defined(calls, "createRole", "updateRole", "role", custom["role"])
    assert len(definitions) == 1, f"role {custom['role']} is defined {len(definitions)} times"
    ((role_at, role),) = definitions
    assert role_at < user_at, "MongoDB grants only a role that exists"
    assert (role["privileges"], role["roles"]) == (
        [
            {
                "resource": {"db": "slotstream", "collection": documents.NOTIFICATIONS},
                "actions": ["collMod"],
            }
        ],
        [],
    )


def test_the_primary_is_reached_with_credentials(tmp_path: Path) -> None:
    write_passwords(tmp_path)
    _, calls = run_init(
        hello={"isWritablePrimary": False, "primary": "mongo-1.mongo:27017"},
        env={"MONGO_ADMIN_PASSWORD_FILE": str(tmp_path / "admin-password")},
    )
    assert calls_named(calls, "connect") == [
        [
            "connect",
            "mongodb://admin:admin-pw@mongo-1.mongo:27017/slotstream"
            "?directConnection=true&authSource=admin",
        ]
    ]


# ---------------------------------------------------------------- create-users.sh

CREATE_USERS = REPO / "deploy" / "kafka" / "create-users.sh"
FAKE_KAFKA_TOOL = """#!/usr/bin/env bash
printf '%s %s\\n' "$(basename "$0")" "$*" >> "$CALLS"
"""


def run_create_users(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kafka-configs.sh", "kafka-acls.sh"):
        (bin_dir / tool).write_text(FAKE_KAFKA_TOOL)
        (bin_dir / tool).chmod(0o755)
    passwords = tmp_path / "passwords"
    passwords.mkdir()
    for user in ("change-publisher", "push-gateway"):
        (passwords / f"{user}-password").write_text(f"{user}-pw")
    calls = tmp_path / "calls.txt"
    env = {
        "PATH": "/usr/bin:/bin",
        "KAFKA_BIN_DIR": str(bin_dir),
        "KAFKA_COMMAND_CONFIG": "/tmp/admin.properties",
        "KAFKA_PASSWORDS_DIR": str(passwords),
        "CALLS": str(calls),
    }
    result = subprocess.run(
        ["bash", str(CREATE_USERS)], env=env, capture_output=True, text=True, timeout=30
    )
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_each_service_gets_a_scram_user_and_only_its_acls(tmp_path: Path) -> None:
    result, calls = run_create_users(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "-pw" not in result.stdout + result.stderr, "passwords are never printed"
    users = [call for call in calls if call.startswith("kafka-configs.sh")]
    assert len(users) == 2
    for call in users:
        assert "--command-config /tmp/admin.properties" in call
        assert "--entity-type users" in call
        assert "SCRAM-SHA-512=[iterations=8192,password=" in call
    acls: set[tuple[str, str, str]] = set()
    for call in calls:
        if call.startswith("kafka-acls.sh"):
            words = call.split()
            assert "--add" in words
            assert "--command-config" in words
            acls.add(
                (
                    words[words.index("--allow-principal") + 1],
                    words[words.index("--operation") + 1],
                    words[words.index("--topic") + 1],
                )
            )
    data = {topics.SCHEDULE_TOPIC, topics.NOTIFICATIONS_TOPIC}
    publisher = {(op, topic) for who, op, topic in acls if who == "User:change-publisher"}
    assert publisher == {
        (op, topic) for op in ("Write", "Describe") for topic in (*data, topics.DEADLETTER_TOPIC)
    }
    gateway = {(op, topic) for who, op, topic in acls if who == "User:push-gateway"}
    writes = {topic for op, topic in gateway if op == "Write"}
    assert writes == {topics.PRESENCE_TOPIC}, "gateways write only presence"
    reads = {topic for op, topic in gateway if op == "Read"}
    assert reads == {*data, topics.PRESENCE_TOPIC}
    assert {who for who, _, _ in acls} == {"User:change-publisher", "User:push-gateway"}


def test_create_topics_authenticates_when_given_a_client_config(
    tmp_path: Path, kafka_init_env: dict[str, str]
) -> None:
    result, calls = run_create_topics(
        tmp_path, kafka_init_env, KAFKA_COMMAND_CONFIG="/tmp/admin.properties"
    )
    assert result.returncode == 0, result.stderr
    assert calls
    for call in calls:
        assert call[call.index("--command-config") + 1] == "/tmp/admin.properties"
