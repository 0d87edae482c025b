#!/usr/bin/env bash
# Builds the two runtime bases of the images (images/build.sh) from Debian packages (mmdebstrap, no image is pulled)
# and loads them into podman's local storage:
#
#   localhost/kube-egress-gateway-base:static-<key>  libc, libgcc, libssl (the operator's Azure client), CA
#       certificates, passwd/group with the non-root user 65532 ("nonroot"), and nothing else: no shell, no
#       package manager (distroless-like).
#       The operator and the webhook run on it.
#   localhost/kube-egress-gateway-base:agent-<key>   the same plus what the agent and the chart's init
#       containers run: /bin/sh (dash), cp/mv/chmod (coreutils), nsenter (util-linux: the agent enters the
#       gateway namespace with it), ip (iproute2), nft (nftables), sysctl
#       (procps) and wireguard-go (the userspace WireGuard the agent falls back on without the kernel module).
#
# Prints `BASE_IMAGE=<ref>` and `AGENT_BASE_IMAGE=<ref>` for images/build.sh.
#
# The root filesystems are cached as tarballs in $IMAGE_BASE_CACHE (default /var/tmp/kube-egress-gateway-base),
# keyed by this script's content and the ISO week: a changed package list rebuilds at once, and security updates
# of the Debian mirror are picked up at least weekly. IMAGE_BASE_REFRESH=1 rebuilds regardless.
set -euo pipefail
shopt -s inherit_errexit
suite="${DEBIAN_SUITE:-bookworm}"
cache="${IMAGE_BASE_CACHE:-/var/tmp/kube-egress-gateway-base}"
key="$(cat "$0" | sha256sum | cut -c1-12)-$suite-$(date -u +%G-W%V)"

# Files nothing in the images needs: documentation, manuals, translations, character-set converters, perl
# (a dependency of package maintainer scripts, which the `extract` variant never runs), package-manager state.
# The `extract` variant runs no hooks either, so this runs on the unpacked directory.
prune() { # <rootfs dir>
  (
    cd "$1"
    rm -rf usr/share/doc usr/share/man usr/share/info usr/share/locale usr/share/lintian usr/share/bug \
      usr/share/perl usr/share/perl5 usr/lib/x86_64-linux-gnu/perl usr/lib/x86_64-linux-gnu/perl-base \
      usr/lib/x86_64-linux-gnu/perl5 usr/lib/x86_64-linux-gnu/libperl.so* usr/bin/perl* \
      usr/lib/x86_64-linux-gnu/gconv usr/share/zoneinfo usr/share/debconf usr/share/dpkg \
      usr/share/common-licenses usr/share/bash-completion usr/share/zsh usr/share/menu usr/share/pixmaps \
      var/lib/dpkg var/lib/apt var/cache/apt var/cache/debconf var/log/* etc/apt etc/dpkg \
      usr/bin/openssl usr/lib/ssl/misc usr/sbin/update-ca-certificates etc/ca-certificates.conf
    # The CA bundle update-ca-certificates would have written.
    mkdir -p etc/ssl/certs
    cat usr/share/ca-certificates/mozilla/*.crt >etc/ssl/certs/ca-certificates.crt
    rm -rf usr/share/ca-certificates
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >etc/passwd
    printf 'root:x:0:\nnonroot:x:65532:\n' >etc/group
    mkdir -p home/nonroot tmp root run var
    # As Debian's base-files has it: /var/run is /run (a tmpfs under a read-only root filesystem).
    rm -rf var/run
    ln -s /run var/run
    chown 65532:65532 home/nonroot
    chmod 1777 tmp
  )
}

build_rootfs() { # <name> <packages>
  local tar="$cache/$1-$key.tar"
  if [[ -s "$tar" && "${IMAGE_BASE_REFRESH:-0}" != 1 ]]; then
    echo "image base $1: cached $tar" >&2
  else
    mkdir -p "$cache"
    rm -rf "$cache/$1-"*
    echo "image base $1: mmdebstrap $suite ($2)" >&2
    local dir="$cache/$1-$key.d"
    rm -rf "$dir"
    mmdebstrap --quiet --format=directory --variant=extract --include="$2" "$suite" "$dir" >&2
    prune "$dir"
    tar --numeric-owner --sort=name --mtime=@0 -C "$dir" -cf "$tar.partial" .
    rm -rf "$dir"
    mv "$tar.partial" "$tar"
  fi
  local ref="localhost/kube-egress-gateway-base:$1-$key"
  if ! podman image exists "$ref"; then
    podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      "$tar" "$ref" >/dev/null
  fi
  # Bases of earlier keys are not needed any more (images built on them keep their layers).
  podman images --format '{{.Repository}}:{{.Tag}}' localhost/kube-egress-gateway-base |
    grep "^localhost/kube-egress-gateway-base:$1-" | grep -vx "$ref" | xargs -r podman rmi >/dev/null 2>&1 || true
  echo "$ref"
}

static="$(build_rootfs static libc6,libgcc-s1,libssl3,ca-certificates)"
agent="$(build_rootfs agent libc6,libgcc-s1,libssl3,ca-certificates,dash,coreutils,util-linux,iproute2,nftables,procps,wireguard-go)"
echo "BASE_IMAGE=$static"
echo "AGENT_BASE_IMAGE=$agent"
