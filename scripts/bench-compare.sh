#!/usr/bin/env bash
# Runs the hub benchmarks next to their raw tonic baselines and the peers
# (socket.io and socketioxide with their Redis adapters, shared/peers/run.sh), in
# interleaved rounds, and prints a table of medians with the ratios the targets in
# BENCHMARKS.md are stated in.
#
# Usage: scripts/bench-compare.sh
# Environment (defaults in brackets):
#   ROUNDS [3]        rounds; each runs every fan-out and calls workload once
#   CLIENTS [200] BROADCASTS [20000] WINDOW [32] PAYLOAD [64]   the fan-out (the peers'
#                     defaults but for BROADCASTS: 4 M deliveries, a few seconds a run, so
#                     that rounds agree; 2,000 made runs of 0.2 s that moved by 30%)
#   PEER_BROADCASTS [2000]   broadcasts of the peers' runs (10× slower: a few seconds too)
#   BACKPLANES [1]    0: skip the Redis and NATS fan-outs (in-memory and calls only)
#   CALL_SECS [5]     seconds of each calls run
#   CONNS [10000]     idle connections (0: skip the conns workload)
#   PEERS [../shared/peers/run.sh]   the peers' script ("" or SKIP_PEERS=1: skip)
#   OUT [target/bench-compare]       where results.jsonl and table.md go
#   BIN [target/release/hub-bench, built first]   the bench binary (e.g. an older build)
# Needs redis-server and nats-server (scripts/install-deps.sh), and node/npm for the peers.
#
# WORKLOAD=rooms: the rooms workload instead (the game pattern), the hub's `hub-bench
# rooms` and the peers' `WORKLOAD=rooms run.sh` with the same parameters: 2 servers,
# Redis, MEMBERS [4] members per room, HZ [20] broadcasts per room per second spread
# evenly over each second, PAYLOAD [64], SECS [10] of sending, DRAIN_S [3], members in
# CLIENT_PROCS [2] processes; for each of ROOMS ["500 2000"] (a list) in each of
# ROUNDS [2] rounds (which goes first alternates by round). HUB_PUBLISHERS ["emitter
# client"]: the hub's runs, with its emitter and with a client of server 1 calling
# `publish` (the peers' publisher). Writes $OUT/rooms-results.jsonl and
# $OUT/rooms-table.md (medians per rooms value, and every round).
#   e.g. WORKLOAD=rooms ROOMS="500 1000 2000" ROUNDS=2 scripts/bench-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-$([ "${WORKLOAD:-fanout}" = rooms ] && echo 2 || echo 3)}"; C="${CLIENTS:-200}"; M="${BROADCASTS:-20000}"; W="${WINDOW:-32}"; P="${PAYLOAD:-64}"
PEER_M="${PEER_BROADCASTS:-2000}"; BACKPLANES="${BACKPLANES:-1}"
CALL_SECS="${CALL_SECS:-5}"; CONNS="${CONNS:-10000}"
PEERS="${PEERS-$(cd .. && pwd)/shared/peers/run.sh}"; [ -n "${SKIP_PEERS:-}" ] && PEERS=""
if [ -n "$PEERS" ] && [ ! -f "$PEERS" ]; then  # a git worktree elsewhere: beside the main checkout
  main_peers="$(cd "$(git rev-parse --git-common-dir)/../.." 2>/dev/null && pwd)/shared/peers/run.sh"
  [ -f "$main_peers" ] && PEERS="$main_peers"
fi
OUT="${OUT:-target/bench-compare}"; mkdir -p "$OUT"
[ "${WORKLOAD:-fanout}" = rooms ] || { results="$OUT/results.jsonl"; : > "$results"; }

if [ -n "${BIN:-}" ]; then
  B="$BIN"
else
  cargo build --release -q -p hub-bench
  B=target/release/hub-bench
fi

if [ "${WORKLOAD:-fanout}" = rooms ]; then
  ROOMS_LIST="${ROOMS:-500 2000}"; MEMBERS="${MEMBERS:-4}"; HZ="${HZ:-20}"; SECS="${SECS:-10}"
  DRAIN_S="${DRAIN_S:-3}"; CLIENT_PROCS="${CLIENT_PROCS:-2}"; PUBS="${HUB_PUBLISHERS:-emitter client}"
  results="$OUT/rooms-results.jsonl"; : > "$results"
  # tag LABEL LINE: the line with its label, the round and the load average before it.
  tag() {
    python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; d["round"]=int(sys.argv[3]); d["load_avg_1m"]=float(sys.argv[4]); print(json.dumps(d))' \
      "$1" "$2" "$r" "$load" >> "$results"
  }
  hub_rooms() { # ROOMS
    local pub line
    for pub in $PUBS; do
      load=$(cut -d' ' -f1 /proc/loadavg)
      if line=$(timeout 900 "$B" rooms --rooms "$1" --members "$MEMBERS" --servers 2 --backplane redis \
          --hz "$HZ" --payload "$P" --secs "$SECS" --drain-s "$DRAIN_S" --schedule spread \
          --client-procs "$CLIENT_PROCS" --publisher "$pub"); then
        tag "hub:$pub@$1" "$line"; echo "  hub ($pub, $1 rooms): $line" >&2
      else
        echo "  hub ($pub, $1 rooms): FAILED" >&2
      fi
    done
  }
  peer_rooms() { # ROOMS
    local out line
    [ -n "$PEERS" ] || return 0
    load=$(cut -d' ' -f1 /proc/loadavg)
    out=$(WORKLOAD=rooms ROOMS="$1" MEMBERS="$MEMBERS" HZ="$HZ" PAYLOAD="$P" SECS="$SECS" \
      DRAIN_S="$DRAIN_S" CLIENT_PROCS="$CLIENT_PROCS" timeout "${PEERS_TIMEOUT:-600}" bash "$PEERS" 2>/dev/null) \
      || echo "  peers: run.sh failed or timed out; keeping the lines it printed" >&2
    while IFS= read -r line; do
      case "$line" in "{"*) ;; *) continue ;; esac
      tag "peer:$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["peer"])' "$line")@$1" "$line"
      echo "  peer ($1 rooms): $line" >&2
    done <<< "$out"
  }
  for r in $(seq 1 "$ROUNDS"); do
    for n in ${ROOMS_LIST//,/ }; do
      echo "== round $r/$ROUNDS, $n rooms (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
      if [ $((r % 2)) = 1 ]; then peer_rooms "$n"; hub_rooms "$n"; else hub_rooms "$n"; peer_rooms "$n"; fi
    done
  done
  python3 - "$results" > "$OUT/rooms-table.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for d in rows:
    by.setdefault(d["label"], []).append(d)
def med(ds, key):
    vals = [d[key] for d in ds if isinstance(d.get(key), (int, float)) and not isinstance(d.get(key), bool)]
    return statistics.median(vals) if vals else None
def fmt(x, nd=1):
    if x is None: return "–"
    if isinstance(x, float) and abs(x) >= 1000: return f"{x:,.0f}"
    return f"{x:,.{nd}f}" if isinstance(x, float) else f"{x:,}"
def name(d):
    return d["peer"] if not d["label"].startswith("hub:") else d["peer"] + f", {d.get('client_procs')} member procs"
order = sorted(by, key=lambda l: (by[l][0]["rooms"], not l.startswith("peer:"), l))
n_rounds = max((len(v) for v in by.values()), default=0)
print(f"Medians of {n_rounds} rounds (members {rows[0]['members'] if rows else '–'}, {rows[0]['hz'] if rows else '–'} Hz spread evenly, payload {rows[0]['payload'] if rows else '–'} B, 2 servers, Redis).\n")
print("| rooms | peer | target/s | offered/s | achieved/s | p50 ms | p99 ms | kept up | complete | server CPU s / M deliveries | redis CPU s / M deliveries | client CPU s | load avg |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for l in order:
    ds = by[l]; d0 = ds[0]
    kept = sum(1 for d in ds if d.get("kept_up")); comp = sum(1 for d in ds if d.get("complete"))
    loads = [d.get("load_avg_1m") for d in ds if d.get("load_avg_1m") is not None]
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "–"
    print(f"| {d0['rooms']:,} | {name(d0)} | {fmt(med(ds,'target_broadcasts_per_sec'),0)} | {fmt(med(ds,'offered_broadcasts_per_sec'),0)} | {fmt(med(ds,'achieved_broadcasts_per_sec'),0)} | {fmt(med(ds,'p50_ms'))} | {fmt(med(ds,'p99_ms'))} | {kept}/{len(ds)} | {comp}/{len(ds)} | {fmt(med(ds,'server_cpu_s_per_million_deliveries'),2)} | {fmt(med(ds,'redis_cpu_s_per_million_deliveries'),2)} | {fmt(med(ds,'client_cpu_s'))} | {load} |")
print()
print("| per round: achieved/s (p99 ms) | " + " | ".join(f"round {i+1}" for i in range(n_rounds)) + " |")
print("|---|" + "---|" * n_rounds)
for l in order:
    ds = sorted(by[l], key=lambda d: d.get("round", 0))
    print(f"| {by[l][0]['rooms']:,} {name(by[l][0])} | " + " | ".join(f"{fmt(d.get('achieved_broadcasts_per_sec'),0)} ({fmt(d.get('p99_ms'))})" for d in ds) + " |")
PY
  cat "$OUT/rooms-table.md"
  exit 0
fi

# run LABEL ARGS...: one bench run, its JSON line tagged with LABEL.
run() {
  local label="$1"; shift
  local line
  if line=$(timeout 900 "$B" "$@"); then
    python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; print(json.dumps(d))' "$label" "$line" >> "$results"
    echo "  $label: $line" >&2
  else
    echo "  $label: FAILED ($B $*)" >&2
  fi
}

fan=(--clients "$C" --broadcasts "$M" --window "$W" --payload "$P")
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS" >&2
  run fanout-raw            fanout --kind raw --servers 1 "${fan[@]}"
  run fanout-hub-memory     fanout --kind hub --servers 1 --groups memory "${fan[@]}"
  run fanout-hub-memory-rawclient fanout --kind hub --client raw --servers 1 --groups memory "${fan[@]}"
  if [ "$BACKPLANES" != 0 ]; then
    run fanout-hub-redis      fanout --kind hub --servers 2 --groups redis "${fan[@]}"
    run fanout-hub-nats       fanout --kind hub --servers 2 --groups nats "${fan[@]}"
    # Not the peers' workload: the hub broadcasts from a spawned task, so the publisher
    # is not paced by the Redis round trip (see BENCHMARKS.md, "What the profiles say").
    run fanout-hub-redis-detached fanout --kind hub --servers 2 --groups redis --detach-publish "${fan[@]}"
  fi
  if [ -n "$PEERS" ]; then
    # run.sh prints one line per peer; a peer that hangs (its bench has no deadline
    # while connecting) is cut by the timeout, and the lines printed so far are kept.
    peers_out=$(timeout "${PEERS_TIMEOUT:-300}" bash "$PEERS" "$C" "$PEER_M" "$W" 2>/dev/null) \
      || echo "  peers: run.sh failed or timed out; keeping the lines it printed" >&2
    while IFS= read -r line; do
      case "$line" in "{"*) ;; *) continue ;; esac
      python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["label"]="peer:"+d["peer"]; d["workload"]="fanout"; print(json.dumps(d))' "$line" >> "$results"
      echo "  peer: $line" >&2
    done <<< "$peers_out"
  fi
  run calls-raw calls --kind raw --secs "$CALL_SECS"
  run calls-hub calls --kind hub --secs "$CALL_SECS"
  run calls-hub-rawclient calls --kind hub --client raw --secs "$CALL_SECS"
done
if [ "$CONNS" -gt 0 ]; then
  run conns-raw conns --kind raw --conns "$CONNS"
  run conns-hub conns --kind hub --conns "$CONNS"
fi

python3 - "$results" > "$OUT/table.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for d in rows:
    by.setdefault(d["label"], []).append(d)

def med(label, key):
    vals = [d[key] for d in by.get(label, []) if d.get(key) is not None]
    return statistics.median(vals) if vals else None

def fmt(x, nd=2):
    if x is None: return "–"
    if isinstance(x, float) and abs(x) >= 1000: return f"{x:,.0f}"
    return f"{x:,.{nd}f}" if isinstance(x, float) else f"{x:,}"

print(f"Medians of {max((len(v) for v in by.values()), default=0)} rounds.\n")
print("| fan-out | servers | deliveries/s | p50 ms | p99 ms | server CPU s / M deliveries | client CPU s / M deliveries | complete |")
print("|---|---|---|---|---|---|---|---|")
fan_labels = [l for l in by if by[l][0].get("workload") == "fanout"]
for l in fan_labels:
    d0 = by[l][0]
    complete = sum(1 for d in by[l] if d.get("complete")) 
    print(f"| {d0['peer']} | {d0['servers']} | {fmt(med(l,'deliveries_per_sec'))} | {fmt(med(l,'p50_ms'))} | {fmt(med(l,'p99_ms'))} | {fmt(med(l,'server_cpu_s_per_million_deliveries'))} | {fmt(med(l,'client_cpu_s_per_million_deliveries'))} | {complete}/{len(by[l])} |")
print()
if "calls-hub" in by or "calls-raw" in by:
    print("| calls | clients × in flight | calls/s | p50 ms | p99 ms | server CPU s / M calls | client CPU s / M calls |")
    print("|---|---|---|---|---|---|---|")
    for l in ("calls-raw", "calls-hub", "calls-hub-rawclient"):
        if l in by:
            d0 = by[l][0]
            print(f"| {d0['peer']} | {d0['clients']} × {d0['in_flight']} | {fmt(med(l,'calls_per_sec'))} | {fmt(med(l,'p50_ms'))} | {fmt(med(l,'p99_ms'))} | {fmt(med(l,'server_cpu_s_per_million_calls'))} | {fmt(med(l,'client_cpu_s_per_million_calls'))} |")
    print()
if "conns-hub" in by or "conns-raw" in by:
    print("| idle connections | connected | server KiB / connection |")
    print("|---|---|---|")
    for l in ("conns-raw", "conns-hub"):
        if l in by:
            d0 = by[l][0]
            print(f"| {d0['peer']} | {d0['connected']:,} | {fmt(med(l,'server_kib_per_conn'))} |")
    print()

# Every round's figure, to see how far rounds agree (the medians hide it).
print("| per round | " + " | ".join(f"round {i+1}" for i in range(max((len(v) for v in by.values()), default=0))) + " | max/min |")
print("|---|" + "---|" * (max((len(v) for v in by.values()), default=0) + 1))
for l, ds in by.items():
    key = "calls_per_sec" if "calls_per_sec" in ds[0] else "deliveries_per_sec" if "deliveries_per_sec" in ds[0] else None
    if key is None: continue
    vals = [d.get(key) for d in ds]
    ok = [v for v in vals if v]
    spread = f"{max(ok) / min(ok):.2f}" if len(ok) > 1 else "–"
    print(f"| {l} ({key.split('_per_')[0]}/s) | " + " | ".join(fmt(v) for v in vals) + f" | {spread} |")
print()

peers = [l for l in by if l.startswith("peer:")]
best_peer = max(peers, key=lambda l: med(l, "deliveries_per_sec") or 0, default=None)
def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b
targets = []
targets.append(("in-memory fan-out ≥ 85% of raw tonic fan-out (deliveries/s)",
    ratio(med("fanout-hub-memory","deliveries_per_sec"), med("fanout-raw","deliveries_per_sec")), 0.85, ">="))
targets.append(("  same, both with the raw tonic client (server-side cost only)",
    ratio(med("fanout-hub-memory-rawclient","deliveries_per_sec"), med("fanout-raw","deliveries_per_sec")), 0.85, ">="))
targets.append(("Redis 2-server fan-out: server CPU ≤ 1.0 s per million deliveries",
    med("fanout-hub-redis","server_cpu_s_per_million_deliveries"), 1.0, "<="))
targets.append((f"Redis 2-server fan-out ≥ 3× the better peer ({by[best_peer][0]['peer'] if best_peer else '–'}) deliveries/s",
    ratio(med("fanout-hub-redis","deliveries_per_sec"), med(best_peer,"deliveries_per_sec") if best_peer else None), 3.0, ">="))
targets.append(("  (experiment: Redis with the publish detached from the call) server CPU s / M",
    med("fanout-hub-redis-detached","server_cpu_s_per_million_deliveries"), None, ""))
targets.append(("  (experiment: Redis with the publish detached from the call) deliveries/s × the better peer",
    ratio(med("fanout-hub-redis-detached","deliveries_per_sec"), med(best_peer,"deliveries_per_sec") if best_peer else None), None, ""))
targets.append(("hub calls ≥ 90% of raw bidi echo (calls/s)",
    ratio(med("calls-hub","calls_per_sec"), med("calls-raw","calls_per_sec")), 0.90, ">="))
targets.append(("  same, both with the raw tonic client (server-side cost only)",
    ratio(med("calls-hub-rawclient","calls_per_sec"), med("calls-raw","calls_per_sec")), 0.90, ">="))
targets.append(("  (client process CPU per delivery: hub client / plain tonic client, same hub server)",
    ratio(med("fanout-hub-memory","client_cpu_s_per_million_deliveries"), med("fanout-hub-memory-rawclient","client_cpu_s_per_million_deliveries")), None, ""))
targets.append(("  (client process CPU per call: hub client / plain tonic client, same hub server)",
    ratio(med("calls-hub","client_cpu_s_per_million_calls"), med("calls-hub-rawclient","client_cpu_s_per_million_calls")), None, ""))
conns_n = by.get("conns-hub", [{}])[0].get("conns")
targets.append((f"≤ 16 KiB server memory per idle connection at {conns_n or '–'} connections",
    med("conns-hub","server_kib_per_conn"), 16.0, "<="))
targets.append(("  (raw tonic, for reference: KiB per idle connection)", med("conns-raw","server_kib_per_conn"), None, ""))
print("| target | measured | goal | met |")
print("|---|---|---|---|")
for name, val, goal, op in targets:
    if goal is None:
        shown = f"{val:.2f}×" if val is not None and "×" in name else fmt(val)
        print(f"| {name} | {shown} | – | – |"); continue
    met = "–" if val is None else ("yes" if (val >= goal if op == ">=" else val <= goal) else "**no**")
    shown = fmt(val, 2) if op == "<=" else (f"{val:.2f}×" if val is not None else "–")
    print(f"| {name} | {shown} | {op} {goal} | {met} |")
PY
cat "$OUT/table.md"
