#!/usr/bin/env bash
# Stream end-to-end benchmark through the real broker: a generated workload is published to a
# fresh events topic, then a release `banter stream` reads it, windows it and commits rollups,
# dead letters and checkpoints transactionally. Reports input events/s from the start of the
# stream process until its consumer lag is zero, and the state it holds.
#   benches/stream/run.sh [ACCOUNTS] [MINUTES] [PARTITIONS]     (defaults 200, 360, 6)
# BANTER_BENCH_PROFILE=DIR also samples the stream process with `perf` (DWARF call graphs, 199 Hz)
# from readiness until the lag is zero and writes DIR/stream.folded and DIR/stream.svg (a flame
# graph, by `inferno`: `cargo install inferno --no-default-features --features cli`).
# BANTER_BENCH_BIN=PATH runs that binary instead of building the release one (to compare builds).
set -euo pipefail
given_bin="${BANTER_BENCH_BIN:+$(realpath "$BANTER_BENCH_BIN")}" # before the cd: a relative path
cd "$(dirname "$0")/../.."
accounts="${1:-200}"; minutes="${2:-360}"; partitions="${3:-6}"
scripts/stack.sh up kafka >/dev/null
if [ -n "$given_bin" ]; then
  bin="$given_bin" # a build to compare (e.g. a copy of an earlier commit's release binary)
else
  cargo build --release --locked -p banter 2>&1 | tail -1
  bin=target/release/banter
fi
# Provisional rows off by default (the figures before them are comparable; the peers in
# benches/compare compute none): BANTER_BENCH_PROVISIONAL_MS=1000 measures them.
run="bench$(date +%s)"
export BANTER_KAFKA__TOPICS__EVENTS="$run.events" BANTER_KAFKA__TOPICS__ROLLUPS="$run.rollups" \
  BANTER_KAFKA__TOPICS__DLQ="$run.dlq" BANTER_KAFKA__TOPICS__ALERTS="$run.alerts" \
  BANTER_KAFKA__TOPICS__CHECKPOINTS="$run.checkpoints" BANTER_KAFKA__TOPICS__PARTITIONS="$partitions" \
  BANTER_STREAM__GROUP_ID="$run" BANTER_STREAM__INSTANCE_ID=bench \
  BANTER_STREAM__PROVISIONAL_INTERVAL_MS="${BANTER_BENCH_PROVISIONAL_MS:-0}" \
  BANTER_INGEST__ACTOR_SALT=benchmark-salt-0123456789 BANTER_HTTP__LISTEN=127.0.0.1:9475 \
  BANTER_TELEMETRY__LOG_LEVEL=warn
profile="${BANTER_BENCH_PROFILE:-}"
if [ -n "$profile" ]; then
  command -v perf >/dev/null || { echo "BANTER_BENCH_PROFILE needs perf (apt-get install linux-perf)" >&2; exit 2; }
  command -v inferno-flamegraph >/dev/null || {
    echo "BANTER_BENCH_PROFILE needs inferno (cargo install inferno --no-default-features --features cli)" >&2; exit 2; }
  mkdir -p "$profile"
fi
"$bin" topics >/dev/null
gen=$("$bin" generate --to kafka --accounts "$accounts" --minutes "$minutes" --seed 3 2>&1 | tail -1)
echo "$gen"
deliveries=$(echo "$gen" | sed -E 's/.*sent ([0-9]+) deliveries.*/\1/')
metric() { curl -fsS localhost:9475/metrics | awk -v m="$1" '$1 ~ "^"m {s += $2} END {printf "%d", s}'; }
start=$(date +%s.%N)
"$bin" stream & pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -fsS -o /dev/null localhost:9475/readyz 2>/dev/null && break; sleep 0.1; done
if [ -n "$profile" ]; then
  perf record -q -F 199 --call-graph dwarf,16384 -p "$pid" -o "$profile/perf.data" 2>"$profile/perf.log" & perf_pid=$!
fi
# Done when every delivery has been processed and committed.
while [ "$(metric banter_stream_events_total)" -lt "$deliveries" ]; do sleep 0.2; done
end=$(date +%s.%N)
# user + system, from the fields after the process name's closing parenthesis
cpu=$(sed 's/.*) //' "/proc/$pid/stat" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($12 + $13) / hz}')
if [ -n "$profile" ]; then
  kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" || true
  [ -s "$profile/perf.data" ] || { echo "perf recorded nothing:" >&2; cat "$profile/perf.log" >&2; exit 2; }
  perf script -i "$profile/perf.data" 2>/dev/null | inferno-collapse-perf > "$profile/stream.folded"
  inferno-flamegraph --title "banter stream, $accounts accounts x $minutes min, $partitions partitions" \
    --minwidth 0.2 < "$profile/stream.folded" > "$profile/stream.svg"
  rm -f "$profile/perf.data"
  echo "flame graph: $profile/stream.svg"
fi
ev=$(metric banter_stream_events_total); rows=$(metric banter_stream_rows_emitted_total)
tx=$(metric 'banter_stream_transactions_total{outcome="committed"}')
sleep 5.5 # gauges refresh every 5 s
bytes=$(metric banter_stream_state_bytes); posts=$(metric banter_stream_posts); entries=$(metric banter_stream_state_entries)
python3 - "$start" "$end" "$ev" "$rows" "$tx" "$bytes" "$posts" "$entries" "$cpu" <<'PY'
import sys
s, e, ev, rows, tx, b, posts, entries, cpu = map(float, sys.argv[1:])
t = e - s
print(f"{int(ev)} events in {t:.2f} s from process start (polled every 0.2 s): {ev/t:,.0f} events/s end to end")
print(f"{cpu:.2f} CPU-s (user + system, the stream process): {cpu / ev * 1e6:.2f} CPU-s per million events")
print(f"{int(rows)} rollup rows, {int(tx)} transactions, state {b/1e6:.1f} MB, {int(posts)} posts with first-hour state, {int(entries)} state entries")
PY
curl -fsS localhost:9475/metrics | grep -E '^banter_stream_(batch|commit)_seconds_(sum|count)'
[ -z "$profile" ] || echo "(profiled: perf's DWARF sampling adds to the stream's CPU time; compare CPU-s of unprofiled runs only)"
