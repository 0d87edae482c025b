"""Least-privilege RBAC: every rule names resources that exist, and each component gets only what it uses."""

from __future__ import annotations

import copy

import pytest

from conftest import NAMESPACE, SCENARIOS, args_map, containers, crds
from conftest import find, key_secret_namespace, objects, one, scenario_objects, workloads
from test_render import CORE_RESOURCES, GROUP

PREFIX = "kube-egress-gateway"


def rules_of(objs, sa: str) -> list[tuple[str, dict]]:
    """(scope, rule) for every rule bound to the service account: scope "cluster" or the Role's namespace."""
    out = []
    for binding in find(objs, "ClusterRoleBinding") + find(objs, "RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NAMESPACE for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        if binding["kind"] == "RoleBinding":
            assert ref["kind"] == "Role", "a RoleBinding to a ClusterRole would hide cluster scope"
            # A RoleBinding's Role is the one of that name in the binding's own namespace.
            ns = binding["metadata"]["namespace"]
            [role] = [r for r in find(objs, "Role", ref["name"]) if r["metadata"]["namespace"] == ns] or [None]
            assert role is not None, f"RoleBinding {ns}/{binding['metadata']['name']}: no Role {ns}/{ref['name']}"
        else:
            role = one(objs, ref["kind"], ref["name"])
        scope = "cluster" if role["kind"] == "ClusterRole" else role["metadata"]["namespace"]
        out.extend((scope, r) for r in role["rules"])
    return out


def grants(objs, sa: str) -> set[tuple[str, str, str, str]]:
    """(scope, group, resource, verb) granted to the service account."""
    out = set()
    for scope, r in rules_of(objs, sa):
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    out.add((scope, g, res, v))
    return out


def test_every_rule_names_an_existing_resource(scenario: str) -> None:
    plurals = {c["spec"]["names"]["plural"]: c for c in crds()}
    for role in find(scenario_objects(scenario), "ClusterRole") + find(scenario_objects(scenario), "Role"):
        for r in role["rules"]:
            assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"], role["metadata"]
            for g in r["apiGroups"]:
                for res in r["resources"]:
                    base, _, sub = res.partition("/")
                    if g == GROUP:
                        assert base in plurals, f"{role['metadata']['name']}: no CRD {base}"
                        version = plurals[base]["spec"]["versions"][0]
                        if sub == "status":
                            assert "status" in version.get("subresources", {}), f"{base} has no status subresource"
                        else:
                            assert sub in ("", "finalizers"), f"unknown subresource {res}"
                    else:
                        assert g in CORE_RESOURCES and base in CORE_RESOURCES[g] and not sub, f"unknown {g}/{res}"


def test_every_workload_has_its_own_bound_service_account(scenario: str) -> None:
    objs = scenario_objects(scenario)
    seen = set()
    for w in workloads(objs):
        sa = w["spec"]["template"]["spec"]["serviceAccountName"]
        assert sa not in seen, f"{sa} shared between workloads"
        seen.add(sa)
        one(objs, "ServiceAccount", sa)
        assert rules_of(objs, sa), f"{sa} has no role"


def test_no_cluster_role_grants_secrets(scenario: str) -> None:
    for cr in find(scenario_objects(scenario), "ClusterRole"):
        for r in cr["rules"]:
            assert "secrets" not in r["resources"], f"ClusterRole {cr['metadata']['name']} grants secrets cluster-wide"


def test_operator_grants() -> None:
    g = grants(scenario_objects("default"), f"{PREFIX}-operator")
    # patch on staticgatewayconfigurations: the finalizer, and the adopted-public-ip-prefix annotation.
    for res in ("staticgatewayconfigurations", "gatewaypools"):
        assert ("cluster", GROUP, res, "watch") in g and ("cluster", GROUP, res, "patch") in g
        assert ("cluster", GROUP, f"{res}/status", "patch") in g
        assert ("cluster", GROUP, f"{res}/finalizers", "update") in g
        assert ("cluster", GROUP, res, "create") not in g and ("cluster", GROUP, res, "delete") not in g
    assert (NAMESPACE, "", "secrets", "create") in g and (NAMESPACE, "", "secrets", "delete") in g
    assert (NAMESPACE, "coordination.k8s.io", "leases", "update") in g
    assert ("cluster", "", "nodes", "list") in g and ("cluster", "", "nodes", "patch") not in g
    # kube-runtime's Recorder creates events.k8s.io/v1 Events and patches a repeated one; core Events are unused.
    assert {v for s, gr, res, v in g if res == "events"} == {"create", "patch"}
    assert {gr for s, gr, res, v in g if res == "events"} == {"events.k8s.io"}
    assert not any(res == "podendpoints" for _, _, res, _ in g)


# What each agent calls (agent/src): reflectors list and watch; a server-side apply is a patch that creates
# the object when it is missing, so it needs create and patch; everything else is a get, patch or delete by name.
GATEWAY_AGENT_CALLS = {
    ("cluster", GROUP, "staticgatewayconfigurations"): {"list", "watch"},
    ("cluster", GROUP, "podendpoints"): {"list", "watch"},
    (NAMESPACE, "", "secrets"): {"list", "watch"},
    ("cluster", "", "nodes"): {"get"},
    (NAMESPACE, GROUP, "gatewaystatuses"): {"create", "patch"},
}
NODE_AGENT_CALLS = {
    ("cluster", GROUP, "podendpoints"): {"get", "create", "patch", "delete"},
    ("cluster", GROUP, "staticgatewayconfigurations"): {"get", "list", "watch"},
    ("cluster", "", "pods"): {"get"},
    ("cluster", "", "nodes"): {"get", "patch"},
    (NAMESPACE, "", "configmaps"): {"get"},
}


def verbs_by_resource(g: set[tuple[str, str, str, str]]) -> dict[tuple[str, str, str], set[str]]:
    out: dict[tuple[str, str, str], set[str]] = {}
    for scope, group, res, verb in g:
        out.setdefault((scope, group, res), set()).add(verb)
    return out


@pytest.mark.parametrize(("sa", "calls"), [("gateway-agent", GATEWAY_AGENT_CALLS), ("node-agent", NODE_AGENT_CALLS)])
def test_agents_get_exactly_what_they_call(sa: str, calls: dict) -> None:
    assert verbs_by_resource(grants(scenario_objects("default"), f"{PREFIX}-{sa}")) == calls


def test_node_agent_reads_only_its_uninstall_configmap() -> None:
    objs = scenario_objects("default")
    sa = f"{PREFIX}-node-agent"
    [rule] = [r for scope, r in rules_of(objs, sa) if "configmaps" in r["resources"]]
    agent = containers(one(objs, "DaemonSet", sa), init=False)[0]
    assert rule["resourceNames"] == [args_map(agent)["--cni-uninstall-configmap-name"]]
    one(objs, "ConfigMap", rule["resourceNames"][0])


def test_node_agent_is_the_only_podendpoint_writer() -> None:
    objs = scenario_objects("default")
    sa = f"{PREFIX}-node-agent"
    writers = []
    for w in workloads(objs):
        other = w["spec"]["template"]["spec"]["serviceAccountName"]
        if any(res == "podendpoints" and v in ("create", "update", "patch") for _, _, res, v in grants(objs, other)):
            writers.append(other)
    assert writers == [sa]
    webhook = one(objs, "Deployment", f"{PREFIX}-webhook")
    assert args_map(containers(webhook, init=False)[0])["--podendpoint-writers"] == f"system:serviceaccount:{NAMESPACE}:{sa}"


@pytest.mark.parametrize("mode", ["default", "webhook-generated", "webhook-generated-replicas"])
def test_webhook_grants(mode: str) -> None:
    objs = scenario_objects(mode)
    sa = f"{PREFIX}-webhook"
    g = grants(objs, sa)
    for res in ("nodes", "namespaces", "staticgatewayconfigurations", "gatewaypools"):
        assert {v for s, gr, r, v in g if r == res} == {"get", "list", "watch"}, res
    hooks = [r for _, r in rules_of(objs, sa) if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    if mode == "default":
        assert hooks == [], "the chart sets the CA: the webhook must not be able to patch configurations"
    else:
        assert len(hooks) == 1 and sorted(hooks[0]["verbs"]) == ["get", "patch"]
        names = {o["metadata"]["name"] for o in find(objs, "MutatingWebhookConfiguration") + find(objs, "ValidatingWebhookConfiguration")}
        assert set(hooks[0]["resourceNames"]) == names
        args = args_map(containers(one(objs, "Deployment", sa), init=False)[0])
        assert args["--mutating-webhook-configuration"] in names
        assert args["--validating-webhook-configuration"] in names


@pytest.mark.parametrize("mode", ["webhook-generated", "webhook-generated-replicas"])
def test_webhook_generated_mode_reaches_only_its_own_secret(mode: str) -> None:
    # What webhook/src/pair_secret.rs calls: get, watch and update of that Secret by name (the chart renders
    # it). No create (it carries no name to authorize by), nothing cluster-wide, no list, no other Secret.
    objs = scenario_objects(mode)
    sa = f"{PREFIX}-webhook"
    assert secret_grants(objs, sa) == {NAMESPACE: {"get", "watch", "update"}}
    secret = args_map(containers(one(objs, "Deployment", sa), init=False)[0])["--self-signed-secret"]
    one(objs, "Secret", secret)
    for scope, r in rules_of(objs, sa):
        if "secrets" in r["resources"]:
            assert scope == NAMESPACE
            assert r["resourceNames"] == [secret] and sorted(r["verbs"]) == ["get", "update", "watch"]


def test_webhook_reads_no_secret_outside_webhook_generated_mode(scenario: str) -> None:
    if scenario.startswith("webhook-generated"):
        return
    assert secret_grants(scenario_objects(scenario), f"{PREFIX}-webhook") == {}


# Hardening (common.keySecretNamespace): the key Secrets in a namespace of their own.
KEYS = key_secret_namespace(SCENARIOS["key-secret-namespace"])
SECRET_MANAGER_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


def secret_grants(objs, sa: str) -> dict[str, set[str]]:
    """Namespace (or "cluster") -> the verbs on Secrets granted to the service account there."""
    out: dict[str, set[str]] = {}
    for scope, group, res, verb in grants(objs, sa):
        if group == "" and res == "secrets":
            out.setdefault(scope, set()).add(verb)
    return out


def test_key_secret_namespace_takes_the_gateway_agents_secret_access_out_of_the_release_namespace() -> None:
    assert KEYS != NAMESPACE
    objs = scenario_objects("key-secret-namespace")
    sa = f"{PREFIX}-gateway-agent"
    # It reads the key Secrets where they are now, and no Secret of the release namespace (the operator's Azure
    # credentials, the webhook's TLS key).
    assert secret_grants(objs, sa) == {KEYS: {"list", "watch"}}
    # Everything else it calls is where it was.
    expected = {(KEYS if res == "secrets" else scope, g, res): v for (scope, g, res), v in GATEWAY_AGENT_CALLS.items()}
    assert verbs_by_resource(grants(objs, sa)) == expected


def test_key_secret_namespace_is_where_the_operator_manages_secrets() -> None:
    objs = scenario_objects("key-secret-namespace")
    sa = f"{PREFIX}-operator"
    assert secret_grants(objs, sa) == {KEYS: SECRET_MANAGER_VERBS}
    # The leader-election Lease stays in the release namespace, with the release namespace's Role.
    g = grants(objs, sa)
    assert {v for s, gr, res, v in g if res == "leases" and s == NAMESPACE} == {"get", "list", "watch", "create", "update", "patch"}
    default = grants(scenario_objects("default"), sa)
    assert {x for x in g if x[2] != "secrets"} == {x for x in default if x[2] != "secrets"}


def test_key_secret_namespace_holds_only_the_key_secrets_rbac() -> None:
    """The key namespace's Roles grant Secrets and nothing else, to the operator and the gateway agent only;
    the release namespace's Roles grant no Secret to anyone."""
    objs = scenario_objects("key-secret-namespace")
    accounts = [w["spec"]["template"]["spec"]["serviceAccountName"] for w in workloads(objs)]
    in_keys = {sa: {(g, res) for scope, g, res, _ in grants(objs, sa) if scope == KEYS} for sa in accounts}
    assert {sa: got for sa, got in in_keys.items() if got} == {
        f"{PREFIX}-operator": {("", "secrets")},
        f"{PREFIX}-gateway-agent": {("", "secrets")},
    }
    for sa in accounts:
        assert NAMESPACE not in secret_grants(objs, sa), f"{sa} still has Secret access in the release namespace"


def test_key_secret_namespace_is_every_components_secret_namespace() -> None:
    objs = scenario_objects("key-secret-namespace")
    for kind, name in (("Deployment", "operator"), ("DaemonSet", "gateway-agent"), ("DaemonSet", "node-agent")):
        args = args_map(containers(one(objs, kind, f"{PREFIX}-{name}"), init=False)[0])
        assert args["--secret-namespace"] == KEYS, name
    operator = args_map(containers(one(objs, "Deployment", f"{PREFIX}-operator"), init=False)[0])
    assert operator["--leader-election-namespace"] == NAMESPACE


@pytest.mark.parametrize("value", [None, "", NAMESPACE])
def test_key_secret_namespace_of_the_release_changes_nothing(value: str | None) -> None:
    """Empty, absent (values kept by `helm upgrade --reuse-values` from an older chart) or the release namespace
    itself: the chart renders exactly what it renders without the value. (cert-manager mode: the default mode
    generates a new certificate on every rendering.)"""
    values = copy.deepcopy(SCENARIOS["cert-manager"])
    values["common"] = {"keySecretNamespace": value}
    assert objects(values) == scenario_objects("cert-manager")
    for sa in (f"{PREFIX}-operator", f"{PREFIX}-gateway-agent"):
        assert set(secret_grants(objects(values), sa)) == {NAMESPACE}, sa
