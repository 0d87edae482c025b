#!/usr/bin/env bash
# Installs the system packages the project's tests and tools need (Debian/Ubuntu). Idempotent: runs
# `apt-get update` once and installs only what is missing. Needs root.
set -euo pipefail

# Data plane (agent + cni tests on real network namespaces):
#   wireguard-go / wireguard-tools  userspace WireGuard (hosts without the kernel module) and `wg`
#   nftables / iproute2             firewall and links/routes/rules
#   containernetworking-plugins     bridge + host-local, the primary plugins our chained plugin follows
#   iperf3                          tunnel throughput benchmark
#   procps                          sysctl
PACKAGES=(
  wireguard-go
  wireguard-tools
  nftables
  iproute2
  containernetworking-plugins
  iperf3
  procps
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
