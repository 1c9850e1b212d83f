#!/bin/sh
# Entrypoint wrapper of the Compose services: for every SECRET_FILE__<NAME>=<path> in the
# environment, export <NAME> with the file's content (a secret written by `keygen`), drop
# the SECRET_FILE__ variable, then exec the command. Settings that take a file themselves
# (GATEWAY_JWT__PUBLIC_KEY_FILE, *_KAFKA__SASL_PASSWORD_FILE) need no wrapper.
#   with-secrets.sh slotstream-booking-api
set -eu
for name in $(env | sed -n 's/^SECRET_FILE__\([A-Za-z0-9_]*\)=.*/\1/p'); do
  eval "file=\${SECRET_FILE__$name}"
  if [ ! -r "$file" ]; then
    echo "with-secrets: $name: cannot read $file (did the keygen service run?)" >&2
    exit 1
  fi
  value=$(cat "$file")
  export "$name=$value"
  unset "SECRET_FILE__$name"
done
exec "$@"
