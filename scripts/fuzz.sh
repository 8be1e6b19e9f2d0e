#!/usr/bin/env bash
# Runs every fuzz target in fuzz/fuzz_targets for a bounded time each, starting from the seeds
# in fuzz/seeds (and from fuzz/corpus/<target> when a longer local run left one there):
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 10 seconds, every target
#
# cargo-fuzz (libFuzzer) on the nightly toolchain; installs cargo-fuzz when it is missing. No
# sanitizer (the code under test is safe Rust; -a keeps debug assertions and overflow checks
# on). A crash fails the run and leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-10}
shift || true
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
cd fuzz
cargo +nightly fuzz build -s none -a
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  for dir in "seeds/$t" "corpus/$t"; do
    [ -d "$dir" ] && find "$dir" -type f -exec cp -t "$work/$t" {} +
  done
  log="$work/$t.log"
  if ! cargo +nightly fuzz run -s none -a "$t" "$work/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "fuzz: $t: ${runs:-?} inputs in ${secs} s, $cov, no crash"
done
