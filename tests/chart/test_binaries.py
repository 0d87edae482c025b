"""The chart's command lines against the binaries: every flag it passes exists in the binary's --help, and
each binary's --help names its flags and their environment variables as manifests and users write them.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess

import pytest

from conftest import REPO, args_map, containers, scenario_objects, workloads

# Binary -> the cargo package that builds it.
PACKAGE = {
    "kube-egress-gateway-operator": "operator",
    "kube-egress-gateway-agent": "agent",
    "kube-egress-gateway-webhook": "webhook",
    "kube-sim": "testbed",
}
# Binary -> flags agreed for it. The chart may use only these.
CONTRACT = {
    "kube-egress-gateway-operator": {
        "--cloud-config", "--metrics-bind-port", "--health-probe-bind-port", "--gateway-lb-probe-port",
        "--leader-elect", "--leader-election-namespace", "--secret-namespace", "--log-format",
        "--shutdown-grace-seconds",
    },
    "kube-egress-gateway-agent": {
        "--mode", "--metrics-bind-port", "--health-probe-bind-port", "--gateway-lb-probe-port",
        "--lb-probe-drain-delay-seconds", "--secret-namespace", "--exception-cidrs", "--cni-conf-file",
        "--cni-uninstall-configmap-name", "--socket-path", "--log-format", "--pod-tunnel-watch",
        "--pod-netns-dir", "--wireguard-backend",
    },
    "kube-egress-gateway-webhook": {
        "--listen", "--metrics-listen", "--tls-cert-file", "--tls-key-file", "--self-signed-dns-names",
        "--self-signed-secret", "--mutating-webhook-configuration", "--validating-webhook-configuration", "--podendpoint-writers",
        "--drain-seconds", "--log-format",
    },
}
# Binary -> (first line of its --help, every flag -> the environment variable that sets it). These
# are what manifests, the chart and users write (upstream's names where upstream has one): changing one breaks them.
HELP = {
    "kube-egress-gateway-operator": (
        "Flags are upstream's (`kube-egress-gateway-controller`), so existing manifests keep working",
        {
            "--cloud-config": "CLOUD_CONFIG", "--metrics-bind-port": "METRICS_BIND_PORT",
            "--health-probe-bind-port": "HEALTH_PROBE_BIND_PORT", "--gateway-lb-probe-port": "GATEWAY_LB_PROBE_PORT",
            "--leader-elect": "LEADER_ELECT", "--leader-election-namespace": "MY_POD_NAMESPACE",
            "--secret-namespace": "MY_POD_NAMESPACE", "--log-format": "LOG_FORMAT",
            "--stuck-pass-seconds": "STUCK_PASS_SECONDS", "--shutdown-grace-seconds": "SHUTDOWN_GRACE_SECONDS",
        },
    ),
    "kube-egress-gateway-webhook": (
        "Admission webhook for kube-egress-gateway",
        {
            "--listen": "WEBHOOK_LISTEN", "--metrics-listen": "WEBHOOK_METRICS_LISTEN",
            "--tls-cert-file": "WEBHOOK_TLS_CERT_FILE", "--tls-key-file": "WEBHOOK_TLS_KEY_FILE",
            "--cert-reload-seconds": "WEBHOOK_CERT_RELOAD_SECONDS",
            "--self-signed-dns-names": "WEBHOOK_SELF_SIGNED_DNS_NAMES",
            "--self-signed-secret": "WEBHOOK_SELF_SIGNED_SECRET",
            "--mutating-webhook-configuration": "WEBHOOK_MUTATING_CONFIG",
            "--validating-webhook-configuration": "WEBHOOK_VALIDATING_CONFIG",
            "--podendpoint-writers": "WEBHOOK_PODENDPOINT_WRITERS", "--drain-seconds": "WEBHOOK_DRAIN_SECONDS",
            "--standalone": "WEBHOOK_STANDALONE", "--log-format": "LOG_FORMAT",
        },
    ),
    "kube-egress-gateway-agent": (
        "The agent's flags (upstream's where upstream has one)",
        {
            "--mode": "AGENT_MODE", "--node-name": "MY_NODE_NAME", "--namespace": "MY_POD_NAMESPACE",
            "--secret-namespace": "SECRET_NAMESPACE", "--metrics-bind-port": "METRICS_BIND_PORT",
            "--metrics-bind-address": "METRICS_BIND_ADDRESS", "--health-probe-bind-port": "HEALTH_PROBE_BIND_PORT",
            "--health-probe-bind-address": "HEALTH_PROBE_BIND_ADDRESS",
            "--gateway-lb-probe-port": "GATEWAY_LB_PROBE_PORT",
            "--lb-probe-drain-delay-seconds": "LB_PROBE_DRAIN_DELAY_SECONDS", "--imds-endpoint": "IMDS_ENDPOINT",
            "--netns-name": "GATEWAY_NETNS", "--host-interface": "HOST_INTERFACE",
            "--wireguard-backend": "WIREGUARD_BACKEND", "--apply-debounce-ms": "APPLY_DEBOUNCE_MS",
            "--resync-seconds": "RESYNC_SECONDS", "--cni-conf-dir": "CNI_CONF_DIR", "--cni-conf-file": "CNI_CONF_FILE",
            "--cni-socket": "CNI_SOCKET", "--exception-cidrs": "EXCEPTION_CIDRS",
            "--cni-uninstall-configmap-name": "CNI_UNINSTALL_CONFIGMAP_NAME", "--cni-conf-poll-ms": "CNI_CONF_POLL_MS",
            "--pod-tunnel-watch": "POD_TUNNEL_WATCH", "--pod-netns-dir": "POD_NETNS_DIR", "--log-format": "LOG_FORMAT",
        },
    ),
    # The simulator the lab and local trials start: flags only, apart from the log format every binary shares.
    "kube-sim": (
        "In-memory Kubernetes API server (HTTPS, bearer tokens, CRDs, admission webhooks)",
        {
            "--listen": None, "--kubeconfig": None, "--crds": None, "--service": None, "--service-account": None,
            "--log-format": "LOG_FORMAT",
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


def flag_environment(help_text: str) -> dict[str, str | None]:
    """Every option of a clap --help (but --help and --version) -> the `[env: NAME=]` under it, or None."""
    options: dict[str, str | None] = {}
    flag = None
    for line in help_text.splitlines():
        if start := re.match(r"\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", line):
            flag = start.group(1)
            options[flag] = None
        elif flag and (env := re.match(r"\s+\[env: ([A-Z0-9_]+)=", line)):
            options[flag] = env.group(1)
    return {f: e for f, e in options.items() if f not in ("--help", "--version")}


@pytest.mark.parametrize("binary", sorted(HELP))
def test_binary_help_names_its_flags_and_their_environment_variables(binary: str) -> None:
    about, flags = HELP[binary]
    assert bin_targets()[binary] == PACKAGE[binary]
    _, text = help_flags(PACKAGE[binary], binary)
    assert text.startswith(f"{about}\n\nUsage: {binary} "), text
    assert flag_environment(text) == flags, text


def test_chart_uses_only_agreed_flags() -> None:
    for binary, flags in flags_used_by_chart().items():
        allowed = CONTRACT[binary]
        assert flags, f"no container runs {binary}"
        assert flags <= allowed, f"{binary}: chart passes flags outside the contract: {sorted(flags - allowed)}"


@pytest.mark.parametrize("binary", sorted(CONTRACT))
def test_binary_help_knows_every_flag_the_chart_passes(binary: str) -> None:
    assert bin_targets()[binary] == PACKAGE[binary]
    known, text = help_flags(PACKAGE[binary], binary)
    missing = flags_used_by_chart()[binary] - known
    assert not missing, f"{binary} --help lacks {sorted(missing)}:\n{text}"
    if binary == "kube-egress-gateway-agent":
        assert "gateway" in text and "node" in text, "agent --help should list the modes"
