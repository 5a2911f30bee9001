#!/usr/bin/env bash
# The main job: the whole pipeline on a generated workload, ending with a summary read back
# from ClickHouse.
#
#   local stack up → banter topics → banter migrate → banter ingest + stream + sink + alert
#   → banter generate (signed Meta webhooks and first-party events into ingest)
#   → wait until everything is in ClickHouse → summary from ClickHouse (and Alertmanager)
#
# Each run gets its own topics (banter.<run>.*), consumer groups and ClickHouse database
# (banter_<run>), so the summary is this run's alone; the names are printed at the end.
# Options (environment): BANTER_RUN_ACCOUNTS (default 50), BANTER_RUN_MINUTES (default 360),
# BANTER_RUN_SEED (default 42), BANTER_RUN_KEEP=1 to leave the roles running afterwards.
set -euo pipefail
BANTER_SCRIPT=run
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

scripts/install-deps.sh
scripts/stack.sh up
say "building banter (release)"
cargo build --release --locked -p banter
bin="$ROOT/target/release/banter"

run="run$(date +%Y%m%d%H%M%S)"
run_dir="$STACK/$run"; mkdir -p "$run_dir"
export BANTER_KAFKA__TOPICS__EVENTS="banter.$run.events.v1" BANTER_KAFKA__TOPICS__ROLLUPS="banter.$run.rollups.v1" \
  BANTER_KAFKA__TOPICS__ALERTS="banter.$run.alerts.v1" BANTER_KAFKA__TOPICS__DLQ="banter.$run.dlq.v1" \
  BANTER_KAFKA__TOPICS__CHECKPOINTS="banter.$run.stream-checkpoints.v1" \
  BANTER_STREAM__GROUP_ID="banter-stream-$run" BANTER_SINK__GROUP_ID="banter-sink-$run" \
  BANTER_CLICKHOUSE__DATABASE="banter_$run" \
  BANTER_STREAM__IDLE_TIMEOUT_MS=2000
export BANTER_INGEST__ACTOR_SALT="${BANTER_INGEST__ACTOR_SALT:-local-run-salt-$(hostname)}"
export BANTER_INGEST__META_APP_SECRET="${BANTER_INGEST__META_APP_SECRET:-local-run-app-secret}"
export BANTER_INGEST__LISTEN="${BANTER_INGEST__LISTEN:-127.0.0.1:8080}"
export BANTER_TELEMETRY__LOG_LEVEL="${BANTER_TELEMETRY__LOG_LEVEL:-warn}"
ch_url="http://127.0.0.1:${BANTER_CLICKHOUSE_HTTP_PORT:-8123}/"
ops_ingest=127.0.0.1:9464 ops_stream=127.0.0.1:9465 ops_sink=127.0.0.1:9466 ops_alert=127.0.0.1:9467
am_url="http://127.0.0.1:${BANTER_ALERTMANAGER_PORT:-9093}"
export BANTER_ALERTING__ALERTMANAGER_URL="${BANTER_ALERTING__ALERTMANAGER_URL:-$am_url}"

"$bin" topics >"$run_dir/topics.log"
"$bin" migrate | tee "$run_dir/migrate.log" | tail -1

# The CTA campaigns of the generated workload's CTA posts, for the stream (cta.campaigns_file).
workload=(--accounts "${BANTER_RUN_ACCOUNTS:-50}" --minutes "${BANTER_RUN_MINUTES:-360}" --seed "${BANTER_RUN_SEED:-42}")
"$bin" generate "${workload[@]}" --campaigns "$run_dir/campaigns.toml" --only-campaigns 2>/dev/null
export BANTER_CTA__CAMPAIGNS_FILE="$run_dir/campaigns.toml"

# Prometheus (scripts/stack.sh) scrapes the roles' ops ports while they run.
targets="$STACK/prometheus/targets/$run.json"
mkdir -p "$(dirname "$targets")"
printf '[{"targets": ["%s", "%s", "%s"]}]\n' "$ops_stream" "$ops_sink" "$ops_alert" >"$targets"
pids=()
cleanup() {
  [ "${BANTER_RUN_KEEP:-0}" = 1 ] && return 0
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -f "$targets"
}
trap cleanup EXIT
start() { # role ops-address
  BANTER_HTTP__LISTEN="$2" "$bin" "$1" >"$run_dir/$1.log" 2>&1 & pids+=($!)
  local pid=$!
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://$2/readyz" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || die "banter $1 exited: $(tail -5 "$run_dir/$1.log")"
    sleep 0.2
  done
  die "banter $1 is not ready: $(curl -s "http://$2/readyz")"
}
start ingest "$ops_ingest"
start stream "$ops_stream"
start sink "$ops_sink"
start alert "$ops_alert"
metric() { curl -fsS "http://$1/metrics" | awk -v m="$2" 'index($1, m) == 1 {s += $2} END {printf "%d", s}'; }

say "generating ${BANTER_RUN_MINUTES:-360} minutes of engagement for ${BANTER_RUN_ACCOUNTS:-50} accounts into ingest"
started=$(date +%s)
"$bin" generate --to webhook --url "http://$BANTER_INGEST__LISTEN" \
  "${workload[@]}" --expected "$run_dir/expected.json" 2>&1 | tee "$run_dir/generate.log" | tail -1

say "waiting for the stream and the sink to drain into ClickHouse"
accepted=$(metric "$ops_ingest" banter_ingest_events_accepted_total)
q() { curl -fsS "$ch_url" --data-binary "$1"; }
deadline=$(( $(date +%s) + 300 )); last=-1; stable=0
while :; do
  processed=$(metric "$ops_stream" banter_stream_events_total)
  rows=$(q "SELECT count() FROM banter_$run.rollups" 2>/dev/null || echo 0)
  if [ "$processed" -ge "$accepted" ] && [ "$rows" = "$last" ] && [ "$rows" -gt 0 ]; then
    stable=$((stable + 1)); [ $stable -ge 3 ] && break
  else
    stable=0
  fi
  last=$rows
  [ "$(date +%s)" -lt $deadline ] || die "the pipeline did not drain within 300 s (stream processed $processed of $accepted events, $rows rows in ClickHouse); logs in $run_dir"
  sleep 2
done
elapsed=$(( $(date +%s) - started ))
sleep 3 # alert delivery sends what the last transactions fired and resolved
for role in ingest stream sink alert; do
  eval "curl -fsS \"http://\$ops_$role/metrics\"" >"$run_dir/$role.metrics.txt"
done

db="banter_$run"
echo
echo "== banter run $run: summary from ClickHouse (database $db) =="
python3 - "$run_dir" "$accepted" "$elapsed" <<'PY'
import json, sys, os
d, accepted, elapsed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def total(role, prefix):
    lines = open(os.path.join(d, f"{role}.metrics.txt")).read().splitlines()
    return int(sum(float(l.rsplit(" ", 1)[1]) for l in lines if l.startswith(prefix)))
x = json.load(open(os.path.join(d, "expected.json")))["expected"]
print(f"workload     {x['unique_events']} events + {x['duplicates']} duplicate deliveries, "
      f"{len(x['spikes'])} injected spikes, {len(x['funnels'])} CTA campaigns; {elapsed} s from first request to ClickHouse")
print(f"ingest       {accepted} events accepted, {total('ingest', 'banter_ingest_events_rejected_total')} dead-lettered")
print(f"stream       {total('stream', 'banter_stream_events_total')} events, "
      f"{total('stream', 'banter_stream_duplicate_events_total')} duplicates dropped, "
      f"{total('stream', 'banter_stream_late_events_total')} late corrections, "
      f"{total('stream', 'banter_stream_too_late_events_total')} too late (dead-lettered), "
      f"{total('stream', 'banter_stream_rows_emitted_total')} rollup rows")
print(f"sink         {total('sink', 'banter_sink_rows_written_total')} rows written, "
      f"{total('sink', 'banter_sink_rows_rejected_total')} rejected, {total('sink', 'banter_sink_insert_retries_total')} retries")
fired, resolved = (total('stream', f'banter_stream_alerts_total{{state="{s}"') for s in ("FIRING", "RESOLVED"))
sent_f, sent_r = (total('alert', f'banter_alert_sent_total{{state="{s}"') for s in ("firing", "resolved"))
failed = total('alert', 'banter_alert_posts_total{outcome="error"')
print(f"alerts       {fired} fired, {resolved} resolved; to Alertmanager: {sent_f} firing sends, "
      f"{sent_r} resolved, {failed} failed posts")
PY
echo
echo "Top posts by first-15-minute velocity (interactions per minute in the first 15 minutes):"
q "SELECT f15.content_id AS post, f15.account_id AS account, round(f15.interactions / 15, 2) AS per_min_15m,
         f15.interactions AS first_15m, f60.interactions AS first_60m, round(f60.early_accel, 2) AS accel,
         round(f60.time_to_n_minutes, 2) AS minutes_to_50, f60.unique_engagers AS engagers_60m
   FROM (SELECT * FROM $db.rollups_final WHERE window_kind = 'FIRST_15M') AS f15
   ANY LEFT JOIN (SELECT content_id, interactions, early_accel, time_to_n_minutes, unique_engagers
                  FROM $db.rollups_final WHERE window_kind = 'FIRST_60M') AS f60 USING content_id
   ORDER BY first_15m DESC, post LIMIT 10 FORMAT PrettyCompactMonoBlock"
echo
echo "Busiest 5-minute windows (velocity = interactions per minute):"
q "SELECT content_id AS post, account_id AS account, window_start, velocity, interactions
   FROM $db.rollups_final WHERE window_kind = 'VELOCITY_5M' AND content_id != ''
   ORDER BY velocity DESC, post LIMIT 5 FORMAT PrettyCompactMonoBlock"
echo
echo "Dead letters by stage and reason:"
q "SELECT stage, reason, count() AS n FROM $db.dead_letters FINAL GROUP BY stage, reason ORDER BY n DESC FORMAT PrettyCompactMonoBlock"
echo
echo "Conversations: most-addressed accounts (inbound items, brand answers, response times):"
q "SELECT account_id AS account, sum(inbound) AS items, sum(inbound_comments) AS comments, sum(inbound_story_replies) AS story_replies,
         sum(inbound_dms) AS dms, sum(answered) AS answers, round(100 * sum(answered) / greatest(sum(inbound), 1), 1) AS rate_pct,
         round(avg(median_response_s) / 60, 1) AS median_min, round(avg(p90_response_s) / 60, 1) AS p90_min,
         round(sum(reply_comments) / greatest(sum(root_comments), 1), 2) AS replies_per_root
   FROM $db.conversations_final WHERE window_kind = 'HOUR' AND content_id = ''
   GROUP BY account ORDER BY items DESC, account LIMIT 8 FORMAT PrettyCompactMonoBlock"
echo
echo "CTA funnel per campaign (distinct actors per stage; value of attributed conversions):"
q "SELECT campaign_id AS campaign, any(account_id) AS account, sum(triggered) AS triggers, sum(private_reply_sent) AS replied,
         sum(dm_read) AS read, sum(engaged) AS engaged, sum(link_clicked) AS clicks, sum(converted) AS conversions,
         round(sum(conversion_value), 2) AS value, round(100 * sum(converted) / greatest(sum(triggered), 1), 1) AS conv_pct,
         round(avg(median_trigger_to_reply_s), 1) AS reply_s
   FROM $db.funnels_final WHERE window_kind = 'HOUR' GROUP BY campaign ORDER BY triggers DESC, campaign FORMAT PrettyCompactMonoBlock"
echo
echo "Spike alerts (first 12 by onset; observed and z of the minute that fired; early: sent before its minutes closed):"
q "SELECT account_id AS account, if(content_id = '', '(account)', content_id) AS post,
         toDateTime(intDiv(started_at_ms, 1000)) AS onset,
         round((max(ifNull(ended_at_ms, 0)) - started_at_ms) / 60000) AS minutes,
         minIf(observed, revision = 1) AS observed, round(minIf(baseline_mean, revision = 1), 1) AS baseline,
         round(minIf(z_score, revision = 1), 1) AS z, if(countIf(revision = 0) > 0, 'yes', '') AS early,
         argMax(state, revision) AS latest
   FROM $db.alerts FINAL GROUP BY alert_id, account_id, content_id, started_at_ms
   ORDER BY onset, account, post LIMIT 12 FORMAT PrettyCompactMonoBlock"
echo
echo "== banter run $run: every metric against the generator's truth (banter verify) =="
verified=0
"$bin" verify --expected "$run_dir/expected.json" --wait 120 | tee "$run_dir/verify.txt" || verified=$?
cat <<MSG

Alertmanager ($BANTER_ALERTING__ALERTMANAGER_URL) received the spike alerts: curl $BANTER_ALERTING__ALERTMANAGER_URL/api/v2/alerts
shows those still firing. Topics banter.$run.*, database $db, logs and metrics in $run_dir.
MSG
if [ "$verified" != 0 ]; then
  echo "run.sh: ClickHouse differs from the generator's truth (above; $run_dir/verify.txt)" >&2
  exit 1
fi
