#!/usr/bin/env bash
# The main job: runs the example chat hub server on the in-memory default and
# typed chat clients against it, printing what each side sees.
# Usage: scripts/demo.sh [PORT]   (default 50051)
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-50051}"
addr="127.0.0.1:$port"

cargo build -q -p examples --bins
server=target/debug/chat-server
client=target/debug/chat-client

"$server" --addr "$addr" --groups memory &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true; wait $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

echo "--- bob joins 'lobby' and listens"
"$client" --addr "$addr" --user bob --room lobby --listen 3 | sed -u 's/^/[bob]   /' &
bob=$!
sleep 1
echo "--- alice joins, says hello, whispers to bob, lists members"
"$client" --addr "$addr" --user alice --room lobby --say "hello, lobby" --whisper "bob:psst, bob" --members | sed -u 's/^/[alice] /'
wait $bob
echo "--- done"
