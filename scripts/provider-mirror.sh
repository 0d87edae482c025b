#!/usr/bin/env bash
# Verifies a provider release (signature, then checksums) and lays it out as a Terraform filesystem mirror, so
# `terraform init` installs the provider without any registry (air-gapped machines, CI, the tests and the lab).
#
#   scripts/provider-mirror.sh --release DIR --mirror DIR [--key FILE] [--lock-file FILE]
#
# --release  a folder made by scripts/package-provider.sh (or downloaded from a release)
# --key      the public key to trust (default: the release's *_signing-key.asc, which only makes sense for
#            a release you built yourself; pass the project's published key otherwise)
# --lock-file  writes a dependency lock file (.terraform.lock.hcl) whose `zh:` hashes are the verified
#            SHA256SUMS, so `terraform init` refuses an archive in the mirror that does not match them
#
# Then point Terraform at the mirror in its CLI configuration (TF_CLI_CONFIG_FILE or ~/.terraformrc):
#   provider_installation {
#     filesystem_mirror {
#       path    = "<mirror DIR>"
#       include = ["registry.terraform.io/kube-egress-gateway-rs/egressgateway"]
#     }
#     direct { exclude = ["registry.terraform.io/kube-egress-gateway-rs/egressgateway"] }
#   }
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name=terraform-provider-egressgateway
# shellcheck source=../release.env
source "$root/release.env"

release= mirror= key= lock=
while (($#)); do
  case "$1" in
    --release) release="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --lock-file) lock="$2"; shift 2 ;;
    *) echo "provider-mirror: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$release" && -n "$mirror" ]] || { echo "usage: $0 --release DIR --mirror DIR [--key FILE] [--lock-file FILE]" >&2; exit 2; }

shopt -s nullglob
sums=("$release"/${name}_*_SHA256SUMS)
((${#sums[@]} == 1)) || { echo "provider-mirror: expected one ${name}_<version>_SHA256SUMS in $release, found ${#sums[@]}" >&2; exit 1; }
sums="${sums[0]}"
prefix="$(basename "$sums" _SHA256SUMS)"
version="${prefix#"${name}_"}"
key="${key:-$release/${prefix}_signing-key.asc}"

# 1. The signature: SHA256SUMS was signed by the trusted key (gpgv with a keyring holding only that key).
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
gpg --batch --quiet --dearmor --output "$tmp/trusted.gpg" "$key"
if ! gpgv --quiet --keyring "$tmp/trusted.gpg" "$sums.sig" "$sums" 2>"$tmp/gpgv.log"; then
  echo "provider-mirror: $sums.sig is not a valid signature of $sums by the key in $key:" >&2
  cat "$tmp/gpgv.log" >&2
  exit 1
fi

# 2. The checksums: every archive and the manifest listed in SHA256SUMS is present and matches.
if ! (cd "$release" && sha256sum --quiet --strict -c "$(basename "$sums")") >&2; then
  echo "provider-mirror: a file of $release does not match $sums" >&2
  exit 1
fi
grep -q '"protocol_versions":\["6.0"\]' "$release/${prefix}_manifest.json" ||
  { echo "provider-mirror: ${prefix}_manifest.json does not declare plugin protocol 6.0" >&2; exit 1; }

# 3. The packed mirror layout: <hostname>/<namespace>/<type>/terraform-provider-<type>_<version>_<os>_<arch>.zip
dest="$mirror/$PROVIDER_SOURCE"
mkdir -p "$dest"
zips=()
while read -r sum file; do
  [[ "$file" == *.zip ]] || continue
  cp "$release/$file" "$dest/$file"
  zips+=("$sum")
done <"$sums"
((${#zips[@]})) || { echo "provider-mirror: $sums lists no archive" >&2; exit 1; }

if [[ -n "$lock" ]]; then
  {
    echo "# Written by scripts/provider-mirror.sh from the verified $(basename "$sums")."
    echo "provider \"$PROVIDER_SOURCE\" {"
    echo "  version = \"$version\""
    echo "  hashes = ["
    for sum in "${zips[@]}"; do echo "    \"zh:$sum\","; done
    echo "  ]"
    echo "}"
  } >"$lock"
fi
echo "provider-mirror: $PROVIDER_SOURCE $version verified and mirrored in $mirror"
