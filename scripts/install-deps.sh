#!/usr/bin/env bash
# Installs what the tests need and the Rust toolchain does not bring:
# redis-server, redis-cli and nats-server (Debian packages), and a Python virtual
# environment (.venv) with grpcio, grpcio-tools, pytest and grpcurl.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -f tests/python/requirements.txt ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt; then
    echo "pip install failed" >&2
    exit 1
  fi
fi
