#!/usr/bin/env bash
# Installs what the tests need and the Rust toolchain does not bring:
# redis-server, redis-cli and nats-server (Debian packages), Go with protoc and the Go
# gRPC packages (Debian), and a Python virtual environment (.venv) with grpcio,
# grpcio-tools, pytest and grpcurl. The TypeScript tests' npm packages are installed
# by examples/typescript/run.sh (npm ci).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
# The Go client test (examples/go): Debian's Go, protoc, its Go plugins and the Go
# gRPC library (built in GOPATH mode: no module downloads). protobuf-1-5 is named so
# that apt does not pick the older 1.3 alternative, whose protoc-gen-go is too old.
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v protoc-gen-go >/dev/null 2>&1 || need+=(protoc-gen-go)
command -v protoc-gen-go-grpc >/dev/null 2>&1 || need+=(protoc-gen-go-grpc)
[ -d /usr/share/gocode/src/google.golang.org/grpc ] || need+=(golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev)
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
