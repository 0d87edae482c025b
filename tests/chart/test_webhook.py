"""Webhook configurations and certificate modes."""

from __future__ import annotations

import base64
import re

import helm_python as helm
import pytest

from conftest import CHART, NAMESPACE, args_map, containers, find, objects, one, scenario_objects
from test_render import GROUP

NAME = "kube-egress-gateway-webhook"
EXPECTED_PATHS = {
    "/mutate-staticgatewayconfiguration",
    "/validate-staticgatewayconfiguration",
    "/validate-gatewaypool",
    "/mutate-pod",
    "/validate-pod",
    "/validate-podendpoint",
}


def hooks(objs):
    out = []
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for cfg in find(objs, kind):
            out.extend((kind, cfg, h) for h in cfg["webhooks"])
    return out


def test_paths_are_the_servers_endpoints() -> None:
    # The paths the webhook binary routes (webhook/src/handlers.rs), so a renamed endpoint breaks this test.
    source = (CHART.parents[1] / "webhook" / "src" / "handlers.rs").read_text()
    served = set(re.findall(r'=> "(/(?:mutate|validate)-[a-z]+)"', source))
    assert served == EXPECTED_PATHS
    rendered = {h["clientConfig"]["service"]["path"] for _, _, h in hooks(scenario_objects("default"))}
    assert rendered == EXPECTED_PATHS
    # GatewayPools have no defaults: no mutating webhook (and no failure mode) for them.
    mutating = [h for kind, _, h in hooks(scenario_objects("default")) if kind.startswith("Mutating")]
    assert all("gatewaypools" not in h["rules"][0]["resources"] for h in mutating)


def test_webhook_entries(scenario: str) -> None:
    objs = scenario_objects(scenario)
    if scenario == "webhook-disabled":
        assert hooks(objs) == [] and not [o for o in objs if "webhook" in o["metadata"]["name"]]
        return
    svc = one(objs, "Service", NAME)
    names = set()
    for kind, cfg, h in hooks(objs):
        assert h["name"] not in names and h["name"].count(".") >= 2
        names.add(h["name"])
        assert h["admissionReviewVersions"] == ["v1"]
        assert h["sideEffects"] == "None"
        assert 1 <= h["timeoutSeconds"] <= 30
        service = h["clientConfig"]["service"]
        assert (service["name"], service["namespace"], service["port"]) == (NAME, NAMESPACE, svc["spec"]["ports"][0]["port"])
        path = service["path"]
        assert path.startswith("/mutate-" if kind.startswith("Mutating") else "/validate-")
        (rule,) = h["rules"]
        resource = rule["resources"][0]
        assert path.endswith(resource.rstrip("s")), f"{path} admits {resource}"
        if resource == "pods":
            assert rule["apiGroups"] == [""]
            # Pods are never blocked by an unavailable webhook, and system namespaces are never seen.
            assert h["failurePolicy"] == "Ignore"
            (expr,) = h["namespaceSelector"]["matchExpressions"]
            assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn"
            assert {NAMESPACE, "kube-system"} <= set(expr["values"])
            assert {"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["kube-egress-gateway"]} in h["objectSelector"]["matchExpressions"]
        else:
            assert rule["apiGroups"] == [GROUP] and h["failurePolicy"] == "Fail"
            assert "namespaceSelector" not in h and "objectSelector" not in h
        assert set(rule["operations"]) <= {"CREATE", "UPDATE"}


def ca_bundles(objs) -> set:
    return {h["clientConfig"].get("caBundle") for _, _, h in hooks(objs)}


def webhook_container(objs):
    return containers(one(objs, "Deployment", NAME), init=False)[0]


def mounted_secret(objs) -> str:
    pod = one(objs, "Deployment", NAME)["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls")
    args = args_map(pod["containers"][0])
    assert args["--tls-cert-file"] == f"{mount['mountPath']}/tls.crt"
    assert args["--tls-key-file"] == f"{mount['mountPath']}/tls.key"
    assert "--self-signed-dns-names" not in args
    return vol["secret"]["secretName"]


def test_self_signed_certificate_made_by_the_chart() -> None:
    objs = scenario_objects("default")
    secret = one(objs, "Secret", mounted_secret(objs))
    assert secret["type"] == "kubernetes.io/tls"
    (bundle,) = ca_bundles(objs)
    assert bundle == secret["data"]["ca.crt"]
    for key, header in (("ca.crt", "CERTIFICATE"), ("tls.crt", "CERTIFICATE"), ("tls.key", "RSA PRIVATE KEY")):
        assert base64.b64decode(secret["data"][key]).decode().startswith(f"-----BEGIN {header}-----"), key
    assert secret["data"]["ca.crt"] != secret["data"]["tls.crt"]


def test_self_signed_certificate_is_trusted_for_the_service_name() -> None:
    # What the API server checks when it calls the webhook: the serving certificate chains to caBundle and
    # names the Service's DNS name.
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import padding

    objs = scenario_objects("default")
    secret = one(objs, "Secret", mounted_secret(objs))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.issuer == ca.subject
    ca.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(), leaf.signature_hash_algorithm)
    sans = set(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    for _, _, h in hooks(objs):
        service = h["clientConfig"]["service"]
        assert f"{service['name']}.{service['namespace']}.svc" in sans
    now = datetime.datetime.now(datetime.timezone.utc)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - now > datetime.timedelta(days=3000), "default validity is 10 years"


def test_cert_manager_certificate_and_ca_injection() -> None:
    objs = scenario_objects("cert-manager")
    cert = one(objs, "Certificate", NAME)
    assert cert["spec"]["secretName"] == mounted_secret(objs)
    assert f"{NAME}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    issuer = cert["spec"]["issuerRef"]
    assert issuer["kind"] == "Issuer" and one(objs, "Issuer", issuer["name"])["spec"]["ca"]["secretName"]
    for _, cfg, h in hooks(objs):
        assert cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{NAME}"
        assert "caBundle" not in h["clientConfig"]
    assert not find(objs, "Secret", mounted_secret(objs)), "cert-manager owns the TLS secret"
    cluster = scenario_objects("cert-manager-cluster-issuer")
    assert one(cluster, "Certificate", NAME)["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert not find(cluster, "Issuer")


def test_existing_secret() -> None:
    objs = scenario_objects("existing-secret")
    assert mounted_secret(objs) == "my-webhook-tls"
    assert not find(objs, "Secret", "my-webhook-tls") and not find(objs, "Certificate")
    assert ca_bundles(objs) == {"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="}


def test_webhook_generated_certificate() -> None:
    objs = scenario_objects("webhook-generated")
    args = args_map(webhook_container(objs))
    dns = args["--self-signed-dns-names"].split(",")
    assert f"{NAME}.{NAMESPACE}.svc" in dns
    assert "--tls-cert-file" not in args
    assert ca_bundles(objs) == {None}
    assert one(objs, "Deployment", NAME)["spec"]["replicas"] == 1


@pytest.mark.parametrize("replicas", [1, 2, 5])
def test_webhook_generated_pair_is_kept_in_a_secret_for_any_number_of_replicas(replicas: int) -> None:
    # The replicas share the pair through one Secret (webhook/src/pair_secret.rs): the schema no longer limits
    # them. The chart renders that Secret without data (Helm owns its metadata and type; the webhook writes the
    # pair, which upgrades leave alone) and does not mount it.
    objs = objects({"webhook": {"replicas": replicas, "certificates": {"mode": "webhookGenerated"}}})
    dep = one(objs, "Deployment", NAME)
    assert dep["spec"]["replicas"] == replicas
    secret = args_map(webhook_container(objs))["--self-signed-secret"]
    assert secret == f"{NAME}-generated"
    rendered = one(objs, "Secret", secret)
    assert rendered["type"] == "Opaque"
    assert "data" not in rendered and "stringData" not in rendered
    assert not find(objs, "Secret", f"{NAME}-tls")
    assert "volumes" not in dep["spec"]["template"]["spec"]
    # The budget rules are those of the other modes: one only with an eviction to allow.
    assert bool(find(objs, "PodDisruptionBudget", NAME)) == (replicas > 1)


def test_only_webhook_generated_mode_passes_a_secret() -> None:
    for scenario in ("default", "cert-manager", "existing-secret"):
        objs = scenario_objects(scenario)
        assert "--self-signed-secret" not in args_map(webhook_container(objs)), scenario
        assert not find(objs, "Secret", f"{NAME}-generated"), scenario


def test_availability() -> None:
    objs = scenario_objects("default")
    dep = one(objs, "Deployment", NAME)
    assert dep["spec"]["replicas"] == 2
    pdb = one(objs, "PodDisruptionBudget", NAME)
    assert pdb["spec"]["minAvailable"] == 1
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    drain = int(args_map(webhook_container(objs))["--drain-seconds"])
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    one(objs, "PodDisruptionBudget", "kube-egress-gateway-operator")


def test_every_disruption_budget_allows_an_eviction(scenario: str) -> None:
    """A budget that allows no eviction makes `kubectl drain` and AKS node-image upgrades wait forever."""
    objs = scenario_objects(scenario)
    for pdb in find(objs, "PodDisruptionBudget"):
        name = pdb["metadata"]["name"]
        replicas = one(objs, "Deployment", name)["spec"]["replicas"]
        spec = pdb["spec"]
        allowed = spec["maxUnavailable"] if "maxUnavailable" in spec else replicas - spec["minAvailable"]
        assert allowed >= 1, f"PodDisruptionBudget {name} allows {allowed} evictions of {replicas} pod(s)"


def test_single_webhook_replica_has_no_disruption_budget() -> None:
    # One replica (here in webhookGenerated mode): a budget of minAvailable 1 there would block every drain.
    assert not find(scenario_objects("webhook-generated"), "PodDisruptionBudget", NAME)
    assert not find(objects({"webhook": {"replicas": 1}}), "PodDisruptionBudget", NAME)
    pdb = one(objects({"webhook": {"replicas": 3, "podDisruptionBudget": {"minAvailable": 2}}}), "PodDisruptionBudget", NAME)
    assert pdb["spec"]["minAvailable"] == 2


def test_a_budget_that_allows_no_eviction_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        objects({"webhook": {"replicas": 2, "podDisruptionBudget": {"minAvailable": 2}}})
    assert "webhook.podDisruptionBudget.minAvailable (2) must be below webhook.replicas (2)" in str(err.value)
