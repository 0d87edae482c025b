#!/usr/bin/env bash
# The README's test command: every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# python3 is the project's virtual environment's from here on (pytest, the Helm SDK; the lab and release.sh too).
source scripts/python-env.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace --no-fail-fast

echo "== helm chart (tests/chart, Helm SDK)"
# The chart tests run the binaries' --help; build them first so the time shows here, not inside pytest.
cargo build --workspace --bins -q
# Any non-zero exit fails the run, including pytest's 5 ("no tests collected"), which the suite's conftest
# also turns into a failure.
python3 -m pytest -q tests/chart

echo "== release: scripts/release.sh (images, chart, provider) and tests/release"
# The release folder lives in the cargo target dir, so CI's cached target dir also keeps the release build.
release_out="${CARGO_TARGET_DIR:-target}/dist"
scripts/release.sh build --out "$release_out"
KEG_RELEASE_DIR="$(cd "$release_out" && pwd)/kube-egress-gateway-$(scripts/version.sh)" \
  python3 -m pytest -q tests/release

echo "== the lab's main job with every component running from its image (scripts/lab.sh --from-images)"
scripts/lab.sh --from-images
