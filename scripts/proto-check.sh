#!/usr/bin/env bash
# Checks the wire contract (buf.yaml): `buf lint`, and `buf breaking` against
# proto/wire-baseline.json, the contract as last recorded (see buf.yaml).
# Usage: scripts/proto-check.sh                    lint and breaking check
#        scripts/proto-check.sh --update-baseline  record the baseline again (after the
#                                                  contract grew on purpose)
# buf comes from the npm registry (@bufbuild/buf, pinned by examples/typescript's
# package-lock.json); it is installed there if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ts=examples/typescript
buf="$PWD/$ts/node_modules/.bin/buf"
if [ ! -x "$buf" ]; then
  (cd "$ts" && npm ci --no-audit --no-fund --loglevel=error)
fi
baseline=proto/wire-baseline.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# An image of the current protos, without comments (the baseline has none either).
image() { "$buf" build --exclude-source-info -o "$1" "${@:2}"; }

if [ "${1:-}" = "--update-baseline" ]; then
  image "$tmp/now.json"
  python3 -m json.tool --indent 1 "$tmp/now.json" > "$baseline"
  echo "wrote $baseline"
  exit 0
fi

echo "buf lint"
"$buf" lint
echo "buf breaking against $baseline"
image "$tmp/now.binpb"
"$buf" breaking "$tmp/now.binpb" --against "$baseline"

# The check itself must be able to fail: renumber a field in a copy of the protos
# and expect buf to call it a break.
mkdir -p "$tmp/broken/hub-nats"
cp -rL proto buf.yaml "$tmp/broken/"
cp -rL hub-nats/proto "$tmp/broken/hub-nats/"
sed -i 's/uint64 nonce = 1;/uint64 nonce = 7;/' "$tmp/broken/proto/hub/v1/hub.proto"
(cd "$tmp/broken" && "$buf" build --exclude-source-info -o "$tmp/broken.binpb")
if "$buf" breaking "$tmp/broken.binpb" --against "$baseline" >/dev/null 2>&1; then
  echo "proto-check: buf breaking did not catch a renumbered field: the check is broken" >&2
  exit 1
fi
echo "proto-check: lint clean, no breaking change against $baseline"
