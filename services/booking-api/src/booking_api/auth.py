"""Bearer token verification with a small cache: the signature of a token is checked once,
then the verified principal is reused until the token expires."""

import time

import jwt

from slotstream_contracts.auth import InvalidToken, JwtSettings, Principal, verify_token


class TokenVerifier:
    def __init__(self, settings: JwtSettings, max_cached: int = 10_000) -> None:
        self._settings = settings
        self._max_cached = max_cached
        self._cache: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        """The token's principal; ``InvalidToken`` when it is malformed, forged or expired."""
        cached = self._cache.get(token)
        if cached is not None:
            principal, expires = cached
            if time.time() < expires + self._settings.leeway_seconds:
                return principal
            del self._cache[token]
        principal = verify_token(token, self._settings)
        # The signature was just checked; reading the claims again only fetches ``exp``.
        claims = jwt.decode(token, options={"verify_signature": False})
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        self._cache[token] = (principal, float(claims["exp"]))
        return principal


__all__ = ["InvalidToken", "TokenVerifier"]
