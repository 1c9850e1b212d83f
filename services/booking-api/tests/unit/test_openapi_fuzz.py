"""Property test over the OpenAPI document: no generated input yields a 5xx, and every
response conforms to the documented status codes, media types and schemas."""

from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.routing import APIRoute
from pydantic import SecretStr
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from booking_api.adapters.memory import MemoryStorage
from booking_api.api import internal, ops, routes, tickets
from booking_api.api.responses import PROBLEM_JSON
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.auth import JwtSettings, Role, mint_token

SECRET = "fuzz-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
JWT = JwtSettings(secret=SecretStr(SECRET))
app = create_app(Settings(storage="memory", jwt=JWT), storage=MemoryStorage())
schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def bearer(sub: str, role: Role, name: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(JWT, sub, role, name)}


#: Every kind of caller: each reaches other branches (401, 403, an owner's own paths).
IDENTITIES = {
    "anonymous": {},
    "student": bearer("student-1", Role.STUDENT, "Sam"),
    "instructor": bearer("instructor-1", Role.INSTRUCTOR, "Ada"),
    "admin": bearer("root", Role.ADMIN, "Root"),
}


@schema.parametrize()
@pytest.mark.parametrize("identity", list(IDENTITIES))
@hypothesis.settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_input_gives_a_server_error(case: schemathesis.Case[Any], identity: str) -> None:
    case.call_and_validate(headers=IDENTITIES[identity], checks=CHECKS)


def test_the_schema_documents_every_public_route_and_nothing_else() -> None:
    """The documented operations are exactly the routes under /api/ of every router the
    app mounts: a public route left out of the schema, or an internal or operational one
    leaking into it, fails."""
    served = {
        (route.path, method.lower())
        for router in (routes.router, tickets.router, ops.router, internal.router)
        for route in router.routes
        if isinstance(route, APIRoute) and route.path.startswith("/api/")
        for method in route.methods or ()
    }
    documented = {
        (path, method)
        for path, operations in schema.raw_schema["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert documented == served
    assert all(path.startswith("/api/") for path, _ in documented)


def test_every_operation_documents_its_503() -> None:
    """Every API operation answers 503 problem+json with Retry-After while the service
    starts (its store not open yet) or when the store fails: a client generated from the
    schema must know it (reads included, which listed no 503)."""
    missing = [
        f"{method.upper()} {path}"
        for path, operations in schema.raw_schema["paths"].items()
        for method, operation in operations.items()
        if method in {"get", "post", "put", "patch", "delete"}
        and PROBLEM_JSON not in operation["responses"].get("503", {}).get("content", {})
    ]
    assert missing == []
