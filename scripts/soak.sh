#!/usr/bin/env bash
# The robustness soak (kvstore/tests/soak.rs): random faults under traffic of every kind for
# 30 minutes (by default) on kvstore and then on etcd 3.4, every run checked for
# linearizability and etcd's watch guarantees; a side-by-side report. Run as root.
#
#   scripts/soak.sh [--minutes 30] [--servers kvstore,etcd] [--seed N] [--shared-faults]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test
# The soak's kvstore carries the failpoints (a dev-dependency turns the feature on), and cargo
# builds it as target/release/kvstore: in a directory of its own, so the benchmarks that run
# target/release/kvstore afterwards do not measure a build with failpoints.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/soak
exec cargo test --release -p kvstore --test soak -- "$@"
