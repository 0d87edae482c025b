"""Bad values fail at install/template time with a message naming the field; upstream values files still work."""

from __future__ import annotations

import helm_python as helm
import pytest

from conftest import objects, render

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
    ({"webhook": {"certificates": {"mode": "webhookGenerated"}}}, "/webhook/replicas"),
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


def test_upstream_values_file_still_works() -> None:
    # Keys from upstream's chart that have no meaning here are accepted (and ignored), so migrating users
    # keep their values file.
    upstream = {
        "common": {"imageRepository": "mcr.microsoft.com/aks", "imageTag": "v0.1.8", "gatewayLbProbePort": 8082},
        "gatewayControllerManager": {"enabled": True, "leaderElect": "true", "replicas": 1},
        "gatewayCNIManager": {"grpcServerPort": 50051, "exceptionCidrs": ["169.254.169.254/32"]},
        "gatewayCNIIpam": {"imageName": "kube-egress-gateway-cni-ipam"},
        "gatewayCNI": {"imageName": "kube-egress-gateway-cni"},
        "gatewayDaemonManagerInit": {"imageName": "kube-egress-gateway-daemon-init"},
        "config": {"azureCloudConfig": {"cloud": "AzurePublicCloud", "cloudProviderBackoff": True}},
    }
    objs = objects(upstream)
    assert any(o["kind"] == "DaemonSet" for o in objs)


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
