#!/usr/bin/env bash
# Runs the Python client tests against the real chat-server and chat-client binaries.
# Usage: tests/python/run.sh [PYTEST ARGS...]     e.g. tests/python/run.sh -k whisper -v
# Needs target/debug/chat-server and chat-client (cargo build -p examples --bins) and
# the .venv that scripts/install-deps.sh makes (run here if it is missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! .venv/bin/python -c 'import grpc, grpc_tools, pytest, redis, nats' 2>/dev/null; then
  echo "tests/python: .venv is missing or incomplete; running scripts/install-deps.sh"
  scripts/install-deps.sh
fi
for bin in chat-server chat-client; do
  if [ ! -x "target/debug/$bin" ]; then
    echo "tests/python: target/debug/$bin is missing: run 'cargo build -p examples --bins' first" >&2
    exit 1
  fi
done

# Every wait in the suite is bounded; this bounds the whole run too (SIGTERM lets the
# fixtures stop their servers, SIGKILL follows if they do not).
cd tests/python
exec timeout --kill-after=30 1200 ../../.venv/bin/python -m pytest "$@"
