#!/usr/bin/env bash
# Runs the product: installs what is missing, brings up the devstack (local stack,
# Prefect server, process worker), bootstraps the control plane, runs every
# deployment once, prints a summary and the Prefect UI's URL. Leaves it running;
# `uv run python -m devstack down` stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
command -v pyenv >/dev/null && pyenv rehash || true
UV="uv"; command -v uv >/dev/null || UV="python3 -m uv"
exec $UV run --frozen python -m devstack demo "$@"
