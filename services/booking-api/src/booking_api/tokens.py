"""``slotstream-token``: mint a bearer token for local use.

    slotstream-token --sub i1 --role instructor --name "Ada"

The key comes from ``--secret`` or ``BOOKING_API_JWT__SECRET`` (HS256), or
``BOOKING_API_JWT__PRIVATE_KEY`` with ``BOOKING_API_JWT__ALGORITHM=RS256``.
"""

import argparse
import os
import sys
from datetime import timedelta

from pydantic import SecretStr, ValidationError

from slotstream_contracts.auth import JwtSettings, Role, mint_token
from slotstream_contracts.ids import is_valid_id


def jwt_settings_from_env(secret: str | None = None) -> JwtSettings:
    env = os.environ
    chosen = secret or env.get("BOOKING_API_JWT__SECRET")
    return JwtSettings(
        algorithm="RS256" if env.get("BOOKING_API_JWT__ALGORITHM") == "RS256" else "HS256",
        secret=SecretStr(chosen) if chosen else None,
        private_key=(
            SecretStr(env["BOOKING_API_JWT__PRIVATE_KEY"])
            if "BOOKING_API_JWT__PRIVATE_KEY" in env
            else None
        ),
        audience=env.get("BOOKING_API_JWT__AUDIENCE") or None,
        issuer=env.get("BOOKING_API_JWT__ISSUER") or None,
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
        parser.error(f"cannot sign: {exc} (set BOOKING_API_JWT__SECRET or pass --secret)")
    sys.stdout.write(token + "\n")


if __name__ == "__main__":
    main()
