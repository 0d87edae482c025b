"""Bad values fail at install/template time with a message naming the field; upstream values files still work."""

from __future__ import annotations

import base64
import copy
import json

import helm_python as helm
import pytest
import yaml

from conftest import CHART, args_map, containers, objects, one, render
from release_facts import release_env

INVALID = [
    ({"common": {"gatewayLbProbePort": "x"}}, "/common/gatewayLbProbePort"),
    ({"common": {"gatewayLbProbePort": 70000}}, "/common/gatewayLbProbePort"),
    ({"common": {"logFormat": "xml"}}, "/common/logFormat"),
    ({"common": {"imageTag": 1.1}}, "/common/imageTag"),
    ({"webhook": {"replicas": -1}}, "/webhook/replicas"),
    ({"webhook": {"replicas": 0}}, "/webhook/replicas"),
    ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
    ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
    ({"webhook": {"certificates": {"mode": "letsencrypt"}}}, "/webhook/certificates/mode"),
    ({"webhook": {"certificates": {"mode": "existingSecret"}}}, "/webhook/certificates/existingSecret/name"),
    (
        {"webhook": {"certificates": {"mode": "existingSecret", "existingSecret": {"name": "tls", "caBundle": "not base64!"}}}},
        "/webhook/certificates/existingSecret/caBundle",
    ),
    ({"webhook": {"certificates": {"certManager": {"issuerRef": {"kind": "Issuer"}}}}}, "/webhook/certificates/certManager/issuerRef"),
    ({"webhooks": {"enabled": False}}, "webhooks"),
    ({"gatewayCNIManager": {"exceptionCidrs": ["169.254.169.254"]}}, "/gatewayCNIManager/exceptionCidrs/0"),
    ({"gatewayCNIManager": {"exceptionCidrs": ["10.0.0.0/33"]}}, "/gatewayCNIManager/exceptionCidrs/0"),
    ({"gatewayCNIManager": {"exceptionCidrs": ["fd00::/8"]}}, "/gatewayCNIManager/exceptionCidrs/0"),
    ({"gatewayCNIManager": {"cniConfigFileName": "../../etc/passwd"}}, "/gatewayCNIManager/cniConfigFileName"),
    ({"gatewayCNIManager": {"cniUninstall": "yes"}}, "/gatewayCNIManager/cniUninstall"),
    ({"gatewayCNIManager": {"socketDir": "relative/dir"}}, "/gatewayCNIManager/socketDir"),
    ({"gatewayCNIManager": {"podTunnelWatch": {"podNetnsDir": "run/netns"}}}, "/gatewayCNIManager/podTunnelWatch/podNetnsDir"),
    ({"gatewayCNIManager": {"podTunnelWatch": {"enabled": "yes"}}}, "/gatewayCNIManager/podTunnelWatch/enabled"),
    ({"monitoring": {"serviceMonitor": {"interval": "soon"}}}, "/monitoring/serviceMonitor/interval"),
    ({"monitoring": {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}}, "/monitoring/grafanaDashboard/labels/grafana_dashboard"),
    ({"gatewayControllerManager": {"leaderElect": "maybe"}}, "/gatewayControllerManager/leaderElect"),
    ({"gatewayControllerManager": {"replicas": 0}}, "/gatewayControllerManager/replicas"),
    ({"gatewayDaemonManager": {"tolerations": [{"key": "a", "effect": "Sometimes"}]}}, "/gatewayDaemonManager/tolerations/0/effect"),
    ({"gatewayDaemonManager": {"resources": {"limits": {"memory": "lots"}}}}, "/gatewayDaemonManager/resources/limits/memory"),
    ({"gatewayDaemonManager": {"wireguardBackend": "wireguard-go"}}, "/gatewayDaemonManager/wireguardBackend"),
    ({"config": {"azureCloudConfig": {"subscriptionId": "my-sub"}}}, "/config/azureCloudConfig/subscriptionId"),
    ({"config": {"azureCloudConfig": {"useManagedIdentityExtension": "true"}}}, "/config/azureCloudConfig/useManagedIdentityExtension"),
    (
        {"config": {"azureCloudConfig": {"useFederatedWorkloadIdentityExtension": "yes"}}},
        "/config/azureCloudConfig/useFederatedWorkloadIdentityExtension",
    ),
    ({"config": {"existingSecret": {"name": "Corp_Config"}}}, "/config/existingSecret/name"),
    ({"config": {"existingSecret": {"name": "corp", "key": "../cloud.json"}}}, "/config/existingSecret/key"),
    ({"config": {"existingSecret": {"name": "corp", "key": ""}}}, "/config/existingSecret/key"),
    ({"config": {"existingSecret": {"secretName": "corp"}}}, "at '/config/existingSecret': additional properties 'secretName'"),
    ({"gatewayControllerManager": {"podLabels": {"azure.workload.identity/use": True}}}, "/gatewayControllerManager/podLabels/azure.workload.identity~1use"),
    ({"gatewayControllerManager": {"podAnnotations": {"a": 1}}}, "/gatewayControllerManager/podAnnotations/a"),
    ({"gatewayControllerManager": {"serviceAccount": {"name": "mine"}}}, "at '/gatewayControllerManager/serviceAccount': additional properties 'name'"),
    ({"gatewayControllerManager": {"serviceAccount": {"annotations": {"azure.workload.identity/client-id": 7}}}}, "/gatewayControllerManager/serviceAccount/annotations"),
]


@pytest.mark.parametrize(("values", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_values_are_refused_by_the_schema(values: dict, field: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert field in str(err.value), str(err.value)


# Not DNS-1123 labels (namespace names): upper case and '_', a dot (a subdomain, not a label), a '-' at either
# end, 64 characters.
BAD_KEY_NAMESPACES = ["Keg_Keys", "keg.keys", "-keys", "keys-", "k" * 64, "keg keys"]


@pytest.mark.parametrize("value", BAD_KEY_NAMESPACES)
def test_key_secret_namespace_must_be_a_namespace_name(value: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render({"common": {"keySecretNamespace": value}})
    message = str(err.value)
    assert "/common/keySecretNamespace" in message and f"'{value}'" in message, message


def test_key_secret_namespace_must_be_a_string() -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render({"common": {"keySecretNamespace": 7}})
    assert "/common/keySecretNamespace" in str(err.value), str(err.value)


@pytest.mark.parametrize("value", ["k", "k" * 63, "keg-keys-2", "0keys"])
def test_key_secret_namespace_takes_every_namespace_name(value: str) -> None:
    dep = one(objects({"common": {"keySecretNamespace": value}}), "Deployment", "kube-egress-gateway-operator")
    assert args_map(containers(dep, init=False)[0])["--secret-namespace"] == value


# Cross-field rules the schema cannot express: refused by the templates, naming both fields.
CONFLICTS = [
    ({"gatewayDaemonManager": {"metricsBindPort": 8082}}, "common.gatewayLbProbePort and gatewayDaemonManager.metricsBindPort"),
    ({"gatewayCNIManager": {"healthProbeBindPort": 8081}}, "gatewayCNIManager.healthProbeBindPort"),
    ({"gatewayControllerManager": {"healthProbeBindPort": 8080}}, "gatewayControllerManager.metricsBindPort and healthProbeBindPort"),
    ({"webhook": {"metricsPort": 9443}}, "webhook.port and webhook.metricsPort"),
    (
        {"gatewayControllerManager": {"podLabels": {"app.kubernetes.io/component": "mine"}}},
        "gatewayControllerManager.podLabels.app.kubernetes.io/component: the chart sets this selector label itself",
    ),
    (
        {"gatewayControllerManager": {"podAnnotations": {"checksum/cloud-config": "x"}}},
        "gatewayControllerManager.podAnnotations.checksum/cloud-config",
    ),
    (
        {"config": {"existingSecret": {"name": "corp"}, "azureCloudConfig": {"aadClientSecret": "s3cret"}}},
        "config.existingSecret.name and config.azureCloudConfig.aadClientSecret are both set",
    ),
]


@pytest.mark.parametrize(("values", "message"), CONFLICTS, ids=[m for _, m in CONFLICTS])
def test_conflicting_values_are_refused(values: dict, message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        render(values)
    assert message in str(err.value), str(err.value)


def test_own_cloud_config_checksum_with_an_existing_secret() -> None:
    # With an existing Secret the chart computes no checksum, so the user's own (restarting the operator when
    # they change the Secret) is theirs to set.
    from conftest import one

    values = {
        "config": {"existingSecret": {"name": "corp", "key": "azure.json"}},
        "gatewayControllerManager": {"podAnnotations": {"checksum/cloud-config": "v2"}},
    }
    dep = one(objects(values), "Deployment", "kube-egress-gateway-operator")
    assert dep["spec"]["template"]["metadata"]["annotations"]["checksum/cloud-config"] == "v2"


# Upstream's values file as a user of Azure/kube-egress-gateway keeps it: its chart's defaults
# (https://github.com/Azure/kube-egress-gateway/blob/main/helm/kube-egress-gateway/values.yaml) with the
# published images and a filled-in configuration.
UPSTREAM_VALUES = {
    "common": {"imageRepository": "mcr.microsoft.com/aks", "imageTag": "v0.1.8", "gatewayLbProbePort": 8082},
    "gatewayControllerManager": {
        "enabled": True, "imageName": "kube-egress-gateway-controller", "imagePullPolicy": "IfNotPresent",
        "replicas": 1, "leaderElect": "true", "metricsBindPort": 8080, "healthProbeBindPort": 8081,
        "nodeSelector": {}, "tolerations": [],
    },
    "gatewayCNIManager": {
        "enabled": True, "imageName": "kube-egress-gateway-cnimanager", "imagePullPolicy": "IfNotPresent",
        "grpcServerPort": 50051, "exceptionCidrs": ["169.254.169.254/32", "169.254.10.11/32"],
        "cniConfigFileName": "01-egressgateway.conflist", "cniUninstallConfigMapName": "cni-uninstall",
        "cniUninstall": False, "nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": [],
    },
    "gatewayDaemonManager": {
        "enabled": True, "imageName": "kube-egress-gateway-daemon", "imagePullPolicy": "IfNotPresent",
        "metricsBindPort": 8080, "healthProbeBindPort": 8081,
    },
    "gatewayDaemonManagerInit": {"imageName": "kube-egress-gateway-daemon-init", "imagePullPolicy": "Always"},
    "gatewayCNI": {"imageName": "kube-egress-gateway-cni", "imagePullPolicy": "Always"},
    "gatewayCNIIpam": {"imageName": "kube-egress-gateway-cni-ipam", "imagePullPolicy": "IfNotPresent"},
    "config": {
        "azureCloudConfig": {
            "cloud": "AzurePublicCloud", "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "subscriptionId": "00000000-0000-0000-0000-000000000001", "useManagedIdentityExtension": True,
            "userAssignedIdentityID": "11111111-2222-3333-4444-555555555555", "aadClientId": "", "aadClientSecret": "",
            "userAgent": "kube-egress-gateway-controller", "resourceGroup": "mc_rg", "location": "westeurope",
            "gatewayLoadBalancerName": "kubeegressgateway-ilb", "loadBalancerResourceGroup": "",
            "vnetName": "aks-vnet", "vnetResourceGroup": "", "subnetName": "aks-subnet", "cloudProviderBackoff": True,
        }
    },
}
UPSTREAM_IMAGE_KEYS = [
    ("common", "imageRepository"),
    ("gatewayControllerManager", "imageName"),
    ("gatewayCNIManager", "imageName"),
    ("gatewayDaemonManager", "imageName"),
    ("gatewayDaemonManagerInit", "imageName"),
    ("gatewayCNI", "imageName"),
]


def without_upstream_images(values: dict) -> dict:
    """The values with upstream's image keys dropped, as docs/install.md says to (the tag goes too: upstream's
    versions are not this chart's)."""
    out = copy.deepcopy(values)
    for section, key in UPSTREAM_IMAGE_KEYS + [("common", "imageTag")]:
        out[section].pop(key)
    return out


def test_upstream_values_file_without_its_images_works() -> None:
    """Upstream's keys keep their meaning; the images are this chart's."""
    objs = objects(without_upstream_images(UPSTREAM_VALUES))
    images = {
        c["name"]: (c["image"], c["imagePullPolicy"])
        for w in objs if w["kind"] in ("Deployment", "DaemonSet") for c in containers(w)
    }
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    repo = release_env()["IMAGE_REPOSITORY"]
    assert images == {
        "operator": (f"{repo}/kube-egress-gateway-operator:{version}", "IfNotPresent"),
        "webhook": (f"{repo}/kube-egress-gateway-webhook:{version}", "IfNotPresent"),
        "cni-install": (f"{repo}/kube-egress-gateway-agent:{version}", "Always"),
        "netns-init": (f"{repo}/kube-egress-gateway-agent:{version}", "Always"),
        "agent": (f"{repo}/kube-egress-gateway-agent:{version}", "IfNotPresent"),
    }
    node_agent = one(objs, "DaemonSet", "kube-egress-gateway-node-agent")
    assert containers(node_agent, init=False)[0]["image"] == f"{repo}/kube-egress-gateway-agent:{version}"
    args = args_map(containers(node_agent, init=False)[0])
    assert args["--exception-cidrs"] == "169.254.169.254/32,169.254.10.11/32"
    assert args["--cni-conf-file"] == "01-egressgateway.conflist"
    assert args["--cni-uninstall-configmap-name"] == "cni-uninstall"
    secret = one(objs, "Secret", "kube-egress-gateway-azure-cloud-config")
    cloud = json.loads(base64.b64decode(secret["data"]["azure-cloud-config.json"]))
    assert cloud == UPSTREAM_VALUES["config"]["azureCloudConfig"]


@pytest.mark.parametrize(("section", "key"), UPSTREAM_IMAGE_KEYS, ids=[f"{s}.{k}" for s, k in UPSTREAM_IMAGE_KEYS])
def test_upstream_image_keys_are_refused_by_name(section: str, key: str) -> None:
    """Upstream's images run its Go binaries, which take other flags (or do not exist under this chart's names):
    refused with the key to drop, not rendered into pods that crash."""
    values = without_upstream_images(UPSTREAM_VALUES)
    values[section][key] = UPSTREAM_VALUES[section][key]
    with pytest.raises(helm.HelmRenderError) as err:
        render(values)
    assert f"{section}.{key} {UPSTREAM_VALUES[section][key]}" in str(err.value), str(err.value)
    assert "upstream's (Azure/kube-egress-gateway)" in str(err.value) and "remove the key" in str(err.value)


def test_upstream_repository_is_refused_on_a_component_too() -> None:
    values = {"webhook": {"imageRepository": "mcr.microsoft.com/aks"}}
    with pytest.raises(helm.HelmRenderError) as err:
        render(values)
    assert "webhook.imageRepository mcr.microsoft.com/aks" in str(err.value)


def test_leader_election_can_be_turned_off() -> None:
    from conftest import args_map, one

    for value, expected in ((False, False), ("false", False), (True, True), ("true", True)):
        dep = one(objects({"gatewayControllerManager": {"leaderElect": value}}), "Deployment", "kube-egress-gateway-operator")
        assert ("--leader-elect" in args_map(dep["spec"]["template"]["spec"]["containers"][0])) is expected, value


def test_components_can_be_disabled() -> None:
    objs = objects(
        {
            "gatewayControllerManager": {"enabled": False},
            "gatewayDaemonManager": {"enabled": False},
            "gatewayCNIManager": {"enabled": False},
            "webhook": {"enabled": False},
        }
    )
    assert objs == []
