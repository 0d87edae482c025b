"""Lint and render the chart for representative values; check the rendered objects hang together."""

from __future__ import annotations

import base64
import json
import re

import helm_python as helm

from conftest import CHART, NAMESPACE, SCENARIOS, args_map, containers, crds
from conftest import find, key_secret_namespace, objects, one, scenario_objects, workloads

GROUP = "egressgateway.kubernetes.azure.com"

# (apiVersion, kind) -> namespaced? Built-in kinds the chart may render.
BUILTIN_KINDS = {
    ("v1", "ServiceAccount"): True,
    ("v1", "Secret"): True,
    ("v1", "ConfigMap"): True,
    ("v1", "Service"): True,
    ("apps/v1", "Deployment"): True,
    ("apps/v1", "DaemonSet"): True,
    ("policy/v1", "PodDisruptionBudget"): True,
    ("rbac.authorization.k8s.io/v1", "Role"): True,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): True,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): False,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): False,
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"): False,
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): False,
}
# Kinds of the Prometheus Operator, rendered only with monitoring.serviceMonitor.enabled.
MONITORING_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): True}
# Kinds of cert-manager, rendered only in certManager mode (cert-manager must be installed).
CERT_MANAGER_KINDS = {("cert-manager.io/v1", "Issuer"): True, ("cert-manager.io/v1", "Certificate"): True}

# Core resources RBAC may name, and the subresources each allows.
CORE_RESOURCES = {
    "": {"nodes", "namespaces", "pods", "secrets", "configmaps", "events"},
    "events.k8s.io": {"events"},
    "coordination.k8s.io": {"leases"},
    "admissionregistration.k8s.io": {"mutatingwebhookconfigurations", "validatingwebhookconfigurations"},
}


def our_crds() -> dict[str, dict]:
    """plural -> CRD, for the chart's generated CRDs."""
    return {c["spec"]["names"]["plural"]: c for c in crds()}


def test_sdk_loads_chart_and_generated_crds() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.metadata["apiVersion"] == "v2"
        assert chart.metadata.get("type") == "application"
        assert chart.name == "kube-egress-gateway"
        names = sorted(c["name"] for c in chart.crds)
    assert names == [
        "crds/gatewaypools.yaml",
        "crds/gatewaystatuses.yaml",
        "crds/podendpoints.yaml",
        "crds/staticgatewayconfigurations.yaml",
    ]
    for path in (CHART / "crds").glob("*.yaml"):
        assert path.read_text().startswith("# Generated from api/"), f"{path.name} is not the generated CRD"
    assert set(our_crds()) == {"gatewaypools", "gatewaystatuses", "podendpoints", "staticgatewayconfigurations"}


def test_lint_is_clean(scenario: str) -> None:
    report = helm.lint(str(CHART), SCENARIOS[scenario], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], json.dumps(report, indent=1)


def test_every_kind_known_and_scoped_right(scenario: str) -> None:
    known = dict(BUILTIN_KINDS)
    if scenario.startswith("cert-manager"):
        known.update(CERT_MANAGER_KINDS)
    if scenario == "monitoring":
        known.update(MONITORING_KINDS)
    seen = set()
    for o in scenario_objects(scenario):
        key = (o["apiVersion"], o["kind"])
        assert key in known, f"{o['_template']}: unknown kind {key}"
        meta = o["metadata"]
        name = (o["kind"], meta.get("namespace"), meta["name"])
        assert name not in seen, f"{name} rendered twice"
        seen.add(name)
        if known[key] and o["kind"] in ("Role", "RoleBinding") and meta.get("namespace") != NAMESPACE:
            # Only the key Secrets' RBAC lives elsewhere: in common.keySecretNamespace, when that is another.
            keys = key_secret_namespace(SCENARIOS[scenario])
            assert keys != NAMESPACE and meta.get("namespace") == keys, f"{o['kind']}/{meta['name']} in {meta.get('namespace')}"
        elif known[key]:
            assert meta.get("namespace") == NAMESPACE, f"{o['kind']}/{meta['name']} not in the release namespace"
        else:
            assert "namespace" not in meta, f"cluster-scoped {o['kind']}/{meta['name']} has a namespace"
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "kube-egress-gateway", f"{name} lacks the chart labels"
        assert labels.get("app.kubernetes.io/instance") == "keg"


def test_selectors_match_pod_labels(scenario: str) -> None:
    objs = scenario_objects(scenario)
    pods = {}
    for w in workloads(objs):
        selector = w["spec"]["selector"]["matchLabels"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{w['metadata']['name']}: selector does not match its pods"
        pods[w["metadata"]["name"]] = labels
    # Selectors of different workloads must not overlap (a PDB or Service would count foreign pods).
    names = sorted(pods)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sel_a = next(w for w in workloads(objs) if w["metadata"]["name"] == a)["spec"]["selector"]["matchLabels"]
            assert not sel_a.items() <= pods[b].items(), f"{a}'s selector also selects {b}'s pods"
    for kind, path in (("Service", ("spec", "selector")), ("PodDisruptionBudget", ("spec", "selector", "matchLabels"))):
        for o in find(objs, kind):
            sel = o
            for p in path:
                sel = sel[p]
            matched = [n for n, labels in pods.items() if sel.items() <= labels.items()]
            assert len(matched) == 1, f"{kind}/{o['metadata']['name']} selects {matched}"


def test_probe_and_service_ports_are_container_ports(scenario: str) -> None:
    objs = scenario_objects(scenario)
    for w in workloads(objs):
        for c in containers(w, init=False):
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            assert len(set(ports.values())) == len(ports), f"{c['name']}: duplicate container ports"
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in c, f"{w['metadata']['name']}/{c['name']} has no {probe}"
                port = c[probe]["httpGet"]["port"]
                assert port in ports or port in ports.values(), f"{c['name']} {probe} port {port} not a container port"
            assert c[ "livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for svc in find(objs, "Service"):
        target = [
            w for w in workloads(objs)
            if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ][0]
        names = {p["name"] for c in containers(target, init=False) for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in names, f"Service {svc['metadata']['name']} targets missing port {p['targetPort']}"


def test_flags_agree_with_ports_and_each_other(scenario: str) -> None:
    objs = scenario_objects(scenario)
    lb_ports = set()
    for w in workloads(objs):
        for c in containers(w, init=False):
            args = args_map(c)
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for flag, port_name in (
                ("--metrics-bind-port", "metrics"),
                ("--health-probe-bind-port", "health"),
            ):
                if flag in args:
                    assert int(args[flag]) == ports[port_name], f"{w['metadata']['name']}: {flag} vs port {port_name}"
            for flag, port_name in (("--listen", "https"), ("--metrics-listen", "metrics")):
                if flag in args:
                    assert int(args[flag].rsplit(":", 1)[1]) == ports[port_name]
            if "--gateway-lb-probe-port" in args:
                lb_ports.add(int(args["--gateway-lb-probe-port"]))
            if "lb-probe" in ports:
                lb_ports.add(ports["lb-probe"])
            if "--secret-namespace" in args:
                assert args["--secret-namespace"] == key_secret_namespace(SCENARIOS[scenario])
    if scenario != "webhook-disabled":
        assert len(lb_ports) == 1, f"operator and gateway agent disagree on the LB probe port: {lb_ports}"


def test_operator_shutdown_grace_fits_the_pod_s() -> None:
    # None: values kept by `helm upgrade --reuse-values` from a chart without the key.
    for grace in (None, 60):
        values = {"gatewayControllerManager": {"shutdownGraceSeconds": grace}}
        dep = one(objects(values), "Deployment", "kube-egress-gateway-operator")
        pod = dep["spec"]["template"]["spec"]
        flag = int(args_map(pod["containers"][0])["--shutdown-grace-seconds"])
        assert flag == (grace or 25)
        # The pool being reconciled finishes, the Lease is released, then the servers stop: all before SIGKILL.
        assert pod["terminationGracePeriodSeconds"] >= flag + 5


def test_host_network_ports_do_not_collide() -> None:
    objs = scenario_objects("default")
    used: dict[int, str] = {}
    for w in find(objs, "DaemonSet"):
        assert w["spec"]["template"]["spec"]["hostNetwork"] is True
        for c in containers(w, init=False):
            for p in c["ports"]:
                owner = f"{w['metadata']['name']}/{p['name']}"
                assert p["containerPort"] not in used, f"{owner} and {used.get(p['containerPort'])} share a host port"
                used[p["containerPort"]] = owner


def test_resources_and_security_contexts(scenario: str) -> None:
    privileged = []
    for w in workloads(scenario_objects(scenario)):
        pod = w["spec"]["template"]["spec"]
        # Every pod, the agents' too, under the runtime's default seccomp profile.
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", w["metadata"]["name"]
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("privileged"):
                privileged.append(where)
                continue
            res = c.get("resources", {})
            if c in pod["containers"]:
                assert res.get("requests") and res.get("limits"), f"{where}: requests and limits required"
                assert set(res["limits"]) >= {"cpu", "memory"}, where
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem must be read-only"
            caps = sc.get("capabilities", {})
            assert caps.get("drop") == ["ALL"], f"{where}: must drop ALL capabilities"
            added = set(caps.get("add", []))
            # No NET_RAW: nothing opens a raw IP or packet socket (netlink and nftables need none).
            assert added <= {"NET_ADMIN", "SYS_ADMIN"}, f"{where}: capabilities {added}"
            if "SYS_ADMIN" in added:
                # The API server refuses allowPrivilegeEscalation: false together with CAP_SYS_ADMIN.
                assert sc.get("allowPrivilegeEscalation") is not False, where
            else:
                assert sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation must be off"
            if w["kind"] == "Deployment":
                assert not added, f"{where}: control-plane components need no capability"
                assert sc.get("runAsNonRoot") is True and pod["securityContext"]["runAsNonRoot"] is True, where
    # The only privileged container creates the gateway namespace (mount propagation to the host).
    assert privileged == ["kube-egress-gateway-gateway-agent/netns-init"], privileged


def test_gateway_agent_runs_only_on_gateway_nodes() -> None:
    objs = scenario_objects("default")
    ds = one(objs, "DaemonSet", "kube-egress-gateway-gateway-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["nodeSelector"] == {"kubeegressgateway.azure.com/mode": "true"}
    assert {
        "key": "kubeegressgateway.azure.com/mode",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    agent = pod["containers"][0]
    assert agent["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "SYS_ADMIN"]
    assert args_map(agent)["--mode"] == "gateway"
    init = pod["initContainers"][0]
    assert "ip netns add ns-static-egress-gateway" in init["args"][0]
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["netns"]["mountPath"] == "/var/run/netns"
    # With a read-only root filesystem, what the agent writes must be volumes: /tmp, and wireguard-go's
    # control sockets when the kernel has no WireGuard (the userspace backend).
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in agent["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
    assert {"/tmp", "/var/run/wireguard"} <= writable, writable
    assert mounts["netns"]["mountPropagation"] == "HostToContainer"
    assert init["volumeMounts"][0]["mountPropagation"] == "Bidirectional"
    # Drain delay fits in the grace period.
    drain = int(args_map(agent)["--lb-probe-drain-delay-seconds"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_gateway_agent_wireguard_backend() -> None:
    def gateway_pod(backend: str | None) -> dict:
        values = {"gatewayDaemonManager": {"wireguardBackend": backend}} if backend else None
        return one(objects(values), "DaemonSet", "kube-egress-gateway-gateway-agent")["spec"]["template"]["spec"]

    # Kernel WireGuard needs no device: none is mounted.
    pod = gateway_pod("kernel")
    agent = pod["containers"][0]
    assert args_map(agent)["--wireguard-backend"] == "kernel"
    assert not [v for v in pod["volumes"] if "/dev" in v.get("hostPath", {}).get("path", "")]
    assert not [m for m in agent["volumeMounts"] if m["mountPath"].startswith("/dev")]
    # Userspace, and auto (the default) which falls back to it on nodes without the module: wireguard-go creates
    # TUN devices, so the host's /dev/net/tun is mounted, as a character device.
    for backend in (None, "auto", "userspace"):
        pod = gateway_pod(backend)
        agent = pod["containers"][0]
        assert args_map(agent)["--wireguard-backend"] == (backend or "auto")
        tun = [m for m in agent["volumeMounts"] if m["mountPath"] == "/dev/net/tun"]
        assert len(tun) == 1, (backend, agent["volumeMounts"])
        volume = next(v for v in pod["volumes"] if v["name"] == tun[0]["name"])
        assert volume["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}, backend
        # It is the agent's capabilities that let wireguard-go create a TUN device (TUNSETIFF needs NET_ADMIN).
        assert "NET_ADMIN" in agent["securityContext"]["capabilities"]["add"]
    # The netns init container needs no device.
    assert all(m["mountPath"] != "/dev/net/tun" for m in pod["initContainers"][0]["volumeMounts"])


def test_node_agent_installs_cni_and_serves_socket() -> None:
    objs = scenario_objects("default")
    ds = one(objs, "DaemonSet", "kube-egress-gateway-node-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert any(t["key"] == "egressgateway.kubernetes.azure.com/cni-not-ready" for t in pod["tolerations"])
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert host_paths["cni-conf"] == "/etc/cni/net.d"
    assert host_paths["cni-bin"] == "/opt/cni/bin"
    agent = pod["containers"][0]
    args = args_map(agent)
    assert args["--mode"] == "node"
    assert args["--exception-cidrs"] == "169.254.169.254/32,169.254.10.11/32"
    assert args["--cni-conf-file"] == "01-egressgateway.conflist"
    assert args["--cni-uninstall-configmap-name"] == "cni-uninstall"
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert mounts["cni-conf"] == "/etc/cni/net.d"
    # The socket lives on the host under the same path as in the container, since the conflist names it.
    socket = args["--socket-path"]
    assert socket.startswith(mounts["socket"] + "/") and mounts["socket"] == host_paths["socket"]
    # The CNI plugin's compiled-in default socket (the data-plane crate's, shared with the agent) is the chart's default.
    client_src = (CHART.parents[1] / "dataplane" / "src" / "client.rs").read_text()
    assert f'DEFAULT_SOCKET: &str = "{socket}"' in client_src
    init = pod["initContainers"][0]
    script = init["args"][0]
    init_mount = init["volumeMounts"][0]
    assert init_mount["name"] == "cni-bin"
    assert f"{init_mount['mountPath']}/kube-egress-cni" in script and "mv -f" in script
    cm = one(objs, "ConfigMap", "cni-uninstall")
    assert cm["data"] == {"uninstall": "false"}


def test_cni_uninstall_switch() -> None:
    from conftest import objects

    cm = one(objects({"gatewayCNIManager": {"cniUninstall": True}}), "ConfigMap", "cni-uninstall")
    assert cm["data"] == {"uninstall": "true"}


def test_operator_reads_cloud_config_secret(scenario: str) -> None:
    objs = scenario_objects(scenario)
    existing = SCENARIOS[scenario].get("config", {}).get("existingSecret")
    if existing:
        # A Secret the user manages: the chart renders none and mounts theirs, its key at the flag's path.
        assert not find(objs, "Secret", "kube-egress-gateway-azure-cloud-config")
        dep = one(objs, "Deployment", "kube-egress-gateway-operator")
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        mount = next(m for m in c["volumeMounts"] if m["name"] == "cloud-config")
        vol = next(v for v in pod["volumes"] if v["name"] == "cloud-config")
        assert vol["secret"] == {
            "secretName": existing["name"],
            "items": [{"key": existing["key"], "path": "azure-cloud-config.json"}],
        }
        assert args_map(c)["--cloud-config"] == f"{mount['mountPath']}/azure-cloud-config.json"
        # The chart cannot see the Secret's content, so no checksum pretends to track it.
        assert "checksum/cloud-config" not in dep["spec"]["template"]["metadata"].get("annotations", {})
        return
    secret = one(objs, "Secret", "kube-egress-gateway-azure-cloud-config")
    config = json.loads(base64.b64decode(secret["data"]["azure-cloud-config.json"]))
    expected = {
        "cloud": "AzurePublicCloud", "tenantId": "", "subscriptionId": "", "useManagedIdentityExtension": False,
        "userAssignedIdentityID": "", "aadClientId": "", "aadClientSecret": "",
        "userAgent": "kube-egress-gateway-controller", "resourceGroup": "", "location": "",
        "gatewayLoadBalancerName": "kubeegressgateway-ilb", "loadBalancerResourceGroup": "", "vnetName": "",
        "vnetResourceGroup": "", "subnetName": "",
    }
    expected.update(SCENARIOS[scenario].get("config", {}).get("azureCloudConfig", {}))
    assert config == expected
    dep = one(objs, "Deployment", "kube-egress-gateway-operator")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "cloud-config")
    vol = next(v for v in pod["volumes"] if v["name"] == "cloud-config")
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    assert args_map(c)["--cloud-config"] == f"{mount['mountPath']}/azure-cloud-config.json"
    assert "--leader-elect" in args_map(c) and args_map(c)["--leader-election-namespace"] == NAMESPACE
    assert "checksum/cloud-config" in dep["spec"]["template"]["metadata"]["annotations"]


def test_workload_identity_labels_the_operator_pod_and_annotates_its_service_account() -> None:
    objs = scenario_objects("workload-identity")
    dep = one(objs, "Deployment", "kube-egress-gateway-operator")
    template = dep["spec"]["template"]
    # Azure Workload Identity's webhook mutates pods with this label, using the client ID on their account.
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    # The extra label never replaces the selector's.
    for key, value in dep["spec"]["selector"]["matchLabels"].items():
        assert template["metadata"]["labels"][key] == value
    account = one(objs, "ServiceAccount", template["spec"]["serviceAccountName"])
    assert account["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": "11111111-2222-3333-4444-555555555555"
    }
    secret = one(objs, "Secret", "kube-egress-gateway-azure-cloud-config")
    config = json.loads(base64.b64decode(secret["data"]["azure-cloud-config.json"]))
    assert config["useFederatedWorkloadIdentityExtension"] is True
    assert config["useManagedIdentityExtension"] is False and config["aadClientSecret"] == ""
    # Only the operator talks to Azure: the other components' pods and accounts stay as they were.
    for w in workloads(objs):
        if w["metadata"]["name"] != "kube-egress-gateway-operator":
            assert "azure.workload.identity/use" not in w["spec"]["template"]["metadata"]["labels"]
    default = one(scenario_objects("default"), "ServiceAccount", "kube-egress-gateway-operator")
    assert "annotations" not in default["metadata"]


def test_operator_pod_annotations_are_added_to_the_chart_s_own() -> None:
    from conftest import objects

    dep = one(objects({"gatewayControllerManager": {"podAnnotations": {"example.com/team": "net"}}}), "Deployment", "kube-egress-gateway-operator")
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["example.com/team"] == "net"
    assert "checksum/cloud-config" in annotations


def test_images() -> None:
    def images(objs):
        return {
            f"{w['metadata']['name']}/{c['name']}": (c["image"], c["imagePullPolicy"])
            for w in workloads(objs)
            for c in containers(w)
        }

    assert images(scenario_objects("default")) == {
        "kube-egress-gateway-operator/operator": ("ghcr.io/kube-egress-gateway-rs/kube-egress-gateway-operator:0.1.0", "IfNotPresent"),
        "kube-egress-gateway-gateway-agent/netns-init": ("ghcr.io/kube-egress-gateway-rs/kube-egress-gateway-agent:0.1.0", "IfNotPresent"),
        "kube-egress-gateway-gateway-agent/agent": ("ghcr.io/kube-egress-gateway-rs/kube-egress-gateway-agent:0.1.0", "IfNotPresent"),
        "kube-egress-gateway-node-agent/cni-install": ("ghcr.io/kube-egress-gateway-rs/kube-egress-gateway-agent:0.1.0", "IfNotPresent"),
        "kube-egress-gateway-node-agent/agent": ("ghcr.io/kube-egress-gateway-rs/kube-egress-gateway-agent:0.1.0", "IfNotPresent"),
        "kube-egress-gateway-webhook/webhook": ("ghcr.io/kube-egress-gateway-rs/kube-egress-gateway-webhook:0.1.0", "IfNotPresent"),
    }
    custom = images(scenario_objects("custom-images"))
    assert custom["kube-egress-gateway-operator/operator"][0] == "other.example.com/ops/kube-egress-gateway-operator:op-1"
    assert custom["kube-egress-gateway-webhook/webhook"] == ("myregistry.azurecr.io/keg/my-webhook:v9.9.9", "Always")
    assert custom["kube-egress-gateway-node-agent/cni-install"][0] == "myregistry.azurecr.io/keg/my-cni:v9.9.9"
    assert custom["kube-egress-gateway-gateway-agent/agent"][0] == "myregistry.azurecr.io/keg/kube-egress-gateway-agent:v9.9.9"
    for w in workloads(scenario_objects("default")):
        assert "imagePullSecrets" not in w["spec"]["template"]["spec"]
    for w in workloads(scenario_objects("custom-images")):
        assert w["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        for c in containers(w, init=False):
            assert args_map(c).get("--log-format") == "json", f"{w['metadata']['name']}: logFormat not passed"


def test_priority_class_is_opt_in() -> None:
    from conftest import objects

    for ds in find(scenario_objects("default"), "DaemonSet"):
        assert "priorityClassName" not in ds["spec"]["template"]["spec"]
    values = {"gatewayDaemonManager": {"priorityClassName": "system-node-critical"}}
    ds = one(objects(values), "DaemonSet", "kube-egress-gateway-gateway-agent")
    assert ds["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"


def test_notes_render() -> None:
    from conftest import render

    notes = render()["kube-egress-gateway/templates/NOTES.txt"]
    assert "kube-egress-gateway-webhook" in notes and "certificates: selfSigned" in notes
    assert "WARNING" not in notes
    # The prefix-size tag is needed only by a node pool no GatewayPool describes.
    assert "GatewayPool describing its node pool (spec.publicIpPrefixSize); only a node pool without a GatewayPool needs\nthe Azure tag aks-managed-gatewayIPPrefixSize" in notes
    existing = render(SCENARIOS["existing-cloud-config"])["kube-egress-gateway/templates/NOTES.txt"]
    assert "from Secret corp-azure-cloud-config (key cloud.json)" in existing and "rollout restart" in existing
    assert "Secret corp-azure-cloud-config" not in notes
    assert "WARNING: webhook.replicas is 1" in render({"webhook": {"replicas": 1}})["kube-egress-gateway/templates/NOTES.txt"]
    # Key Secrets in a namespace of their own: the notes say where, and to keep nothing else there.
    apart = render(SCENARIOS["key-secret-namespace"])["kube-egress-gateway/templates/NOTES.txt"]
    assert "WireGuard key Secrets (sgw-<UID>) are in namespace keg-keys" in apart and "keep no other Secret" in apart
    assert "keySecretNamespace" not in notes


def test_node_agent_watches_pod_tunnels() -> None:
    """Fast failover: the node agent reads userspace pods' sockets and kernel pods' namespaces."""
    pod = one(scenario_objects("default"), "DaemonSet", "kube-egress-gateway-node-agent")["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    args = args_map(agent)
    assert args["--pod-tunnel-watch"] == "true"
    assert args["--pod-netns-dir"] == "/var/run/netns"
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert mounts["wireguard"]["mountPath"] == host_paths["wireguard"] == "/var/run/wireguard"
    assert mounts["pod-netns"]["mountPath"] == host_paths["pod-netns"] == args["--pod-netns-dir"]
    assert mounts["pod-netns"]["mountPropagation"] == "HostToContainer"
    assert agent["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "SYS_ADMIN"]
    # Userspace pods only: no namespaces, no capability.
    pod = one(
        objects({"gatewayCNIManager": {"podTunnelWatch": {"podNetnsDir": ""}}}),
        "DaemonSet",
        "kube-egress-gateway-node-agent",
    )["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    assert "--pod-netns-dir" not in args_map(agent)
    assert "add" not in agent["securityContext"]["capabilities"]
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert {m["name"] for m in agent["volumeMounts"]} == {"cni-conf", "socket", "wireguard"}
    # Off: neither.
    pod = one(
        objects({"gatewayCNIManager": {"podTunnelWatch": {"enabled": False}}}),
        "DaemonSet",
        "kube-egress-gateway-node-agent",
    )["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    assert args_map(agent)["--pod-tunnel-watch"] == "false"
    assert {m["name"] for m in agent["volumeMounts"]} == {"cni-conf", "socket"}


def test_monitoring_is_opt_in() -> None:
    objs = scenario_objects("default")
    assert not find(objs, "ServiceMonitor")
    assert not [c for c in find(objs, "ConfigMap") if "dashboard" in c["metadata"]["name"]]


def test_service_monitors_scrape_every_component() -> None:
    objs = scenario_objects("monitoring")
    pods = {w["metadata"]["name"]: w["spec"]["template"] for w in workloads(objs)}
    assert len(pods) == 4
    for name in pods:
        sm = one(objs, "ServiceMonitor", name)
        assert sm["metadata"]["labels"]["release"] == "prom"
        svc = one(objs, "Service", f"{name}-metrics")
        assert svc["spec"]["clusterIP"] == "None"
        # The ServiceMonitor selects the Service, the Service selects the component's pods, on its metrics port.
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert svc["spec"]["selector"].items() <= pods[name]["metadata"]["labels"].items()
        port = svc["spec"]["ports"][0]
        container_ports = {p["name"]: p["containerPort"] for p in pods[name]["spec"]["containers"][0]["ports"]}
        assert port["targetPort"] == "metrics" and container_ports["metrics"] == port["port"]
        endpoint = sm["spec"]["endpoints"][0]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
        assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        # Of the Services it selects, only the metrics Service has the endpoint's port (the webhook's admission
        # Service, selected too, gives no target): one target per pod, never the admission port.
        selected = [o for o in find(objs, "Service") if sm["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()]
        with_port = [o["metadata"]["name"] for o in selected if any(p["name"] == endpoint["port"] for p in o["spec"]["ports"])]
        assert with_port == [f"{name}-metrics"], with_port
    # The metrics port the binaries serve is the one the chart passes them.
    operator = containers(one(objs, "Deployment", "kube-egress-gateway-operator"), init=False)[0]
    assert args_map(operator)["--metrics-bind-port"] == str(one(objs, "Service", "kube-egress-gateway-operator-metrics")["spec"]["ports"][0]["port"])
    webhook = containers(one(objs, "Deployment", "kube-egress-gateway-webhook"), init=False)[0]
    port = one(objs, "Service", "kube-egress-gateway-webhook-metrics")["spec"]["ports"][0]["port"]
    assert args_map(webhook)["--metrics-listen"] == f"0.0.0.0:{port}"


def agent_metrics() -> set[str]:
    """The metric names the agent exposes, read from its registrations in agent/src/metrics.rs (a counter
    `x` is exposed as `x_total`)."""
    src = (CHART.parents[1] / "agent" / "src" / "metrics.rs").read_text()
    registered = re.findall(r"\b(Counter|Gauge|FloatGauge|Histogram)>?[^\n]*\n\s*=> \(\"([a-z_]+)\"", src)
    assert len(registered) == src.count('=> ("') > 0, "a registration in agent/src/metrics.rs was not read"
    return {f"{name}_total" if kind == "Counter" else name for kind, name in registered}


def test_dashboard_configmap_holds_the_data_plane_dashboard() -> None:
    objs = scenario_objects("monitoring")
    cm = one(objs, "ConfigMap", "kube-egress-gateway-dashboard-dataplane")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["kube-egress-gateway-dataplane.json"])
    assert dash["uid"] == "keg-dataplane"
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    exported = agent_metrics()
    # Every data-plane metric the agents expose is on the dashboard.
    data_plane = {
        "gateway_tunnel_peers",
        "gateway_tunnel_active_peers",
        "gateway_tunnel_newest_handshake_age_seconds",
        "gateway_tunnel_receive_bytes_total",
        "gateway_tunnel_transmit_bytes_total",
        "gateway_tunnel_receive_packets_total",
        "gateway_tunnel_transmit_packets_total",
        "gateway_tunnel_sessions_started_total",
        "gateway_snat_flows",
        "gateway_conntrack_entries",
        "gateway_draining",
        "pod_tunnel_state",
        "pod_tunnel_session_restarts_total",
        "pod_tunnel_session_restart_failures_total",
        "pod_tunnel_handshake_age_seconds",
        "pod_tunnel_receive_bytes_total",
        "pod_tunnel_transmit_bytes_total",
    }
    assert not data_plane - exported, f"not exposed by the agent: {sorted(data_plane - exported)}"
    on_dashboard = set(re.findall(r"\b(?:gateway|pod_tunnel|cnimanager)_[a-z_]+", exprs))
    assert not data_plane - on_dashboard, f"not on the dashboard: {sorted(data_plane - on_dashboard)}"
    # And the dashboard queries nothing the agent does not expose (a renamed metric leaves an empty panel).
    assert not on_dashboard - exported, f"queried but not exposed by the agent: {sorted(on_dashboard - exported)}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
