#!/usr/bin/env bash
# Installs what the tests and the lab need: Debian packages, Terraform, the control plane's assets, the Rust
# components and the Python test packages (in the virtual environment .venv, see scripts/python-env.sh).
# Idempotent: installs only what is missing. What it cannot install is checked first (README, "Quick start").
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"

# --- Prerequisites this script does not install --------------------------------------------------------------
# A Debian machine (apt-get), and the Rust toolchain: Debian's rustc is older than the workspace's rust-version,
# so it comes from rustup. Every missing one is named at once.
rust_min="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$repo_root/Cargo.toml")"
missing_prereqs=()
command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1 ||
  missing_prereqs+=("apt-get and dpkg (this script installs Debian packages: use Debian 12 bookworm or newer)")
if ! command -v cargo >/dev/null 2>&1; then
  missing_prereqs+=("cargo (the Rust toolchain >= $rust_min, installed with rustup: https://rustup.rs, then open a new shell or source ~/.cargo/env)")
else
  cargo_version="$(cargo --version | awk '{print $2}')"
  if [[ "$(printf '%s\n%s\n' "$rust_min" "${cargo_version%%-*}" | sort -V | head -n1)" != "$rust_min" ]]; then
    missing_prereqs+=("Rust >= $rust_min (cargo is $cargo_version: rustup update stable)")
  fi
  # clippy and rustfmt: rustup adds them below; without rustup they must already be there.
  if ! command -v rustup >/dev/null 2>&1 &&
    ! { cargo clippy --version >/dev/null 2>&1 && cargo fmt --version >/dev/null 2>&1; }; then
    missing_prereqs+=("rustup (to add clippy and rustfmt; or install both for this cargo)")
  fi
fi
if ((${#missing_prereqs[@]})); then
  echo "install-deps: missing prerequisites (see README.md, Quick start):" >&2
  printf '  - %s\n' "${missing_prereqs[@]}" >&2
  exit 1
fi

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

# kubectl on PATH (the lab on kube-sim and the chart install test run it; the real control plane's tests use
# the assets' own, below): any installed kubectl will do, otherwise Debian's.
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
# come from ../shared/kube/ beside the repository (xz, with their checksums in its README), kubectl too when it
# is there: the lab and the tests drive the real server with the assets' kubectl, which should be the server's
# version. Without that folder nothing is prepared and the suites that can fall back use kube-sim (and say so).
command -v etcd >/dev/null 2>&1 || apt_install "the control plane's etcd" etcd-server
kube_shared="$repo_root/../shared/kube"
assets="${KUBEBUILDER_ASSETS:-$repo_root/.kubebuilder-assets}"
if [[ -d "$kube_shared" ]]; then
  mkdir -p "$assets"
  shared_bins=(kube-apiserver kube-controller-manager)
  [[ -e "$kube_shared/kubectl.xz" ]] && shared_bins+=(kubectl)
  for bin in "${shared_bins[@]}"; do
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
  # No kubectl beside the server's binaries: a kubectl already in the assets (not one of our links) is kept,
  # else the one on PATH is linked, with a warning when its minor version is not the server's (kubectl
  # supports one minor version of skew).
  if [[ ! -e "$kube_shared/kubectl.xz" ]] && { [[ -L "$assets/kubectl" ]] || [[ ! -e "$assets/kubectl" ]]; }; then
    ln -sfn "$(command -v kubectl)" "$assets/kubectl"
    server_minor="$("$assets/kube-apiserver" --version 2>/dev/null | sed -n 's/^Kubernetes v[0-9]*\.\([0-9]*\).*/\1/p')"
    client_minor="$("$assets/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: v[0-9]*\.\([0-9]*\).*/\1/p')"
    if [[ -n "$server_minor" && -n "$client_minor" ]] && ((client_minor > server_minor + 1 || client_minor < server_minor - 1)); then
      echo "install-deps: warning: $assets/kubectl is $(command -v kubectl) (1.$client_minor), the server is 1.$server_minor:" \
        "put a kubectl of the server's version at $kube_shared/kubectl.xz or $assets/kubectl" >&2
    fi
  fi
elif [[ ! -x "$assets/kube-apiserver" ]]; then
  echo "install-deps: no $kube_shared and no $assets/kube-apiserver: suites fall back to kube-sim" >&2
fi
# --- end of the real control plane block ---------------------------------------------------------------------

# Rust toolchain components used by the test command (without rustup, the prerequisites checked they exist).
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
fi

# Python packages of the chart tests (Helm SDK, pytest, ...) in the virtual environment scripts/python-env.sh
# puts first on PATH, not in the system's Python (Debian refuses pip there, PEP 668): Python >= 3.11 (tomllib)
# with its venv module (Debian: python3-venv). Installed only when one is missing or at another version.
source "$repo_root/scripts/python-env.sh"
# The base Python is the system's: never the venv's, which python-env.sh puts first on PATH and which may be the
# broken one this block is about to make anew.
path_without_venv=":$PATH:"
path_without_venv="${path_without_venv//":$KEG_VENV/bin:"/:}"
path_without_venv="${path_without_venv#:}"
path_without_venv="${path_without_venv%:}"
find_base_python() { PATH="$path_without_venv" command -v python3; }
find_base_python >/dev/null || apt_install "Python" python3
base_python="$(find_base_python)"
"$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "install-deps: $base_python is Python $("$base_python" -c 'import platform; print(platform.python_version())'); the tests need 3.11 or newer" >&2
  exit 1
}
"$base_python" -c 'import venv, ensurepip' 2>/dev/null || apt_install "Python's venv module" python3-venv
# A venv whose Python no longer runs (its base Python was removed or upgraded) is made anew.
if ! "$KEG_VENV/bin/python3" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install-deps: creating the Python virtual environment $KEG_VENV ($base_python)"
  rm -rf "$KEG_VENV"
  "$base_python" -m venv "$KEG_VENV"
fi
PY_REQUIREMENTS="$repo_root/tests/chart/requirements.txt"
if ! "$KEG_VENV/bin/python3" - "$PY_REQUIREMENTS" <<'PY' 2>/dev/null
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
  echo "install-deps: pip install -r tests/chart/requirements.txt (into $KEG_VENV)"
  "$KEG_VENV/bin/python3" -m pip install -q --disable-pip-version-check -r "$PY_REQUIREMENTS"
fi

# --- release and images (scripts/release.sh, images/, tests/release) --------------------------------------
# mmdebstrap makes the image bases from Debian packages; buildah builds the images, podman runs them (runc too:
# crun refuses hosts whose cgroups are in hybrid mode); skopeo reads and pushes OCI archives; docker-registry is the
# loopback registry of tests/release; zip, gpg and gpgv package, sign and verify the provider release.
RELEASE_PACKAGES=(mmdebstrap buildah podman crun runc skopeo docker-registry zip unzip gpg gpgv gpg-agent binutils)
apt_install "the release tools" "${RELEASE_PACKAGES[@]}"
# --- end of release and images ------------------------------------------------------------------------------
