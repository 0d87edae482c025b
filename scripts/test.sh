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

echo "== benchmarks, each once at its smallest size (--smoke): docs/performance.md's numbers come from them"
# A bench is a binary of its own (harness = false) that clippy only compiles: this runs each with its checks
# (about a minute; the data-plane one needs root, as the lab's tests do). One `cargo test --workspace` builds
# them with the features and test profile `cargo test` just used, so no dependency is built again.
bench_args=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for package in json.load(sys.stdin)["packages"]:
    for target in package["targets"]:
        if "bench" in target["kind"]:
            print("--bench", target["name"])
')
[ -n "$bench_args" ] || { echo "no bench targets found" >&2; exit 1; }
# shellcheck disable=SC2086 # one word per argument
cargo test --workspace $bench_args -- --smoke

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
