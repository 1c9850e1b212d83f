"""Fixtures for the offline deployment checks (rendered once per session)."""

from typing import Any

import pytest

from tests.deploy.support import (
    ALL_PROFILES,
    OVERLAYS,
    Manifest,
    load_compose_model,
    prepare_k8s,
    render,
)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    """Every overlay, and the base, rendered by kustomize (after generating what a user
    creates before applying: the overlays' secrets and prod's image digests)."""
    k8s = prepare_k8s(tmp_path_factory.mktemp("deploy"))
    return {name: render(k8s / "overlays" / name) for name in OVERLAYS} | {
        "base": render(k8s / "base"),
        "cluster": render(k8s / "cluster"),
    }


@pytest.fixture(scope="session")
def compose_services() -> dict[str, dict[str, Any]]:
    """Services of the normalised Compose model, every profile enabled."""
    services: dict[str, dict[str, Any]] = load_compose_model(*ALL_PROFILES)["services"]
    return services
