#!/usr/bin/env bash
# The README's main-job command: the lab (see README "Quick start" and testbed/src/lab/).
# Builds the workspace binaries (debug by default, quicker to build; LAB_PROFILE=release for optimised), then runs the lab
# as root. Extra arguments go to the lab, e.g. `scripts/lab.sh --keep`, `scripts/lab.sh --kube sim` (the in-process
# Kubernetes API simulator instead of the real control plane install-deps.sh prepares; the lab's first line says
# which one runs), or `scripts/lab.sh --from-images` to run
# every component from its image (build them first with scripts/release.sh). `scripts/lab.sh --cleanup` only
# removes what earlier lab runs that are gone (killed, crashed) left behind: network namespaces, mounts under
# /run, wireguard sockets, work dirs (every lab run does this first).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/lab.sh: run as root (the lab creates network namespaces)" >&2
    exit 1
fi
scripts/install-deps.sh
# The lab renders the chart with python3 (scripts/render-chart.py): the project's environment has the Helm SDK.
source scripts/python-env.sh
profile="${LAB_PROFILE:-dev}"
if [ "$profile" = "release" ]; then
    flag=--release
    dir="${CARGO_TARGET_DIR:-target}/release"
else
    flag=
    dir="${CARGO_TARGET_DIR:-target}/debug"
fi
if [ "${1:-}" = "--cleanup" ]; then
    cargo build $flag -q -p testbed --bin lab
    exec "$dir/lab" "$@"
fi
echo "building the lab and the component binaries ($profile)..."
cargo build $flag -p testbed --bin lab -p webhook --bin kube-egress-gateway-webhook \
    -p operator --bin kube-egress-gateway-operator -p agent --bin kube-egress-gateway-agent \
    -p cni --bin kube-egress-cni -p tf-provider --bin terraform-provider-egressgateway
exec "$dir/lab" --bin-dir "$dir" "$@"
