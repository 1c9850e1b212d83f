#!/usr/bin/env bash
# ruff (check + format check) and mypy --strict over every package.
# Each package is type-checked in its own run: test folders share module names.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
has_python() { [[ -n "$(find "$1" -name '*.py' -print -quit 2>/dev/null)" ]]; }

"$BIN/ruff" check .
"$BIN/ruff" format --check .
for pkg in libs/* services/*; do
  dirs=()
  for d in src tests; do has_python "$pkg/$d" && dirs+=("$d"); done
  ((${#dirs[@]})) || continue
  echo "mypy --strict $pkg: ${dirs[*]}"
  (cd "$pkg" && MYPYPATH=src "../../$BIN/mypy" --config-file ../../pyproject.toml "${dirs[@]}")
done
dirs=()
for d in tests bench scripts; do has_python "$d" && dirs+=("$d"); done
if ((${#dirs[@]})); then
  echo "mypy --strict ${dirs[*]}"
  "$BIN/mypy" --config-file pyproject.toml "${dirs[@]}"
fi
