#!/usr/bin/env bash
# Runs every check and test, installing what is missing first.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
echo "== cargo package --list (every published crate packages)"
for crate in hub-core hub-server hub-client hub-build hub-redis hub-nats; do
  cargo package --list --allow-dirty -p "$crate" > /dev/null
done
echo "== cargo build (binaries used by process-level tests)"
cargo build --workspace --bins
echo "== cargo test"
cargo test --workspace
for extra in scripts/proto-check.sh tests/python/run.sh examples/typescript/run.sh examples/go/run.sh \
  scripts/grpcurl-smoke.sh; do
  if [ -x "$extra" ]; then
    echo "== $extra"
    "$extra"
  fi
done
echo "== all tests passed"
