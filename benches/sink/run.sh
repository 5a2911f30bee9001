#!/usr/bin/env bash
# Sink benchmark against the real broker and ClickHouse.
#  1. Throughput: a generated workload goes through a release `banter stream` into a rollups
#     topic; then `banter sink` starts on a fresh database and we time it until every rollup
#     row is acknowledged by ClickHouse (rows/s).
#  2. Latency: a live run (events at wall-clock time through ingest → stream → sink) for a few
#     minutes; per MINUTE row, inserted_at - window_end: how long after a minute ends its
#     numbers are visible in ClickHouse (includes the stream's 60 s out-of-orderness); the
#     provisional rows' freshness; and, per spike the generator injected, when its post's alert
#     was first visible in ClickHouse, early (revision 0) or at close (revision 1), after the
#     spike's start (a run long enough for baselines: 10 minutes of history come first).
#   benches/sink/run.sh [ACCOUNTS] [MINUTES] [LIVE_MINUTES]      (defaults 2000, 360, 4)
#   BANTER_BENCH_LIVE_ACCOUNTS: accounts of the live run (1000: about 19 events/s)
#   BANTER_BENCH_SKIP_THROUGHPUT=1 / BANTER_BENCH_SKIP_LATENCY=1: run only the other part
#   BANTER_BENCH_LOG_LEVEL: the roles' log filter (default warn; e.g. warn,banter_stream::kafka::batch=debug)
#   BANTER_BENCH_ONE_LANE=1: provisional rows on the rollups topic, one sink lane (as before they
#     had a topic of their own), to compare the two on one build
#   BANTER_STREAM__PROVISIONAL_IN_TRANSACTION=false: provisional rows sent at once by a producer
#     of their own, outside the batch's transaction (the default is in it; not with
#     BANTER_BENCH_ONE_LANE, where they share the rollups topic), to compare the two
set -euo pipefail
cd "$(dirname "$0")/../.."
accounts="${1:-2000}"; minutes="${2:-360}"; live="${3:-4}"
scripts/stack.sh up >/dev/null
cargo build --release --locked -p banter 2>&1 | tail -1
bin=target/release/banter
ch=http://127.0.0.1:${BANTER_CLICKHOUSE_HTTP_PORT:-8123}/
metric() { curl -fsS "localhost:$1/metrics" | awk -v m="$2" 'index($1, m) == 1 {s += $2} END {printf "%d", s}'; }
# A histogram's count and p50 / p99 / max as bucket bounds (upper bounds of the true values),
# since the metrics in file BASE were read (the live span's start; empty: since the start).
# NOW: a file of metrics read before (empty: read them now).
hist() { # port name what [BASE [LABELS, e.g. phase="events" [NOW]]]
  { if [ -n "${6:-}" ]; then cat "$6"; else curl -fsS "localhost:$1/metrics"; fi; } | python3 -c '
import sys, re
name, what, base, labels = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def buckets(text):
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^" + name + r"_bucket\{le=\"([^\"]+)\"" + ("," + re.escape(labels) if labels else "") + r"\} (\S+)", text, re.M)}
now = buckets(sys.stdin.read())
before = buckets(open(base).read()) if base else {}
b = sorted((float("inf") if le == "+Inf" else float(le), c - before.get(le, 0.0)) for le, c in now.items())
n = b[-1][1] if b else 0
def q(p): return next(le for le, c in b if c >= p * n) if n else float("nan")
print(f"  {what} {n:.0f}: p50 <= {q(0.5):g}, p99 <= {q(0.99):g}, max <= {q(1.0):g} (bucket bounds)")' "$2" "$3" "${4:-}" "${5:-}" || echo "  $3 not read"
}
# CPU seconds (user + system) of processes, and of the whole machine, from /proc.
cpu_of() { # pid...
  local t=0 p; for p in "$@"; do  # utime and stime: fields 14 and 15, counted after the ")" ending the name
    t=$(( t + $( { sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true; } | awk '{s = $12 + $13} END {print s + 0}') )); done; echo "$t"
}
machine_cpu() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
setup() { # run-name
  export BANTER_KAFKA__TOPICS__EVENTS="$1.events" BANTER_KAFKA__TOPICS__ROLLUPS="$1.rollups" \
    BANTER_KAFKA__TOPICS__DLQ="$1.dlq" BANTER_KAFKA__TOPICS__ALERTS="$1.alerts" \
    BANTER_KAFKA__TOPICS__CHECKPOINTS="$1.checkpoints" BANTER_STREAM__GROUP_ID="$1" BANTER_SINK__GROUP_ID="$1-sink" \
    BANTER_STREAM__INSTANCE_ID=bench BANTER_CLICKHOUSE__DATABASE="$1" \
    BANTER_INGEST__ACTOR_SALT=benchmark-salt-0123456789 BANTER_INGEST__META_APP_SECRET=bench-secret \
    BANTER_INGEST__LISTEN=127.0.0.1:8082 BANTER_TELEMETRY__LOG_LEVEL="${BANTER_BENCH_LOG_LEVEL:-warn}"
  if [ "${BANTER_BENCH_ONE_LANE:-0}" = 1 ]; then export BANTER_KAFKA__TOPICS__PROVISIONAL="$1.rollups"; fi
  $bin topics >/dev/null; $bin migrate >/dev/null
}
# Every sample file goes in one scratch directory, removed on exit: the live run's samples of
# provisional rows reach gigabytes.
scratch=$(mktemp -d)
pids=(); trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$scratch"' EXIT
role() { BANTER_HTTP__LISTEN="127.0.0.1:$2" $bin "$1" & pids+=($!); for _ in $(seq 1 100); do curl -fsS -o /dev/null "localhost:$2/readyz" 2>/dev/null && return; sleep 0.1; done; }

if [ "${BANTER_BENCH_SKIP_THROUGHPUT:-0}" != 1 ]; then
echo "== throughput =="
run="sinkbench$(date +%s)"; setup "$run"
$bin generate --to kafka --accounts "$accounts" --minutes "$minutes" --seed 5 2>&1 | tail -1
role stream 9476
# Let the stream finish: its row counter stops moving.
last=-1; while :; do sleep 2; r=$(metric 9476 banter_stream_rows_emitted_total); [ "$r" = "$last" ] && [ "$r" -gt 0 ] && break; last=$r; done
echo "stream wrote $r rollup rows"
ch_cpu0=$(cpu_of $(pgrep -f clickhouse-server)); machine0=$(machine_cpu)
start=$(date +%s.%N); role sink 9477; sink_pid=${pids[-1]}
first=""
while :; do
  w=$(metric 9477 'banter_sink_rows_written_total{table="rollups"}') || w=0 # the stream's count is of rollup rows
  [ -z "$first" ] && [ "$w" -gt 0 ] && first=$(date +%s.%N)
  [ "$w" -ge "$r" ] && break
  sleep 0.05
done
end=$(date +%s.%N)
python3 -c "import sys; r,s,e,f=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]); print(f'sink: {r} rows in {e-s:.2f} s from process start: {r/(e-s):,.0f} rows/s ({e-f:.2f} s from the first rows in, {f-s:.2f} s before them: start, group join, first batch)')" "$r" "$start" "$end" "$first"
python3 -c "import sys; t=int(sys.argv[1]); s,c,m=(int(a)/t for a in sys.argv[2:]); print(f'CPU seconds meanwhile: sink {s:.2f}, ClickHouse {c:.2f} (its background merges included), machine {m:.2f}')" \
  "$(getconf CLK_TCK)" "$(cpu_of $sink_pid)" "$(( $(cpu_of $(pgrep -f clickhouse-server)) - ch_cpu0 ))" "$(( $(machine_cpu) - machine0 ))"
curl -fsS localhost:9477/metrics | grep -E '^banter_sink_(insert_seconds|batch_rows)_(sum|count)'
for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; pids=()
fi

[ "${BANTER_BENCH_SKIP_LATENCY:-0}" = 1 ] && exit 0
echo "== latency (live, $live minutes) =="
run="sinklive$(date +%s)"; setup "$run"
export BANTER_STREAM__IDLE_TIMEOUT_MS=5000
BANTER_HTTP__LISTEN=127.0.0.1:9478 $bin ingest & pids+=($!); ingest_pid=$!
role stream 9476; stream_pid=${pids[-1]}; role sink 9477; sink_pid=${pids[-1]}
sleep 1
# Provisional rows are replaced by their final rows when ClickHouse merges parts, so they are
# sampled while the run goes: each second, those inserted in the last 10 s.
samples=$(mktemp -p "$scratch"); provisional_sampler() {
  while :; do
    curl -fsS "$ch" --data-binary "SELECT account_id, content_id, window_kind, window_start_ms, window_end_ms, revision,
      emitted_at_ms, toInt64(inserted_at) FROM $run.rollups WHERE revision < 0 AND inserted_at >= now() - 10
      FORMAT TabSeparated" >>"$samples" 2>/dev/null || true
    sleep 1
  done
}
provisional_sampler & pids+=($!)
# Alerts: when each (alert, revision) was first visible, sampled each second.
alert_samples=$(mktemp -p "$scratch"); alert_sampler() {
  while :; do
    now=$(date +%s%3N)
    curl -fsS "$ch" --data-binary "SELECT alert_id, revision, content_id, started_at_ms, ifNull(ended_at_ms, 0)
      FROM $run.alerts FORMAT TabSeparated" 2>/dev/null | awk -v t="$now" '{print t "\t" $0}' >>"$alert_samples" || true
    sleep 1
  done
}
alert_sampler & pids+=($!)
# Where a final row's time goes besides the out-of-orderness: the stream's unread input and
# how far its watermark trails the wall clock, sampled every 2 s (with the generator's
# --progress below: how far the accepted input trailed its delivery times).
lag_samples=$(mktemp -p "$scratch"); lag_sampler() {
  while :; do
    m=$(curl -fsS localhost:9476/metrics 2>/dev/null) || { sleep 2; continue; }
    printf '%s\t%s\n' \
      "$(awk '/^banter_stream_consumer_lag_records/ {s += $2} END {printf "%d", s}' <<<"$m")" \
      "$(awk '/^banter_stream_watermark_lag_seconds/ {if ($2 > x) x = $2} END {printf "%.1f", x}' <<<"$m")" >>"$lag_samples"
    sleep 2
  done
}
lag_sampler & pids+=($!)
progress=$(mktemp -p "$scratch")
expected=$(mktemp -p "$scratch")
# Live: each event is sent when the wall clock reaches its time. The span starts on the first
# minute far enough away for the generator to make the workload first (it takes about 20 s
# per 100,000 accounts; 50 s are allowed, plus 45 s). The generator also sends late
# deliveries up to 50 minutes after the span; stop it when the span is over.
live_accounts="${BANTER_BENCH_LIVE_ACCOUNTS:-1000}"
now_ms=$(date +%s%3N); span_start=$(( (now_ms + 45000 + live_accounts / 2 + 59999) / 60000 * 60000 ))
span_end=$(( span_start + live * 60000 ))
# Where the CPU goes during the span: each role, the broker, ClickHouse, and the rest of the
# machine (the generator, the samplers), sampled at the span's start and end.
cpu_samples=$(mktemp -p "$scratch"); stream_at_start=$(mktemp -p "$scratch"); sink_at_start=$(mktemp -p "$scratch")
stream_at_end=$(mktemp -p "$scratch"); cpu_sampler() {
  local at secs; for at in "$span_start" "$span_end"; do
    secs=$(( (at - $(date +%s%3N)) / 1000 )); [ "$secs" -gt 0 ] && sleep "$secs"
    # The histograms at the span's start: what the report counts from.
    if [ "$at" = "$span_start" ]; then
      curl -fsS localhost:9476/metrics >"$stream_at_start" || echo "  (the stream's metrics at the span's start not read: its histograms count from its start)"
      curl -fsS localhost:9477/metrics >"$sink_at_start" || echo "  (the sink's metrics at the span's start not read: its histograms count from its start)"
    else # and at its end: the batches while input comes, apart from those closing the last minutes
      curl -fsS localhost:9476/metrics >"$stream_at_end" || true
    fi
    echo "$(cpu_of $ingest_pid) $(cpu_of $stream_pid) $(cpu_of $sink_pid) $(cpu_of $(pgrep -f kafka.Kafka)) $(cpu_of $(pgrep -f clickhouse-server)) $(machine_cpu)" >>"$cpu_samples"
  done
}
cpu_sampler & pids+=($!)
timeout $(( (span_end - now_ms) / 1000 + 10 )) $bin generate --to webhook --url http://127.0.0.1:8082 --live \
  --start-ms "$span_start" --accounts "$live_accounts" --minutes "$live" --seed 9 --expected "$expected" \
  --progress "$progress" 2>&1 | tail -1 || true
accepted=$(metric 9478 banter_ingest_events_accepted_total)
echo "ingest accepted $accepted events in the $live-minute span (about $(( accepted / (live * 60) )) events/s)"
python3 - "$cpu_samples" "$live" "$accepted" "$(getconf CLK_TCK)" "$(nproc)" <<'PY'
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 6]
if len(rows) == 2:
    secs, tck = int(sys.argv[2]) * 60, int(sys.argv[4])
    d = [(b - a) / tck for a, b in zip(*rows)]
    names = ["ingest", "stream", "sink", "broker", "ClickHouse"]
    rest = d[5] - sum(d[:5])
    parts = ", ".join(f"{n} {v / secs:.2f}" for n, v in zip(names, d)) + f", the rest (generator, samplers, kernel) {rest / secs:.2f}"
    print(f"CPU during the span, cores busy on average: {parts}; machine {d[5] / secs:.2f} of {sys.argv[5]}")
    ev = int(sys.argv[3])
    if ev:
        print(f"  per 1,000 events accepted: stream {d[1] / ev * 1000:.3f} CPU-s, sink {d[2] / ev * 1000:.3f}, ClickHouse {d[4] / ev * 1000:.3f}")
else:
    print("CPU during the span: not sampled (the span's start or end was missed)")
PY
sleep 75 # the last minutes close (out-of-orderness + idle timeout)
echo "lag besides the out-of-orderness"
python3 - "$progress" "$lag_samples" <<'PY'
import sys
q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))] if v else float("nan")
behind = [int(w) - int(d) for w, d in (l.split() for l in open(sys.argv[1]) if len(l.split()) == 2)]
behind = [b / 1000 for b in behind if b > -3_600_000]  # late deliveries are due hours later
print(f"  generator + ingest: accepted input behind its delivery time p50 {q(behind, 0.5):.1f} s, p99 {q(behind, 0.99):.1f} s, max {max(behind, default=float('nan')):.1f} s ({len(behind)} requests)")
rows = [l.split("\t") for l in open(sys.argv[2]) if l.strip()]
lag = [int(r[0]) for r in rows]; wm = [float(r[1]) for r in rows if float(r[1]) > 0]
print(f"  stream: unread input p50 {q(lag, 0.5)} records, max {max(lag, default=0)}; watermark behind the wall clock p50 {q(wm, 0.5):.1f} s, max {max(wm, default=float('nan')):.1f} s ({len(rows)} samples)")
PY
# First appearance of each final MINUTE row (revision >= 0) in ClickHouse relative to the end
# of its minute.
final_minutes() { # extra condition on the rows
  curl -fsS "$ch" --data-binary "SELECT count() AS minute_rows, quantiles(0.5, 0.9, 0.99)(d) AS p50_p90_p99_seconds
    FROM (SELECT min(toInt64(inserted_at)) - intDiv(any(window_end_ms), 1000) AS d FROM $run.rollups
          WHERE window_kind = 'MINUTE' AND revision >= 0 $1
          GROUP BY account_id, content_id, window_start_ms) FORMAT PrettyCompactMonoBlock"
}
echo "final MINUTE rows: first visible, seconds after the minute's end"
final_minutes ""
# The span's last two minutes close only once the input stops (the idle timeout after the
# generator's last, late, deliveries): steady traffic closes the others.
echo "  the minutes closed by later input (all but the span's last two):"
final_minutes "AND window_end_ms <= $span_end - 120000"
# The stream's histograms over the span (input coming), and after it (input stopped: each
# partition idle, the last minutes closed by moving its watermark on).
stream_report() { # base now
  hist 9476 banter_stream_provisional_lag_seconds "provisional rows, receipt -> emission (banter_stream_provisional_lag_seconds):" "$1" "" "$2"
  hist 9476 banter_stream_batch_seconds "stream batches, commit included:" "$1" "" "$2"
  hist 9476 banter_stream_commit_seconds "  their commits:" "$1" "" "$2"
  for phase in events outputs idle idle_advance provisional provisional_outputs changelog; do
    hist 9476 banter_stream_batch_phase_seconds "  of which $phase$([ "${phase#provisional_}" = outputs ] && echo " (summed over threads)"):" "$1" "phase=\"$phase\"" "$2"
  done
}
# Provisional rows (revision < 0, stream.provisional_interval_ms): an event is visible once the
# stream has shown its window (receipt -> emission: the stream's histogram, per emission, from
# the earliest event it shows first) and the sink has inserted that row (emission -> visible:
# inserted_at, whole seconds, so its end plus 1 s: an upper bound, minus emitted_at, the
# stream's clock at emission). What an emitted row waits for: the stream's transaction (by default), then
# the sink's insert.
if [ -s "$stream_at_end" ]; then
  echo "the stream during the span (input coming), seconds:"
  stream_report "$stream_at_start" "$stream_at_end"
  echo "the stream after the span (input stopped, the last minutes closed by idle partitions), seconds:"
  stream_report "$stream_at_end" ""
else
  echo "the stream from the span's start (its end's metrics not read), seconds:"
  stream_report "$stream_at_start" ""
fi
wait_s=$(curl -fsS localhost:9476/metrics | awk '$1 == "banter_stream_output_wait_seconds_total" {print $2}' || true)
echo "  stream batches waiting for room in the producer's queue, since the stream started: ${wait_s:-not read} s (banter_stream_output_wait_seconds_total)"
hist 9477 banter_sink_insert_seconds "sink inserts:" "$sink_at_start"
hist 9477 banter_sink_batch_rows "sink batch rows, inserts:" "$sink_at_start"
minute_keys=$(curl -fsS "$ch" --data-binary "SELECT count() FROM (SELECT 1 FROM $run.rollups WHERE window_kind = 'MINUTE'
  AND revision >= 0 GROUP BY account_id, content_id, window_start_ms)")
echo "provisional rows (sampled): emission -> visible in ClickHouse, and MINUTE keys shown before their minute ended"
python3 - "$samples" "$minute_keys" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if len(f) == 8:
        rows[tuple(f[:6])] = (int(f[4]), int(f[6]), int(f[7]))
# inserted_at is whole seconds: its second's end is an upper bound of when the row was in.
d = sorted((ins + 1) * 1000 - emitted for (_, _, _, _, _, _), (_, emitted, ins) in rows.items())
q = lambda p: d[min(len(d) - 1, int(p * len(d)))] if d else float("nan")
print(f"  {len(d)} provisional rows: emission -> visible p50 <= {q(0.5)} ms, p99 <= {q(0.99)} ms, max <= {d[-1] if d else 'n/a'} ms")
first = {}
for k, (end, _, ins) in rows.items():
    if k[2] == "MINUTE":
        key = k[:4]
        t = (ins + 1) * 1000
        if key not in first or t < first[key][0]:
            first[key] = (t, end)
open_ = sum(1 for f, end in first.values() if f <= end)
print(f"  MINUTE keys: {sys.argv[2]} final, {len(first)} shown provisionally, {open_} of them before their minute ended")
PY
echo "spike alerts: first visible in ClickHouse after the injected spike's start (sampled each second)"
python3 - "$alert_samples" "$expected" <<'PY'
import json, sys
first = {}
rows = {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if len(f) != 6:
        continue
    t, aid, rev, content, started, ended = int(f[0]), f[1], int(f[2]), f[3], int(f[4]), int(f[5])
    first[(aid, rev)] = min(first.get((aid, rev), t), t)
    rows[aid] = (content, started, ended)
spikes = json.load(open(sys.argv[2]))["expected"]["spikes"]
M = 60000
early, final, sent = [], [], []
for s in spikes:
    lo = s["start_ms"] - s["start_ms"] % M - 2 * M
    ids = [a for a, (c, st, _) in rows.items() if c == s["content_id"] and lo <= st < s["end_ms"]]
    e = [first[(a, 0)] for a in ids if (a, 0) in first]
    f = [first[(a, 1)] for a in ids if (a, 1) in first]
    if e: early.append(min(e) - s["start_ms"])
    if f: final.append(min(f) - s["start_ms"])
    if e or f: sent.append(min(e + f) - s["start_ms"])
withdrawn = sum(1 for a, (c, st, en) in rows.items() if (a, 2) in first and (a, 1) not in first and en == st)
q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))] / 1000 if v else float("nan")
print(f"  {len(spikes)} injected spikes; {len(final)} with a post alert (revision 1), {len(early)} of them also early (revision 0); {withdrawn} early alerts withdrawn")
print(f"  first alert of the spike: p50 {q(sent, 0.5):.0f} s, p90 {q(sent, 0.9):.0f} s after its start; the closed minute's alone: p50 {q(final, 0.5):.0f} s, p90 {q(final, 0.9):.0f} s")
PY
