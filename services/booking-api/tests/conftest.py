"""Fixtures shared by the booking-api tests: settings, tokens, the app on any storage."""

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from booking_api.ports import Storage
from slotstream_contracts.auth import JwtSettings, Role, mint_token

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
#: ``/internal/*`` fails closed: every test app has a token, and ``client`` sends it.
INTERNAL_TOKEN = "internal-token-0123456789-abcdefghijklmnop"
TokenFactory = Callable[..., str]
AuthHeaders = Callable[..., dict[str, str]]


@pytest.fixture
def jwt_settings() -> JwtSettings:
    return JwtSettings(secret=SecretStr(SECRET))


@pytest.fixture
def settings(jwt_settings: JwtSettings) -> Settings:
    return Settings(storage="memory", jwt=jwt_settings, internal_token=SecretStr(INTERNAL_TOKEN))


@pytest.fixture
def token(jwt_settings: JwtSettings) -> TokenFactory:
    def mint(sub: str, role: str = "student", name: str | None = None) -> str:
        return mint_token(jwt_settings, sub, Role(role), name)

    return mint


@pytest.fixture
def auth(token: TokenFactory) -> AuthHeaders:
    """``auth("s1")`` → headers of student s1; ``auth("i1", "instructor")`` etc."""

    def headers(sub: str, role: str = "student", name: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(sub, role, name)}"}

    return headers


@pytest.fixture
def memory_storage() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def storage(memory_storage: MemoryStorage) -> Storage:
    """The storage the app tests run on (the contract suite overrides this per backend)."""
    return memory_storage


@pytest.fixture
async def client(settings: Settings, storage: Storage) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, storage=storage)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://booking",
        headers={"X-Internal-Token": INTERNAL_TOKEN},
    ) as c:
        yield c


@pytest.fixture
def future() -> Callable[..., str]:
    """``future(days=2, hours=9)`` → an ISO 8601 string that far ahead, whole hours, UTC."""
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    def at(days: float = 1, hours: float = 0, minutes: float = 0) -> str:
        return (base + timedelta(days=days, hours=hours, minutes=minutes)).isoformat()

    return at
