#!/usr/bin/env bash
# Generate the secrets of one Kubernetes overlay into <overlay>/secrets/ (git-ignored),
# where the overlay's secretGenerator reads them at `kubectl apply -k` time. Nothing
# secret is committed. Existing files are kept (rerunning changes nothing); delete a file
# to rotate that value. Needs openssl.
#   deploy/k8s/generate-secrets.sh deploy/k8s/overlays/dev
# The members in the services' Mongo URLs come from <overlay>/mongo-hosts (MONGO_HOSTS
# overrides it).
#
#   jwt-private.pem / jwt-public.pem   Ed25519 pair: the cluster gets the PUBLIC key only;
#                                      keep the private one to mint tokens
#                                      (slotstream-token), or use your identity provider's
#                                      public key instead
#   internal-token                     booking-api /internal/* (the gateways present it)
#   mongo-keyfile, mongo-*-password    replica-set keyfile; admin and per-service users
#   booking-api-mongo-url, change-publisher-mongo-url   each service's own Mongo user
set -euo pipefail

overlay=${1:?usage: generate-secrets.sh <overlay-dir>}
hosts=${MONGO_HOSTS:-$(<"$overlay/mongo-hosts")}
replica_set=${MONGO_REPLICA_SET:-rs0}
database=${MONGO_DB:-slotstream}
out="$overlay/secrets"
umask 077
mkdir -p "$out"

# write NAME COMMAND...: the command's output becomes the file, unless it exists.
write() {
  local name=$1
  shift
  if [[ ! -s "$out/$name" ]]; then
    "$@" > "$out/$name.tmp"
    mv "$out/$name.tmp" "$out/$name"
  fi
}
hex() { openssl rand -hex 32 | tr -d '\n'; }

write jwt-private.pem openssl genpkey -algorithm ed25519
write jwt-public.pem openssl pkey -in "$out/jwt-private.pem" -pubout
write internal-token hex
write mongo-keyfile sh -c "openssl rand -base64 756 | tr -d '\n'"
for user in admin booking-api change-publisher; do
  write "mongo-$user-password" hex
done
for user in booking-api change-publisher; do
  password=$(<"$out/mongo-$user-password")
  write "$user-mongo-url" printf 'mongodb://%s:%s@%s/%s?replicaSet=%s&authSource=admin' \
    "$user" "$password" "$hosts" "$database" "$replica_set"
done
echo "generate-secrets: $out ready (values are never printed)" >&2
