#!/usr/bin/env bash
# Check an overlay's release-images.env before `kubectl apply -k`: every image the prod
# overlay puts into its containers must be there, each as an immutable digest reference
# `<registry>/<repository>@sha256:<64 hex>` (kustomize copies whatever the file says, so a
# tag here would run a mutable image). The release pipeline runs it after writing the file.
#   deploy/k8s/check-release-images.sh deploy/k8s/overlays/prod
# MONGO is the official image (`mongo`, or a mirror whose repository ends in `/mongo`) by
# the digest of the 8.0 tag you tested, e.g. from `docker buildx imagetools inspect mongo:8.0`.
set -euo pipefail

overlay=${1:?usage: check-release-images.sh <overlay-dir>}
file="$overlay/release-images.env"
if [[ ! -f $file ]]; then
  echo "check-release-images: $file is missing" >&2
  exit 1
fi

status=0
for name in BOOKING_API CHANGE_PUBLISHER PUSH_GATEWAY EDGE MONGO; do
  line=$(grep -E "^${name}=" "$file" || true)
  value=${line#*=}
  if [[ -z $line ]]; then
    echo "check-release-images: $name is missing" >&2
    status=1
  elif [[ ! $value =~ ^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$ ]]; then
    echo "check-release-images: $name=$value is not <repository>@sha256:<64 hex>" >&2
    status=1
  elif [[ $name == MONGO && ! ${value%@*} =~ (^|/)mongo$ ]]; then
    echo "check-release-images: MONGO must be the official mongo image, not ${value%@*}" >&2
    status=1
  fi
done
exit "$status"
