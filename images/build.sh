#!/usr/bin/env bash
# Builds the operator, webhook and agent images from release binaries, on bases made from Debian packages
# (images/base.sh), tags them <repository>/<name>:<version> in podman's local storage and, with --out, saves
# each as an OCI archive there. The three images differ only in the facts `image` takes (base, user, binaries,
# description, size budget), so one function builds each (buildah: no Containerfile, nothing is run inside).
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

ctx="$(mktemp -d)" container=
trap 'rm -rf "$ctx"; [[ -z "$container" ]] || buildah rm "$container" >/dev/null' EXIT
mkdir -p "$ctx/bin"
for b in kube-egress-gateway-operator kube-egress-gateway-webhook kube-egress-gateway-agent kube-egress-cni; do
  reported="$("$bin_dir/$b" --version)"
  [[ "$reported" == "$b $version" ]] || { echo "images/build.sh: $bin_dir/$b --version says '$reported', not '$b $version'" >&2; exit 1; }
  # Symbols are for debugging builds, not for the images (they are most of a release binary's size).
  strip --strip-all -o "$ctx/bin/$b" "$bin_dir/$b"
done

eval "$("$root/images/base.sh")"
[[ -z "$out" ]] || mkdir -p "$out"

# image <name> <base> <user> <budget MB> <description> [<more binaries>...]
# Builds <repository>/<name>:<version>: binary <name> (the entrypoint) and the others in /usr/local/bin, run as
# <user>, titled <name> and described, with the labels of the release (version, revision, source, licenses).
image() {
  local name="$1" base="$2" user="$3" budget_mb="$4" description="$5"
  shift 5
  local ref="$repository/$name:$version" b size
  container="$(buildah from --quiet --pull=never "$base")"
  for b in "$name" "$@"; do
    buildah copy --quiet "$container" "$ctx/bin/$b" "/usr/local/bin/$b" >/dev/null
  done
  buildah config --user "$user" --entrypoint "[\"/usr/local/bin/$name\"]" \
    --label org.opencontainers.image.title="$name" --label org.opencontainers.image.description="$description" \
    --label org.opencontainers.image.version="$version" --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.source="$SOURCE_URL" --label org.opencontainers.image.licenses=Apache-2.0 \
    "$container"
  buildah commit --quiet --rm "$container" "$ref" >/dev/null
  container=
  size="$(podman image inspect --format '{{.Size}}' "$ref")"
  echo "image $ref: $((size / 1000 / 1000)) MB ($size bytes)"
  if ((!debug && size > budget_mb * 1000 * 1000)); then
    echo "images/build.sh: $ref is $size bytes, over its budget of $budget_mb MB" >&2
    exit 1
  fi
  if [[ -n "$out" ]]; then
    rm -f "$out/$name-$version.oci.tar"
    podman save --quiet --format oci-archive --output "$out/$name-$version.oci.tar" "$ref"
  fi
}

# Non-root, no shell; the chart also runs them with a read-only root filesystem and no capabilities.
image kube-egress-gateway-operator "$BASE_IMAGE" 65532:65532 40 \
  "kube-egress-gateway operator: Azure load balancer, gateway IP configurations and public IP prefixes per gateway pool"
image kube-egress-gateway-webhook "$BASE_IMAGE" 65532:65532 40 \
  "kube-egress-gateway admission webhook: validation and defaults for StaticGatewayConfiguration and GatewayPool"
# Root: the agents manage links, routes and nftables (the chart grants NET_ADMIN and SYS_ADMIN only). The
# node agent's init container copies kube-egress-cni onto the host's CNI bin directory (values
# gatewayCNI.binaryPath).
image kube-egress-gateway-agent "$AGENT_BASE_IMAGE" 0:0 120 \
  "kube-egress-gateway gateway and node agent, with the CNI plugin the node agent installs" kube-egress-cni
