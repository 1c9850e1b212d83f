"""``slotstream-token``: mint a bearer token for local use.

    slotstream-token --sub i1 --role instructor --name "Ada"

The key comes from the booking-api's own settings: ``BOOKING_API_JWT__ALGORITHM``
(``EdDSA``, ``ES256``, ``RS256`` or ``HS256``) with ``BOOKING_API_JWT__PRIVATE_KEY_FILE``
(or ``__PRIVATE_KEY``), or ``BOOKING_API_JWT__SECRET`` / ``--secret`` for HS256; the
token carries ``BOOKING_API_JWT__ISSUER`` and ``__AUDIENCE`` when they are set.
"""

import argparse
import sys
from datetime import timedelta

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from slotstream_contracts.auth import JwtSettings, Role, mint_token
from slotstream_contracts.ids import is_valid_id


class _MintingEnvironment(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BOOKING_API_", env_nested_delimiter="__", extra="ignore"
    )

    jwt: JwtSettings = Field(default_factory=JwtSettings)


KEY_HINT = "set BOOKING_API_JWT__PRIVATE_KEY_FILE (or BOOKING_API_JWT__SECRET for HS256)"


def jwt_settings_from_env(secret: str | None = None) -> JwtSettings:
    """The minting settings from ``BOOKING_API_JWT__*``; ``secret`` forces HS256."""
    configured = _MintingEnvironment().jwt
    if secret is None:
        return configured
    return JwtSettings(
        secret=SecretStr(secret),
        issuer=configured.issuer,
        audience=configured.audience,
        max_lifetime_seconds=configured.max_lifetime_seconds,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="slotstream-token", description=__doc__.split("\n")[0])
    parser.add_argument("--sub", required=True, help="user id (an instructor's is their id)")
    parser.add_argument("--role", required=True, choices=[r.value for r in Role])
    parser.add_argument("--name", default=None, help="display name")
    parser.add_argument("--ttl-hours", type=float, default=12.0, help="lifetime (default 12)")
    parser.add_argument("--secret", default=None, help="HS256 secret (default: from env)")
    args = parser.parse_args(argv)
    if not is_valid_id(args.sub):
        parser.error("--sub must be 1-64 letters, digits, '_' or '-'")
    try:
        settings = jwt_settings_from_env(args.secret)
        token = mint_token(
            settings, args.sub, Role(args.role), args.name, timedelta(hours=args.ttl_hours)
        )
    except (ValueError, ValidationError) as exc:
        parser.error(f"cannot sign: {exc} ({KEY_HINT})")
    sys.stdout.write(token + "\n")


if __name__ == "__main__":
    main()
