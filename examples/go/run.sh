#!/usr/bin/env bash
# Runs the Go client test (chat_test.go) against the real chat-server binary.
# The code is generated with stock protoc, protoc-gen-go and protoc-gen-go-grpc,
# and built in GOPATH mode against Debian's Go packages (no module downloads):
# scripts/install-deps.sh installs them (golang-go, golang-google-grpc-dev, ...).
# Usage: examples/go/run.sh [GO TEST ARGS...]   e.g. -run Heartbeat
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

if [ ! -x target/debug/chat-server ]; then
  echo "examples/go: target/debug/chat-server is missing: run 'cargo build -p examples --bins' first" >&2
  exit 1
fi
for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || { echo "examples/go: $tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg="$work/src/hubtest"
mkdir -p "$pkg"
map="Mchat/v1/chat.proto=hubtest/gen/chatv1,Mhub/v1/hub.proto=hubtest/gen/hubv1"
protoc -I proto --go_out="$work/src" --go_opt="$map" --go-grpc_out="$work/src" --go-grpc_opt="$map" \
  chat/v1/chat.proto hub/v1/hub.proto
cp examples/go/chat_test.go "$pkg/"
cd "$pkg"
HUB_ROOT=$root GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOFLAGS= \
  exec timeout --kill-after=30 300 go test -count=1 "$@" .
