"""Typed dependencies: the runtime wired by the composition root, and the caller."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from booking_api.adapters.memory import MemoryStorage
from booking_api.api.metrics import Metrics
from booking_api.api.problems import AuthError
from booking_api.auth import TokenVerifier
from booking_api.config import Settings
from booking_api.domain.errors import ServiceStarting
from booking_api.ports import Storage, TicketStore
from booking_api.service import BookingService
from booking_api.startup import MongoStartup
from slotstream_contracts.auth import InvalidToken, Principal


@dataclass
class Runtime:
    settings: Settings
    storage: Storage
    service: BookingService
    memory: MemoryStorage | None
    tickets: TicketStore


@dataclass
class AppParts:
    """What exists from ``create_app()`` on; ``runtime`` once the storage is open."""

    settings: Settings
    tokens: TokenVerifier
    metrics: Metrics
    #: opens the MongoDB store in the background (``runtime`` is set when it succeeded)
    startup: MongoStartup
    runtime: Runtime | None = None


# Dependencies read ``app.state`` directly instead of depending on each other: every
# dependency node costs FastAPI a resolution step on every request (the hot path counts).


async def get_parts(request: Request) -> AppParts:
    parts: AppParts = request.app.state.parts
    return parts


def open_runtime(request: Request) -> Runtime:
    """The runtime once the store is open; before, ``ServiceStarting`` (503 ``starting``:
    nothing was done)."""
    runtime: Runtime | None = request.app.state.parts.runtime
    if runtime is None:
        raise ServiceStarting("the service is starting; storage is not open yet")
    return runtime


async def get_service(request: Request) -> BookingService:
    return open_runtime(request).service


bearer = HTTPBearer(auto_error=False, description="JWT: sub, role, exp (slotstream-token)")


def authenticate(request: Request, token: str | None) -> Principal:
    """The verified caller, or ``AuthError`` (401)."""
    if token is None:
        raise AuthError("this route needs an Authorization: Bearer <token> header")
    parts: AppParts = request.app.state.parts
    try:
        return parts.tokens.verify(token)
    except InvalidToken as exc:
        raise AuthError(f"the bearer token is not valid: {exc}", error="invalid_token") from None
    except Exception:  # PyJWT raises a few non-PyJWTError types on odd input
        raise AuthError("the bearer token is not valid", error="invalid_token") from None


def authenticate_header(request: Request) -> Principal:
    """``authenticate`` reading the Authorization header directly (no dependency)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return authenticate(request, token if scheme.lower() == "bearer" and token else None)


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    return authenticate(request, None if credentials is None else credentials.credentials)


Parts = Annotated[AppParts, Depends(get_parts)]
Service = Annotated[BookingService, Depends(get_service)]
CurrentUser = Annotated[Principal, Depends(current_principal)]
