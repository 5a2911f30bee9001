#!/usr/bin/env bash
# Installs what building and testing banter needs on a fresh Debian/Ubuntu machine:
# the C toolchain pieces librdkafka's cmake build uses (OpenSSL, curl, zlib, zstd), the services' Debian packages
# (ClickHouse, Prometheus, Alertmanager), Java and Maven for Kafka, and a Python venv with
# fastavro for the cross-implementation codec test and chdb (current ClickHouse in-process).
# Idempotent; quick when all is there.
set -euo pipefail
BANTER_SCRIPT=install-deps
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install build-essential cmake pkg-config libcurl4-openssl-dev libssl-dev zlib1g-dev libzstd-dev openssl curl \
  python3 python3-venv openjdk-17-jre-headless maven \
  clickhouse-server clickhouse-client prometheus prometheus-alertmanager

command -v cargo >/dev/null || die "no cargo: install Rust with rustup (the toolchain is pinned in rust-toolchain.toml)"

venv="$STACK/venv"
if ! "$venv/bin/python" -c 'import fastavro' 2>/dev/null; then
  say "creating $venv with fastavro"
  python3 -m venv "$venv" || die "cannot create a Python venv (python3-venv)"
  "$venv/bin/pip" install -q --disable-pip-version-check 'fastavro>=1.9,<2' >"$STACK/logs/pip.log" 2>&1 \
    || die "cannot install fastavro: see $STACK/logs/pip.log"
fi
# chdb: current ClickHouse in-process, for the tests that run every migration and dashboard
# query on it (Debian's server is 18.16).
if ! "$venv/bin/python" -c 'import chdb' 2>/dev/null; then
  say "installing chdb (ClickHouse in-process) into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'chdb==4.4.0' >>"$STACK/logs/pip.log" 2>&1 \
    || die "cannot install chdb: see $STACK/logs/pip.log"
fi
say "dependencies are installed"
