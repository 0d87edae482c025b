"""The chart's command lines against the binaries: every flag it passes exists in the binary's --help.

Binaries not written yet are checked against the agreed flag contract only, and the help test is skipped
with the reason (never silently passed).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess

import pytest

from conftest import REPO, args_map, containers, scenario_objects, workloads

# Binary -> (cargo package, flags agreed for it). The chart may use only these.
CONTRACT = {
    "kube-egress-gateway-operator": (
        "operator",
        {
            "--cloud-config", "--metrics-bind-port", "--health-probe-bind-port", "--gateway-lb-probe-port",
            "--leader-elect", "--leader-election-namespace", "--secret-namespace", "--log-format",
        },
    ),
    "kube-egress-gateway-agent": (
        "agent",
        {
            "--mode", "--metrics-bind-port", "--health-probe-bind-port", "--gateway-lb-probe-port",
            "--lb-probe-drain-delay-seconds", "--secret-namespace", "--exception-cidrs", "--cni-conf-file",
            "--cni-uninstall-configmap-name", "--socket-path", "--log-format", "--pod-tunnel-watch",
            "--pod-netns-dir",
        },
    ),
    "kube-egress-gateway-webhook": (
        "webhook",
        {
            "--listen", "--metrics-listen", "--tls-cert-file", "--tls-key-file", "--self-signed-dns-names",
            "--mutating-webhook-configuration", "--validating-webhook-configuration", "--podendpoint-writers",
            "--drain-seconds", "--log-format",
        },
    ),
}
# Container name in the chart -> binary it runs.
CONTAINER_BINARY = {
    ("kube-egress-gateway-operator", "operator"): "kube-egress-gateway-operator",
    ("kube-egress-gateway-gateway-agent", "agent"): "kube-egress-gateway-agent",
    ("kube-egress-gateway-node-agent", "agent"): "kube-egress-gateway-agent",
    ("kube-egress-gateway-webhook", "webhook"): "kube-egress-gateway-webhook",
}
SCENARIOS_WITH_ALL_FLAGS = ("default", "webhook-generated", "custom-images")


def flags_used_by_chart() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {b: set() for b in CONTRACT}
    for scenario in SCENARIOS_WITH_ALL_FLAGS:
        for w in workloads(scenario_objects(scenario)):
            for c in containers(w, init=False):
                binary = CONTAINER_BINARY[(w["metadata"]["name"], c["name"])]
                used[binary] |= set(args_map(c))
    return used


@functools.lru_cache(maxsize=1)
def bin_targets() -> dict[str, str]:
    """Binary name -> package, from the workspace's Cargo metadata."""
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1"],
            cwd=REPO, check=True, capture_output=True, text=True, timeout=120,
        ).stdout
    )
    return {t["name"]: p["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}


def help_flags(package: str, binary: str) -> tuple[set[str], str]:
    out = subprocess.run(
        ["cargo", "run", "-q", "-p", package, "--bin", binary, "--", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, f"{binary} --help failed:\n{out.stderr[-2000:]}"
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout)), out.stdout


def test_chart_uses_only_agreed_flags() -> None:
    for binary, flags in flags_used_by_chart().items():
        allowed = CONTRACT[binary][1]
        assert flags, f"no container runs {binary}"
        assert flags <= allowed, f"{binary}: chart passes flags outside the contract: {sorted(flags - allowed)}"


@pytest.mark.parametrize("binary", sorted(CONTRACT))
def test_binary_help_knows_every_flag_the_chart_passes(binary: str) -> None:
    package = CONTRACT[binary][0]
    targets = bin_targets()
    if binary not in targets:
        pytest.skip(f"{binary} is not a bin target of the workspace yet; flags checked against the contract only")
    assert targets[binary] == package
    known, text = help_flags(package, binary)
    missing = flags_used_by_chart()[binary] - known
    assert not missing, f"{binary} --help lacks {sorted(missing)}:\n{text}"
    if binary == "kube-egress-gateway-agent":
        assert "gateway" in text and "node" in text, "agent --help should list the modes"
