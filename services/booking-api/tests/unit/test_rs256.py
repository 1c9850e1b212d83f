"""RS256: the API verifies with a public key only; tokens are signed elsewhere."""

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.auth import JwtSettings, Role, mint_token


async def test_rs256_tokens_are_verified_with_the_public_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    verifying = JwtSettings(algorithm="RS256", public_key=public_pem)
    signing = JwtSettings(
        algorithm="RS256", public_key=public_pem, private_key=SecretStr(private_pem)
    )
    app = create_app(Settings(storage="memory", jwt=verifying), storage=MemoryStorage())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://booking") as client:
        good = mint_token(signing, "s1", Role.STUDENT)
        ok = await client.get("/api/users/me/bookings", headers={"Authorization": f"Bearer {good}"})
        assert ok.status_code == 200
        forged = mint_token(
            JwtSettings(secret=SecretStr("another-hs256-secret-4f9a1c7e2b8d6053")),
            "s1",
            Role.STUDENT,
        )
        refused = await client.get(
            "/api/users/me/bookings", headers={"Authorization": f"Bearer {forged}"}
        )
        assert refused.status_code == 401
