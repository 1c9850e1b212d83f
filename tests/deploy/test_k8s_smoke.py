"""The booking-to-SSE smoke through a real cluster's Gateway (CI job `k8s-smoke`: kind,
Strimzi, Envoy Gateway, the dev overlay). Opt-in: SLOTSTREAM_K8S_SMOKE_URL is where the
Gateway answers (a port-forward), SLOTSTREAM_K8S_SMOKE_HOST the listener's host name and
SLOTSTREAM_K8S_SMOKE_KEY the Ed25519 private key generate-secrets.sh wrote."""

import os
from datetime import timedelta
from pathlib import Path

import pytest

from slotstream_contracts.auth import JwtSettings, Role, mint_token
from tests.deploy.smoke import book_and_watch_the_stream

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(
        not os.environ.get("SLOTSTREAM_K8S_SMOKE_URL"),
        reason="set SLOTSTREAM_K8S_SMOKE_URL (a cluster with the dev overlay) to run it",
    ),
]


@pytest.mark.timeout(600)
def test_a_booking_reaches_the_stream_through_the_gateway() -> None:
    key = Path(os.environ["SLOTSTREAM_K8S_SMOKE_KEY"]).read_text()
    settings = JwtSettings.model_validate(
        {"algorithm": "EdDSA", "private_key": key, "issuer": "slotstream", "audience": "slotstream"}
    )

    def token(user_id: str, role: Role) -> str:
        return mint_token(settings, user_id, role, ttl=timedelta(minutes=10))

    book_and_watch_the_stream(
        os.environ["SLOTSTREAM_K8S_SMOKE_URL"],
        token,
        {"Host": os.environ.get("SLOTSTREAM_K8S_SMOKE_HOST", "slotstream.local")},
    )
