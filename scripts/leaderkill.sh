#!/usr/bin/env bash
# Issue 24's leader-kill experiment, kvstore beside etcd 3.4 (Debian's /usr/bin/etcd): 3 members
# on loopback, 16 writers of unique keys through the stock etcd-client crate, the leader
# SIGKILLed and restarted 2 s later, again and again for 90 s, every acknowledged key read back;
# prints the table (leader kills, acknowledged puts, lost, longest gap, failed puts by error).
#
#   scripts/leaderkill.sh [ARGS...]     ARGS go to leaderkill (--seconds 30, --servers kvstore…)
#
# leaderkill is a crate of its own (leaderkill/, outside the workspace): the etcd-client crate
# compiles its .proto files with protoc when it is built. No system protoc is needed: this script
# installs protox's protoc-compatible command line (cargo install protox --features bin) into
# <target>/leaderkill-tools once and hands it to the build as PROTOC.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOX_VERSION=0.10.0
log() { echo "leaderkill: $*" >&2; }

[ -x /usr/bin/etcd ] || { log "/usr/bin/etcd is missing: scripts/install-deps.sh test"; exit 2; }
target=${CARGO_TARGET_DIR:-$PWD/target}
tools="$target/leaderkill-tools"
if [ ! -x "$tools/bin/protox" ]; then
  log "installing protox $PROTOX_VERSION (a protoc in Rust) into $tools"
  cargo install --quiet --locked --root "$tools" --version "$PROTOX_VERSION" --features bin protox
fi

log "building kvstore (cargo build --release -p kvstore) and leaderkill"
cargo build --release -p kvstore
PROTOC="$tools/bin/protox" CARGO_TARGET_DIR="$target" \
  cargo build --release --manifest-path leaderkill/Cargo.toml
exec "$target/release/leaderkill" --kvstore "$target/release/kvstore" "$@"
