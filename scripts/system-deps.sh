#!/usr/bin/env bash
# Ensure Debian packages that tests, the demo or the benchmarks need are present.
# Usage: scripts/system-deps.sh COMMAND=PACKAGE ...   (e.g. nginx=nginx chromium=chromium)
# Installs missing ones non-interactively when running as root; otherwise says what to install.
set -euo pipefail
missing=()
for pair in "$@"; do
  check=${pair%%=*}
  pkg=${pair#*=}
  if [[ "$check" == /* ]]; then
    [[ -e "$check" ]] || missing+=("$pkg")
  else
    command -v "$check" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "system-deps: missing Debian packages: ${missing[*]}" >&2
  echo "system-deps: install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
