#!/usr/bin/env bash
# Runs a client test suite that nobody on this project wrote -- python-etcd3's own tests, from
# the source distribution of its latest release on the Python package index -- against a
# 3-member kvstore cluster and then against a 3-member etcd 3.4 cluster (Debian's /usr/bin/etcd),
# the same way for both, and compares the outcomes.
#
#   scripts/client-suite.sh
#
# What it does:
#  1. installs what is missing (apt, Debian 12: etcd-server, etcd-client, python3, python3-venv,
#     procps, iproute2) and a Python venv in <target>/client-suite/venv with pinned versions of
#     etcd3 and of what its tests import (pytest, hypothesis, mock, six, tenacity; pytest-timeout
#     so one hung test cannot hang the run);
#  2. downloads the etcd3 source distribution (it ships tests/test_etcd3.py) into the same cache;
#  3. builds kvstore (cargo build --release -p kvstore);
#  4. for each server: a fresh copy of the suite, a private network and PID namespace
#     (unshare; the machine's own network namespace is untouched, and ending the namespace
#     ends every process started in it), loopback up, three members named as the suite's own
#     harness (pifpaf) names them -- pifpaf, pifpaf1, pifpaf2 -- with temp data dirs, clients on
#     127.0.0.1:2379/22379/32379. The suite's tests connect to localhost:2379 (etcd3.client()
#     and etcdctl defaults) and SIGSTOP the processes whose command line says "--name pifpaf1|2"
#     (pgrep): inside the namespaces that port is free and pgrep sees only these members. Then
#     pytest, then the members are stopped;
#  5. prints "python-etcd3 <version>: etcd <version> N/M passed, kvstore N/M passed" and each
#     server's failing tests with the first line of their error.
#
# Logs of the last run (pytest output, JUnit XML, each member's log) stay in
# <target>/client-suite/last-run/. Exit status: 0 when kvstore passes every test etcd passes;
# 1 when it fails one etcd passes (they are named), or when a run could not be made; 2 when a
# prerequisite is missing. Needs root (apt, namespaces).
set -euo pipefail

ETCD3_VERSION=0.12.0
# etcd3 0.12.0's generated protobuf modules need the protobuf 3 runtime, its locks tenacity 6 (its
# own pin; tenacity 9 changed the wait callback it uses); hypothesis 4 lets the
# suite's @given tests use function-scoped fixtures, as they were written for.
PY_PACKAGES=(
  "etcd3==$ETCD3_VERSION" protobuf==3.20.3 grpcio==1.85.4 six==1.17.0 tenacity==6.1.0
  pytest==9.2.0 pytest-timeout==2.4.0 hypothesis==4.56.3 mock==5.2.0
)
PER_TEST_TIMEOUT=180   # seconds, pytest-timeout
SUITE_TIMEOUT=2400     # seconds, the whole pytest run against one server
CLIENT_PORTS=(2379 22379 32379)
PEER_PORTS=(2380 22380 32380)
NAMES=(pifpaf pifpaf1 pifpaf2)

log() { echo "client-suite: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Inside the private namespaces: start the cluster, run the suite, stop the cluster.
#   client-suite.sh --inside KIND SERVER_BIN SUITE_DIR VENV OUT_DIR DATA_DIR
# ---------------------------------------------------------------------------------------------
inside() {
  local kind=$1 bin=$2 suite=$3 venv=$4 out=$5 data=$6
  pids=()
  stop_members() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
      local alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.2
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    pids=()
  }
  trap stop_members EXIT

  ip link set lo up
  local initial="" endpoints="" i
  for i in 0 1 2; do
    initial+="${initial:+,}${NAMES[$i]}=http://127.0.0.1:${PEER_PORTS[$i]}"
    endpoints+="${endpoints:+,}http://127.0.0.1:${CLIENT_PORTS[$i]}"
  done
  for i in 0 1 2; do
    local client="http://127.0.0.1:${CLIENT_PORTS[$i]}" peer="http://127.0.0.1:${PEER_PORTS[$i]}"
    RUST_LOG=info "$bin" --name "${NAMES[$i]}" --data-dir "$data/${NAMES[$i]}" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$initial" --initial-cluster-state new \
      --initial-cluster-token "client-suite-$kind" \
      >"$out/${NAMES[$i]}.log" 2>&1 &
    pids+=($!)
  done

  local ready=0
  for _ in $(seq 120); do
    if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" --command-timeout=2s endpoint health \
      >/dev/null 2>&1; then
      ready=1
      break
    fi
    sleep 0.5
  done
  if [ "$ready" != 1 ]; then
    log "$kind: the cluster did not become healthy within 60 s; member logs in $out"
    return 1
  fi
  log "$kind: 3 members healthy ($endpoints); running the suite"

  local rc=0
  (
    cd "$suite"
    # As the suite's tox.ini sets it (its auth test patches the module "etcdrpc").
    export PYTHONPATH="$suite:$suite/etcd3"
    export PYTHON_ETCD_HTTP_URL="http://127.0.0.1:${CLIENT_PORTS[0]}"
    export TEST_ETCD_VERSION=v3.4.23
    timeout "$SUITE_TIMEOUT" "$venv/bin/python" -m pytest tests -p no:cacheprovider \
      --timeout "$PER_TEST_TIMEOUT" -rfE -W ignore::DeprecationWarning \
      --junitxml "$out/junit.xml" >"$out/pytest.log" 2>&1
  ) || rc=$?
  # pytest: 0 all passed, 1 some failed; anything else means the run itself went wrong.
  if [ "$rc" -gt 1 ]; then
    log "$kind: pytest exited $rc (see $out/pytest.log)"
  fi
  stop_members
  [ -s "$out/junit.xml" ]
}

if [ "${1:-}" = "--inside" ]; then
  shift
  inside "$@"
  exit
fi

# ---------------------------------------------------------------------------------------------
# Outside: prerequisites, venv, suite, build; then one namespace per server; then the summary.
# ---------------------------------------------------------------------------------------------
started=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (apt and namespaces need it); try: sudo $0"
  exit 2
fi

apt_packages=(etcd-server etcd-client python3 python3-venv procps iproute2)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null || ! grep -qs '^ID=debian' /etc/os-release; then
    log "installs with apt on Debian 12; install ${missing[*]} by hand, then run again"
    exit 2
  fi
  log "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || { log "apt-get update failed"; exit 2; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { log "apt-get install ${missing[*]} failed"; exit 2; }
fi
absent=()
for t in /usr/bin/etcd /usr/bin/etcdctl /usr/bin/python3 pgrep ip unshare timeout cargo; do
  case "$t" in
    /*) [ -x "$t" ] || absent+=("$t") ;;
    *) command -v "$t" >/dev/null || absent+=("$t") ;;
  esac
done
if [ ${#absent[@]} -gt 0 ]; then
  log "missing: ${absent[*]}"
  exit 2
fi

target=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cache="$target/client-suite"
venv="$cache/venv"
mkdir -p "$cache"

# The venv, remade when the pinned list changes.
stamp="${PY_PACKAGES[*]}"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.client-suite-packages" 2>/dev/null)" != "$stamp" ]; then
  log "making the venv $venv (${PY_PACKAGES[*]})"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv" || { log "python3 -m venv failed (python3-venv?)"; exit 2; }
  "$venv/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}" \
    || { log "pip install failed"; exit 2; }
  echo "$stamp" >"$venv/.client-suite-packages"
fi

# The suite: the release's source distribution.
sdist="$cache/etcd3-$ETCD3_VERSION.tar.gz"
if [ ! -s "$sdist" ]; then
  log "downloading the etcd3 $ETCD3_VERSION source distribution"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$cache" "etcd3==$ETCD3_VERSION" || { log "pip download etcd3 failed"; exit 2; }
fi
tar tzf "$sdist" "etcd3-$ETCD3_VERSION/tests/test_etcd3.py" >/dev/null \
  || { log "$sdist has no tests/test_etcd3.py"; exit 2; }

log "building kvstore (cargo build --release -p kvstore)"
cargo build --release -p kvstore
kvstore_bin="$target/release/kvstore"
etcd_version=$(/usr/bin/etcd --version | awk '/^etcd Version:/ {print $3}')

work=$(mktemp -d /tmp/client-suite.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
results="$cache/last-run"
rm -rf "$results"
mkdir -p "$results"

run_failed=()
for kind in kvstore etcd; do
  case "$kind" in
    kvstore) bin=$kvstore_bin ;;
    etcd) bin=/usr/bin/etcd ;;
  esac
  mkdir -p "$work/$kind/data" "$results/$kind"
  tar xzf "$sdist" -C "$work/$kind"
  log "$kind: starting a 3-member cluster in a private namespace"
  t0=$(date +%s)
  if ! unshare --net --pid --fork --mount-proc --kill-child \
    "$repo/scripts/client-suite.sh" --inside "$kind" "$bin" \
    "$work/$kind/etcd3-$ETCD3_VERSION" "$venv" "$results/$kind" "$work/$kind/data"; then
    run_failed+=("$kind")
  fi
  log "$kind: done in $(($(date +%s) - t0)) s"
done

# The summary, from the two JUnit files.
status=0
"$venv/bin/python" - "$results" "$ETCD3_VERSION" "$etcd_version" <<'EOF' || status=$?
import sys, xml.etree.ElementTree as ET
results, etcd3_version, etcd_version = sys.argv[1:4]

def outcomes(kind):
    try:
        root = ET.parse(f"{results}/{kind}/junit.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    out = {}
    for case in root.iter("testcase"):
        name = case.get("classname", "").split(".")[-1] + "::" + case.get("name", "")
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            # a gRPC error's useful line is its status and details
            grpc = [l.strip() for l in msg if "status = " in l or "details = " in l]
            out[name] = ("failed", (" ".join(grpc[:2]) or (msg[0] if msg else ""))[:160])
        elif case.find("skipped") is not None:
            out[name] = ("skipped", "")
        else:
            out[name] = ("passed", "")
    return out

runs = {k: outcomes(k) for k in ("etcd", "kvstore")}
def count(o):
    if o is None:
        return "no result"
    return f"{sum(1 for v in o.values() if v[0] == 'passed')}/{len(o)} passed"
print(f"python-etcd3 {etcd3_version}: etcd {etcd_version} {count(runs['etcd'])}, "
      f"kvstore {count(runs['kvstore'])}")
for kind in ("etcd", "kvstore"):
    o = runs[kind]
    if not o:
        continue
    failed = sorted(n for n, v in o.items() if v[0] == "failed")
    print(f"{kind}: {len(failed)} failed" + (":" if failed else ""))
    for n in failed:
        print(f"  {n}: {o[n][1]}")
if runs["etcd"] is None or runs["kvstore"] is None:
    sys.exit(1)
regressions = sorted(n for n, v in runs["etcd"].items()
                     if v[0] == "passed" and runs["kvstore"].get(n, ("missing",))[0] != "passed")
if regressions:
    print(f"kvstore fails {len(regressions)} test(s) that etcd passes: {', '.join(regressions)}")
    sys.exit(1)
print("kvstore passes every test etcd passes")
EOF
if [ ${#run_failed[@]} -gt 0 ]; then
  log "no complete run against: ${run_failed[*]} (logs in $results)"
  status=1
fi
log "took $(($(date +%s) - started)) s; logs in $results"
exit "$status"
