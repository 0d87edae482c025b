"""One version for a release: the workspace version in Cargo.toml is the chart's version and appVersion, every
binary's `--version`, and (through the chart's default tag) the images'. Where a release is published is
written once, in release.env, and the chart, examples and docs must agree with it.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
import subprocess
import tomllib

import pytest
import yaml

from conftest import CHART, REPO
from release_facts import release_env, workspace_version

# Every binary a release ships, and the dev tools.
BINARIES = [
    "kube-egress-gateway-operator",
    "kube-egress-gateway-webhook",
    "kube-egress-gateway-agent",
    "kube-egress-cni",
    "terraform-provider-egressgateway",
    "crdgen",
    "lab",
    "kube-sim",
    "azure-sim",
    "control-plane",
]


@functools.lru_cache(maxsize=1)
def target_dir() -> pathlib.Path:
    """The cargo target directory, after building every binary (a no-op after scripts/test.sh's build)."""
    subprocess.run(["cargo", "build", "-q", "--workspace", "--bins"], cwd=REPO, check=True, timeout=1800)
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1"],
            cwd=REPO, check=True, capture_output=True, text=True, timeout=120,
        ).stdout
    )
    return pathlib.Path(meta["target_directory"])


def binaries_of_the_workspace() -> set[str]:
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1"],
            cwd=REPO, check=True, capture_output=True, text=True, timeout=120,
        ).stdout
    )
    return {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}


def test_the_list_of_binaries_is_complete() -> None:
    assert binaries_of_the_workspace() == set(BINARIES)


def test_the_chart_version_and_app_version_are_the_workspace_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == workspace_version()
    assert chart["appVersion"] == workspace_version()


def test_every_crate_takes_the_workspace_version() -> None:
    for manifest in REPO.glob("*/Cargo.toml"):
        package = tomllib.loads(manifest.read_text())["package"]
        assert package["version"] == {"workspace": True}, f"{manifest} sets its own version"


@pytest.mark.parametrize("binary", sorted(BINARIES))
def test_every_binary_answers_version(binary: str) -> None:
    path = target_dir() / "debug" / binary
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{binary} {workspace_version()}"


def test_the_chart_defaults_to_the_published_images() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["common"]["imageRepository"] == release_env()["IMAGE_REPOSITORY"]
    assert values["common"]["imageTag"] == "", "an empty tag means appVersion, i.e. the release's own images"


def test_examples_and_docs_use_the_providers_source_address() -> None:
    source = release_env()["PROVIDER_SOURCE"]
    short = source.removeprefix("registry.terraform.io/")
    files = [*REPO.glob("examples/terraform/*/main.tf"), REPO / "docs" / "tf-provider" / "index.md"]
    for f in files:
        sources = re.findall(r'source\s*=\s*"([^"]+/egressgateway)"', f.read_text())
        assert sources, f"{f} declares no egressgateway provider source"
        assert set(sources) <= {source, short}, f"{f}: {sources} is not {short}"
