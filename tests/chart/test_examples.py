"""examples/terraform/aks works with this chart: its gateway node pool carries the labels and taints the gateway
agent's DaemonSet selects and tolerates, AKS's own managed static egress gateway stays off, the chart is installed
before the objects it serves, and every namespace the configurations use is created. In every example, a
configuration is replaced with its pool.

The HCL is parsed with python-hcl2 (tests/chart/requirements.txt); expressions stay text (`${...}`).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from typing import Any

import hcl2
import pytest

from conftest import REPO, one, scenario_objects, workloads
from release_facts import release_env, workspace_version

EXAMPLE = REPO / "examples" / "terraform" / "aks"
GATEWAY_AGENT = "kube-egress-gateway-gateway-agent"


def _plain(node: Any) -> Any:
    """python-hcl2's tree without its bookkeeping keys and with string literals unquoted (keys too)."""
    if isinstance(node, dict):
        return {_unquote(k): _plain(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return _unquote(node) if isinstance(node, str) else node


def _unquote(text: str) -> str:
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return json.loads(text)
    return text


def load(path: pathlib.Path) -> dict[str, Any]:
    with path.open() as f:
        return _plain(hcl2.load(f))


def resources(tf: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    """name -> body of every resource of that type."""
    out: dict[str, dict[str, Any]] = {}
    for entry in tf.get("resource", []):
        for name, body in entry.get(rtype, {}).items():
            out[name] = body
    return out


def variables(tf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: body for entry in tf.get("variable", []) for name, body in entry.items()}


def resolve(tf: dict[str, Any], value: Any) -> Any:
    """A literal, or `${var.x}` replaced by the variable's default; other expressions are returned as text."""
    if isinstance(value, str):
        m = re.fullmatch(r"\$\{var\.(\w+)\}", value)
        if m:
            return variables(tf)[m.group(1)]["default"]
    return value


def referenced(expr: str, rtype: str) -> str:
    """The name of the `rtype` resource an expression such as `${rtype.name.attr}` refers to."""
    m = re.fullmatch(rf"\$\{{{re.escape(rtype)}\.(\w+)(\.[\w\[\]\.]+)?\}}", expr)
    assert m, f"{expr!r} does not refer to a {rtype}"
    return m.group(1)


def tolerates(toleration: dict[str, Any], taint: dict[str, str]) -> bool:
    """Kubernetes' rule (k8s.io/api/core/v1 Toleration.ToleratesTaint)."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return toleration.get("value", "") == taint["value"]


def parse_taint(text: str) -> dict[str, str]:
    """`key=value:Effect` (AKS's node_taints form)."""
    m = re.fullmatch(r"([^=:]+)(?:=([^:]*))?:(NoSchedule|PreferNoSchedule|NoExecute)", text)
    assert m, f"{text!r} is not key=value:Effect"
    return {"key": m.group(1), "value": m.group(2) or "", "effect": m.group(3)}


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return load(EXAMPLE / "main.tf")


@pytest.fixture(scope="module")
def gateway_node_pool(tf: dict[str, Any]) -> dict[str, Any]:
    """The AKS node pool the example's GatewayPool names."""
    pools = resources(tf, "egressgateway_gateway_pool")
    assert len(pools) == 1, pools
    (pool,) = pools.values()
    name = referenced(pool["gateway_nodepool_name"], "azurerm_kubernetes_cluster_node_pool")
    return resources(tf, "azurerm_kubernetes_cluster_node_pool")[name]


def test_gateway_node_pool_has_what_the_gateway_agent_selects_and_tolerates(gateway_node_pool: dict[str, Any]) -> None:
    pod = one(scenario_objects("default"), "DaemonSet", GATEWAY_AGENT)["spec"]["template"]["spec"]
    labels = gateway_node_pool.get("node_labels", {})
    for key, value in pod["nodeSelector"].items():
        assert labels.get(key) == value, f"node_labels lack {key}={value}, which the gateway agent selects"
    taints = [parse_taint(t) for t in gateway_node_pool.get("node_taints", [])]
    for taint in taints:
        if taint["effect"] == "PreferNoSchedule":
            continue
        assert any(tolerates(t, taint) for t in pod.get("tolerations", [])), f"the gateway agent does not tolerate {taint}"
    # The taint keeps everything else off the gateway nodes: no other workload of the chart tolerates it.
    assert taints, "the gateway node pool has no taint: ordinary pods would land on the gateway nodes"
    for w in workloads(scenario_objects("default")):
        if w["metadata"]["name"] == GATEWAY_AGENT:
            continue
        tolerations = w["spec"]["template"]["spec"].get("tolerations", [])
        assert not all(any(tolerates(t, taint) for t in tolerations) for taint in taints), w["metadata"]["name"]


def test_gateway_node_pool_is_a_regular_pool_without_aks_managed_static_egress(tf: dict[str, Any], gateway_node_pool: dict[str, Any]) -> None:
    # mode Gateway and the cluster's static_egress_gateway_profile_enabled are AKS's own managed static egress
    # gateway, whose controllers serve the same kinds as this chart.
    assert gateway_node_pool.get("mode", "User") == "User"
    assert "gateway_public_ip_prefix_size" not in gateway_node_pool
    assert gateway_node_pool.get("auto_scaling_enabled", False) is False, "the pool's size is bounded by the prefix"

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                assert not (k == "static_egress_gateway_profile_enabled" and v is not False), path + k
                walk(v, f"{path}{k}.")
        elif isinstance(node, list):
            for v in node:
                walk(v, path)

    walk(tf, "")


def test_gateway_pool_declares_a_prefix_that_fits_the_node_pool(tf: dict[str, Any], gateway_node_pool: dict[str, Any]) -> None:
    # A declared size is what lets the node pool go without the aks-managed-gatewayIPPrefixSize tag.
    (pool,) = resources(tf, "egressgateway_gateway_pool").values()
    size = int(resolve(tf, pool["public_ip_prefix_size"]))
    nodes = int(resolve(tf, gateway_node_pool["node_count"]))
    assert 28 <= size <= 31
    assert 2 <= nodes <= 2 ** (32 - size), f"{nodes} gateway nodes do not fit a /{size}"


def test_chart_is_installed_before_what_it_serves(tf: dict[str, Any]) -> None:
    releases = resources(tf, "helm_release")
    assert len(releases) == 1, f"the example must install the chart once, not {len(releases)} times"
    ((name, release),) = releases.items()
    for rtype in ("egressgateway_gateway_pool", "egressgateway_static_gateway_configuration"):
        for rname, body in resources(tf, rtype).items():
            assert f"${{helm_release.{name}}}" in body.get("depends_on", []), f"{rtype}.{rname} does not wait for the chart"
    # By default the release's own chart; the gateway agent's placement is the chart's default, which the
    # test above renders.
    assert resolve(tf, release["chart"]) == "kube-egress-gateway"
    assert variables(tf)["chart_repository"]["default"] == "oci://" + release_env()["CHART_REPOSITORY"]
    assert variables(tf)["chart_version"]["default"] == workspace_version()
    assert "gatewayDaemonManager" not in json.dumps(release.get("values", []))
    assert release.get("wait", True) is True, "apply must wait for the webhook and operator"


def test_configuration_namespaces_are_created(tf: dict[str, Any]) -> None:
    namespaces = resources(tf, "kubernetes_namespace_v1")
    configs = resources(tf, "egressgateway_static_gateway_configuration")
    assert configs
    for cname, body in configs.items():
        ns = referenced(body["namespace"], "kubernetes_namespace_v1")
        assert ns in namespaces, f"configuration {cname}: namespace {ns} is not created"


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform not installed (scripts/install-deps.sh)")
def test_example_is_terraform_fmt_clean() -> None:
    out = subprocess.run(["terraform", "fmt", "-check", "-diff", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("example", sorted(p.parent.name for p in (REPO / "examples" / "terraform").glob("*/main.tf")))
def test_configurations_are_replaced_with_their_pool(example: str) -> None:
    # A pool's new name or prefix size replaces it, and the operator keeps a pool while configurations use it:
    # a configuration on a pool of the same example must be replaced with it (its uid is unknown then), or the
    # apply stops at the pool's delete (docs/tf-provider/resources/static_gateway_configuration.md).
    tf = load(REPO / "examples" / "terraform" / example / "main.tf")
    pools = resources(tf, "egressgateway_gateway_pool")
    configs = resources(tf, "egressgateway_static_gateway_configuration")
    assert configs, f"{example}: no configuration"
    for cname, body in configs.items():
        pool = referenced(body["gateway_nodepool_name"], "egressgateway_gateway_pool")
        assert pool in pools, f"{example}: configuration {cname} names pool {pool}, which the example does not declare"
        triggers = [t for block in body.get("lifecycle", []) for t in block.get("replace_triggered_by", [])]
        assert f"${{egressgateway_gateway_pool.{pool}.uid}}" in triggers, f"{example}: configuration {cname}: {triggers}"
