"""Fixtures for the offline deployment checks (rendered once per session)."""

from typing import Any

import pytest

from tests.deploy.support import ALL_PROFILES, K8S, OVERLAYS, Manifest, load_compose_model, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    """Every overlay, and the base, rendered by kustomize."""
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS} | {
        "base": render(K8S / "base")
    }


@pytest.fixture(scope="session")
def compose_services() -> dict[str, dict[str, Any]]:
    """Services of the normalised Compose model, every profile enabled."""
    services: dict[str, dict[str, Any]] = load_compose_model(*ALL_PROFILES)["services"]
    return services
