#!/usr/bin/env bash
# Packages the Terraform provider binary as a registry release: what `terraform init` downloads and checks.
#
#   scripts/package-provider.sh --binary PATH --out DIR [--platform linux_amd64]
#
# Writes into DIR (the names are the ones the Terraform Registry and its mirrors expect, see
# https://developer.hashicorp.com/terraform/registry/providers/publishing):
#   terraform-provider-egressgateway_<version>_<platform>.zip    the binary, as terraform-provider-egressgateway_v<version>
#   terraform-provider-egressgateway_<version>_manifest.json     {"version":1,"metadata":{"protocol_versions":["6.0"]}}
#   terraform-provider-egressgateway_<version>_SHA256SUMS        sha256 of every zip and of the manifest
#   terraform-provider-egressgateway_<version>_SHA256SUMS.sig    detached binary OpenPGP signature of SHA256SUMS
#   terraform-provider-egressgateway_<version>_signing-key.asc   the public key that verifies it
# The zip is reproducible (fixed timestamps, no extra attributes), so the same binary gives the same checksum.
#
# Signing: with RELEASE_GPG_KEY_ID set, that key of the caller's keyring (GNUPGHOME) signs, as a real release
# does (the key registered with the Terraform Registry). Without it, a throwaway RSA key is generated for this
# run only and its public half written next to the signature: enough to exercise the verification path, never
# a key anyone should trust.
#
# The version is the workspace version (Cargo.toml); the binary must report it (`--version`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name=terraform-provider-egressgateway

binary= out= platform=linux_amd64
while (($#)); do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --platform) platform="$2"; shift 2 ;;
    *) echo "package-provider: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$binary" && -n "$out" ]] || { echo "usage: $0 --binary PATH --out DIR [--platform os_arch]" >&2; exit 2; }
[[ "$platform" =~ ^[a-z0-9]+_[a-z0-9]+$ ]] || { echo "package-provider: --platform $platform is not os_arch (e.g. linux_amd64)" >&2; exit 2; }

version="$("$root/scripts/version.sh")"
reported="$("$binary" --version)"
if [[ "$reported" != "$name $version" ]]; then
  echo "package-provider: $binary --version says '$reported', the workspace version is $version" >&2
  exit 1
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
stage="$(mktemp -d)"
gnupg=
cleanup() {
  rm -rf "$stage"
  if [[ -n "$gnupg" ]]; then
    GNUPGHOME="$gnupg" gpgconf --kill gpg-agent 2>/dev/null || true
    rm -rf "$gnupg"
  fi
}
trap cleanup EXIT

prefix="${name}_${version}"
# The binary inside the zip carries the version (Terraform runs whatever executable starts with
# terraform-provider-<type>, and the registry convention is _v<version>).
install -m 0755 "$binary" "$stage/${name}_v${version}"
touch -d @"${SOURCE_DATE_EPOCH:-0}" "$stage/${name}_v${version}"
rm -f "$out/${prefix}_${platform}.zip"
(cd "$stage" && zip -q -X -D "$out/${prefix}_${platform}.zip" "${name}_v${version}")

printf '{"version":1,"metadata":{"protocol_versions":["6.0"]}}\n' >"$out/${prefix}_manifest.json"

# SHA256SUMS covers every archive of this version in DIR (one per platform packaged into it) and the manifest.
(cd "$out" && sha256sum "${prefix}"_*.zip "${prefix}_manifest.json" >"${prefix}_SHA256SUMS")

if [[ -n "${RELEASE_GPG_KEY_ID:-}" ]]; then
  key="$RELEASE_GPG_KEY_ID"
else
  # A short path: gpg-agent's socket lives in GNUPGHOME and unix socket paths are limited to 108 bytes.
  gnupg="$(mktemp -d /tmp/keg-gpg.XXXXXX)"
  export GNUPGHOME="$gnupg"
  # RSA: the Terraform Registry accepts RSA and DSA signing keys only.
  gpg --batch --quiet --passphrase '' \
    --quick-gen-key "kube-egress-gateway release TEST key, generated at build time <release-test@invalid>" rsa3072 sign 1d
  key="$(gpg --batch --list-secret-keys --with-colons | awk -F: '/^fpr:/ {print $10; exit}')"
fi
rm -f "$out/${prefix}_SHA256SUMS.sig"
gpg --batch --quiet --local-user "$key" --detach-sign --output "$out/${prefix}_SHA256SUMS.sig" "$out/${prefix}_SHA256SUMS"
gpg --batch --quiet --armor --export "$key" >"$out/${prefix}_signing-key.asc"
echo "package-provider: $out/${prefix}_${platform}.zip (signed by key $key)"
