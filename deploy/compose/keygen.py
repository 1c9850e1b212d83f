"""One-shot secret generator of the Compose stack (service `keygen`).

Writes, once, into the `secrets` volume (mounted at SECRETS_DIR, /run/slotstream):

    public/jwt-public.pem            Ed25519 public key: booking-api and gateways verify
    seed/jwt-private.pem             Ed25519 private key: only the seed mints tokens
    booking-api/internal-token       guards /internal/* (stream-ticket redemption)
    booking-api/mongo-url            mongodb://booking-api:<password>@…
    change-publisher/mongo-url       mongodb://change-publisher:<password>@…
    change-publisher/kafka-password  SCRAM-SHA-512 password of Kafka user change-publisher
    push-gateway/internal-token      the same token, presented to the booking-api
    push-gateway/kafka-password      SCRAM-SHA-512 password of Kafka user push-gateway
    mongo/keyfile                    replica-set keyfile (internal authentication)
    mongo/<user>-password            admin, booking-api, change-publisher
    kafka/<user>-password            admin, change-publisher, push-gateway

Each folder belongs to the uid of the one container that reads it (0500/0400), so a
gateway cannot read the signing key or another service's passwords. A value is generated
only when its file does not exist yet (restarts keep every secret), unless the
environment overrides it (SLOTSTREAM_JWT_PRIVATE_KEY as PEM, SLOTSTREAM_INTERNAL_TOKEN,
SLOTSTREAM_MONGO_<USER>_PASSWORD, SLOTSTREAM_KAFKA_<USER>_PASSWORD): then the file is
rewritten with that value on every start. No value is ever printed.

Runs as root in the booking-api image (Python + cryptography); stdlib otherwise.
"""

import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

#: Who reads each folder (uid:gid), matching `user:` in docker-compose.yml and the images.
OWNERS: dict[str, tuple[int, int]] = {
    "public": (0, 0),
    "seed": (10001, 10001),
    "booking-api": (10010, 10001),
    "change-publisher": (10020, 10001),
    "push-gateway": (10030, 10001),
    "mongo": (999, 999),
    "kafka": (1000, 1000),
}
MONGO_USERS = ("admin", "booking-api", "change-publisher")
KAFKA_USERS = ("admin", "change-publisher", "push-gateway")


def override(name: str) -> str | None:
    """The operator's value from the environment (.env), if any (empty means none)."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_name(kind: str, user: str) -> str:
    return f"SLOTSTREAM_{kind}_{user.upper().replace('-', '_')}_PASSWORD"


class Writer:
    def __init__(self, root: Path, chown: bool) -> None:
        self.root = root
        self.chown = chown

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        self._own(path, name, 0o555 if name == "public" else 0o500)
        return path

    def _own(self, path: Path, folder: str, mode: int) -> None:
        if self.chown:
            os.chown(path, *OWNERS[folder])
        path.chmod(mode)

    def value(
        self, folder: str, name: str, generate: Callable[[], str], given: str | None = None
    ) -> str:
        """The file's value: `given` (rewritten), the existing one, or a new one."""
        path = self.folder(folder) / name
        if given is None and path.exists():
            return path.read_text()
        value = given if given is not None else generate()
        temporary = path.with_name(f".{name}.tmp")
        temporary.write_text(value)
        self._own(temporary, folder, 0o444 if folder == "public" else 0o400)
        temporary.replace(path)
        return value


def password() -> str:
    # Hex: safe inside a MongoDB URL, a JAAS string and a shell word without quoting.
    return secrets.token_hex(32)


def new_private_key() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_of(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def mongo_url(user: str, secret: str) -> str:
    hosts = os.environ.get("MONGO_HOSTS", "mongo:27017")
    replica_set = os.environ.get("MONGO_REPLICA_SET", "rs0")
    database = os.environ.get("MONGO_DB", "slotstream")
    return f"mongodb://{user}:{secret}@{hosts}/{database}?replicaSet={replica_set}&authSource=admin"


def main() -> int:
    root = Path(os.environ.get("SECRETS_DIR", "/run/slotstream"))
    writer = Writer(root, chown=os.geteuid() == 0)
    private = writer.value(
        "seed", "jwt-private.pem", new_private_key, override("SLOTSTREAM_JWT_PRIVATE_KEY")
    )
    writer.value("public", "jwt-public.pem", lambda: "", public_key_of(private))
    token = writer.value(
        "booking-api", "internal-token", password, override("SLOTSTREAM_INTERNAL_TOKEN")
    )
    writer.value("push-gateway", "internal-token", lambda: token, token)
    writer.value(
        "mongo", "keyfile", lambda: secrets.token_urlsafe(96).replace("-", "+").replace("_", "/")
    )
    mongo = {
        user: writer.value("mongo", f"{user}-password", password, override(env_name("MONGO", user)))
        for user in MONGO_USERS
    }
    for user in ("booking-api", "change-publisher"):
        writer.value(user, "mongo-url", lambda: "", mongo_url(user, mongo[user]))
    kafka = {
        user: writer.value("kafka", f"{user}-password", password, override(env_name("KAFKA", user)))
        for user in KAFKA_USERS
    }
    for user in ("change-publisher", "push-gateway"):
        writer.value(user, "kafka-password", lambda: "", kafka[user])
    sys.stderr.write(f"keygen: secrets ready in {root} (values are never printed)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
