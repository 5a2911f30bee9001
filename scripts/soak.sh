#!/usr/bin/env bash
# The long fault-injection soak: live traffic through every role on the replicated Kafka
# (kafka-1..3), with roles, brokers, ClickHouse and Alertmanager killed, frozen and stopped at
# random moments; at the end every metric must equal the generator's truth.
#
#   scripts/soak.sh [MINUTES]        default 35; BANTER_SOAK_SEED=N replays a schedule
#
# The report (faults by kind, recovery times, what was compared) is printed and kept in the
# run's folder (printed first).
set -euo pipefail
BANTER_SCRIPT=soak
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

scripts/install-deps.sh
scripts/stack.sh up kafka clickhouse alertmanager kafka-1 kafka-2 kafka-3
export BANTER_SOAK_MINUTES="${1:-${BANTER_SOAK_MINUTES:-35}}"
say "long soak: $BANTER_SOAK_MINUTES minutes of traffic (seed ${BANTER_SOAK_SEED:-from the clock})"
cargo test -p banter --locked --test soak -- --ignored --nocapture long_soak
