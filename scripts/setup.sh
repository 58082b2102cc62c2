#!/usr/bin/env bash
# Installs everything the product and its tests need on a fresh Debian machine:
# PostgreSQL and Redis (Debian packages), uv, the locked project environment, and
# LiteLLM's own virtualenv (it needs a newer fastapi than Prefect 3.8.8 allows).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v age >/dev/null || need_apt+=(age)  # tests open off-site objects with the age CLI
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # The Debian package starts its own cluster and Redis; the devstack runs its own.
  $SUDO systemctl stop postgresql redis-server >/dev/null 2>&1 || true
  $SUDO pg_ctlcluster --help >/dev/null 2>&1 && for c in /etc/postgresql/*/main; do
    v=$(basename "$(dirname "$c")"); $SUDO pg_ctlcluster "$v" main stop >/dev/null 2>&1 || true
  done
  $SUDO pkill -x redis-server >/dev/null 2>&1 || true
fi

command -v uv >/dev/null || python3 -m pip install -q "uv==0.13.9"
command -v pyenv >/dev/null && pyenv rehash || true
uv() { if command -v uv >/dev/null; then command uv "$@"; else python3 -m uv "$@"; fi; }

uv sync --frozen -q

if [ ! -x .venv-litellm/bin/litellm ]; then
  # Python 3.12 or newer when the machine has one: CPython 3.11's contextvars can crash
  # during garbage collection (cpython#148891), which segfaulted LiteLLM under traffic.
  py=""
  for v in 3.12 3.13; do
    py=$(ls -d "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/$v*/bin/python 2>/dev/null | head -1)
    [ -z "$py" ] && py=$(command -v python$v || true)
    [ -n "$py" ] && break
  done
  uv venv -q --python "${py:-$(command -v python3)}" .venv-litellm
  uv pip install -q --python .venv-litellm/bin/python -r devstack/litellm-requirements.txt
fi
echo "setup: done"
