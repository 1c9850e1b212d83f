"""docker-compose.yml, checked by the real Compose v2 binary (`config -q`) and then by
what the stack needs to start in the right order and come up working."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    ALL_PROFILES,
    REPO,
    TEST_JWT_SECRET,
    compose_env,
    load_compose_model,
    run_compose,
)

pytestmark = pytest.mark.deploy

Services = dict[str, dict[str, Any]]
ONE_SHOT = {"kafka-init", "seed", "kcat"}
GATEWAYS = ("push-gateway-1", "push-gateway-2")


@pytest.mark.parametrize("profiles", [(), *((profile,) for profile in ALL_PROFILES), ALL_PROFILES])
def test_compose_binary_accepts_the_file(profiles: tuple[str, ...]) -> None:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(*flags, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_the_jwt_secret_is_required_from_the_environment() -> None:
    env = compose_env()
    del env["SLOTSTREAM_JWT_SECRET"]
    result = run_compose("config", "-q", env=env)
    assert result.returncode != 0
    assert "SLOTSTREAM_JWT_SECRET" in result.stderr


def test_the_secret_reaches_api_gateways_and_seed(compose_services: Services) -> None:
    for name, variable in [
        ("booking-api", "BOOKING_API_JWT__SECRET"),
        ("push-gateway-1", "GATEWAY_JWT__SECRET"),
        ("push-gateway-2", "GATEWAY_JWT__SECRET"),
        ("seed", "BOOKING_API_JWT__SECRET"),
    ]:
        assert compose_services[name]["environment"][variable] == TEST_JWT_SECRET, name
    for name, service in compose_services.items():
        for variable, value in (service.get("environment") or {}).items():
            if value == TEST_JWT_SECRET:
                assert variable.endswith("JWT__SECRET"), f"{name}: {variable}"


def test_default_services_and_profiles() -> None:
    default = set(load_compose_model()["services"])
    assert default == {
        "mongo",
        "kafka",
        "kafka-init",
        "booking-api",
        "change-publisher",
        *GATEWAYS,
        "edge",
    }
    assert set(load_compose_model("demo")["services"]) - default == {"seed"}
    assert set(load_compose_model("observability")["services"]) - default == {
        "prometheus",
        "grafana",
    }
    assert set(load_compose_model("tools")["services"]) - default == {"kcat"}


def test_long_running_services_have_healthchecks(compose_services: Services) -> None:
    for name, service in compose_services.items():
        if name in ONE_SHOT:
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck, name
        assert healthcheck["test"], name
        assert not healthcheck.get("disable"), name


def test_start_order_waits_for_health_and_for_the_init_jobs(compose_services: Services) -> None:
    for name, service in compose_services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert condition["condition"] == expected, f"{name} → {dependency}"
    depends = {name: set(s.get("depends_on") or {}) for name, s in compose_services.items()}
    assert {"mongo"} <= depends["booking-api"]
    assert {"mongo", "kafka-init"} <= depends["change-publisher"]
    for gateway in GATEWAYS:
        assert {"kafka-init", "booking-api"} <= depends[gateway]
    assert {"booking-api", *GATEWAYS} <= depends["edge"]
    assert depends["kafka-init"] == {"kafka"}
    assert "booking-api" in depends["seed"]


def test_mongo_is_a_self_initialising_replica_set(compose_services: Services) -> None:
    mongo = compose_services["mongo"]
    assert re.fullmatch(r"mongo:\d+\.\d+", mongo["image"])
    command = mongo["command"]
    replica_set = command[command.index("--replSet") + 1]
    environment = mongo["environment"]
    assert environment["RS_NAME"] == replica_set
    assert environment["RS_MEMBERS"] == "mongo:27017"
    mounts = {v["target"]: v for v in mongo["volumes"]}
    assert mounts["/data/db"]["type"] == "volume"
    script = mounts["/opt/slotstream/init-replica-set.js"]
    assert script["source"] == str(REPO / "deploy" / "k8s" / "base" / "init-replica-set.js")
    assert script["read_only"] is True
    assert "/opt/slotstream/init-replica-set.js" in mongo["healthcheck"]["test"]
    # Clients name the same replica set.
    for name, variable in [
        ("booking-api", "BOOKING_API_MONGO_URL"),
        ("change-publisher", "PUBLISHER_MONGO_URL"),
    ]:
        url = compose_services[name]["environment"][variable]
        assert url == f"mongodb://mongo:27017/?replicaSet={replica_set}", name


def test_kafka_runs_kraft_with_a_volume(compose_services: Services) -> None:
    kafka = compose_services["kafka"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"])
    environment = kafka["environment"]
    assert set(environment["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in environment)
    assert environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    mounts = {v["target"]: v for v in kafka["volumes"]}
    assert mounts[environment["KAFKA_LOG_DIRS"]]["type"] == "volume"
    assert "kafka:9092" in environment["KAFKA_ADVERTISED_LISTENERS"]


def test_kafka_init_is_a_one_shot_running_the_topic_script(compose_services: Services) -> None:
    init = compose_services["kafka-init"]
    assert init["image"] == compose_services["kafka"]["image"]
    assert init["restart"] == "no"
    script = init["entrypoint"][-1]
    mounts = {v["target"]: v["source"] for v in init["volumes"]}
    assert mounts[script] == str(REPO / "deploy" / "kafka" / "create-topics.sh")
    assert init["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    for variable in ("TOPIC_PARTITIONS", "TOPIC_REPLICATION_FACTOR", "SCHEDULE_RETENTION_MS"):
        assert variable in init["environment"]


def test_topic_settings_come_from_the_environment() -> None:
    services = load_compose_model()["services"]
    assert services["kafka-init"]["environment"]["TOPIC_PARTITIONS"] == "6"
    env = compose_env(TOPIC_PARTITIONS="12", DEADLETTER_RETENTION_MS="86400000")
    result = run_compose("config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    assert '"TOPIC_PARTITIONS": "12"' in result.stdout
    assert '"DEADLETTER_RETENTION_MS": "86400000"' in result.stdout


def test_two_publishers_and_two_gateways(compose_services: Services) -> None:
    assert compose_services["change-publisher"]["deploy"]["replicas"] == 2
    instance_ids = set()
    for gateway in GATEWAYS:
        service = compose_services[gateway]
        assert service["image"] == compose_services[GATEWAYS[0]]["image"]
        assert service["environment"]["GATEWAY_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert service["environment"]["GATEWAY_BOOKING_API_URL"] == "http://booking-api:8000"
        instance_ids.add(service["environment"]["GATEWAY_INSTANCE_ID"])
    assert len(instance_ids) == len(GATEWAYS), "presence counts need distinct instance ids"


def test_edge_fronts_both_gateways_on_8080(compose_services: Services) -> None:
    edge = compose_services["edge"]
    environment = edge["environment"]
    upstreams = {environment["GATEWAY_UPSTREAM_1"], environment["GATEWAY_UPSTREAM_2"]}
    expected = {f"{g}:{compose_services[g]['environment']['GATEWAY_PORT']}" for g in GATEWAYS}
    assert upstreams == expected
    api_port = compose_services["booking-api"]["environment"]["BOOKING_API_PORT"]
    assert environment["BOOKING_API_UPSTREAM"] == f"booking-api:{api_port}"
    (port,) = edge["ports"]
    assert (port["published"], port["target"]) == ("8080", 8080)
    # Every ${VAR} the edge templates use is set (envsubst would leave it raw otherwise).
    # Comments are skipped: a raw ${NAME} there is harmless.
    lines = [
        line
        for template in (REPO / "deploy" / "edge").glob("*.template")
        for line in template.read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    used = {v for line in lines for v in re.findall(r"\$\{([A-Z0-9_]+)\}", line)}
    assert {"GATEWAY_UPSTREAM_1", "GATEWAY_UPSTREAM_2", "BOOKING_API_UPSTREAM"} <= used
    assert used <= set(environment), used - set(environment)


def test_services_run_unprivileged_and_read_only(compose_services: Services) -> None:
    for name in ("booking-api", "change-publisher", *GATEWAYS, "edge", "seed"):
        service = compose_services[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_every_image_is_pinned(compose_services: Services) -> None:
    for name, service in compose_services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image}"
        assert tag != "latest", f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image}"


def test_seed_shares_the_demo_folder_the_edge_serves(compose_services: Services) -> None:
    seed, edge = compose_services["seed"], compose_services["edge"]
    assert seed["image"] == compose_services["booking-api"]["image"]
    demo_dir = edge["environment"]["DEMO_DATA_DIR"]
    seed_mounts = {v["target"]: v for v in seed["volumes"]}
    edge_mounts = {v["target"]: v for v in edge["volumes"]}
    assert seed_mounts[demo_dir]["source"] == edge_mounts[demo_dir]["source"]
    assert edge_mounts[demo_dir]["read_only"] is True
    assert f"{demo_dir}/demo-users.json" in seed["command"][0]


FAKE_SEED = """#!/bin/sh
printf '%s\\n' "$@" > "$ARGS_FILE"
[ "$SEED_FAILS" = 1 ] && exit 1
echo '{"users": [{"id": "student-1", "role": "student", "name": "A", "token": "t"}]}'
"""


@pytest.mark.parametrize("fails", [False, True])
def test_seed_command_publishes_the_users_only_on_success(
    compose_services: Services, tmp_path: Path, fails: bool
) -> None:
    seed = compose_services["seed"]
    assert seed["entrypoint"] == ["/bin/sh", "-c"]
    demo_dir = compose_services["edge"]["environment"]["DEMO_DATA_DIR"]
    command = seed["command"][0].replace(demo_dir, str(tmp_path))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "slotstream-seed").write_text(FAKE_SEED)
    (bin_dir / "slotstream-seed").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "ARGS_FILE": str(tmp_path / "args"),
        "SEED_FAILS": "1" if fails else "0",
    }
    result = subprocess.run(["/bin/sh", "-c", command], env=env, check=False, timeout=10)
    published = tmp_path / "demo-users.json"
    if fails:
        assert result.returncode != 0, "a failed seed must fail the service"
        assert not published.exists()
    else:
        assert result.returncode == 0
        assert json.loads(published.read_text())["users"][0]["id"] == "student-1"
    # The arguments are the real CLI's.
    args = (tmp_path / "args").read_text().split()
    usage = subprocess.run(
        [str(Path(sys.executable).parent / "slotstream-seed"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for option in (arg for arg in args if arg.startswith("--")):
        assert f"{option} " in usage, option
    assert args[args.index("--api") + 1] == "http://booking-api:8000"


def test_env_example_documents_every_variable() -> None:
    compose_text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}", compose_text))
    example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.MULTILINE))
    assert used <= documented, used - documented
    # The example never carries a usable secret: the required one is left empty.
    assert re.search(r"^SLOTSTREAM_JWT_SECRET=$", example, re.MULTILINE)


@pytest.mark.parametrize("profiles", [(), ("demo",), ("demo", "observability")])
def test_up_wait_succeeds_with_one_shot_services(profiles: tuple[str, ...]) -> None:
    """`docker compose up --wait` treats an exited container as a failure unless a running
    service depends on it with `service_completed_successfully`."""
    services: Services = load_compose_model(*profiles)["services"]
    adopted = {
        dependency
        for service in services.values()
        for dependency, condition in (service.get("depends_on") or {}).items()
        if condition["condition"] == "service_completed_successfully"
    }
    one_shots = {name for name, service in services.items() if not service.get("healthcheck")}
    assert one_shots <= adopted, one_shots - adopted


def test_slotstream_images_are_built_never_pulled(compose_services: Services) -> None:
    """A public image with the same name must never replace what the checkout builds."""
    for name, service in compose_services.items():
        if not service["image"].startswith("slotstream/"):
            continue
        expected = "build" if "build" in service else "never"
        assert service.get("pull_policy") == expected, name


def test_env_example_holds_the_defaults(tmp_path: Path) -> None:
    """Copied with a secret filled in, .env.example changes nothing: its values are the
    file's defaults, so the documentation cannot drift from the stack."""
    example = (REPO / ".env.example").read_text()
    env_file = tmp_path / ".env"
    env_file.write_text(
        example.replace("SLOTSTREAM_JWT_SECRET=\n", f"SLOTSTREAM_JWT_SECRET={TEST_JWT_SECRET}\n")
    )
    profiles = [arg for profile in ALL_PROFILES for arg in ("--profile", profile)]
    env = compose_env()
    del env["SLOTSTREAM_JWT_SECRET"]
    from_example = run_compose(*profiles, "config", "--format", "json", env=env, env_file=env_file)
    assert from_example.returncode == 0, from_example.stderr
    assert json.loads(from_example.stdout) == load_compose_model(*ALL_PROFILES)
