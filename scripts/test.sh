#!/usr/bin/env bash
# The test command: installs what is missing, brings the local stack up (Kafka, ClickHouse,
# Prometheus, Alertmanager, a Schema Registry), then runs every test of the workspace (unit, property, golden,
# integration against the real services, doc tests). Extra arguments go to `cargo test`.
set -euo pipefail
BANTER_SCRIPT=test
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

scripts/install-deps.sh
scripts/stack.sh up
say "running cargo test --workspace"
cargo test --workspace --locked "$@"
