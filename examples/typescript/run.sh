#!/usr/bin/env bash
# Runs the TypeScript client tests (node:test) against the real chat-server and
# chat-client binaries, on in-memory groups and a private Redis and NATS.
# Usage: examples/typescript/run.sh [NODE TEST ARGS...]  e.g. --test-name-pattern=whisper
# Needs target/debug/chat-server and chat-client (cargo build -p examples --bins),
# Node.js 20+ and npm; the packages come from the npm registry (package-lock.json).
set -euo pipefail
cd "$(dirname "$0")"

for bin in chat-server chat-client; do
  if [ ! -x "../../target/debug/$bin" ]; then
    echo "examples/typescript: target/debug/$bin is missing: run 'cargo build -p examples --bins' first" >&2
    exit 1
  fi
done
# node_modules as package-lock.json says (npm ci), unless it already is.
if [ ! node_modules/.package-lock.json -nt package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
# Every wait in the suite is bounded; this bounds the whole run too.
exec timeout --kill-after=30 600 node --test --test-concurrency=1 "$@" dist/test/*.test.js
