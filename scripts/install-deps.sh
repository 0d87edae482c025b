#!/usr/bin/env bash
# Installs the system packages the tests and the lab need. Idempotent: installs only what is missing.
set -euo pipefail

PACKAGES=(
  iproute2                    # ip netns, veth, routes (lab and data-plane tests)
  nftables                    # gateway SNAT / mark rules
  wireguard-tools             # wg(8), for troubleshooting and tests
  wireguard-go                # userspace WireGuard: these machines have no kernel module
  containernetworking-plugins # primary CNI plugins (bridge, host-local) our plugin chains after
  iperf3                      # tunnel throughput benchmark
  iputils-ping                # ping in lab/tests
  procps                      # sysctl
)

# apt_install WHAT PACKAGE...: installs the packages not installed yet (root needed only then). WHAT names
# them in messages. Package services must not start (no init system in containers: policy-rc.d refuses).
apt_install() {
  local what=$1 p missing=()
  shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install $what: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
}

# kubectl (lab, webhook e2e): any installed kubectl will do; otherwise Debian's.
command -v kubectl >/dev/null 2>&1 || PACKAGES+=(kubernetes-client)
apt_install "the test tools" "${PACKAGES[@]}"

# Terraform (tf-provider acceptance tests, lab scenario 8): the CLI the provider is tested with, from
# HashiCorp's apt repository (Terraform is not in Debian). Any installed terraform is kept; another version
# than the tested one only gets a warning.
TERRAFORM_VERSION=1.11.4
if ! command -v terraform >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install terraform $TERRAFORM_VERSION" >&2
    exit 1
  fi
  echo "install-deps: installing terraform $TERRAFORM_VERSION (HashiCorp's apt repository)"
  export DEBIAN_FRONTEND=noninteractive
  apt_install "terraform's download tools" curl ca-certificates
  # apt reads an ASCII-armoured key named *.asc directly (no gpg needed).
  keyring=/usr/share/keyrings/hashicorp-archive-keyring.asc
  curl -fsSL https://apt.releases.hashicorp.com/gpg -o "$keyring"
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  echo "deb [signed-by=$keyring] https://apt.releases.hashicorp.com $codename main" \
    >/etc/apt/sources.list.d/hashicorp.list
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "terraform=$TERRAFORM_VERSION-1" >/dev/null
fi
# Read the whole output first: with pipefail, `terraform version | head` fails when head closes the pipe early.
tf_version="$(terraform version 2>/dev/null || true)"
tf_version="${tf_version%%$'\n'*}"
if [[ "$tf_version" != "Terraform v$TERRAFORM_VERSION" ]]; then
  echo "install-deps: warning: $tf_version is not the tested Terraform v$TERRAFORM_VERSION" >&2
fi

# --- Real Kubernetes control plane (testbed/src/control_plane, docs/testbed.md) -------------------------------
# etcd from Debian, and an envtest-style assets folder (kube-apiserver, kube-controller-manager, etcd, kubectl)
# at $KUBEBUILDER_ASSETS, else .kubebuilder-assets/ in the repository (ignored by git). The Kubernetes binaries
# come from ../shared/kube/ beside the repository (xz, with their checksums in its README). Without that folder
# nothing is prepared and the suites that can fall back use kube-sim (and say so).
command -v etcd >/dev/null 2>&1 || apt_install "the control plane's etcd" etcd-server
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
kube_shared="$repo_root/../shared/kube"
assets="${KUBEBUILDER_ASSETS:-$repo_root/.kubebuilder-assets}"
if [[ -d "$kube_shared" ]]; then
  mkdir -p "$assets"
  for bin in kube-apiserver kube-controller-manager; do
    want=$(grep -E "^\| $bin \|" "$kube_shared/README.md" | awk -F'|' '{gsub(/ /, "", $3); print $3}')
    have=$( [[ -x "$assets/$bin" ]] && sha256sum "$assets/$bin" | cut -d' ' -f1 || true)
    if [[ -z "$want" || "$have" != "$want" ]]; then
      echo "install-deps: preparing $assets/$bin from $kube_shared/$bin.xz"
      xz -dc "$kube_shared/$bin.xz" >"$assets/$bin.tmp"
      chmod +x "$assets/$bin.tmp"
      mv "$assets/$bin.tmp" "$assets/$bin"
      if [[ -n "$want" ]] && [[ $(sha256sum "$assets/$bin" | cut -d' ' -f1) != "$want" ]]; then
        echo "install-deps: $assets/$bin does not match the sha256 in $kube_shared/README.md" >&2
        exit 1
      fi
    fi
  done
  ln -sfn "$(command -v etcd)" "$assets/etcd"
  ln -sfn "$(command -v kubectl)" "$assets/kubectl"
elif [[ ! -x "$assets/kube-apiserver" ]]; then
  echo "install-deps: no $kube_shared and no $assets/kube-apiserver: suites fall back to kube-sim" >&2
fi
# --- end of the real control plane block ---------------------------------------------------------------------

# Rust toolchain components used by the test command.
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

# Python packages of the chart tests (Helm SDK, pytest), only when one is missing or at another version.
PY_REQUIREMENTS="$(cd "$(dirname "$0")/.." && pwd)/tests/chart/requirements.txt"
if ! python3 - "$PY_REQUIREMENTS" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, wanted = line.partition("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  echo "install-deps: pip install -r tests/chart/requirements.txt"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r "$PY_REQUIREMENTS"
fi

# --- release and images (scripts/release.sh, images/, tests/release) --------------------------------------
# mmdebstrap makes the image bases from Debian packages; buildah builds the images, podman runs them (runc too:
# crun refuses hosts whose cgroups are in hybrid mode); skopeo reads and pushes OCI archives; docker-registry is the
# loopback registry of tests/release; zip, gpg and gpgv package, sign and verify the provider release.
RELEASE_PACKAGES=(mmdebstrap buildah podman crun runc skopeo docker-registry zip unzip gpg gpgv gpg-agent binutils)
apt_install "the release tools" "${RELEASE_PACKAGES[@]}"
# --- end of release and images ------------------------------------------------------------------------------
