"""Uninstalling removes the CNI configuration: the node agent removes its conflist when it stops and reads
`data.uninstall: "true"` from its ConfigMap. `helm uninstall` deletes that ConfigMap and the agent's RBAC
together with the DaemonSet, so the agents must be stopped first (docs/install.md, "Uninstall")."""

from __future__ import annotations

from conftest import NAMESPACE, REPO, args_map, containers, objects, one, render, scenario_objects
from test_rbac import grants

NODE_AGENT = "kube-egress-gateway-node-agent"
UNINSTALL = {"gatewayCNIManager": {"cniUninstall": True}}


def test_setting_cni_uninstall_rolls_no_node_agent() -> None:
    # `helm upgrade --set gatewayCNIManager.cniUninstall=true` must leave the running agents alone: a rolled pod
    # would remove the conflist on stop and its successor would install it again.
    before = one(scenario_objects("default"), "DaemonSet", NODE_AGENT)
    after = one(objects(UNINSTALL), "DaemonSet", NODE_AGENT)
    assert before == after


def test_the_agent_can_read_the_switch_it_is_told_about() -> None:
    objs = objects(UNINSTALL)
    ds = one(objs, "DaemonSet", NODE_AGENT)
    agent = containers(ds, init=False)[0]
    name = args_map(agent)["--cni-uninstall-configmap-name"]
    cm = one(objs, "ConfigMap", name)
    assert cm["data"] == {"uninstall": "true"} and cm["metadata"]["namespace"] == NAMESPACE
    # The agent looks in its own namespace (MY_POD_NAMESPACE), where the chart puts the ConfigMap.
    env = {e["name"]: e for e in agent["env"]}
    assert env["MY_POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert ds["metadata"]["namespace"] == NAMESPACE
    assert (NAMESPACE, "", "configmaps", "get") in grants(objs, ds["spec"]["template"]["spec"]["serviceAccountName"])
    assert one(scenario_objects("default"), "ConfigMap", name)["data"] == {"uninstall": "false"}


STOP_AGENTS = f"kubectl -n {NAMESPACE} delete daemonset {NODE_AGENT} --cascade=foreground --timeout=10m"


def test_notes_give_the_commands_that_stop_the_agents_first() -> None:
    notes = next(text for path, text in render(UNINSTALL).items() if path.endswith("NOTES.txt"))
    stop = notes.index(STOP_AGENTS)
    assert notes.index(f"helm -n {NAMESPACE} uninstall keg") > stop
    assert STOP_AGENTS not in next(t for p, t in render().items() if p.endswith("NOTES.txt"))


def test_install_docs_give_the_same_procedure() -> None:
    docs = (REPO / "docs" / "install.md").read_text()
    section = docs[docs.index("### Uninstall") :]
    switch = section.index("kubectl -n kube-egress-gateway patch configmap cni-uninstall --type merge -p '{\"data\":{\"uninstall\":\"true\"}}'")
    stop = section.index("kubectl -n kube-egress-gateway delete daemonset kube-egress-gateway-node-agent --cascade=foreground --timeout=10m")
    uninstall = section.index("helm -n kube-egress-gateway uninstall kube-egress-gateway")
    assert switch < stop < uninstall
