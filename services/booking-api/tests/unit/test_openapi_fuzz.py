"""Property test over the OpenAPI document: no generated input yields a 5xx, and every
response conforms to the documented status codes, media types and schemas."""

from typing import Any

import hypothesis
import pytest
import schemathesis
from pydantic import SecretStr
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.auth import JwtSettings, Role, mint_token

SECRET = "fuzz-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
JWT = JwtSettings(secret=SecretStr(SECRET))
app = create_app(Settings(storage="memory", jwt=JWT), storage=MemoryStorage())
schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
ADMIN = {"Authorization": "Bearer " + mint_token(JWT, "root", Role.ADMIN, "Root")}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@hypothesis.settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_input_gives_a_server_error(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(headers=ADMIN, checks=CHECKS)


@pytest.mark.parametrize("headers", [{}, ADMIN])
def test_the_schema_documents_every_route(headers: dict[str, str]) -> None:
    paths = set(schema.raw_schema["paths"])
    assert {
        "/api/instructors",
        "/api/instructors/{instructor_id}/schedule",
        "/api/instructors/{instructor_id}/slots",
        "/api/instructors/{instructor_id}/slots:batch",
        "/api/instructors/{instructor_id}/bookings",
        "/api/slots/{slot_id}",
        "/api/bookings",
        "/api/bookings/{booking_id}",
        "/api/users/me/bookings",
        "/api/users/me/notifications",
        "/api/users/me/notifications/{notification_id}/read",
        "/api/stream-tickets",
    } == paths
    assert headers is not None
