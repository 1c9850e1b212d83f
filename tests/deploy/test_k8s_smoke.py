"""The booking-to-SSE smoke through a real cluster's Gateway (CI job `k8s-smoke`: kind,
Strimzi, Envoy Gateway, the dev overlay). Opt-in: SLOTSTREAM_K8S_SMOKE_URL is where the
Gateway answers (a port-forward), SLOTSTREAM_K8S_SMOKE_HOST the listener's host name and
SLOTSTREAM_K8S_SMOKE_KEY the Ed25519 private key generate-secrets.sh wrote."""

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
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


@pytest.mark.timeout(120)
def test_writes_above_the_rate_get_the_edges_429_from_the_gateway() -> None:
    """Envoy Gateway's per-client rate limit (BackendTrafficPolicy slotstream-api): of 20
    concurrent POST /api/stream-tickets from one address, more than the 5 per second go
    through only as 429 problem+json with Retry-After, like the edge's; the rest reach the
    booking-api (401 without a token: no ticket is issued)."""
    host = {"Host": os.environ.get("SLOTSTREAM_K8S_SMOKE_HOST", "slotstream.local")}
    with httpx.Client(base_url=os.environ["SLOTSTREAM_K8S_SMOKE_URL"], timeout=10) as client:

        def post(_: int) -> httpx.Response:
            return client.post("/api/stream-tickets", headers=host)

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(post, range(20)))
    limited = [answer for answer in answers if answer.status_code == 429]
    assert limited, [answer.status_code for answer in answers]
    assert {answer.status_code for answer in answers} <= {401, 429}
    for answer in limited:
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"] == "2"
        assert answer.json()["status"] == 429
