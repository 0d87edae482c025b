#!/usr/bin/env bash
# The README's main-job command.
#
# The full lab (simulated Azure + Kubernetes, network namespaces, real binaries; see product.md) is being
# built. Until it lands, this runs what exists: the rules every component enforces, applied to upstream's
# sample manifests and to broken ones, printing what `kubectl apply` will answer.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "kube-egress-gateway lab: the full lab is not built yet; showing the admission rules on sample manifests."
cargo run -q -p api --example validate -- api/tests/manifests/*.yaml
