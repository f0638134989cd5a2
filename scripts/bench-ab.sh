#!/usr/bin/env bash
# Compares hub-bench binaries (e.g. before and after a client change) side by side:
# each round runs the raw tonic baseline, the hub client of every binary and the plain
# tonic client on the hub server, one after the other, for the in-memory fan-out and
# the calls; then prints medians and the medians of the per-round ratios to raw tonic.
#
# Usage: scripts/bench-ab.sh BIN_A [BIN_B ...]   (keep copies of older builds to compare)
# Environment: ROUNDS [3]; OUT [target/bench-ab] (results.jsonl); EXTRA_FANOUT, EXTRA_CALLS
# (more arguments for every run of that workload).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BIN_A [BIN_B ...]" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"; OUT="${OUT:-target/bench-ab}"; mkdir -p "$OUT"
results="$OUT/results.jsonl"; : > "$results"
read -r -a fan_extra <<< "${EXTRA_FANOUT:-}"; read -r -a calls_extra <<< "${EXTRA_CALLS:-}"

# run ROUND LABEL BIN ARGS...: one bench run, its JSON line tagged with round and label.
run() {
  local round="$1" label="$2" bin="$3"; shift 3
  local line
  if line=$(timeout 600 "$bin" "$@"); then
    python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["round"]=int(sys.argv[1]); d["label"]=sys.argv[2]; print(json.dumps(d))' "$round" "$label" "$line" >> "$results"
    echo "  $label: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get("deliveries_per_sec") or d.get("calls_per_sec"))' "$line")" >&2
  else
    echo "  $label: FAILED ($bin $*)" >&2
  fi
}

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS" >&2
  run "$r" fanout-raw "$1" fanout --kind raw --servers 1 "${fan_extra[@]}"
  i=0; for b in "$@"; do i=$((i + 1)); run "$r" "fanout-hub-$i" "$b" fanout --servers 1 "${fan_extra[@]}"; done
  run "$r" fanout-plain-client "${!#}" fanout --servers 1 --client raw "${fan_extra[@]}"
  run "$r" calls-raw "$1" calls --kind raw "${calls_extra[@]}"
  i=0; for b in "$@"; do i=$((i + 1)); run "$r" "calls-hub-$i" "$b" calls "${calls_extra[@]}"; done
  run "$r" calls-plain-client "${!#}" calls --client raw "${calls_extra[@]}"
done

python3 - "$results" "$@" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bins = sys.argv[2:]
print("binaries: " + ", ".join(f"hub-{i + 1} = {b}" for i, b in enumerate(bins)) + "\n")
print("| run | per second (median) | × raw tonic (median of rounds) | client CPU s / M | server CPU s / M | p50 ms |")
print("|---|---|---|---|---|---|")
for w, rate, per in (("fanout", "deliveries_per_sec", "deliveries"), ("calls", "calls_per_sec", "calls")):
    raw = {d["round"]: d[rate] for d in rows if d["label"] == f"{w}-raw"}
    for label in dict.fromkeys(d["label"] for d in rows if d["label"].startswith(w)):
        ds = [d for d in rows if d["label"] == label]
        med = lambda k: statistics.median([d[k] for d in ds if d.get(k) is not None])
        ratios = [d[rate] / raw[d["round"]] for d in ds if raw.get(d["round"])]
        print(f"| {label} | {med(rate):,.0f} | {statistics.median(ratios):.2f} | "
              f"{med('client_cpu_s_per_million_' + per):.2f} | {med('server_cpu_s_per_million_' + per):.2f} | {med('p50_ms'):.2f} |")
PY
