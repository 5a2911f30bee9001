#!/usr/bin/env bash
# Ingest benchmark: HTTP batches of 100 events through to broker acknowledgement.
# Starts the local Kafka, a release `banter ingest` on :8081, and runs wrk against it.
#   benches/ingest/run.sh [CONNECTIONS] [SECONDS]      (defaults 128, 20)
set -euo pipefail
cd "$(dirname "$0")/../.."
conns="${1:-128}"; secs="${2:-20}"
command -v wrk >/dev/null || { echo "installing wrk"; apt-get install -y -qq wrk >/dev/null; }
scripts/stack.sh up kafka
cargo build --release --locked -p banter
bin=target/release/banter
$bin topics >/dev/null
body="$(mktemp)"; python3 benches/ingest/make_body.py "$body"
export BANTER_INGEST__ACTOR_SALT=benchmark-salt-0123456789 BANTER_INGEST__LISTEN=127.0.0.1:8081 \
  BANTER_HTTP__LISTEN=127.0.0.1:9474 BANTER_TELEMETRY__LOG_LEVEL=warn
$bin ingest & pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$body"' EXIT
for _ in $(seq 1 100); do curl -fsS -o /dev/null localhost:9474/readyz 2>/dev/null && break; sleep 0.2; done
wrk -t2 -c"$conns" -d"${secs}s" --latency -s benches/ingest/post_events.lua http://127.0.0.1:8081/v1/events -- "$body"
echo "events/s = requests/s x 100"
curl -fsS localhost:9474/metrics | grep -E '^banter_ingest_(transactions_total|commit_duration_seconds_(sum|count))'
