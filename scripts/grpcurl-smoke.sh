#!/usr/bin/env bash
# Talks to a real chat-server with nothing but grpcurl: reflection (list, describe),
# the health service, the development login, and a JSON session over the chat hub's
# Connect stream (with the login's token) that gets a push from a Rust chat-client
# running in another process; Connect without a valid token is refused.
#
# Usage: scripts/grpcurl-smoke.sh              starts its own chat-server on a free port
#        scripts/grpcurl-smoke.sh --addr H:P   checks a chat-server that is already running
#        scripts/grpcurl-smoke.sh -v           also prints every grpcurl transcript
# Needs target/debug/chat-server and chat-client (cargo build -p examples --bins) and the
# grpcurl that scripts/install-deps.sh puts in .venv (grpcurl 1.8.6, v1alpha reflection).
set -euo pipefail
cd "$(dirname "$0")/.."

addr="" verbose=0
while [ $# -gt 0 ]; do
  case "$1" in
    --addr) addr="$2"; shift 2 ;;
    -v|--verbose) verbose=1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "grpcurl-smoke: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d)
server_pid="" session_pid=""
cleanup() {
  exec 3>&- 2>/dev/null || true
  for pid in $session_pid $server_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "grpcurl-smoke: FAIL: $*" >&2
  for f in "$work"/*.out "$work"/*.err; do
    [ -s "$f" ] && { echo "---- $(basename "$f")" >&2; cat "$f" >&2; }
  done
  exit 1
}
step() { echo "grpcurl-smoke: $*"; }
show() { [ "$verbose" = 1 ] && sed 's/^/    /' "$1" || true; }

if ! .venv/bin/python -c 'import grpc_tools' 2>/dev/null || [ ! -x .venv/bin/grpcurl ]; then
  echo "grpcurl-smoke: .venv is missing or incomplete; running scripts/install-deps.sh"
  scripts/install-deps.sh
fi
grpcurl=(.venv/bin/grpcurl -plaintext -max-time 30)
client=target/debug/chat-client
for bin in "$client" target/debug/chat-server; do
  [ -x "$bin" ] || fail "$bin is missing: run 'cargo build -p examples --bins' first"
done
"${grpcurl[0]}" -version 2>&1 | grep -q 'grpcurl v1\.' || fail "$(${grpcurl[0]} -version 2>&1) is not grpcurl"

if [ -z "$addr" ]; then
  target/debug/chat-server --addr 127.0.0.1:0 --groups memory >"$work/server.out" 2>"$work/server.err" &
  server_pid=$!
  for _ in $(seq 1 300); do
    addr=$(sed -n 's/^chat-server listening on \([^ ]*\).*/\1/p' "$work/server.out")
    [ -n "$addr" ] && break
    kill -0 "$server_pid" 2>/dev/null || fail "chat-server exited before listening"
    sleep 0.1
  done
  [ -n "$addr" ] || fail "chat-server did not print its address within 30 s"
  step "started chat-server on $addr"
fi

# Waits up to $3 seconds for fixed string $2 in file $1.
wait_for() {
  for _ in $(seq 1 $(($3 * 10))); do
    grep -qF -- "$2" "$1" && return 0
    sleep 0.1
  done
  fail "no '$2' in $(basename "$1") within $3 s"
}
# Fails unless file $1 holds every fixed string after it.
expect() {
  local file=$1; shift
  for want in "$@"; do
    grep -qF -- "$want" "$file" || fail "$(basename "$file") lacks '$want'"
  done
}

step "list (server reflection)"
"${grpcurl[@]}" "$addr" list >"$work/list.out" 2>"$work/list.err" || fail "grpcurl list failed"
show "$work/list.out"
expect "$work/list.out" chat.v1.ChatHub chat.v1.ChatLogin grpc.health.v1.Health

step "describe chat.v1.ChatHub and chat.v1.ChatResponse"
"${grpcurl[@]}" "$addr" describe chat.v1.ChatHub >"$work/describe.out" 2>"$work/describe.err" \
  || fail "grpcurl describe chat.v1.ChatHub failed"
"${grpcurl[@]}" "$addr" describe chat.v1.ChatResponse >>"$work/describe.out" 2>>"$work/describe.err" \
  || fail "grpcurl describe chat.v1.ChatResponse failed"
show "$work/describe.out"
expect "$work/describe.out" "service ChatHub {" \
  "rpc Connect ( stream .chat.v1.ChatRequest ) returns ( stream .chat.v1.ChatResponse );" \
  "message ChatResponse {" ".hub.v1.ServerControl control = 15;" ".chat.v1.ChatMessage on_message = 102;"

step "health check"
"${grpcurl[@]}" -d '{"service": "chat.v1.ChatHub"}' "$addr" grpc.health.v1.Health/Check \
  >"$work/health.out" 2>"$work/health.err" || fail "health check failed"
show "$work/health.out"
expect "$work/health.out" '"status": "SERVING"'

step "login (chat.v1.ChatLogin/Login)"
"${grpcurl[@]}" -d '{"user": "curl"}' "$addr" chat.v1.ChatLogin/Login >"$work/login.out" 2>"$work/login.err" \
  || fail "grpcurl chat.v1.ChatLogin/Login failed"
show "$work/login.out"
token=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["token"])' "$work/login.out") \
  || fail "the login reply has no token"
expect "$work/login.out" '"user": "curl"' '"expiresAt": "'

step "Connect without a token, with a bad one: UNAUTHENTICATED before any frame"
last=${token: -1}
[ "$last" = A ] && other=B || other=A
forged="${token%?}$other" # the signature's last character changed
for header in "" "authorization: Bearer not-a-token" "authorization: Bearer $forged" "authorization: Basic $token"; do
  args=()
  [ -n "$header" ] && args=(-H "$header")
  if "${grpcurl[@]}" "${args[@]}" -d '{"id": 1, "members": {}}' "$addr" chat.v1.ChatHub/Connect \
    >"$work/unauth.out" 2>"$work/unauth.err"; then
    fail "Connect with '${header:-no authorization}' was accepted"
  fi
  expect "$work/unauth.err" "Code: Unauthenticated"
  grep -q '"hello"' "$work/unauth.out" && fail "Connect with '${header:-no authorization}' got a hello"
done

step "JSON session over chat.v1.ChatHub/Connect, with a push from a Rust chat-client"
room="smoke-$$-$RANDOM"
mkfifo "$work/in"
"${grpcurl[@]}" -H "authorization: Bearer $token" -d @ "$addr" chat.v1.ChatHub/Connect \
  <"$work/in" >"$work/session.out" 2>"$work/session.err" &
session_pid=$!
exec 3>"$work/in" # grpcurl reads frames from here until it is closed
wait_for "$work/session.out" '"hello": {' 15
echo '{"id": 1, "say": {"text": "too early"}}' >&3
wait_for "$work/session.out" '"code": 9' 15
echo '{"id": 2}' >&3
wait_for "$work/session.out" '"message": "frame carries no call"' 15
echo "{\"id\": 3, \"join\": {\"room\": \"$room\"}}" >&3
wait_for "$work/session.out" '"members": [' 15
"$client" --addr "$addr" --user ferris --room "$room" --json --say "hello, grpcurl" \
  --whisper "curl:psst, grpcurl" --listen 0 >"$work/client.out" 2>"$work/client.err" \
  || fail "chat-client exited with $?"
wait_for "$work/session.out" '"onLeave": {' 15 # chat-client has gone
echo '{"id": 4, "members": {}}' >&3
wait_for "$work/session.out" '"id": "4"' 15
exec 3>&- # end of our frames: the server ends the stream with OK
for _ in $(seq 1 150); do kill -0 "$session_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$session_pid" 2>/dev/null && fail "grpcurl did not exit within 15 s of the end of its input"
wait "$session_pid" || fail "grpcurl session exited with $?"
session_pid=""
show "$work/session.out"

# Checks the transcript frame by frame (grpcurl prints one JSON object per frame).
.venv/bin/python - "$work/session.out" "$room" <<'EOF' || fail "the Connect transcript is not what the chat hub sends"
import json, sys
text, room = open(sys.argv[1]).read(), sys.argv[2]
frames, pos, decoder = [], 0, json.JSONDecoder()
while pos < len(text):
    if text[pos].isspace():
        pos += 1
        continue
    frame, pos = decoder.raw_decode(text, pos)
    frames.append(frame)
def check(ok, what):
    if not ok:
        print(f"grpcurl-smoke: {what}; frames:\n" + "\n".join(json.dumps(f) for f in frames), file=sys.stderr)
        sys.exit(1)
check("hello" in frames[0].get("control", {}), "the first frame is not control.hello")
check(frames[0]["control"]["hello"]["hub"] == "chat.v1.ChatHub", "hello names another hub")
# Server pings (every 15 s by default) may come in between; grpcurl cannot answer them.
frames = [f for f in frames if "ping" not in f.get("control", {})]
by_id = {f["id"]: f for f in frames if "id" in f}
check(by_id.get("1", {}).get("error", {}).get("code") == 9, "say before join is not FAILED_PRECONDITION (9)")
check(by_id.get("2", {}).get("error", {}).get("code") == 3, "a frame with no call is not INVALID_ARGUMENT (3)")
check(by_id.get("3", {}).get("join") == {"room": room, "members": ["curl"], "count": "1"}, "bad join reply")
check(by_id.get("4", {}).get("members") == {"room": room, "members": ["curl"], "count": "1"},
      "bad members reply (ferris has left)")
pushes = [f for f in frames if "seq" in f]
want = [("onJoin", {"room": room, "user": "ferris"}),
        ("onMessage", {"room": room, "from": "ferris", "text": "hello, grpcurl"}),
        ("onWhisper", {"room": room, "from": "ferris", "text": "psst, grpcurl"}),
        ("onLeave", {"room": room, "user": "ferris"})]
got = [next((k, v) for k, v in f.items() if k.startswith("on")) for f in pushes]
check(got == want, f"pushes are not {want}")
check([f["seq"] for f in pushes] == ["1", "2", "3", "4"], "push seq is not 1, 2, 3, 4")
EOF
expect "$work/client.out" '"said":"hello, grpcurl"' '"whispered":"curl"'

step "a bad frame on its own stream"
echo '{"id": 5, "join": {"room": "no spaces allowed"}}' \
  | "${grpcurl[@]}" -H "authorization: Bearer $token" -d @ "$addr" chat.v1.ChatHub/Connect >"$work/bad.out" 2>"$work/bad.err" \
  || fail "grpcurl exited with $? on a stream with a bad frame"
show "$work/bad.out"
expect "$work/bad.out" '"id": "5"' '"code": 3'

step "ok: reflection, health, login, UNAUTHENTICATED without a valid token, a Connect session with pushes from chat-client, error frames"
