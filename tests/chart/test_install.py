"""The chart installed into a Kubernetes API server, its components run as the chart's service accounts.

The server is the real control plane (the `control-plane` binary: etcd, kube-apiserver and
kube-controller-manager from the assets folder, ServiceAccount tokens from the TokenRequest API) when its
binaries are found, else kube-sim; `TESTBED_KUBE=real|sim` chooses, as for the Rust suites
(`testbed::cluster::Backend`).

What the static tests cannot show: that the rendered objects are accepted by an API server (`kubectl apply`),
that the chart's self-signed certificate and caBundle let the API server reach the webhook over verified TLS,
that each component starts with exactly the arguments, environment and mounted files the chart gives it, and
that the chart's RBAC lets it do its job (the simulator authorizes service accounts from the stored
Role/ClusterRole bindings; the real server's authorizer on the real one). The webhook and the operator run
here; the agents need network namespaces and run in the lab, and here each agent's account makes its
component's calls with its own token. On the real server the webhook is reached as the chart registers it, by
its Service: a Pod of the webhook Deployment's template is reported Running and Ready at an address of `lo`
(no kubelet runs), the endpoints controller puts it behind the Service, and the webhook listens there.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Any, Callable

import pytest
import yaml

from conftest import NAMESPACE, RELEASE, REPO

SEED = REPO / "testbed" / "seeds" / "azure-aks.json"
RENDER = REPO / "scripts" / "render-chart.py"
PREFIX = "kube-egress-gateway"
NODE = "aks-system-0"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (scripts/install-deps.sh)")


@functools.lru_cache(maxsize=1)
def bin_dir() -> pathlib.Path:
    """Builds (a no-op after `cargo build --bins`) and locates the binaries this test runs."""
    # The same command as scripts/test.sh (same feature resolution), so it is a no-op there.
    subprocess.run(["cargo", "build", "-q", "--bins"], cwd=REPO, check=True, timeout=1800)
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1"],
            cwd=REPO, check=True, capture_output=True, text=True, timeout=120,
        ).stdout
    )
    return pathlib.Path(meta["target_directory"]) / "debug"


def kube_backend() -> str:
    """`TESTBED_KUBE`, else `real` when the control plane's binaries are found (`KUBEBUILDER_ASSETS` or the
    repository's `.kubebuilder-assets`), else `sim`: the choice `testbed::cluster::Backend::from_env` makes."""
    chosen = os.environ.get("TESTBED_KUBE", "")
    if chosen:
        assert chosen in ("real", "sim"), f"TESTBED_KUBE={chosen!r} is not one of: real, sim"
        return chosen
    assets = pathlib.Path(os.environ.get("KUBEBUILDER_ASSETS") or REPO / ".kubebuilder-assets")
    names = ("kube-apiserver", "kube-controller-manager", "etcd", "kubectl")
    return "real" if all(os.access(assets / n, os.X_OK) for n in names) else "sim"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], procs: "Processes", timeout: float = 60.0) -> Any:
    """Polls `check` until it returns something truthy; fails with `what` and the components' logs."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        procs.assert_running()
        last = check()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\n{procs.logs()}")


class Processes:
    """Child processes with their logs in files; all killed when the test ends, pass or fail."""

    def __init__(self, work: pathlib.Path) -> None:
        self.work = work
        self.children: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.children[name] = subprocess.Popen(
            argv, cwd=self.work, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def assert_running(self) -> None:
        for name, p in self.children.items():
            if p.poll() is not None:
                pytest.fail(f"{name} exited with {p.returncode}\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for name in self.children:
            text = (self.work / f"{name}.log").read_text(errors="replace")
            out.append(f"--- {name} (last lines)\n" + "\n".join(text.splitlines()[-25:]))
        return "\n".join(out)

    def stop(self) -> None:
        for p in self.children.values():
            if p.poll() is None:
                p.terminate()
        for p in self.children.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def container_of(objs: list[dict], kind: str, name: str, container: str) -> tuple[dict, dict]:
    """(pod spec, container) of a rendered workload."""
    w = next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)
    spec = w["spec"]["template"]["spec"]
    return spec, next(c for c in spec["containers"] if c["name"] == container)


# mount_secret_volumes, resolve_env and localize are the kubelet's part, as `testbed/src/lab/chart.rs` does it
# for the lab (root, all four components); this test runs without root in the chart suite, for the webhook
# and the operator only.
def mount_secret_volumes(objs: list[dict], spec: dict, container: dict, root: pathlib.Path) -> dict[str, str]:
    """Writes the Secret volumes the container mounts under `root`, as kubelet would; mountPath -> local dir."""
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {}
    for m in container.get("volumeMounts", []):
        secret = volumes[m["name"]].get("secret")
        if not secret:
            continue
        local = root / m["name"]
        local.mkdir(parents=True)
        source = secrets[secret["secretName"]]
        # As the API server stores it: `stringData` folded over `data`.
        files = {k: base64.b64decode(v) for k, v in source.get("data", {}).items()}
        files |= {k: v.encode() for k, v in source.get("stringData", {}).items()}
        for key, content in files.items():
            path = local / key
            path.write_bytes(content)
            path.chmod(0o600)
        mounts[m["mountPath"]] = str(local)
    return mounts


def resolve_env(container: dict) -> dict[str, str]:
    """The container's environment with the downward-API fields a kubelet would fill."""
    fields = {"metadata.namespace": NAMESPACE, "spec.nodeName": NODE}
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            if field not in fields:
                pytest.fail(f"env {e['name']}: downward-API field {field} is not filled by this test (add it)")
            env[e["name"]] = fields[field]
    return env


def localize(args: list[str], mounts: dict[str, str], ports: dict[str, str]) -> list[str]:
    """The chart's arguments, with mounted paths moved to their local directory and listeners to free
    loopback ports (the only changes a pod's network and filesystem namespaces make unnecessary)."""
    out = []
    for a in args:
        flag, eq, value = a.partition("=")
        assert eq or a not in ports, f"{a} without `=value`: the chart passes flags as --flag=value"
        if eq and flag in ports:
            a = f"{flag}={ports[flag]}"
        elif eq:
            for mount, local in mounts.items():
                if value.startswith(mount + "/"):
                    a = f"{flag}={local}{value[len(mount):]}"
        out.append(a)
    for flag in ports:
        assert any(a.startswith(flag + "=") for a in args), f"the chart no longer passes {flag}"
    return out


class Cluster:
    def __init__(self, work: pathlib.Path, kubeconfig: pathlib.Path, backend: str, endpoint_ip: str) -> None:
        self.work = work
        self.kubeconfig = kubeconfig
        self.backend = backend
        # Where a Service's backend listens: an address of `lo` on the real server (Endpoints refuse 127/8).
        self.endpoint_ip = endpoint_ip

    def requests_of(self, service_account: str) -> dict[str, int]:
        """Requests kube-sim served to one of the chart's service accounts, by status code (its
        kubesim_requests_by_user_total series)."""
        user = f"system:serviceaccount:{NAMESPACE}:{service_account}"
        r = self.kubectl("get", "--raw", "/metrics")
        assert r.returncode == 0, r.stderr
        body = r.stdout
        codes: dict[str, int] = {}
        for line in body.splitlines():
            m = re.match(r'kubesim_requests_by_user_total\{user="([^"]*)",method="[^"]*",code="(\d+)"\} (\d+)$', line)
            if m and m.group(1) == user:
                codes[m.group(2)] = codes.get(m.group(2), 0) + int(m.group(3))
        return codes

    def kubectl(self, *args: str, stdin: str | None = None, as_sa: str | None = None) -> subprocess.CompletedProcess:
        config = self.kubeconfig if as_sa is None else pathlib.Path(f"{self.kubeconfig}.sa.{NAMESPACE}.{as_sa}")
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(config), *args],
            input=stdin, capture_output=True, text=True, timeout=60,
        )

    def get_json(self, *args: str) -> dict | None:
        r = self.kubectl("get", "-o", "json", *args)
        return json.loads(r.stdout) if r.returncode == 0 else None


def http_status(port: int, path: str) -> int | None:
    import http.client

    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path)
        return c.getresponse().status
    except OSError:
        return None


def key_namespace_of(values: dict) -> str | None:
    """common.keySecretNamespace of these values when it is a namespace apart from the release's."""
    ns = (values.get("common") or {}).get("keySecretNamespace")
    return ns if ns and ns != NAMESPACE else None


@pytest.fixture
def installed(tmp_path: pathlib.Path, request: pytest.FixtureRequest):
    """Simulators up, the chart rendered with values pointing the operator at the Azure simulator (plus the
    test's own, given as the fixture's indirect parameter), the namespaces it needs created (the chart creates
    none), every rendered object applied with kubectl."""
    extra: dict = getattr(request, "param", None) or {}
    bins = bin_dir()
    procs = Processes(tmp_path)
    try:
        azure_port = free_port()
        procs.start("azure-sim", [str(bins / "azure-sim"), "--seed", str(SEED), "--listen", f"127.0.0.1:{azure_port}"])
        azure_url = f"http://127.0.0.1:{azure_port}"
        seed = json.loads(SEED.read_text())
        sp = seed["servicePrincipals"][0]
        values = {
            "config": {
                "azureCloudConfig": {
                    "tenantId": seed["tenantId"], "subscriptionId": seed["subscriptionId"],
                    "aadClientId": sp["clientId"], "aadClientSecret": sp["clientSecret"],
                    "resourceGroup": "node-rg", "location": seed["location"],
                    "vnetName": "aks-vnet", "subnetName": "aks-subnet",
                    # Endpoint overrides (custom clouds); the chart passes unknown keys through.
                    "resourceManagerEndpoint": azure_url, "activeDirectoryAuthorityHost": azure_url,
                }
            }
        }
        assert "config" not in extra, "the fixture's cloud configuration points at the Azure simulator"
        values |= extra
        rendered = subprocess.run(
            [sys.executable, str(RENDER), "--release", RELEASE, "--namespace", NAMESPACE,
             "--set-json", json.dumps(values)],
            check=True, capture_output=True, text=True, timeout=120,
        ).stdout
        objs = [d for d in yaml.safe_load_all(rendered) if d]
        (tmp_path / "rendered.yaml").write_text(rendered)

        service = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == f"{PREFIX}-webhook")
        kubeconfig = tmp_path / "kubeconfig"
        sas = [o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"]
        sa_flags = [a for sa in sas for a in ("--service-account", f"{NAMESPACE}/{sa}")]
        backend = kube_backend()
        if backend == "real":
            procs.start("control-plane", [str(bins / "control-plane"), "--kubeconfig", str(kubeconfig), *sa_flags])
            ready = pathlib.Path(f"{kubeconfig}.ready")
            wait_for("the control plane", ready.exists, procs, timeout=120)
            cluster = Cluster(tmp_path, kubeconfig, backend, json.loads(ready.read_text())["endpointIp"])
            # The container port the chart's Service leads to, on the address the webhook's Pod reports.
            _, c = container_of(objs, "Deployment", f"{PREFIX}-webhook", "webhook")
            port = next(p["containerPort"] for p in c["ports"] if p["name"] == service["spec"]["ports"][0]["targetPort"])
            webhook_listen = f"{cluster.endpoint_ip}:{port}"
        else:
            webhook_listen = f"127.0.0.1:{free_port()}"
            procs.start(
                "kube-sim",
                [str(bins / "kube-sim"), "--listen", f"127.0.0.1:{free_port()}", "--kubeconfig", str(kubeconfig),
                 "--service", f"{NAMESPACE}/{service['metadata']['name']}={webhook_listen}", *sa_flags],
            )
            cluster = Cluster(tmp_path, kubeconfig, backend, "127.0.0.1")
        wait_for(f"the Kubernetes API ({backend})", lambda: kubeconfig.exists() and cluster.kubectl("get", "ns").returncode == 0, procs)
        for ns in (NAMESPACE, "app", *filter(None, [key_namespace_of(values)])):
            r = cluster.kubectl("apply", "-f", "-", stdin=f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n")
            assert r.returncode == 0, r.stderr
        r = cluster.kubectl("apply", "-f", str(tmp_path / "rendered.yaml"))
        assert r.returncode == 0, f"the API server refused part of the chart:\n{r.stderr}"
        if backend == "real":
            # kube-apiserver serves a new CRD's kind a moment later (kube-sim at once).
            r = cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            assert r.returncode == 0, r.stderr
        yield cluster, procs, objs, bins, webhook_listen
    finally:
        procs.stop()


def report_pod_ready(cluster: Cluster, procs: Processes, objs: list[dict], deployment: str) -> None:
    """What a kubelet would do for one replica of a Deployment: a Pod of its template on NODE, reported
    Running and Ready at the cluster's endpoint address, so the endpoints controller puts it behind the
    Services that select it (the real server only: kube-sim maps Services to addresses directly)."""
    w = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == deployment)
    template = w["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{deployment}-0", "namespace": NAMESPACE, "labels": template["metadata"]["labels"]},
           "spec": {**template["spec"], "nodeName": NODE}}
    r = cluster.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    assert r.returncode == 0, f"the API server refused the {deployment} Deployment's Pod:\n{r.stderr}"
    ip = cluster.endpoint_ip
    status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                         "conditions": [{"type": "Ready", "status": "True"}]}}
    r = cluster.kubectl("patch", "pod", f"{deployment}-0", "-n", NAMESPACE, "--subresource=status",
                        "--type=merge", "-p", json.dumps(status))
    assert r.returncode == 0, r.stderr

    def behind_service() -> bool:
        eps = cluster.get_json("endpoints", deployment, "-n", NAMESPACE) or {}
        return any(a.get("ip") == ip for s in eps.get("subsets") or [] for a in s.get("addresses") or [])

    wait_for(f"the endpoints of Service {deployment}", behind_service, procs)


def start_webhook(cluster: Cluster, procs: Processes, objs: list[dict], bins: pathlib.Path, listen: str) -> None:
    spec, c = container_of(objs, "Deployment", f"{PREFIX}-webhook", "webhook")
    metrics = free_port()
    mounts = mount_secret_volumes(objs, spec, c, cluster.work / "webhook-volumes")
    args = localize(c["args"], mounts, {"--listen": listen, "--metrics-listen": f"127.0.0.1:{metrics}"})
    procs.start(
        "webhook", [str(bins / f"{PREFIX}-webhook"), *args],
        {**resolve_env(c), "KUBECONFIG": f"{cluster.kubeconfig}.sa.{NAMESPACE}.{spec['serviceAccountName']}"},
    )
    wait_for("webhook /readyz", lambda: http_status(metrics, "/readyz") == 200, procs)
    if cluster.backend == "real":
        report_pod_ready(cluster, procs, objs, f"{PREFIX}-webhook")


def start_operator(cluster: Cluster, procs: Processes, objs: list[dict], bins: pathlib.Path) -> int:
    spec, c = container_of(objs, "Deployment", f"{PREFIX}-operator", "operator")
    metrics, health = free_port(), free_port()
    mounts = mount_secret_volumes(objs, spec, c, cluster.work / "operator-volumes")
    args = localize(c["args"], mounts, {"--metrics-bind-port": str(metrics), "--health-probe-bind-port": str(health)})
    procs.start(
        "operator", [str(bins / f"{PREFIX}-operator"), *args],
        {**resolve_env(c), "KUBECONFIG": f"{cluster.kubeconfig}.sa.{NAMESPACE}.{spec['serviceAccountName']}"},
    )
    wait_for("operator /healthz", lambda: http_status(health, "/healthz") == 200, procs)
    return metrics


def no_rbac_refusal(cluster: Cluster, procs: Processes, sa: str) -> None:
    """The chart's RBAC refused the component nothing: kube-sim counts each account's answers; the real server's
    refusals are in the component's log (its authorizer has no per-user count)."""
    if cluster.backend == "sim":
        codes = cluster.requests_of(sa)
        assert sum(codes.values()) > 0, f"{sa} made no requests: {codes}"
        assert "403" not in codes, f"{sa} was refused by RBAC: {codes}\n{procs.logs()[-3000:]}"
    else:
        log = (cluster.work / f"{sa.removeprefix(PREFIX + '-')}.log").read_text(errors="replace")
        assert "forbidden" not in log.lower(), f"{sa} was refused by RBAC:\n{log[-3000:]}"


POOL = """apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: GatewayPool
metadata: {name: gateway}
spec: {gatewayNodepoolName: gateway, publicIpPrefixSize: 31}
"""
SGC = """apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: %s, namespace: app}
spec:
  gatewayNodepoolName: gateway
  excludeCidrs: [%s]
"""


def apply_pool_and_configuration(cluster: Cluster, procs: Processes) -> dict:
    """Applies POOL and configuration app/web; the configuration once the operator has made it Ready."""
    for doc in (POOL, SGC % ("web", "10.0.0.0/8")):
        r = cluster.kubectl("apply", "-f", "-", stdin=doc)
        assert r.returncode == 0, r.stderr

    def ready() -> dict | None:
        sgc = cluster.get_json("staticgatewayconfiguration", "web", "-n", "app")
        conds = {c["type"]: c for c in ((sgc or {}).get("status") or {}).get("conditions", [])}
        return sgc if conds.get("Ready", {}).get("status") == "True" else None

    return wait_for("the configuration to be Ready", ready, procs, timeout=120)


def test_chart_installs_and_its_webhook_answers_over_the_charts_certificate(installed) -> None:
    cluster, procs, objs, bins, webhook_listen = installed
    # With failurePolicy Fail and no webhook serving yet, our kinds cannot be written: the chart's
    # registration is live in the API server.
    r = cluster.kubectl("apply", "-f", "-", stdin=SGC % ("early", "10.0.0.0/8"))
    assert r.returncode != 0
    assert "failed calling webhook" in r.stderr, r.stderr

    start_webhook(cluster, procs, objs, bins, webhook_listen)
    # The API server verifies the webhook's serving certificate against the chart's caBundle.
    # (A bad excludeCidrs entry is refused by the CRD schema before any webhook; a publicIpPrefixId that is not
    # an ARM ID only by the webhook.)
    broken = SGC % ("broken", "10.0.0.0/8") + "  publicIpPrefixId: my-prefix\n"
    r = cluster.kubectl("apply", "-f", "-", stdin=broken)
    assert r.returncode != 0
    assert 'admission webhook "validate.staticgatewayconfigurations.egressgateway.kubernetes.azure.com" denied the request' in r.stderr, r.stderr
    assert "spec.publicIpPrefixId: rule 6" in r.stderr, r.stderr
    r = cluster.kubectl("apply", "-f", "-", stdin=SGC % ("broken", "10.0.0.1"))
    assert r.returncode != 0
    assert 'spec.excludeCidrs[0]: Invalid value: "string": rule 7' in r.stderr, r.stderr
    r = cluster.kubectl("apply", "-f", "-", stdin=POOL)
    assert r.returncode == 0, r.stderr
    r = cluster.kubectl("apply", "-f", "-", stdin=SGC % ("ok", "10.0.0.0/8"))
    assert r.returncode == 0, r.stderr
    # The mutating webhook defaulted what the chart's registration sends it.
    sgc = cluster.get_json("staticgatewayconfiguration", "ok", "-n", "app")
    assert sgc is not None and sgc["spec"].get("defaultRoute") == "staticEgressGateway", sgc
    # Only the node agent may write PodEndpoints, as the chart registers it.
    pe = """apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: PodEndpoint
metadata: {name: p, namespace: app}
spec: {podIpAddress: 10.224.0.9/32, podPublicKey: "%s", staticGatewayConfiguration: ok}
""" % ("A" * 43 + "=")
    r = cluster.kubectl("apply", "-f", "-", stdin=pe)
    assert r.returncode != 0 and "validate.podendpoints" in r.stderr, r.stderr


def test_operator_provisions_with_the_charts_arguments_config_and_rbac(installed) -> None:
    cluster, procs, objs, bins, webhook_listen = installed
    start_webhook(cluster, procs, objs, bins, webhook_listen)
    metrics = start_operator(cluster, procs, objs, bins)
    # Leader election in the chart's namespace, with the chart's Role.
    lease = wait_for(
        "the operator's leader Lease",
        lambda: next(
            (l for l in (cluster.get_json("lease", "-n", NAMESPACE) or {"items": []})["items"]
             if l["spec"].get("holderIdentity")),
            None,
        ),
        procs,
    )
    assert lease["metadata"]["namespace"] == NAMESPACE
    sgc = apply_pool_and_configuration(cluster, procs)
    status = sgc["status"]
    prefix = ipaddress.ip_network(status["egressIpPrefix"])
    assert prefix.prefixlen == 31 and prefix.subnet_of(ipaddress.ip_network("20.10.0.0/24")), status
    assert status["gatewayServerProfile"]["publicKey"], status
    # The key pair lives in the chart's namespace (--secret-namespace), written with the chart's Role.
    secret = cluster.get_json("secret", f"sgw-{sgc['metadata']['uid']}", "-n", NAMESPACE)
    assert secret is not None and set(secret["data"]) >= {"PrivateKey", "PublicKey"}, secret
    # Events for the transition, with the chart's ClusterRole.
    events = cluster.get_json("events.events.k8s.io", "-n", "app") or {"items": []}
    assert any(e["regarding"]["name"] == "web" for e in events["items"]), events
    # Metrics on the chart's port flag, upstream's names.
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
    assert "controller_reconcile_latency" in body
    # The chart's RBAC refused the operator and the webhook nothing.
    r = cluster.kubectl("get", "secrets", "-A", as_sa=f"{PREFIX}-gateway-agent")
    assert r.returncode != 0 and "forbidden" in r.stderr, r.stderr
    for sa in (f"{PREFIX}-operator", f"{PREFIX}-webhook"):
        no_rbac_refusal(cluster, procs, sa)
    if cluster.backend == "sim":
        # The count does see refusals: the gateway agent's listing of Secrets above.
        assert cluster.requests_of(f"{PREFIX}-gateway-agent").get("403", 0) >= 1
    # Container logs are files, not terminals: plain text, no colour escape codes.
    for component in ("operator", "webhook"):
        text = (cluster.work / f"{component}.log").read_text(errors="replace")
        assert " INFO " in text and "\x1b[" not in text, text[:500]


def test_each_agent_account_makes_its_components_calls_with_its_own_token(installed) -> None:
    """The agents run in the lab; here their accounts make the calls the agents make (writes as server-side
    dry runs: authorized and admitted like real ones, nothing stored), with the chart's tokens, and are
    refused what the agents must not do."""
    cluster, procs, objs, bins, webhook_listen = installed
    start_webhook(cluster, procs, objs, bins, webhook_listen)
    for doc in (POOL, SGC % ("web", "10.0.0.0/8")):
        r = cluster.kubectl("apply", "-f", "-", stdin=doc)
        assert r.returncode == 0, r.stderr
    pe = """apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: PodEndpoint
metadata: {name: p, namespace: app}
spec: {podIpAddress: 10.224.0.9/32, podPublicKey: "%s", staticGatewayConfiguration: web}
""" % ("A" * 43 + "=")
    status = """apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: GatewayStatus
metadata: {name: %s, namespace: %s}
spec: {}
""" % (NODE, NAMESPACE)
    node_agent, gateway_agent = f"{PREFIX}-node-agent", f"{PREFIX}-gateway-agent"
    # The calls agent/src makes: reflectors list and watch, server-side applies (a patch that creates a missing
    # object), and gets, patches and deletes by name. A call by name may find nothing (NotFound: authorized).
    apply = ("apply", "--server-side", "--field-manager=kube-egress-gateway-agent", "--dry-run=server", "-f", "-")
    allowed = {
        node_agent: [
            ("get", "staticgatewayconfigurations", "-A"), ("get", "staticgatewayconfiguration", "web", "-n", "app"),
            ("get", "pod", "p", "-n", "app"), ("get", "node", NODE),
            ("patch", "node", NODE, "--type=merge", "--dry-run=server", "-p", '{"metadata":{"labels":{}}}'),
            ("get", "configmap", "cni-uninstall", "-n", NAMESPACE), ("get", "podendpoint", "p", "-n", "app"),
            (*apply, pe), ("delete", "podendpoint", "p", "-n", "app", "--dry-run=server"),
        ],
        gateway_agent: [
            ("get", "staticgatewayconfigurations", "-A"), ("get", "podendpoints", "-A"),
            ("get", "secrets", "-n", NAMESPACE), ("get", "node", NODE),
            (*apply, status),
        ],
    }
    for sa, calls in allowed.items():
        for call in calls:
            args, stdin = (call[:-1], call[-1]) if "-f" in call else (call, None)
            r = cluster.kubectl(*args, stdin=stdin, as_sa=sa)
            assert r.returncode == 0 or "NotFound" in r.stderr, f"{sa}: kubectl {' '.join(args)}: {r.stderr}"
            assert "forbidden" not in r.stderr.lower(), f"{sa}: kubectl {' '.join(args)}: {r.stderr}"
    # What they never do: lists where they get by name, other ConfigMaps, Secrets, the other agent's writes; the
    # gateway agent reads no pod (gateway nodes do not read pods' specs).
    refused = {
        node_agent: [
            ("get", "secrets", "-n", NAMESPACE), ("get", "pods", "-A"), ("get", "nodes"),
            ("get", "configmaps", "-n", NAMESPACE), ("get", "podendpoints", "-A"),
        ],
        gateway_agent: [
            ("create", "--dry-run=server", "-f", "-", pe), ("get", "secrets", "-A"),
            ("get", "gatewaystatuses", "-n", NAMESPACE), ("get", "pod", "p", "-n", "app"), ("get", "pods", "-A"),
        ],
    }
    for sa, calls in refused.items():
        for call in calls:
            args, stdin = (call[:-1], call[-1]) if "-f" in call else (call, None)
            r = cluster.kubectl(*args, stdin=stdin, as_sa=sa)
            assert r.returncode != 0 and "forbidden" in r.stderr, f"{sa}: kubectl {' '.join(args)}: {r.stderr}"


KEYS = "keg-keys"
KEYS_APART = {"common": {"keySecretNamespace": KEYS}}


@pytest.mark.parametrize("installed", [KEYS_APART], indirect=True, ids=["keySecretNamespace"])
def test_key_secret_namespace_keeps_the_keys_apart_from_the_release_namespaces_secrets(installed) -> None:
    """common.keySecretNamespace installed: the operator, with the chart's arguments and the Role the chart gives
    it there, writes each configuration's key Secret into that namespace; the gateway agent's account reads
    Secrets there and none of the release namespace's (the operator's Azure credentials, the webhook's TLS key).
    One installation, as each test here has: the value adds one test, not a second run of the others."""
    cluster, procs, objs, bins, webhook_listen = installed
    start_webhook(cluster, procs, objs, bins, webhook_listen)
    start_operator(cluster, procs, objs, bins)
    sgc = apply_pool_and_configuration(cluster, procs)
    name = f"sgw-{sgc['metadata']['uid']}"
    secret = cluster.get_json("secret", name, "-n", KEYS)
    assert secret is not None and set(secret["data"]) >= {"PrivateKey", "PublicKey"}, secret
    assert base64.b64decode(secret["data"]["PublicKey"]).decode() == sgc["status"]["gatewayServerProfile"]["publicKey"]
    assert cluster.get_json("secret", name, "-n", NAMESPACE) is None, "a key Secret in the release namespace"
    no_rbac_refusal(cluster, procs, f"{PREFIX}-operator")

    operator, gateway_agent = f"{PREFIX}-operator", f"{PREFIX}-gateway-agent"
    # The release namespace's Secrets the agent must not reach (both exist: a refusal is not a NotFound).
    cloud_config, webhook_tls = f"{PREFIX}-azure-cloud-config", f"{PREFIX}-webhook-tls"
    for other in (cloud_config, webhook_tls):
        assert cluster.get_json("secret", other, "-n", NAMESPACE) is not None, other
    probe = """apiVersion: v1
kind: Secret
metadata: {name: probe, namespace: %s}
stringData: {k: v}
"""
    # The gateway agent's reflector lists and watches the key Secrets (a watch the server ends after a second).
    watch = f"/api/v1/namespaces/{KEYS}/secrets?watch=1&timeoutSeconds=1"
    allowed = {
        gateway_agent: [("get", "secrets", "-n", KEYS), ("get", "--raw", watch)],
        operator: [
            ("get", "secret", name, "-n", KEYS), ("get", "secrets", "-n", KEYS),
            ("create", "--dry-run=server", "-f", "-", probe % KEYS),
            ("delete", "secret", name, "-n", KEYS, "--dry-run=server"),
        ],
    }
    refused = {
        gateway_agent: [
            ("get", "secrets", "-n", NAMESPACE), ("get", "secret", cloud_config, "-n", NAMESPACE),
            ("get", "secret", webhook_tls, "-n", NAMESPACE),
            ("get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/secrets?watch=1&timeoutSeconds=1"),
            ("get", "secrets", "-A"),
        ],
        operator: [
            ("get", "secrets", "-n", NAMESPACE), ("create", "--dry-run=server", "-f", "-", probe % NAMESPACE),
        ],
    }
    for sa, calls in allowed.items():
        for call in calls:
            args, stdin = (call[:-1], call[-1]) if "-f" in call else (call, None)
            r = cluster.kubectl(*args, stdin=stdin, as_sa=sa)
            assert r.returncode == 0, f"{sa}: kubectl {' '.join(args)}: {r.stderr}"
    for sa, calls in refused.items():
        for call in calls:
            args, stdin = (call[:-1], call[-1]) if "-f" in call else (call, None)
            r = cluster.kubectl(*args, stdin=stdin, as_sa=sa)
            assert r.returncode != 0 and "forbidden" in r.stderr.lower(), f"{sa}: kubectl {' '.join(args)}: {r.stderr}"

    if cluster.backend == "real":
        # The chart does not create the namespace: installing into a missing one fails with the API server's
        # error naming it (kube-sim does not check namespaces).
        missing = "keg-keys-missing"
        rendered = subprocess.run(
            [sys.executable, str(RENDER), "--release", RELEASE, "--namespace", NAMESPACE, "--no-crds",
             "--set-json", json.dumps({"common": {"keySecretNamespace": missing}})],
            check=True, capture_output=True, text=True, timeout=120,
        ).stdout
        r = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered)
        assert r.returncode != 0 and f'namespaces "{missing}" not found' in r.stderr, r.stderr
