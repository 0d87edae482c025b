#!/usr/bin/env bash
# Builds the operator, webhook and agent images (images/Containerfile) from release binaries, on bases made
# from Debian packages (images/base.sh), tags them <repository>/<name>:<version> in podman's local storage and,
# with --out, saves each as an OCI archive there.
#
#   images/build.sh --bin-dir DIR [--out DIR] [--repository REPO] [--debug-binaries]
#
# --bin-dir     where cargo put the release binaries (target/release)
# --repository  image repository prefix (default: IMAGE_REPOSITORY of release.env)
# --debug-binaries  the binaries are a debug build (to try the images, e.g. `lab --from-images`, without a
#               release build): the size budget is not enforced. Never for a release.
# Fails when a binary's --version is not the release version, or an image exceeds its size budget
# (operator and webhook 40 MB, agent 120 MB).
set -euo pipefail
shopt -s inherit_errexit
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../release.env
source "$root/release.env"

bin_dir= out= repository="$IMAGE_REPOSITORY" debug=0
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --repository) repository="$2"; shift 2 ;;
    --debug-binaries) debug=1; shift ;;
    *) echo "images/build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$bin_dir" ]] || { echo "usage: $0 --bin-dir DIR [--out DIR] [--repository REPO]" >&2; exit 2; }

version="$("$root/scripts/version.sh")"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  revision="$revision-dirty"
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin"
for b in kube-egress-gateway-operator kube-egress-gateway-webhook kube-egress-gateway-agent kube-egress-cni; do
  reported="$("$bin_dir/$b" --version)"
  [[ "$reported" == "$b $version" ]] || { echo "images/build.sh: $bin_dir/$b --version says '$reported', not '$b $version'" >&2; exit 1; }
  # Symbols are for debugging builds, not for the images (they are most of a release binary's size).
  strip --strip-all -o "$ctx/bin/$b" "$bin_dir/$b"
done

eval "$("$root/images/base.sh")"

declare -A budget_mb=([operator]=40 [webhook]=40 [agent]=120)
[[ -z "$out" ]] || mkdir -p "$out"
for target in operator webhook agent; do
  name="kube-egress-gateway-$target"
  ref="$repository/$name:$version"
  podman build --quiet --target "$target" --file "$root/images/Containerfile" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg AGENT_BASE_IMAGE="$AGENT_BASE_IMAGE" \
    --label org.opencontainers.image.version="$version" --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.source="$SOURCE_URL" --label org.opencontainers.image.licenses=Apache-2.0 \
    --tag "$ref" "$ctx" >/dev/null
  size="$(podman image inspect --format '{{.Size}}' "$ref")"
  echo "image $ref: $((size / 1000 / 1000)) MB ($size bytes)"
  if ((!debug && size > ${budget_mb[$target]} * 1000 * 1000)); then
    echo "images/build.sh: $ref is $size bytes, over its budget of ${budget_mb[$target]} MB" >&2
    exit 1
  fi
  if [[ -n "$out" ]]; then
    rm -f "$out/$name-$version.oci.tar"
    podman save --quiet --format oci-archive --output "$out/$name-$version.oci.tar" "$ref"
  fi
done
