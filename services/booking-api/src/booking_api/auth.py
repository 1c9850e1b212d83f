"""Bearer token verification with a small cache: the signature of a token is checked once,
then the verified principal is reused until the token expires."""

import time

from slotstream_contracts.auth import (
    InvalidToken,
    JwtSettings,
    Principal,
    VerifiedToken,
    verify_token_claims,
)


class TokenVerifier:
    def __init__(self, settings: JwtSettings, max_cached: int = 10_000) -> None:
        self._settings = settings
        self._max_cached = max_cached
        self._cache: dict[str, VerifiedToken] = {}

    def verify(self, token: str) -> Principal:
        """The token's principal; ``InvalidToken`` when it is malformed, forged or expired."""
        return self.verify_claims(token).principal

    def verify_claims(self, token: str) -> VerifiedToken:
        """The token's principal and expiry (same checks as :meth:`verify`)."""
        cached = self._cache.get(token)
        if cached is not None:
            if time.time() < cached.expires_at + self._settings.leeway_seconds:
                return cached
            del self._cache[token]
        verified = verify_token_claims(token, self._settings)
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        self._cache[token] = verified
        return verified


__all__ = ["InvalidToken", "TokenVerifier"]
