#!/usr/bin/env bash
# Prints the release version: the workspace version in Cargo.toml, which the chart (version, appVersion), the
# images and the provider also carry. Fails when Chart.yaml disagrees.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="$(awk '
  /^\[workspace\.package\]/ {in_pkg = 1; next}
  /^\[/ {in_pkg = 0}
  in_pkg && $1 == "version" {gsub(/"/, "", $3); print $3; exit}
' "$root/Cargo.toml")"
[[ -n "$version" ]] || { echo "version.sh: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }
chart="$root/charts/kube-egress-gateway/Chart.yaml"
for key in version appVersion; do
  v="$(awk -v k="$key:" '$1 == k {gsub(/"/, "", $2); print $2; exit}' "$chart")"
  if [[ "$v" != "$version" ]]; then
    echo "version.sh: $chart has $key '$v', Cargo.toml's workspace version is $version" >&2
    exit 1
  fi
done
echo "$version"
