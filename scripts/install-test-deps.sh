#!/usr/bin/env bash
# Installs the Debian packages the build and the test suite need: protoc (the etcd-client
# crate's build script runs it), the reference etcd 3.4 and etcdctl, iproute2/ping/nftables
# for the network-namespace tests, the reference CNI plugins, busybox-static and iperf3 for
# traffic inside namespaces, and podman with runc for the container-runtime test.
# Needs root. Installs only what is missing.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: must run as root (network namespaces and apt need it)" >&2
  exit 1
fi

packages=(protobuf-compiler etcd-server etcd-client iproute2 iputils-ping nftables containernetworking-plugins busybox-static iperf3 podman runc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-test-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# On a host with systemd, etcd-server's package starts a system etcd on 2379. The tests
# never use it (they start their own on free ports), so it is left alone.
