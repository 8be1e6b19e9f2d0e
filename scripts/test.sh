#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs every test of the
# workspace (unit, integration, end-to-end in network namespaces). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test
# Every package, unless the arguments pick some (-p NAME): a package picked alone is built with
# the features it needs alone, so `-p netd-project --release` reuses the demo's build.
scope=(--workspace)
for arg in "$@"; do
  case $arg in -p | --package | -p* | --package=*) scope=() ;; esac
done
# Most tests spend their time waiting (on elections, lease expiry, a peer's restart), so at least
# 4 run at once, also on a 2-core machine (`--test-threads N` or NEXTEST_TEST_THREADS overrides).
cpus=$(nproc)
export NEXTEST_TEST_THREADS=${NEXTEST_TEST_THREADS:-$(( cpus > 4 ? cpus : 4 ))}
cargo nextest run "${scope[@]}" --no-fail-fast "$@"
