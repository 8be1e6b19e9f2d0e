#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs every test of the
# workspace (unit, integration, end-to-end in network namespaces). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test
cargo nextest run --workspace --no-fail-fast "$@"
