#!/usr/bin/env bash
# Fuzzing banter's input edges with cargo-fuzz (libFuzzer, address sanitizer, nightly Rust).
#
#   scripts/fuzz.sh seed                      write the generated seeds into fuzz/corpus/
#   scripts/fuzz.sh run SECONDS [TARGET...]   fuzz each target (default: all) for SECONDS
#   scripts/fuzz.sh list                      the targets
#
# Targets: meta_webhook, first_party, avro, config, changelog (see crates/banter-fuzz).
# A run starts from fuzz/corpus/<target> (kept in the repository) and grows a scratch copy in
# fuzz/corpus-work/<target>; `BANTER_FUZZ_KEEP=1` merges what it found back into the kept
# corpus (libFuzzer's -merge keeps only inputs that add coverage). A crash, a leak, a timeout
# or an out-of-memory is copied to fuzz/regressions/<target>/ (replayed by
# `cargo test -p banter-fuzz` on stable, and by every run, from then on) and fails the run.
#
# The toolchain: the machine image's nightly (pinned below by date; another nightly is used
# with a warning), or BANTER_FUZZ_TOOLCHAIN. cargo-fuzz is installed if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(meta_webhook first_party avro config changelog)
PINNED_NIGHTLY_DATE="2026-05-19"
CARGO_FUZZ_VERSION="0.13.2"
TOOLCHAIN="${BANTER_FUZZ_TOOLCHAIN:-nightly}"

need_tools() {
  if ! rustc "+$TOOLCHAIN" -V >/dev/null 2>&1; then
    echo "fuzz.sh: the $TOOLCHAIN toolchain is not installed (rustup toolchain install nightly)" >&2
    exit 1
  fi
  local v
  v="$(rustc "+$TOOLCHAIN" -V)"
  case "$v" in
    *"$PINNED_NIGHTLY_DATE"*) ;;
    *) echo "fuzz.sh: warning: $v is not the pinned nightly of $PINNED_NIGHTLY_DATE" >&2 ;;
  esac
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
  fi
}

case "${1:-}" in
  seed)
    BANTER_FUZZ_SEED=1 cargo test -q -p banter-fuzz --test corpus
    ;;
  list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
  run)
    seconds="${2:?usage: scripts/fuzz.sh run SECONDS [TARGET...]}"
    shift 2
    [ "$#" -gt 0 ] && TARGETS=("$@")
    need_tools
    failed=()
    for t in "${TARGETS[@]}"; do
      work="fuzz/corpus-work/$t"
      mkdir -p "$work" "fuzz/artifacts/$t"
      cp -n "fuzz/corpus/$t"/* "$work"/ 2>/dev/null || true
      # Past findings too: each run replays them under the sanitizer and the memory limit.
      cp -n "fuzz/regressions/$t"/* "$work"/ 2>/dev/null || true
      echo "fuzz.sh: $t for ${seconds}s ($(rustc "+$TOOLCHAIN" -V))"
      log="fuzz/artifacts/$t/run.log"
      # -max_len: requests and changelog values far larger than this are refused by size
      # limits before any parser sees them; -rss_limit_mb: a bounded parser stays well below.
      if cargo "+$TOOLCHAIN" fuzz run "$t" "$work" -- \
          -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
          -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+.*DONE' "$log" || true
        echo "fuzz.sh: $t: $(grep -m1 -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9/]+[a-zA-Z]*' <(tac "$log") || true)"
      else
        echo "fuzz.sh: $t FAILED; the input is kept in fuzz/regressions/$t/" >&2
        tail -40 "$log" >&2
        mkdir -p "fuzz/regressions/$t"
        for f in "fuzz/artifacts/$t"/crash-* "fuzz/artifacts/$t"/leak-* "fuzz/artifacts/$t"/timeout-* "fuzz/artifacts/$t"/oom-*; do
          [ -f "$f" ] && cp "$f" "fuzz/regressions/$t/"
        done
        failed+=("$t")
      fi
      if [ "${BANTER_FUZZ_KEEP:-0}" = 1 ]; then
        cargo "+$TOOLCHAIN" fuzz cmin "$t" "$work" >/dev/null 2>&1 || true
        mkdir -p "fuzz/corpus/$t.new"
        cargo "+$TOOLCHAIN" fuzz run "$t" "fuzz/corpus/$t.new" "$work" -- -merge=1 -max_len=65536 >/dev/null 2>&1 || true
        cp -n "fuzz/corpus/$t.new"/* "fuzz/corpus/$t/" 2>/dev/null || true
        rm -rf "fuzz/corpus/$t.new"
      fi
    done
    if [ "${#failed[@]}" -gt 0 ]; then
      echo "fuzz.sh: findings in: ${failed[*]}" >&2
      exit 1
    fi
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
