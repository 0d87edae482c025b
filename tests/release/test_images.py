"""The release's images, run with podman the way the chart runs them: each entrypoint answers `--version` with
the release version under the chart's user and security context (read-only root filesystem, capabilities),
the agent image carries every file the chart's containers run, the images are within their size budget and
carry the OCI labels, and the chart's default image references are exactly these images.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from conftest import IMAGES, podman, release_env, render_chart, run_args, version, workload_containers

BUDGET_MB = {"kube-egress-gateway-operator": 40, "kube-egress-gateway-webhook": 40, "kube-egress-gateway-agent": 120}
# Container of the chart's default rendering -> (image, binary its entrypoint is).
CHART_CONTAINERS = {
    "kube-egress-gateway-operator/operator": "kube-egress-gateway-operator",
    "kube-egress-gateway-webhook/webhook": "kube-egress-gateway-webhook",
    "kube-egress-gateway-gateway-agent/agent": "kube-egress-gateway-agent",
    "kube-egress-gateway-node-agent/agent": "kube-egress-gateway-agent",
}


def ref(name: str) -> str:
    return f"{release_env()['IMAGE_REPOSITORY']}/{name}:{version()}"


def security_flags(container: dict) -> list[str]:
    """podman options for a container's securityContext as the chart renders it."""
    sc = container.get("securityContext", {})
    flags = []
    if sc.get("privileged"):
        return ["--privileged", "--user", "0"]
    if "runAsUser" in sc:
        flags += ["--user", str(sc["runAsUser"])]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    caps = sc.get("capabilities", {})
    if "ALL" in caps.get("drop", []):
        flags += ["--cap-drop", "ALL"]
    for cap in caps.get("add", []):
        flags += ["--cap-add", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    return flags


def pod_user(objs: list[dict], workload: str) -> list[str]:
    for o in objs:
        if o["metadata"]["name"] == workload and o["kind"] in ("Deployment", "DaemonSet"):
            sc = o["spec"]["template"]["spec"].get("securityContext", {})
            if "runAsUser" in sc:
                return ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    return []


@pytest.mark.parametrize("container", sorted(CHART_CONTAINERS))
def test_the_entrypoint_answers_version_under_the_charts_security_context(container: str, loaded_images: dict[str, str]) -> None:
    objs = render_chart()
    c = workload_containers(objs)[container]
    binary = CHART_CONTAINERS[container]
    flags = pod_user(objs, container.split("/")[0]) + security_flags(c)
    out = podman("run", *run_args(), *flags, c["image"], "--version", check=False)
    assert out.returncode == 0, f"{c['image']} {flags}: {out.stderr}"
    assert out.stdout.strip() == f"{binary} {version()}"


@pytest.mark.parametrize("name", ["kube-egress-gateway-operator", "kube-egress-gateway-webhook"])
def test_operator_and_webhook_run_as_nonroot_without_a_shell(name: str, loaded_images: dict[str, str]) -> None:
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", ref(name)).stdout)
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == [f"/usr/local/bin/{name}"]
    # Nothing to exec into: no shell, no package manager.
    out = podman("run", *run_args(), "--entrypoint", "/bin/sh", ref(name), "-c", "true", check=False)
    assert out.returncode != 0
    # The chart's restricted pod (runAsNonRoot) admits the image's user; the binary starts as it.
    objs = render_chart()
    workload = {"kube-egress-gateway-operator": "kube-egress-gateway-operator", "kube-egress-gateway-webhook": "kube-egress-gateway-webhook"}[name]
    assert pod_user(objs, workload) == ["--user", "65532:65532"]


def test_the_agent_image_carries_what_the_chart_runs(loaded_images: dict[str, str]) -> None:
    agent = ref("kube-egress-gateway-agent")
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", agent).stdout)
    assert config["User"] in ("0:0", "0")
    script = (
        "set -e; for t in cp mv chmod nsenter ip nft sysctl wireguard-go; do command -v $t; done; "
        "ip -V; nft --version; sysctl --version; wireguard-go --version | head -n 1; "
        "/usr/local/bin/kube-egress-cni --version"
    )
    out = podman("run", *run_args(), "--read-only", "--entrypoint", "/bin/sh", agent, "-c", script, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"kube-egress-cni {version()}" in out.stdout
    assert "iproute2" in out.stdout and "nftables" in out.stdout and "procps" in out.stdout


def test_the_node_agents_cni_install_copies_the_plugin_the_chart_names(loaded_images: dict[str, str], tmp_path: pathlib.Path) -> None:
    objs = render_chart()
    c = workload_containers(objs)["kube-egress-gateway-node-agent/cni-install"]
    host_bin = tmp_path / "opt-cni-bin"
    host_bin.mkdir()
    mount = next(m for m in c["volumeMounts"] if m["name"] == "cni-bin")["mountPath"]
    out = podman(
        "run", *run_args(), *security_flags(c), "--volume", f"{host_bin}:{mount}",
        "--entrypoint", c["command"][0], c["image"], *c["command"][1:], *c["args"], check=False,
    )
    assert out.returncode == 0, out.stderr
    plugin = host_bin / "kube-egress-cni"
    assert sorted(p.name for p in host_bin.iterdir()) == ["kube-egress-cni"]
    assert plugin.stat().st_mode & 0o777 == 0o755
    ran = subprocess.run([str(plugin), "--version"], capture_output=True, text=True, timeout=30)
    assert ran.stdout.strip() == f"kube-egress-cni {version()}"


def test_the_gateway_agents_netns_init_runs_in_the_image(loaded_images: dict[str, str], tmp_path: pathlib.Path) -> None:
    # Privileged as the chart makes it, but in a network namespace of its own (--network none) with a private
    # directory for /var/run/netns, so nothing of the host is touched.
    objs = render_chart()
    c = workload_containers(objs)["kube-egress-gateway-gateway-agent/netns-init"]
    assert c["securityContext"].get("privileged") is True
    netns = tmp_path / "netns"
    netns.mkdir()
    out = podman(
        "run", *run_args(), *security_flags(c), "--volume", f"{netns}:/var/run/netns",
        "--entrypoint", c["command"][0], c["image"], *c["command"][1:], *c["args"], check=False,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_size_budget(name: str, release_dir: pathlib.Path, loaded_images: dict[str, str]) -> None:
    # A --debug-binaries folder given as KEG_RELEASE_DIR deselects this test (conftest); one built here never is.
    assert not (release_dir / "DEBUG-BINARIES").exists(), "debug binaries are not what the budget is for"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", ref(name)).stdout)
    assert size < BUDGET_MB[name] * 1000 * 1000, f"{name} is {size / 1e6:.1f} MB, budget {BUDGET_MB[name]} MB"


@pytest.mark.parametrize("name", IMAGES)
def test_labels(name: str, loaded_images: dict[str, str]) -> None:
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", ref(name)).stdout)
    assert labels["org.opencontainers.image.version"] == version()
    assert labels["org.opencontainers.image.source"] == release_env()["SOURCE_URL"]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert len(labels["org.opencontainers.image.revision"].removesuffix("-dirty")) == 40
    assert labels["org.opencontainers.image.title"] == name


def test_the_charts_image_references_are_the_release_images(digests: dict[str, str]) -> None:
    images = {c["image"] for c in workload_containers(render_chart()).values()}
    assert images == {ref(n) for n in IMAGES}
    assert {f"{n}:{version()}" for n in IMAGES} == set(digests)
