"""docker-compose.yml, checked by the real Compose v2 binary (`config -q`) and then by
what the stack needs to start in the right order and come up working."""

import json
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.devstack import nginx_version, render_template
from tests.deploy.support import (
    ALL_PROFILES,
    REPO,
    compose_env,
    load_compose_model,
    nginx_test_config,
    run_compose,
)
from tests.deploy.test_strimzi import supported_kafka_versions

pytestmark = pytest.mark.deploy

Services = dict[str, dict[str, Any]]
ONE_SHOT = {"keygen", "kafka-init", "seed", "kcat"}
GATEWAY = "push-gateway"
SECRETS_MOUNT = "/run/slotstream"


@pytest.mark.parametrize("profiles", [(), *((profile,) for profile in ALL_PROFILES), ALL_PROFILES])
def test_compose_binary_accepts_the_file(profiles: tuple[str, ...]) -> None:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(*flags, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_default_services_and_profiles() -> None:
    default = set(load_compose_model()["services"])
    assert default == {
        "keygen",
        "mongo",
        "kafka",
        "kafka-init",
        "booking-api",
        "change-publisher",
        GATEWAY,
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


@pytest.mark.parametrize(
    ("name", "port"), [("booking-api", 8000), ("change-publisher", 8001), ("push-gateway", 8002)]
)
def test_the_services_are_healthy_when_ready_not_merely_alive(
    compose_services: Services, name: str, port: int
) -> None:
    """The services serve from their first moment, before MongoDB or Kafka answer
    (``/healthz`` 200, ``/readyz`` 503): Compose's one health check must be ``/readyz``,
    so that ``depends_on: service_healthy`` (the edge waits for the gateways) and
    ``docker compose up --wait`` mean ready, not merely started."""
    test = " ".join(compose_services[name]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/readyz" in test, test


def test_start_order_waits_for_health_and_for_the_init_jobs(compose_services: Services) -> None:
    for name, service in compose_services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert condition["condition"] == expected, f"{name} → {dependency}"
    depends = {name: set(s.get("depends_on") or {}) for name, s in compose_services.items()}
    assert {"keygen", "mongo"} <= depends["booking-api"]
    assert {"keygen", "mongo", "kafka-init"} <= depends["change-publisher"]
    assert {"keygen", "kafka-init", "booking-api"} <= depends[GATEWAY]
    assert {"booking-api", GATEWAY} <= depends["edge"]
    assert depends["kafka-init"] == {"kafka"}
    assert {"keygen"} <= depends["mongo"]
    assert {"keygen"} <= depends["kafka"]
    assert "booking-api" in depends["seed"]


def test_mongo_is_a_self_initialising_replica_set_with_access_control(
    compose_services: Services,
) -> None:
    mongo = compose_services["mongo"]
    assert re.fullmatch(r"mongo:\d+\.\d+", mongo["image"])
    command = mongo["command"]
    replica_set = command[command.index("--replSet") + 1]
    assert command[command.index("--keyFile") + 1] == f"{SECRETS_MOUNT}/mongo/keyfile"
    environment = mongo["environment"]
    assert environment["RS_NAME"] == replica_set
    assert environment["RS_MEMBERS"] == "mongo:27017"
    assert environment["MONGO_INITDB_ROOT_PASSWORD_FILE"] == f"{SECRETS_MOUNT}/mongo/admin-password"
    assert "MONGO_INITDB_ROOT_PASSWORD" not in environment, "never a password in the environment"
    assert (
        environment["MONGO_ADMIN_PASSWORD_FILE"] == environment["MONGO_INITDB_ROOT_PASSWORD_FILE"]
    )
    assert environment["SERVICE_PASSWORDS_DIR"] == f"{SECRETS_MOUNT}/mongo"
    mounts = {v["target"]: v for v in mongo["volumes"]}
    assert mounts["/data/db"]["type"] == "volume"
    script = mounts["/opt/slotstream/init-replica-set.js"]
    assert script["source"] == str(REPO / "deploy" / "k8s" / "base" / "init-replica-set.js")
    assert script["read_only"] is True
    assert "/opt/slotstream/init-replica-set.js" in mongo["healthcheck"]["test"]
    # Each client connects as its own user, with a URL (password inside) from its secret file.
    for name, variable in [
        ("booking-api", "BOOKING_API_MONGO_URL"),
        ("change-publisher", "PUBLISHER_MONGO_URL"),
    ]:
        environment = compose_services[name]["environment"]
        assert variable not in environment, name
        assert environment[f"SECRET_FILE__{variable}"] == f"{SECRETS_MOUNT}/{name}/mongo-url"


def test_kafka_runs_kraft_with_sasl_scram_and_acls(compose_services: Services) -> None:
    kafka = compose_services["kafka"]
    image, _, version = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert version in supported_kafka_versions(), version
    environment = kafka["environment"]
    assert set(environment["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in environment)
    assert environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    mounts = {v["target"]: v for v in kafka["volumes"]}
    assert mounts[environment["KAFKA_LOG_DIRS"]]["type"] == "volume"
    assert "kafka:9092" in environment["KAFKA_ADVERTISED_LISTENERS"]
    protocols = dict(
        item.split(":") for item in environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    listeners = dict(item.split("://") for item in environment["KAFKA_LISTENERS"].split(","))
    for name, protocol in protocols.items():
        if protocol == "PLAINTEXT":
            # Only the KRaft controller (SCRAM is not available there), on loopback.
            assert name == environment["KAFKA_CONTROLLER_LISTENER_NAMES"]
            assert listeners[name].startswith("127.0.0.1:"), listeners[name]
        else:
            assert protocol == "SASL_PLAINTEXT", name
    assert environment["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert environment["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == "SCRAM-SHA-512"
    assert environment["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert environment["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert "User:change-publisher" not in environment["KAFKA_SUPER_USERS"]
    assert "User:push-gateway" not in environment["KAFKA_SUPER_USERS"]
    assert kafka["entrypoint"][-1] == "/opt/slotstream/kafka-start.sh"
    assert mounts["/opt/slotstream/kafka-start.sh"]["source"] == str(
        REPO / "deploy" / "compose" / "kafka-start.sh"
    )


@pytest.mark.parametrize(
    ("service", "prefix"), [("change-publisher", "PUBLISHER_"), (GATEWAY, "GATEWAY_")]
)
def test_services_authenticate_to_kafka_as_their_own_user(
    compose_services: Services, service: str, prefix: str
) -> None:
    environment = compose_services[service]["environment"]
    assert environment[f"{prefix}KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert environment[f"{prefix}KAFKA__SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert environment[f"{prefix}KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert environment[f"{prefix}KAFKA__SASL_USERNAME"] == service
    assert (
        environment[f"{prefix}KAFKA__SASL_PASSWORD_FILE"]
        == f"{SECRETS_MOUNT}/{service}/kafka-password"
    )
    assert f"{prefix}KAFKA__SASL_PASSWORD" not in environment


def test_gateways_use_apache_kafka_client_settings_not_tansus(compose_services: Services) -> None:
    """Tansu answers a fetch only at its deadline (hence 5 ms in `make demo`); Apache Kafka
    answers as soon as data arrives, so a long-poll costs no latency and saves CPU."""
    wait = int(compose_services[GATEWAY]["environment"]["GATEWAY_KAFKA__FETCH_MAX_WAIT_MS"])
    assert wait >= 100


def test_kafka_init_is_a_one_shot_running_the_topic_script(compose_services: Services) -> None:
    init = compose_services["kafka-init"]
    assert init["image"] == compose_services["kafka"]["image"]
    assert init["restart"] == "no"
    script = init["entrypoint"][-1]
    mounts = {v["target"]: v.get("source") for v in init["volumes"]}
    assert mounts[script] == str(REPO / "deploy" / "kafka" / "kafka-init.sh")
    # kafka-init.sh runs its neighbours: both are mounted beside it.
    folder = script.rsplit("/", 1)[0]
    for name in ("create-topics.sh", "create-users.sh"):
        assert mounts[f"{folder}/{name}"] == str(REPO / "deploy" / "kafka" / name)
    assert init["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert init["environment"]["KAFKA_PASSWORDS_DIR"] == f"{SECRETS_MOUNT}/kafka"
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


def test_one_gateway_service_that_scales(compose_services: Services) -> None:
    assert compose_services["change-publisher"]["deploy"]["replicas"] == 2
    assert not [name for name in compose_services if re.fullmatch(r"push-gateway-\d+", name)]
    gateway = compose_services[GATEWAY]
    assert gateway["deploy"]["replicas"] == 2
    # Nothing that would collide between replicas: no fixed name, no host port, and no
    # fixed instance id (the default is the container's hostname, unique per replica).
    assert "container_name" not in gateway
    assert not gateway.get("ports")
    assert "GATEWAY_INSTANCE_ID" not in gateway["environment"]
    assert gateway["environment"]["GATEWAY_BOOKING_API_URL"] == "http://booking-api:8000"


def test_gateway_instance_id_defaults_to_the_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from push_gateway.config import Settings

    monkeypatch.delenv("GATEWAY_INSTANCE_ID", raising=False)
    monkeypatch.setenv("GATEWAY_JWT__SECRET", secrets.token_hex(32))  # a key is required
    monkeypatch.setattr(socket, "gethostname", lambda: "3f2a9c1b7d4e")
    assert Settings().instance_id == "3f2a9c1b7d4e"


def test_scale_is_a_setting_and_a_flag() -> None:
    env = compose_env(GATEWAY_REPLICAS="4")
    result = run_compose("config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["services"][GATEWAY]["deploy"]["replicas"] == 4
    scaled = run_compose("up", "--scale", f"{GATEWAY}=4", "--dry-run", "--no-build")
    # Without a Docker engine the dry run cannot connect; the flag itself must parse.
    assert "unknown flag" not in scaled.stderr
    assert "no such service" not in scaled.stderr.lower()


def test_file_descriptor_limits_for_gateways_and_edge(compose_services: Services) -> None:
    for name in (GATEWAY, "edge"):
        nofile = compose_services[name]["ulimits"]["nofile"]
        assert nofile["soft"] >= 65536, name
        assert nofile["hard"] >= nofile["soft"], name


def test_edge_is_on_loopback_unless_told(compose_services: Services) -> None:
    edge = compose_services["edge"]
    (port,) = edge["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "8080", 8080)
    result = run_compose(
        "config", "--format", "json", env=compose_env(SLOTSTREAM_EDGE_BIND="0.0.0.0")
    )
    assert result.returncode == 0, result.stderr
    (exposed,) = json.loads(result.stdout)["services"]["edge"]["ports"]
    assert exposed["host_ip"] == "0.0.0.0"
    for name, service in compose_services.items():
        for published in service.get("ports") or []:
            assert published.get("host_ip") == "127.0.0.1", f"{name} is published beyond loopback"


def test_data_stores_are_unreachable_from_the_edge_network(compose_services: Services) -> None:
    networks = {
        name: set(service.get("networks") or {}) for name, service in compose_services.items()
    }
    edge = networks["edge"]
    assert edge
    for store in ("mongo", "kafka"):
        assert networks[store], store
        assert not networks[store] & edge, f"{store} shares a network with the edge"
    # The edge reaches what it proxies to.
    assert edge & networks["booking-api"]
    assert edge & networks[GATEWAY]
    assert compose_services["keygen"]["network_mode"] == "none"


EDGE = REPO / "deploy" / "edge"


def edge_image_variables() -> dict[str, str]:
    """ENV defaults of the edge image (the envsubst variables set in every container)."""
    text = (EDGE / "Dockerfile").read_text().replace("\\\n", " ")
    (env_line,) = [line for line in text.splitlines() if line.startswith("ENV ")]
    return dict(pair.split("=", 1) for pair in env_line.removeprefix("ENV ").split())


def render_compose_edge(compose_services: Services) -> dict[str, str]:
    """The edge's conf.d as the nginx image renders it under Compose: the image's templates,
    with Compose's bind mounts over them, envsubst'ed with the variables that are set."""
    edge = compose_services["edge"]
    templates = {path.name: path for path in EDGE.glob("*.template")}
    for mount in edge["volumes"]:
        if mount["target"].startswith("/etc/nginx/templates/"):
            templates[mount["target"].rsplit("/", 1)[1]] = Path(mount["source"])
    variables = edge_image_variables() | {k: str(v) for k, v in edge["environment"].items()}
    return {
        name.removesuffix(".template"): render_template(path.read_text(), variables)
        for name, path in templates.items()
    }


def upstream_block(config: str, name: str) -> str:
    match = re.search(rf"upstream {name} \{{(.*?)\n\}}", config, re.DOTALL)
    assert match, f"no upstream {name}"
    return match.group(1)


def test_edge_discovers_every_gateway_replica_by_dns(compose_services: Services) -> None:
    rendered = render_compose_edge(compose_services)
    for name, text in rendered.items():
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.findall(r"\$\{[A-Z0-9_]+\}", code), f"{name}: unset variable"
    block = upstream_block(rendered["slotstream.conf"], "slotstream_gateways")
    assert re.search(r"^\s*zone slotstream_gateways \d+k;", block, re.MULTILINE)
    include = re.search(r"include (\S+);", block)
    assert include
    included = rendered[Path(include.group(1)).name]
    lines = [
        line.strip()
        for line in included.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    resolver = [line for line in lines if line.startswith("resolver ")]
    assert resolver == ["resolver 127.0.0.11 valid=5s ipv6=off;"], "Docker's embedded DNS"
    servers = [line for line in lines if line.startswith("server ")]
    port = compose_services[GATEWAY]["environment"]["GATEWAY_PORT"]
    assert servers == [f"server {GATEWAY}:{port} resolve max_fails=0;"]
    # `resolve` in an upstream needs nginx >= 1.27.3 (open source).
    base = (EDGE / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0]
    version = tuple(int(x) for x in re.search(r":(\d+\.\d+\.\d+)", base).group(1).split("."))  # type: ignore[union-attr]
    assert version >= (1, 27, 3), base


def test_the_compose_edge_config_passes_nginx_t(compose_services: Services, tmp_path: Path) -> None:
    """The image's nginx.conf and the conf.d Compose renders, checked by the real nginx (-T).
    Only the host names change (nginx -t resolves them, and only Docker knows them); an
    nginx older than 1.27.3 (Debian 12 has 1.22) gets the gateway servers without
    `resolve` and the upstream's resolver lines, which it does not know yet (the version
    check above keeps the image at >= 1.27.3)."""
    nginx = shutil.which("nginx")
    assert nginx, "make test installs nginx (scripts/system-deps.sh)"
    conf_d, web, demo, temp = (tmp_path / name for name in ("conf.d", "web", "demo", "tmp"))
    for folder in (conf_d, web, demo, temp):
        folder.mkdir()
    edge = compose_services["edge"]
    environment = {k: str(v) for k, v in edge["environment"].items()} | {
        "EDGE_CONF_DIR": str(conf_d),
        "WEB_ROOT": str(web),
        "DEMO_DATA_DIR": str(demo),
        "BOOKING_API_UPSTREAM": "127.0.0.1:8000",
        "GATEWAY_UPSTREAM": "127.0.0.1:8002",
    }
    rendered = render_compose_edge(
        {**compose_services, "edge": {**edge, "environment": environment}}
    )
    runtime_resolve = nginx_version(nginx) >= (1, 27, 3)
    for name, text in rendered.items():
        if not runtime_resolve and name == "slotstream-gateways.inc":
            assert " resolve " in text
            text = "\n".join(
                line.replace(" resolve ", " ")
                for line in text.splitlines()
                if not line.startswith(("resolver ", "resolver_timeout "))
            )
        (conf_d / name).write_text(text)
    main = (EDGE / "nginx.conf").read_text()
    main = main.replace("/tmp/", f"{temp}/").replace("/var/log/nginx/", f"{temp}/")
    main = main.replace("/etc/nginx/conf.d/", f"{conf_d}/")
    (tmp_path / "nginx.conf").write_text(main)
    printed = nginx_test_config(tmp_path, tmp_path / "nginx.conf", temp / "e.log")
    # -T prints what it read: the include of conf.d really found the rendered files.
    assert "upstream slotstream_gateways" in printed
    assert "server 127.0.0.1:8002" in printed


def test_make_demo_keeps_its_two_fixed_gateways() -> None:
    variables = {"GATEWAY_UPSTREAM_1": "127.0.0.1:8101", "GATEWAY_UPSTREAM_2": "127.0.0.1:8102"}
    text = render_template((EDGE / "slotstream-gateways.inc.template").read_text(), variables)
    servers = [line for line in text.splitlines() if line.startswith("server ")]
    assert servers == [
        "server 127.0.0.1:8101 max_fails=0;",
        "server 127.0.0.1:8102 max_fails=0;",
    ]


def test_services_run_unprivileged_and_read_only(compose_services: Services) -> None:
    for name in ("keygen", "booking-api", "change-publisher", GATEWAY, "edge", "seed"):
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
    # The example never carries a usable secret: every override is left empty.
    for name in documented:
        if re.search(r"PASSWORD|TOKEN|PRIVATE_KEY|SECRET", name):
            assert re.search(rf"^{name}=$", example, re.MULTILINE), name


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
    """Copied as it is, .env.example changes nothing: its values are the file's defaults,
    so the documentation cannot drift from the stack."""
    env_file = tmp_path / ".env"
    env_file.write_text((REPO / ".env.example").read_text())
    profiles = [arg for profile in ALL_PROFILES for arg in ("--profile", profile)]
    from_example = run_compose(*profiles, "config", "--format", "json", env_file=env_file)
    assert from_example.returncode == 0, from_example.stderr
    assert json.loads(from_example.stdout) == load_compose_model(*ALL_PROFILES)


# ---------------------------------------------------------------- zero setup: secrets

SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|PRIVATE_KEY|JAAS", re.IGNORECASE)


def test_a_fresh_clone_needs_no_setting() -> None:
    """`docker compose up` on a fresh clone: no variable is required (no `:?`), and the
    model renders from an empty environment and no .env."""
    assert ":?" not in (REPO / "docker-compose.yml").read_text()
    result = run_compose(
        *[arg for profile in ALL_PROFILES for arg in ("--profile", profile)],
        "config",
        "-q",
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert result.returncode == 0, result.stderr


def test_no_secret_has_a_value_in_the_compose_model(compose_services: Services) -> None:
    """Secrets travel as files from the `secrets` volume; an environment variable with a
    secret-looking name is either a file path or an empty (not overridden) keygen input."""
    for name, service in compose_services.items():
        for variable, value in (service.get("environment") or {}).items():
            if not SECRET_NAME.search(variable):
                continue
            if variable.startswith("SECRET_FILE__") or variable.endswith(("_FILE", "_DIR")):
                assert str(value).startswith(SECRETS_MOUNT), f"{name}: {variable}"
                continue
            if name == "keygen":
                assert value == "", f"{name}: {variable} has a default"
                continue
            if name == "grafana" and variable == "GF_SECURITY_ADMIN_PASSWORD":
                assert value == "", "no default Grafana password"
                continue
            pytest.fail(f"{name}: {variable} carries a secret in the environment")


def test_secret_files_are_read_only_outside_keygen(compose_services: Services) -> None:
    for name, service in compose_services.items():
        for mount in service.get("volumes") or []:
            if mount.get("source") == "secrets":
                assert mount["target"] == SECRETS_MOUNT
                assert mount.get("read_only", False) is (name != "keygen"), name
    keygen = compose_services["keygen"]
    assert keygen["restart"] == "no"
    assert keygen["entrypoint"][-1] == "/opt/slotstream/keygen.py"
    # Only the seed gets the signing key's folder in practice (ownership, see keygen.py);
    # the verifying services name the public key only.
    for name, prefix in [("booking-api", "BOOKING_API_"), (GATEWAY, "GATEWAY_")]:
        environment = compose_services[name]["environment"]
        assert environment[f"{prefix}JWT__ALGORITHM"] == "EdDSA", name
        assert (
            environment[f"{prefix}JWT__PUBLIC_KEY_FILE"] == f"{SECRETS_MOUNT}/public/jwt-public.pem"
        )
        assert not [v for v in environment if "PRIVATE" in v], name
        assert environment[f"{prefix}JWT__ISSUER"]
        assert environment[f"{prefix}JWT__AUDIENCE"]
    seed = compose_services["seed"]["environment"]
    assert seed["BOOKING_API_JWT__PRIVATE_KEY_FILE"] == f"{SECRETS_MOUNT}/seed/jwt-private.pem"


def run_keygen(secrets: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "deploy" / "compose" / "keygen.py")],
        env={"PATH": "/usr/bin:/bin", "SECRETS_DIR": str(secrets), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_keygen_writes_every_secret_the_stack_reads(
    compose_services: Services, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    result = run_keygen(secrets)
    assert result.returncode == 0, result.stderr
    referenced = {
        str(value).removeprefix(f"{SECRETS_MOUNT}/")
        for service in compose_services.values()
        for value in (service.get("environment") or {}).values()
        if str(value).startswith(f"{SECRETS_MOUNT}/")
    }
    referenced.discard("mongo")
    referenced.discard("kafka")
    for path in referenced:
        assert (secrets / path).exists(), path
    for user in ("admin", "booking-api", "change-publisher"):
        assert (secrets / "mongo" / f"{user}-password").is_file()
    for user in ("admin", "change-publisher", "push-gateway"):
        assert (secrets / "kafka" / f"{user}-password").is_file()
    # Nothing secret in the log.
    for file in secrets.rglob("*"):
        if file.is_file():
            assert file.read_text().strip() not in result.stderr
            if file.parent.name != "public":
                assert file.stat().st_mode & 0o077 == 0, file


def test_keygen_key_pair_signs_and_verifies_and_urls_carry_the_user(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    secrets = tmp_path / "secrets"
    assert run_keygen(secrets).returncode == 0
    private = serialization.load_pem_private_key(
        (secrets / "seed" / "jwt-private.pem").read_bytes(), password=None
    )
    public = serialization.load_pem_public_key((secrets / "public" / "jwt-public.pem").read_bytes())
    assert isinstance(private, Ed25519PrivateKey)
    assert isinstance(public, Ed25519PublicKey)
    public.verify(private.sign(b"slotstream"), b"slotstream")
    token = (secrets / "booking-api" / "internal-token").read_text()
    assert len(token) >= 32
    assert (secrets / "push-gateway" / "internal-token").read_text() == token
    for user in ("booking-api", "change-publisher"):
        password = (secrets / "mongo" / f"{user}-password").read_text()
        url = (secrets / user / "mongo-url").read_text()
        assert url == (
            f"mongodb://{user}:{password}@mongo:27017/slotstream?replicaSet=rs0&authSource=admin"
        )
    for user in ("change-publisher", "push-gateway"):
        assert (secrets / user / "kafka-password").read_text() == (
            secrets / "kafka" / f"{user}-password"
        ).read_text()
    keyfile = (secrets / "mongo" / "keyfile").read_text()
    assert 6 <= len(keyfile) <= 1024
    assert re.fullmatch(r"[A-Za-z0-9+/=]+", keyfile), "the keyfile's base64 alphabet"


def test_keygen_keeps_secrets_across_restarts_and_env_overrides_win(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    assert run_keygen(secrets).returncode == 0
    before = {p: p.read_text() for p in secrets.rglob("*") if p.is_file()}
    assert run_keygen(secrets).returncode == 0
    assert {p: p.read_text() for p in secrets.rglob("*") if p.is_file()} == before
    chosen = "x" * 40
    result = run_keygen(
        secrets, SLOTSTREAM_INTERNAL_TOKEN=chosen, SLOTSTREAM_KAFKA_PUSH_GATEWAY_PASSWORD="kafka-pw"
    )
    assert result.returncode == 0, result.stderr
    assert (secrets / "booking-api" / "internal-token").read_text() == chosen
    assert (secrets / "push-gateway" / "internal-token").read_text() == chosen
    assert (secrets / "push-gateway" / "kafka-password").read_text() == "kafka-pw"
    assert (secrets / "seed" / "jwt-private.pem").read_text() == before[
        secrets / "seed" / "jwt-private.pem"
    ]


WITH_SECRETS = REPO / "deploy" / "compose" / "with-secrets.sh"


def test_with_secrets_exports_file_contents_and_runs_the_command(tmp_path: Path) -> None:
    secret = tmp_path / "mongo-url"
    secret.write_text("mongodb://booking-api:pw@mongo:27017/slotstream")
    result = subprocess.run(
        ["/bin/sh", str(WITH_SECRETS), "/bin/sh", "-c", 'echo "$BOOKING_API_MONGO_URL"; env'],
        env={"PATH": "/usr/bin:/bin", "SECRET_FILE__BOOKING_API_MONGO_URL": str(secret)},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert first == "mongodb://booking-api:pw@mongo:27017/slotstream"
    assert not [line for line in rest if line.startswith("SECRET_FILE__")]


def test_with_secrets_fails_without_the_file(tmp_path: Path) -> None:
    result = subprocess.run(
        ["/bin/sh", str(WITH_SECRETS), "/bin/true"],
        env={"PATH": "/usr/bin:/bin", "SECRET_FILE__GATEWAY_INTERNAL_TOKEN": str(tmp_path / "x")},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode != 0
    assert "GATEWAY_INTERNAL_TOKEN" in result.stderr
    assert "keygen" in result.stderr


def test_services_that_read_secrets_wait_for_keygen(compose_services: Services) -> None:
    for name, service in compose_services.items():
        reads = any(m.get("source") == "secrets" for m in service.get("volumes") or [])
        if not reads or name == "keygen":
            continue
        pending = list(service.get("depends_on") or {})
        seen: set[str] = set()
        while pending:
            dependency = pending.pop()
            if dependency in seen:
                continue
            seen.add(dependency)
            pending.extend(compose_services[dependency].get("depends_on") or {})
        assert "keygen" in seen, name


KAFKA_START = REPO / "deploy" / "compose" / "kafka-start.sh"
FAKE_STORAGE = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$CALLS"
cp "${@: -3:1}" "$CALLS.properties"
touch "$KAFKA_LOG_DIRS/meta.properties"
"""
FAKE_RUN = """#!/usr/bin/env bash
env > "$CALLS.env"
"""


def run_kafka_start(compose_services: Services, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "kafka-storage.sh").write_text(FAKE_STORAGE)
    (bin_dir / "run").write_text(FAKE_RUN)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "admin-password").write_text("admin-pw\n")
    environment = {k: str(v) for k, v in compose_services["kafka"]["environment"].items()}
    env = {
        "PATH": "/usr/bin:/bin",
        **environment,
        "SCRAM_ADMIN_PASSWORD_FILE": str(tmp_path / "admin-password"),
        "KAFKA_LOG_DIRS": str(tmp_path / "data"),
        "SLOTSTREAM_KAFKA_BIN_DIR": str(bin_dir),
        "SLOTSTREAM_KAFKA_RUN": str(bin_dir / "run"),
        "SLOTSTREAM_ADMIN_PROPERTIES": str(tmp_path / "admin.properties"),
        "CALLS": str(tmp_path / "calls"),
    }
    return subprocess.run(
        ["bash", str(KAFKA_START)], env=env, capture_output=True, text=True, timeout=30
    )


def test_kafka_start_formats_once_with_the_admin_scram_credential(
    compose_services: Services, tmp_path: Path
) -> None:
    result = run_kafka_start(compose_services, tmp_path)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "calls").read_text().splitlines()
    assert args[0] == "format"
    assert (
        args[args.index("--cluster-id") + 1]
        == compose_services["kafka"]["environment"]["CLUSTER_ID"]
    )
    assert args[args.index("--add-scram") + 1] == "SCRAM-SHA-512=[name=admin,password=admin-pw]"
    properties = (tmp_path / "calls.properties").read_text()
    assert "process.roles=broker,controller" in properties
    assert "inter.broker.listener.name=INTERNAL" in properties
    # The broker's own SASL login and the CLI's admin settings carry the same credential.
    listeners = (tmp_path / "calls.env").read_text()
    for name in ("INTERNAL", "HOST"):
        assert f"KAFKA_LISTENER_NAME_{name}_SCRAM___SHA___512_SASL_JAAS_CONFIG=" in listeners
    assert 'username="admin" password="admin-pw";' in listeners
    admin = (tmp_path / "admin.properties").read_text()
    assert "security.protocol=SASL_PLAINTEXT" in admin
    assert "sasl.mechanism=SCRAM-SHA-512" in admin
    assert (tmp_path / "admin.properties").stat().st_mode & 0o077 == 0
    assert "admin-pw" not in result.stdout + result.stderr
    # A restart finds the formatted log directory and does not format again.
    (tmp_path / "calls").unlink()
    again = run_kafka_start(compose_services, tmp_path)
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "calls").exists()


#: What apache/kafka's image leaves out of server.properties (KafkaDockerWrapper's
#: ExcludeServerPropsEnv, core/src/main/scala/kafka/docker/KafkaDockerWrapper.scala).
WRAPPER_EXCLUDED = {
    "KAFKA_VERSION",
    "KAFKA_HEAP_OPTS",
    "KAFKA_LOG4J_OPTS",
    "KAFKA_OPTS",
    "KAFKA_JMX_OPTS",
    "KAFKA_JVM_PERFORMANCE_OPTS",
    "KAFKA_GC_LOG_OPTS",
    "KAFKA_LOG4J_ROOT_LOGLEVEL",
    "KAFKA_LOG4J_LOGGERS",
    "KAFKA_TOOLS_LOG4J_LOGLEVEL",
    "KAFKA_JMX_HOSTNAME",
}


def image_server_properties(env: dict[str, str]) -> dict[str, str]:
    """server.properties as the image's KafkaDockerWrapper writes it from the environment
    (getServerConfigsFromEnv: drop every `KAFKA_`, lower-case, `_`→`.`, `...`→`-`, `..`→`_`)."""
    return {
        name.replace("KAFKA_", "")
        .lower()
        .replace("_", ".")
        .replace("...", "-")
        .replace("..", "_"): value
        for name, value in env.items()
        if name.startswith("KAFKA_") and name not in WRAPPER_EXCLUDED
    }


def read_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_kafka_is_formatted_with_the_settings_the_broker_runs_with(
    compose_services: Services, tmp_path: Path
) -> None:
    """The format step sees exactly the server.properties the image then writes (SASL,
    listeners, authorizer), and none of the script's own knobs leak into it."""
    result = run_kafka_start(compose_services, tmp_path)
    assert result.returncode == 0, result.stderr
    run_env = read_properties((tmp_path / "calls.env").read_text())
    broker = image_server_properties(run_env)
    assert read_properties((tmp_path / "calls.properties").read_text()) == broker
    assert broker["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert broker["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert broker["listener.name.internal.scram-sha-512.sasl.jaas.config"].endswith(
        'username="admin" password="admin-pw";'
    )
    assert broker["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert broker["super.users"] == "User:admin;User:ANONYMOUS"
    assert broker["log.dirs"] == str(tmp_path / "data")
    assert "heap.opts" not in broker
    assert not [key for key in broker if key.startswith(("bin.", "image.", "slotstream"))]


#: Runs keygen.py as root would, with os.chown recorded instead of done (any user can run
#: it): prints {path relative to SECRETS_DIR: [uid, gid, mode]}.
KEYGEN_AS_ROOT = """
import json, os, runpy, sys
from pathlib import Path
owners = {}
os.geteuid = lambda: 0
os.chown = lambda path, uid, gid: owners.__setitem__(str(path), (uid, gid))
try:
    runpy.run_path(sys.argv[1], run_name="__main__")
except SystemExit as stop:
    assert not stop.code, stop.code
root = Path(os.environ["SECRETS_DIR"])
report = {}
for path, (uid, gid) in owners.items():
    final = Path(path.replace("/." , "/").removesuffix(".tmp"))
    report[str(final.relative_to(root))] = [uid, gid, final.stat().st_mode & 0o777]
print(json.dumps(report))
"""


def test_keygen_hands_each_folder_to_the_uid_that_reads_it(
    compose_services: Services, tmp_path: Path
) -> None:
    """mongod runs as uid 999 (docker-library/mongo 8.0/Dockerfile: useradd --uid 999) and
    refuses a keyfile that group or others may read; apache/kafka runs as `appuser`, the
    first user Alpine's adduser makes (uid 1000, docker/jvm/Dockerfile); each service as its
    `user:`, the seed as the image's USER 10001."""
    secrets = tmp_path / "secrets"
    result = subprocess.run(
        [sys.executable, "-c", KEYGEN_AS_ROOT, str(REPO / "deploy" / "compose" / "keygen.py")],
        env={"PATH": "/usr/bin:/bin", "SECRETS_DIR": str(secrets)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    owners = json.loads(result.stdout)
    assert owners["mongo"][:2] == [999, 999]
    assert owners["mongo/keyfile"] == [999, 999, 0o400]
    assert owners["mongo"][2] == 0o500
    assert owners["kafka"][:2] == [1000, 1000]
    assert owners["kafka/admin-password"][2] == 0o400
    assert owners["seed/jwt-private.pem"][:2] == [10001, 10001]
    for service in ("booking-api", "change-publisher", "push-gateway"):
        uid, gid = (int(x) for x in compose_services[service]["user"].split(":"))
        for path, (owner, group, _) in owners.items():
            if path.split("/")[0] == service:
                assert (owner, group) == (uid, gid), path
    assert owners["public/jwt-public.pem"][2] == 0o444


def test_keygen_key_pair_is_standard_pem_for_openssl(tmp_path: Path) -> None:
    """The real openssl reads the private key as PKCS#8 Ed25519 and derives exactly the
    public key keygen wrote (what any other JWT library or operator tool expects)."""
    openssl = shutil.which("openssl")
    assert openssl, "make test installs openssl (scripts/system-deps.sh)"
    secrets_dir = tmp_path / "secrets"
    assert run_keygen(secrets_dir).returncode == 0
    private = secrets_dir / "seed" / "jwt-private.pem"
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    text = subprocess.run(
        [openssl, "pkey", "-in", str(private), "-noout", "-text_pub"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "ED25519 Public-Key" in text
    derived = subprocess.run(
        [openssl, "pkey", "-in", str(private), "-pubout"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert derived == (secrets_dir / "public" / "jwt-public.pem").read_text()
