#!/usr/bin/env bash
# The test command: installs what is missing, then runs the whole suite against a
# real devstack that the test session starts on 127.0.0.1 and stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
command -v pyenv >/dev/null && pyenv rehash || true
UV="uv"; command -v uv >/dev/null || UV="python3 -m uv"
exec $UV run --frozen pytest "$@"
