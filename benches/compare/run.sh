#!/usr/bin/env bash
# Side by side: the same generated workload, from the same topic on the same broker, through
#   (a) `banter stream` (release), then `banter sink` into ClickHouse, and
#   (b) a Kafka Streams 4.1 application (kstreams/, Processor API, exactly_once_v2), and
#   (c) a Flink 2.2 job on a local MiniCluster (flink/, event-time windows, checkpoints and a
#       transactional Kafka sink), and
#   (d) Feldera's dbsp 0.349 (dbsp/, one worker, driven through rdkafka, a Kafka transaction
#       per step),
# one after the other, each pinned to one core (taskset -c 1). All four compute the 1-minute
# interaction counts per account and per post and the 5-minute hopping velocity, with 60 s
# out-of-orderness and 1 h lateness; each result is compared cell by cell with the
# generator's truth (compare.py), and a run fails if banter's, Kafka Streams' or dbsp's differ
# (Flink's too, with --strict-flink; see below why not by default).
#
#   benches/compare/run.sh [--short] [--strict-flink] [ACCOUNTS MINUTES PARTITIONS]   (defaults 1000 360 6)
#   benches/compare/run.sh --live [ACCOUNTS MINUTES PARTITIONS]                       (defaults 20000 10 6)
#
# --live: freshness instead of throughput. The four engines run at once, each from the same
# topic into its own, while `banter generate --live` sends MINUTES of the workload at its
# delivery times (event time is the wall clock); a read_committed follower per output topic
# (Visible.java) notes when each window first became visible there. Reported per engine: the
# MINUTE and VELOCITY_5M windows' first visibility after their end (p50, p90, p99, max), over
# the windows every engine emitted that end at least two minutes before the input does (closed
# by the input's own watermark: Flink's moves with the input only); CPU seconds and peak RSS
# over the run. banter is measured at its topic like the peers (its sink into ClickHouse adds
# about 2 s, see BENCHMARKS.md), with provisional rows off as in the throughput runs.
#
# --short (CI, `cargo test -p banter --test compare`): 30 accounts x 60 minutes; checks the
# counts, reports figures but asserts no speed. BANTER_COMPARE_BIN=path uses that banter binary
# instead of building a release one (the test passes its debug build).
# Figures per engine, from process start until its committed input offsets reach the end of
# the input: wall seconds, events/s, CPU seconds (utime + stime of the process, JVM start and
# JIT included) per million events, peak RSS (VmHWM), output records and records per event.
set -euo pipefail
BANTER_SCRIPT=compare
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
cd "$ROOT"
short=0 strict_flink=0 live=0
while [ "${1:-}" = --short ] || [ "${1:-}" = --strict-flink ] || [ "${1:-}" = --live ]; do
  [ "$1" = --short ] && short=1
  [ "$1" = --strict-flink ] && strict_flink=1
  [ "$1" = --live ] && live=1
  shift
done
if [ "$live" = 1 ]; then def=(20000 10 6); elif [ "$short" = 1 ]; then def=(30 60 3); else def=(1000 360 6); fi
accounts="${1:-${def[0]}}"; minutes="${2:-${def[1]}}"; partitions="${3:-${def[2]}}"
here="$ROOT/benches/compare"

scripts/install-deps.sh
scripts/stack.sh up kafka clickhouse
command -v mvn >/dev/null || apt_install maven
command -v javac >/dev/null || apt_install openjdk-17-jdk-headless
command -v taskset >/dev/null || apt_install util-linux
if [ -n "${BANTER_COMPARE_BIN:-}" ]; then
  bin="$BANTER_COMPARE_BIN"
else
  say "building banter (release)"
  cargo build --release --locked -p banter 2>&1 | tail -1
  bin="$ROOT/target/release/banter"
fi
say "building the dbsp engine (release, its own workspace)"
cargo build --release --locked --manifest-path "$here/dbsp/Cargo.toml" --target-dir "$ROOT/target" 2>&1 | tail -1
dbsp_bin="$ROOT/target/release/banter-compare-dbsp"
[ -x "$dbsp_bin" ] || die "the dbsp engine did not build"
for app in kstreams flink; do
  say "building the $app application (Maven)"
  (cd "$here/$app" && mvn -q -B package -DskipTests \
    && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=target/lib) \
    || die "the $app application did not build (Maven Central reachable?)"
done
cp="$here/kstreams/target/classes:$here/kstreams/target/lib/*"
java=(java -XX:ActiveProcessorCount=1 -Xmx2g -Dorg.slf4j.simpleLogger.defaultLogLevel=error)

run="cmp$(date +%Y%m%d%H%M%S)"
dir="$STACK/$run"; mkdir -p "$dir"
bootstrap="127.0.0.1:${BANTER_KAFKA_PORT:-9092}"
ch_url="http://127.0.0.1:${BANTER_CLICKHOUSE_HTTP_PORT:-8123}/"
# The peers compute final windows only: banter's provisional rows of open windows are off
# here (BANTER_COMPARE_PROVISIONAL_MS=1000 turns them on), so every engine does the same work.
export BANTER_KAFKA__TOPICS__EVENTS="$run.events" BANTER_KAFKA__TOPICS__ROLLUPS="$run.rollups" \
  BANTER_KAFKA__TOPICS__DLQ="$run.dlq" BANTER_KAFKA__TOPICS__ALERTS="$run.alerts" \
  BANTER_KAFKA__TOPICS__CHECKPOINTS="$run.checkpoints" BANTER_KAFKA__TOPICS__PARTITIONS="$partitions" \
  BANTER_STREAM__GROUP_ID="$run-stream" BANTER_SINK__GROUP_ID="$run-sink" \
  BANTER_CLICKHOUSE__DATABASE="banter_$run" BANTER_STREAM__IDLE_TIMEOUT_MS=1000 \
  BANTER_STREAM__PROVISIONAL_INTERVAL_MS="${BANTER_COMPARE_PROVISIONAL_MS:-0}" \
  BANTER_INGEST__ACTOR_SALT=benchmark-salt-0123456789 BANTER_TELEMETRY__LOG_LEVEL=warn
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
# The workload's keyword CTA campaigns (cta.campaigns_file), as scripts/run.sh gives the main
# job's stream: without them banter's funnels of keyword-triggered campaigns would do nothing.
"$bin" generate --accounts "$accounts" --minutes "$minutes" --seed 3 --campaigns "$dir/campaigns.toml" \
  --only-campaigns >"$dir/campaigns.log" 2>&1 || die "generate --campaigns failed: $(tail -3 "$dir/campaigns.log")"
export BANTER_CTA__CAMPAIGNS_FILE="$dir/campaigns.toml"

"$bin" topics >"$dir/topics.log"
# The Kafka Streams application's output topic, made like the rollups topic (the broker does
# not create topics on use; no provisional topic for the peers, which compute none).
BANTER_KAFKA__TOPICS__ROLLUPS="$run.ks-rollups" BANTER_KAFKA__TOPICS__PROVISIONAL="$run.ks-rollups" "$bin" topics >>"$dir/topics.log"
BANTER_KAFKA__TOPICS__ROLLUPS="$run.flink-rollups" BANTER_KAFKA__TOPICS__PROVISIONAL="$run.flink-rollups" "$bin" topics >>"$dir/topics.log"
BANTER_KAFKA__TOPICS__ROLLUPS="$run.dbsp-rollups" BANTER_KAFKA__TOPICS__PROVISIONAL="$run.dbsp-rollups" "$bin" topics >>"$dir/topics.log"
# ClickHouse takes banter's rows in the throughput runs only (live, every engine stops at its topic).
[ "$live" = 1 ] || "$bin" migrate >"$dir/migrate.log"
if [ "$live" = 0 ]; then
  "$bin" generate --to kafka --accounts "$accounts" --minutes "$minutes" --seed 3 \
    --expected "$dir/expected.json" >"$dir/generate.log" 2>&1 || die "generate failed: $(tail -3 "$dir/generate.log")"
  deliveries=$(sed -nE 's/.*sent ([0-9]+) deliveries.*/\1/p' "$dir/generate.log" | tail -1)
  [ -n "$deliveries" ] || die "no delivery count in $dir/generate.log"
  say "$deliveries deliveries in $run.events ($accounts accounts x $minutes minutes, $partitions partitions)"
fi

# utime + stime of a process, in seconds; its peak RSS in MB.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
rss_mb() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
elapsed() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f", e - s}'; }
metric() { curl -m 5 -fsS "http://$1/metrics" | awk -v m="$2" 'index($1, m) == 1 {s += $2} END {printf "%d", s}'; }
# Polls a check until it succeeds or the deadline (seconds) passes.
until_ok() { # deadline what command...
  local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$what: not within the deadline"
    sleep 0.2
  done
}
# A sampler of a consumer group's committed offsets (for the plot), on the other core.
progress() { # group engine
  taskset -c 0 java -Xmx256m -cp "$cp" banter.compare.Progress "$bootstrap" "$run.events" "$1" \
    "$dir/progress-$2.txt" >/dev/null 2>&1 & pids+=($!); sampler=$!
}
# An engine that prints "caught-up" once its committed offsets reach the input's end.
caught_up() { # pid engine log
  kill -0 "$1" 2>/dev/null || die "$2 exited: $(tail -5 "$3")"
  grep -q '^caught-up' "$3"; }
# Reads an engine's output topic (the last value of every window) and compares it with the
# truth: $dir/NAME.dump (records read), NAME.tsv, NAME.compare.
equal_to_truth() { # engine topic name
  timeout 300 "${java[@]}" -cp "$cp" banter.compare.Dump "$bootstrap" "$run.$2" "$dir/$3.tsv" "$ROOT/schemas/avro" \
    >"$dir/$3.dump" 2>&1 \
    && python3 "$here/compare.py" "$dir/expected.json" "$1" "$dir/$3.tsv" >"$dir/$3.compare" 2>&1; }
results="$dir/results.tsv"
printf 'engine\tevents\tseconds\tevents_per_s\tcpu_s\tcpu_s_per_M\tpeak_rss_mb\toutput_records\n' >"$results"
record() { # engine seconds cpu rss records
  awk -v e="$1" -v n="$deliveries" -v t="$2" -v c="$3" -v r="$4" -v o="$5" 'BEGIN {
    printf "%s\t%d\t%.2f\t%.0f\t%.2f\t%.2f\t%d\t%d\n", e, n, t, n / t, c, c * 1e6 / n, r, o }' >>"$results"
}

if [ "$live" = 1 ]; then
  say "live: the four engines at once, $minutes minutes of $accounts accounts' traffic"
  # The idle timeout at banter's default (30 s; 1 s above ends a backlog run quickly): a
  # partition quiet that long moves its watermark on with the wall clock, in banter and in the
  # Kafka Streams application (there only once every partition is read to its end). Under
  # steady traffic neither fires; Flink's job has no such rule.
  idle_ms=30000
  BANTER_STREAM__IDLE_TIMEOUT_MS=$idle_ms BANTER_HTTP__LISTEN=127.0.0.1:9481 "$bin" stream >"$dir/stream.log" 2>&1 &
  stream=$!; pids+=("$stream")
  "${java[@]}" -Dbanter.idle.ms=$idle_ms -cp "$cp" banter.compare.KsApp "$bootstrap" "$run.events" "$run.ks-rollups" \
    "$run-ks" "$dir/ks-state" "$ROOT/schemas/avro" >"$dir/ks.log" 2>&1 & ks=$!; pids+=("$ks")
  "${java[@]}" -cp "$here/flink/target/classes:$here/flink/target/lib/*" banter.compare.FlinkJob \
    "$bootstrap" "$run.events" "$run.flink-rollups" "$run-flink" "$ROOT/schemas/avro" \
    "$dir/flink-checkpoints" --live >"$dir/flink.log" 2>&1 & flink=$!; pids+=("$flink")
  "$dbsp_bin" "$bootstrap" "$run.events" "$run.dbsp-rollups" "$run-dbsp" $idle_ms >"$dir/dbsp.log" 2>&1 &
  db=$!; pids+=("$db")
  followers=()
  for t in banter:rollups kstreams:ks-rollups flink:flink-rollups dbsp:dbsp-rollups; do
    java -Xmx256m -cp "$cp" banter.compare.Visible "$bootstrap" "$run.${t#*:}" "$dir/visible-${t%%:*}.tsv" \
      "$ROOT/schemas/avro" >"$dir/visible-${t%%:*}.log" 2>&1 & followers+=($!); pids+=($!)
  done
  # The span starts on a minute at least 45 s away, so the JVMs are up before the first
  # delivery is due.
  now_ms=$(date +%s%3N); span_start=$(( (now_ms + 45000) / 60000 * 60000 + 60000 ))
  span_end=$(( span_start + minutes * 60000 ))
  say "span: $span_start .. $span_end (event time = wall clock, ms)"
  # Deliveries the workload retries hours later would keep the generator going: it is stopped
  # when the span has passed (exit 124).
  rc=0
  timeout $(( (span_end - now_ms) / 1000 + 10 )) "$bin" generate --to kafka --live --start-ms "$span_start" \
    --accounts "$accounts" --minutes "$minutes" --seed 3 >"$dir/generate.log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 124 ] || die "generate failed: $(tail -3 "$dir/generate.log")"
  for p in "$stream" "$ks" "$flink" "$db"; do kill -0 "$p" 2>/dev/null || die "an engine exited: see $dir"; done
  # The last windows closed by the input (ending two minutes before it does) reach the topics
  # within a few commits and checkpoints.
  sleep 20
  for p in "${followers[@]}"; do kill -0 "$p" 2>/dev/null || die "a follower exited: see $dir/visible-*.log"; done
  kill "${followers[@]}" 2>/dev/null || true; wait "${followers[@]}" 2>/dev/null || true
  printf 'engine\tcpu_s\tpeak_rss_mb\n' >"$dir/live-resources.tsv"
  for e in "banter stream:$stream" "Kafka Streams:$ks" "Flink:$flink" "dbsp:$db"; do
    printf '%s\t%s\t%s\n' "${e%%:*}" "$(cpu_s "${e##*:}")" "$(rss_mb "${e##*:}")" >>"$dir/live-resources.tsv"
  done
  column -t -s $'\t' "$dir/live-resources.tsv"
  python3 "$here/visible.py" "$span_start" "$span_end" "banter stream=$dir/visible-banter.tsv" \
    "Kafka Streams=$dir/visible-kstreams.tsv" "Flink=$dir/visible-flink.tsv" "dbsp=$dir/visible-dbsp.tsv" \
    | tee "$dir/live.txt"
  say "live results in $dir"
  exit 0
fi

# (a) banter: the stream until its input is processed and committed, then the sink.
say "banter stream"
ops=127.0.0.1:9481
progress "$run-stream" banter
start=$(date +%s.%N)
BANTER_HTTP__LISTEN=$ops taskset -c 1 "$bin" stream >"$dir/stream.log" 2>&1 & stream=$!; pids+=("$stream")
stream_done() { kill -0 "$stream" 2>/dev/null || die "banter stream exited: $(tail -5 "$dir/stream.log")"
  [ "$(metric "$ops" banter_stream_events_total 2>/dev/null || echo 0)" -ge "$deliveries" ]; }
until_ok 1800 "banter stream processing the input" stream_done
s_time=$(elapsed "$start"); s_cpu=$(cpu_s "$stream"); s_rss=$(rss_mb "$stream")
s_rows=$(metric "$ops" banter_stream_rows_emitted_total)
kill "$sampler" 2>/dev/null || true
say "banter sink"
sink_ops=127.0.0.1:9482
start=$(date +%s.%N)
BANTER_HTTP__LISTEN=$sink_ops taskset -c 1 "$bin" sink >"$dir/sink.log" 2>&1 & sink=$!; pids+=("$sink")
# The sink has caught up when it has written every row the stream has emitted so far.
written='banter_sink_rows_written_total{table="rollups"'
sink_done() { kill -0 "$sink" 2>/dev/null || die "banter sink exited: $(tail -5 "$dir/sink.log")"
  [ "$(metric "$sink_ops" "$written" 2>/dev/null || echo 0)" -ge "$s_rows" ]; }
until_ok 1800 "banter sink writing the stream's rows" sink_done
w_time=$(elapsed "$start"); w_cpu=$(cpu_s "$sink"); w_rss=$(rss_mb "$sink")
# The last minutes close once the input has been quiet for a minute or two (the idle timeout
# moves the watermark on with the wall clock); then every cell must equal the truth.
banter_equal() {
  curl -fsS "$ch_url" --data-binary "SELECT window_kind, account_id, content_id, window_start_ms, interactions
    FROM banter_$run.rollups_final WHERE window_kind IN ('MINUTE', 'VELOCITY_5M') FORMAT TabSeparated" >"$dir/banter.tsv" \
    && python3 "$here/compare.py" "$dir/expected.json" banter "$dir/banter.tsv" >"$dir/banter.compare" 2>&1; }
until_ok 300 "banter's counts equal to the truth ($(cat "$dir/banter.compare" 2>/dev/null | head -4))" banter_equal
cat "$dir/banter.compare"
# Output records, the last minutes' rows (emitted after the idle timeout) included.
record "banter stream" "$s_time" "$s_cpu" "$s_rss" "$(metric "$ops" banter_stream_rows_emitted_total)"
record "banter sink" "$w_time" "$w_cpu" "$w_rss" "$(metric "$sink_ops" "$written")"
kill "$stream" "$sink" 2>/dev/null || true; wait "$stream" "$sink" 2>/dev/null || true

# (b) Kafka Streams, from the same topic with its own application id and output topic.
say "Kafka Streams"
progress "$run-ks" kstreams
start=$(date +%s.%N)
taskset -c 1 "${java[@]}" -cp "$cp" banter.compare.KsApp "$bootstrap" "$run.events" "$run.ks-rollups" \
  "$run-ks" "$dir/ks-state" "$ROOT/schemas/avro" >"$dir/ks.log" 2>&1 & ks=$!; pids+=("$ks")
until_ok 1800 "Kafka Streams processing the input" caught_up "$ks" "Kafka Streams" "$dir/ks.log"
k_time=$(elapsed "$start"); k_cpu=$(cpu_s "$ks"); k_rss=$(rss_mb "$ks")
kill "$sampler" 2>/dev/null || true
until_ok 300 "Kafka Streams' counts equal to the truth ($(cat "$dir/ks.compare" 2>/dev/null | head -4))" \
  equal_to_truth "Kafka Streams" ks-rollups ks
cat "$dir/ks.compare"
# Output records as the dump read them, the last minutes' rows included.
record "Kafka Streams" "$k_time" "$k_cpu" "$k_rss" "$(awk '{print $1; exit}' "$dir/ks.dump")"
kill "$ks" 2>/dev/null || true; wait "$ks" 2>/dev/null || true

# (c) Flink: the job's source is bounded by the topic's end; it ends once the output of the
# whole input is committed, and prints its own CPU time and peak RSS.
say "Flink"
progress "$run-flink" flink
start=$(date +%s.%N)
timeout 1800 taskset -c 1 "${java[@]}" -cp "$here/flink/target/classes:$here/flink/target/lib/*" banter.compare.FlinkJob \
  "$bootstrap" "$run.events" "$run.flink-rollups" "$run-flink" "$ROOT/schemas/avro" "$dir/flink-checkpoints" \
  >"$dir/flink.log" 2>&1 \
  || die "the Flink job failed: $(grep -m3 -E 'Exception|Error' "$dir/flink.log")"
f_time=$(elapsed "$start")
kill "$sampler" 2>/dev/null || true
f_cpu=$(sed -nE 's/^finished cpu_s=([0-9.]+).*/\1/p' "$dir/flink.log"); f_rss=$(sed -nE 's/^finished .*rss_mb=([0-9]+).*/\1/p' "$dir/flink.log")
[ -n "$f_cpu" ] || die "the Flink job printed no figures: $(tail -3 "$dir/flink.log")"
# Flink's watermark is the minimum over the partitions, moved every 200 ms: deliveries the
# design calls too late (banter's and Kafka Streams' per-partition watermarks drop them) can
# still be counted. Its differences are reported, and fail the run only with --strict-flink.
for _ in 1 2 3; do equal_to_truth Flink flink-rollups flink && break; sleep 2; done || true
cat "$dir/flink.compare" 2>/dev/null || say "Flink's output could not be read: $(tail -3 "$dir/flink.dump" 2>/dev/null)"
say "Flink dropped $(sed -nE 's/^finished .*too_late=([0-9]+).*/\1/p' "$dir/flink.log") deliveries as too late; the truth has $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["expected"]["too_late"]))' "$dir/expected.json")"
if [ "$strict_flink" = 1 ] && ! grep -q '^Flink: all ' "$dir/flink.compare"; then die "Flink's counts differ"; fi
record "Flink" "$f_time" "$f_cpu" "$f_rss" "$(awk '{print $1; exit}' "$dir/flink.dump")"

# (d) dbsp, from the same topic with its own consumer group and output topic.
say "dbsp"
progress "$run-dbsp" dbsp
start=$(date +%s.%N)
taskset -c 1 "$dbsp_bin" "$bootstrap" "$run.events" "$run.dbsp-rollups" "$run-dbsp" 1000 >"$dir/dbsp.log" 2>&1 &
db=$!; pids+=("$db")
until_ok 1800 "dbsp processing the input" caught_up "$db" "the dbsp engine" "$dir/dbsp.log"
d_time=$(elapsed "$start"); d_cpu=$(cpu_s "$db"); d_rss=$(rss_mb "$db")
kill "$sampler" 2>/dev/null || true
until_ok 300 "dbsp's counts equal to the truth ($(cat "$dir/dbsp.compare" 2>/dev/null | head -4))" \
  equal_to_truth dbsp dbsp-rollups dbsp
cat "$dir/dbsp.compare"
record "dbsp" "$d_time" "$d_cpu" "$d_rss" "$(awk '{print $1; exit}' "$dir/dbsp.dump")"
kill "$db" 2>/dev/null || true; wait "$db" 2>/dev/null || true

if [ "$short" = 0 ]; then
  venv="$STACK/compare-venv"
  [ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" -q install 'matplotlib==3.11.2'; } \
    || die "cannot install matplotlib (PyPI) for the plot"
  "$venv/bin/python" "$here/plot.py" "$dir/progress.png" "banter stream=$dir/progress-banter.txt" \
    "Kafka Streams=$dir/progress-kstreams.txt" "Flink=$dir/progress-flink.txt" "dbsp=$dir/progress-dbsp.txt"
  say "plot: $dir/progress.png"
fi
say "results ($results)"
column -t -s $'\t' "$results"
python3 - "$results" <<'PY'
import csv, sys
rows = {r["engine"]: r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t")}
b = float(rows["banter stream"]["cpu_s_per_M"])
bs = b + float(rows["banter sink"]["cpu_s_per_M"])
for peer in ("Kafka Streams", "Flink", "dbsp"):
    p = float(rows[peer]["cpu_s_per_M"])
    print(f"events per CPU-second against {peer}: banter stream {p / b:.2f}x (topic to topic), "
          f"banter stream + sink into ClickHouse {p / bs:.2f}x")
PY
