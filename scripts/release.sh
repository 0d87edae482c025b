#!/usr/bin/env bash
# Makes every artifact of a release into one folder, and publishes such a folder.
#
#   scripts/release.sh [build] [--out DIR] [--debug-binaries]
#       DIR (default dist/) gets kube-egress-gateway-<version>/ with
#         images/kube-egress-gateway-{operator,webhook,agent}-<version>.oci.tar   the images (OCI archives)
#         images/digests.txt                    <name>:<version> <manifest digest>, the digests a registry will show
#         chart/kube-egress-gateway-<version>.tgz                                 the Helm chart
#         terraform-provider/terraform-provider-egressgateway_<version>_*          zip, SHA256SUMS, .sig, manifest, key
#         SHA256SUMS                            every file above
#       Release binaries come from `cargo build --release --locked` (CARGO_TARGET_DIR is honoured, so CI reuses
#       its target directory); the provider is signed with RELEASE_GPG_KEY_ID if set, else with a key generated
#       for this run (scripts/package-provider.sh). --debug-binaries takes a debug build instead (minutes less, to
#       check the release machinery; no size budget) and marks the folder so that `publish` refuses it.
#
#   scripts/release.sh publish --dir DIR [--image-repository REPO] [--chart-repository REPO] [--plain-http]
#       Pushes the images and the chart of a built release folder (defaults: release.env) and checks that what
#       the registry serves has the digests of digests.txt. Registry credentials are the caller's (skopeo and
#       Helm read the usual auth files). --plain-http is for a registry on loopback (the tests). The provider's
#       files are attached to the source repository's release by the CI workflow; the Terraform Registry reads
#       them from there. --allow-debug-binaries lets a --debug-binaries folder through (the tests, on loopback).
set -euo pipefail
shopt -s inherit_errexit
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../release.env
source "$root/release.env"
# The Helm SDK is in the project's Python environment (scripts/install-deps.sh).
source "$root/scripts/python-env.sh"
images=(kube-egress-gateway-operator kube-egress-gateway-webhook kube-egress-gateway-agent)

build() {
  local out="$root/dist" debug=0
  while (($#)); do
    case "$1" in
      --out) out="$2"; shift 2 ;;
      --debug-binaries) debug=1; shift ;;
      *) echo "release.sh build: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  local version dir target started
  version="$("$root/scripts/version.sh")"
  mkdir -p "$out"
  dir="$(cd "$out" && pwd)/kube-egress-gateway-$version"
  rm -rf "$dir"
  mkdir -p "$dir"/{images,chart,terraform-provider}
  target="${CARGO_TARGET_DIR:-$root/target}"

  local profile=release bins="$target/release" image_flags=()
  if ((debug)); then
    profile=dev bins="$target/debug" image_flags=(--debug-binaries)
    echo "debug binaries: for checking the release machinery only; publish refuses this folder" >"$dir/DEBUG-BINARIES"
  fi
  started=$SECONDS
  echo "== release $version: cargo build --profile $profile"
  (cd "$root" && cargo build --profile "$profile" --locked -q \
    -p operator --bin kube-egress-gateway-operator -p webhook --bin kube-egress-gateway-webhook \
    -p agent --bin kube-egress-gateway-agent -p cni --bin kube-egress-cni \
    -p tf-provider --bin terraform-provider-egressgateway)
  echo "   ($((SECONDS - started)) s)"

  started=$SECONDS
  echo "== release $version: images"
  "$root/images/build.sh" --bin-dir "$bins" --out "$dir/images" "${image_flags[@]}"
  for name in "${images[@]}"; do
    echo "$name:$version $(skopeo inspect --format '{{.Digest}}' "oci-archive:$dir/images/$name-$version.oci.tar")"
  done >"$dir/images/digests.txt"
  echo "   ($((SECONDS - started)) s)"

  echo "== release $version: chart"
  python3 - "$root/charts/kube-egress-gateway" "$dir/chart" <<'PY'
import sys
import helm_python as helm
helm.lint(sys.argv[1])
print("   " + helm.package(sys.argv[1], destination=sys.argv[2]))
PY

  echo "== release $version: terraform provider"
  local stripped
  stripped="$(mktemp -d)"
  strip --strip-all -o "$stripped/terraform-provider-egressgateway" "$bins/terraform-provider-egressgateway"
  "$root/scripts/package-provider.sh" --binary "$stripped/terraform-provider-egressgateway" \
    --out "$dir/terraform-provider" --platform linux_amd64
  rm -rf "$stripped"

  (cd "$dir" && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum >SHA256SUMS)
  echo "== release $version: $dir"
  (cd "$dir" && du -ah --apparent-size . | sort -k2)
}

publish() {
  local dir= image_repo="$IMAGE_REPOSITORY" chart_repo="$CHART_REPOSITORY" plain_http=0 allow_debug=0
  while (($#)); do
    case "$1" in
      --dir) dir="$2"; shift 2 ;;
      --image-repository) image_repo="$2"; shift 2 ;;
      --chart-repository) chart_repo="$2"; shift 2 ;;
      --plain-http) plain_http=1; shift ;;
      --allow-debug-binaries) allow_debug=1; shift ;;
      *) echo "release.sh publish: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  [[ -n "$dir" ]] || { echo "usage: $0 publish --dir DIR [--image-repository REPO] [--chart-repository REPO] [--plain-http]" >&2; exit 2; }
  if [[ -e "$dir/DEBUG-BINARIES" ]] && ((!allow_debug)); then
    echo "release.sh publish: $dir was built from debug binaries (--debug-binaries)" >&2
    exit 1
  fi
  (cd "$dir" && sha256sum --quiet --strict -c SHA256SUMS) || { echo "release.sh publish: $dir does not match its SHA256SUMS" >&2; exit 1; }
  local tls=(--dest-tls-verify=true) inspect_tls=(--tls-verify=true)
  if ((plain_http)); then tls=(--dest-tls-verify=false); inspect_tls=(--tls-verify=false); fi
  local ref digest want
  while read -r ref want; do
    skopeo copy --quiet --preserve-digests "${tls[@]}" \
      "oci-archive:$dir/images/${ref%%:*}-${ref#*:}.oci.tar" "docker://$image_repo/$ref"
    digest="$(skopeo inspect "${inspect_tls[@]}" --format '{{.Digest}}' "docker://$image_repo/$ref")"
    [[ "$digest" == "$want" ]] || { echo "release.sh publish: $image_repo/$ref is $digest, the release has $want" >&2; exit 1; }
    echo "pushed $image_repo/$ref@$digest"
  done <"$dir/images/digests.txt"
  python3 - "$dir"/chart/*.tgz "oci://$chart_repo" "$plain_http" <<'PY'
import sys
import helm_python as helm
result = helm.push(sys.argv[1], sys.argv[2], plain_http=sys.argv[3] == "1")
print(f"pushed {result.get('ref', sys.argv[2])} {result.get('digest', '')}")
PY
}

case "${1:-build}" in
  build) shift || true; build "$@" ;;
  publish) shift; publish "$@" ;;
  --*) build "$@" ;;
  *) echo "usage: $0 [build] [--out DIR] | publish --dir DIR [...]" >&2; exit 2 ;;
esac
